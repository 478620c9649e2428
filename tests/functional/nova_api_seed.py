"""Write servers, faults and instance actions into the test Nova's databases.

Started by ``tests/functional/nova_api.py`` as a long-lived subprocess::

    python nova_api_seed.py --config-file NOVA_CONF

It reads one JSON request per line on standard input and answers each with
one JSON line on standard output: ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "...", "traceback": "..."}``.  It exits at end of
input (the pipe closes when the test process goes away, however it goes).

Everything is written with Nova's own objects (``objects.Instance``,
``objects.InstanceMapping``, ``objects.InstanceFault``,
``objects.InstanceAction`` and ``objects.InstanceActionEvent``), on the API
database and on the cell database that ``nova-manage cell_v2 create_cell``
registered, exactly where nova-api looks for them.  Running here keeps Nova
out of the test process.

Requests (``op`` and its arguments):

``setup_databases``: cell0_url, cell1_url.  What ``nova-manage api_db
    sync``, ``cell_v2 map_cell0``, ``cell_v2 create_cell --name cell1`` and
    ``db sync`` do, with nova-manage's own command code.  Result: their
    output.

``create_server``: project_id, user_id, name, vm_state, task_state,
    power_state, host, node, flavor (dict: name, vcpus, memory_mb, root_gb,
    ephemeral_gb, swap, extra_specs), image_ref, availability_zone,
    metadata, uuid.  Result: the server's uuid.
``add_fault``: uuid, code, message, details, host.  Result: the fault's id.
``add_action``: uuid, request_id, action, user_id, project_id, start_time
    (ISO 8601, optional), finish (bool), events (list of dicts: event,
    result 'Success' or 'Error', traceback, details, host).
    Result: the action's id.
``update_server``: uuid, fields (dict of Instance fields).
``ping``: nothing; result ``"pong"``.
"""

import argparse
import contextlib
import datetime
import io
import json
import os
import sys
import traceback

# As in wsgi_serve.py: this directory's keystone.py must not shadow the
# real package of that name.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != _HERE]

# Nova's native-threading mode, set up before anything else of Nova loads
# (as nova/wsgi/osapi_compute.py does).
os.environ['OS_NOVA_DISABLE_EVENTLET_PATCHING'] = '1'
from nova import monkey_patch  # noqa: E402
monkey_patch.patch()  # threading: OS_NOVA_DISABLE_EVENTLET_PATCHING
from nova.compute import power_state as nova_power_state  # noqa: E402
from nova import config as nova_config  # noqa: E402
from nova import context as nova_context  # noqa: E402
from nova import exception  # noqa: E402
from nova.network import model as network_model  # noqa: E402
from nova import objects  # noqa: E402
from oslo_utils import timeutils  # noqa: E402
from oslo_utils import uuidutils  # noqa: E402

_POWER_STATES = {
    'nostate': nova_power_state.NOSTATE,
    'running': nova_power_state.RUNNING,
    'paused': nova_power_state.PAUSED,
    'shutdown': nova_power_state.SHUTDOWN,
    'crashed': nova_power_state.CRASHED,
    'suspended': nova_power_state.SUSPENDED,
}

_DEFAULT_FLAVOR = {
    'name': 'm1.small', 'vcpus': 1, 'memory_mb': 2048, 'root_gb': 20,
    'ephemeral_gb': 0, 'swap': 0, 'extra_specs': {},
}

_cell = None


def _cell_mapping():
    """The one non-cell0 cell (created by ``cell_v2 create_cell``)."""
    global _cell
    if _cell is None:
        ctxt = nova_context.get_admin_context()
        cells = [c for c in objects.CellMappingList.get_all(ctxt)
                 if not c.is_cell0()]
        if len(cells) != 1:
            raise RuntimeError('expected one cell besides cell0, found %r' %
                               [c.name for c in cells])
        _cell = cells[0]
    return _cell


def _context(user_id=None, project_id=None, request_id=None, timestamp=None):
    kwargs = {}
    if request_id:
        kwargs['request_id'] = request_id
    if timestamp:
        kwargs['timestamp'] = timestamp
    return nova_context.RequestContext(
        user_id=user_id, project_id=project_id, is_admin=True,
        overwrite=False, **kwargs)


def _flavor(ctxt, spec):
    values = dict(_DEFAULT_FLAVOR)
    values.update(spec or {})
    try:
        return objects.Flavor.get_by_name(ctxt, values['name'])
    except exception.FlavorNotFoundByName:
        pass
    flavor = objects.Flavor(context=ctxt)
    for key in ('name', 'vcpus', 'memory_mb', 'root_gb', 'ephemeral_gb',
                'swap', 'extra_specs'):
        setattr(flavor, key, values[key])
    flavor.flavorid = values.get('flavorid') or values['name']
    flavor.is_public = True
    flavor.create()
    return flavor


def create_server(project_id, user_id, name, vm_state='error',
                  task_state=None, power_state='nostate', host='compute-01',
                  node=None, flavor=None, image_ref=None,
                  availability_zone='nova', metadata=None, uuid=None):
    ctxt = _context(user_id, project_id)
    flavor_obj = _flavor(ctxt, flavor)
    cell = _cell_mapping()
    uuid = uuid or uuidutils.generate_uuid()
    if isinstance(power_state, str):
        power_state = _POWER_STATES[power_state]
    with nova_context.target_cell(ctxt, cell) as cctxt:
        inst = objects.Instance(context=cctxt)
        inst.uuid = uuid
        inst.project_id = project_id
        inst.user_id = user_id
        inst.display_name = name
        inst.hostname = ''.join(
            c if c.isalnum() or c == '-' else '-' for c in name.lower())[:63]
        inst.vm_state = vm_state
        inst.task_state = task_state
        inst.power_state = power_state
        inst.host = host
        inst.launched_on = host
        inst.node = node if node is not None else host
        inst.compute_id = None
        inst.flavor = flavor_obj
        inst.instance_type_id = flavor_obj.id
        inst.memory_mb = flavor_obj.memory_mb
        inst.vcpus = flavor_obj.vcpus
        inst.root_gb = flavor_obj.root_gb
        inst.ephemeral_gb = flavor_obj.ephemeral_gb
        inst.image_ref = image_ref or uuidutils.generate_uuid()
        inst.availability_zone = availability_zone
        inst.launch_index = 0
        inst.metadata = metadata or {}
        inst.system_metadata = {}
        inst.info_cache = objects.InstanceInfoCache(
            network_info=network_model.NetworkInfo())
        inst.root_device_name = '/dev/vda'
        inst.config_drive = ''
        inst.locked = False
        if vm_state in ('active', 'stopped', 'paused', 'suspended'):
            inst.launched_at = timeutils.utcnow()
        inst.create()
    mapping = objects.InstanceMapping(context=ctxt)
    mapping.instance_uuid = uuid
    mapping.cell_mapping = cell
    mapping.project_id = project_id
    mapping.user_id = user_id
    mapping.queued_for_delete = False
    mapping.create()
    return uuid


def update_server(uuid, fields):
    ctxt = _context()
    with nova_context.target_cell(ctxt, _cell_mapping()) as cctxt:
        inst = objects.Instance.get_by_uuid(cctxt, uuid)
        for key, value in fields.items():
            if key == 'power_state' and isinstance(value, str):
                value = _POWER_STATES[value]
            setattr(inst, key, value)
        inst.save()
    return uuid


def add_fault(uuid, code=500, message='', details=None, host=None):
    ctxt = _context()
    with nova_context.target_cell(ctxt, _cell_mapping()) as cctxt:
        fault = objects.InstanceFault(context=cctxt)
        fault.instance_uuid = uuid
        fault.code = int(code)
        fault.message = message
        fault.details = details
        fault.host = host
        fault.create()
        return fault.id


def add_action(uuid, request_id, action='create', user_id=None,
               project_id=None, start_time=None, finish=True, events=()):
    ctxt = _context()
    with nova_context.target_cell(ctxt, _cell_mapping()) as cctxt:
        inst = objects.Instance.get_by_uuid(cctxt, uuid)
    timestamp = None
    if start_time:
        timestamp = timeutils.normalize_time(
            timeutils.parse_isotime(start_time))
    ctxt = _context(user_id or inst.user_id, project_id or inst.project_id,
                    request_id=request_id, timestamp=timestamp)
    with nova_context.target_cell(ctxt, _cell_mapping()) as cctxt:
        act = objects.InstanceAction.action_start(cctxt, uuid, action)
        for event in events:
            name = event['event']
            objects.InstanceActionEvent.event_start(
                cctxt, uuid, name, host=event.get('host'))
            result = event.get('result', 'Success')
            if result == 'Success':
                objects.InstanceActionEvent.event_finish(cctxt, uuid, name)
            elif result == 'Error':
                objects.InstanceActionEvent.event_finish_with_failure(
                    cctxt, uuid, name, exc_val=event.get('details'),
                    exc_tb=event.get('traceback') or '')
            elif result is not None:
                raise ValueError('event result must be Success, Error or '
                                 'None (still running), not %r' % result)
        if finish:
            objects.InstanceAction.action_finish(cctxt, uuid)
        return act.id


def setup_databases(cell0_url, cell1_url):
    from nova.cmd import manage  # registers nothing we need: just the code

    steps = [
        ('api_db sync', manage.ApiDbCommands().sync, {}),
        ('cell_v2 map_cell0', manage.CellV2Commands().map_cell0,
         {'database_connection': cell0_url}),
        ('cell_v2 create_cell', manage.CellV2Commands().create_cell,
         {'name': 'cell1', 'database_connection': cell1_url,
          'transport_url': 'fake://', 'verbose': True}),
        # Syncs cell0 too, through its mapping.
        ('db sync', manage.DbCommands().sync, {}),
    ]
    output = []
    for name, command, kwargs in steps:
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                rc = command(**kwargs)
        except Exception as exc:
            raise RuntimeError('nova-manage %s failed: %s: %s\n%s' % (
                name, type(exc).__name__, exc, buf.getvalue())) from exc
        finally:
            output.append('$ nova-manage %s\n%s' % (name, buf.getvalue()))
            sys.stderr.write(output[-1])
            sys.stderr.flush()
        if rc not in (None, 0):
            raise RuntimeError('nova-manage %s failed with code %s:\n%s' % (
                name, rc, buf.getvalue()))
    return ''.join(output)


def ping():
    _cell_mapping()
    return 'pong'


_OPS = {f.__name__: f for f in (setup_databases, create_server,
                                update_server, add_fault, add_action, ping)}


def _json_default(value):
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return str(value)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config-file', required=True)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    nova_config.parse_args([sys.argv[0], '--config-file', args.config_file],
                           configure_db=True, init_rpc=True)
    objects.register_all()
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            op = _OPS[request.pop('op')]
            answer = {'ok': True, 'result': op(**request)}
        except Exception as exc:
            answer = {'ok': False, 'error': '%s: %s' % (
                type(exc).__name__, exc), 'traceback': traceback.format_exc()}
        out.write(json.dumps(answer, default=_json_default) + '\n')
        out.flush()
    return 0


if __name__ == '__main__':
    sys.exit(main())
