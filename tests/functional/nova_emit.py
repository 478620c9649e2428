# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.
"""Publish error notifications with Nova's own code, onto a real broker.

The test process calls::

    sent = nova_emit.emit(transport_url, [
        {'kind': 'build_failure', 'request_id': 'req-...',
         'instance': {'display_name': 'web-01\\r\\nBcc: x@example.com'},
         'exception': {'class': 'NoValidHost', 'message': 'No host'}},
    ])

and this module runs itself as a script in a subprocess of the same Python
(``sys.executable``), so that Nova's import-time state (``nova.conf.CONF``,
the monkey patching, the object registry, the notifiers of ``nova.rpc``)
never enters the test process.  The script boots Nova as a service does
(``nova.config.parse_args`` with ``rpc.init``), with::

    [oslo_messaging_notifications]
    driver = messagingv2
    driver = test
    transport_url = <transport_url>
    [notifications]
    notification_format = both          # or the scenario's 'format'
    notify_on_state_change = vm_and_task_state

on a private SQLite main database (``db sync`` by Nova's own migrations),
creates one real ``nova.objects.Instance`` per scenario and calls the very
functions Nova's services call when something fails:

``build_failure`` (nova-compute, a build that fails on the host)
    ``compute_utils.notify_about_instance_usage(..., 'create.error',
    fault=exc)`` (legacy ``compute.instance.create.error``) and
    ``compute_utils.notify_about_instance_create(..., phase='error',
    exception=exc)`` (versioned ``instance.create.error``), in the order of
    ``ComputeManager._build_and_run_instance``.
``schedule_failure`` (nova-conductor, no host found)
    ``scheduler_utils.set_vm_state_and_notify(ctxt, uuid, 'compute_task',
    method, {'vm_state': 'error', 'task_state': None}, exc, request_spec)``:
    the instance update into ERROR (legacy and versioned), the legacy
    ``compute_task.<method>`` and the versioned
    ``compute_task.<method>.error``; ``method`` defaults to
    ``build_instances``.
``update_to_error``
    ``notifications.send_update_with_states`` from the scenario's
    ``vm_state``/``task_state`` into ``error``/None.
``wrap_exception``
    a stand-in method named ``method`` (default ``resize_instance``) of a
    class decorated with ``exception_wrapper.wrap_exception('compute',
    'nova-compute')``, called with the instance and raising the exception:
    legacy ``<method>``, versioned ``compute.exception``.

A scenario (every key optional except ``kind``)::

    {'kind': ..., 'request_id': 'req-<uuid>', 'global_request_id': ...,
     'format': 'both' | 'versioned' | 'unversioned',
     'service_host': 'compute-01',      # CONF.host of the emitting service
                                        # (oslo.config wants a host name)
     'method': 'build_instances',       # schedule_failure / wrap_exception
     'instance': {'uuid', 'display_name', 'hostname', 'host', 'node',
                  'project_id', 'user_id', 'vm_state', 'task_state',
                  'display_description', 'availability_zone', 'metadata'},
     'exception': {'class': 'NoValidHost', 'message': '...',
                   'kwargs': {...}},   # a nova.exception class or a builtin
     'context': {'project_name', 'user_name', 'roles', 'is_admin',
                 'remote_address', ...}}

Strings go to Nova exactly as given: control characters, encoded words,
bidi marks and very long values included.  Consecutive scenarios with the
same ``format`` share one Nova boot; a new format reboots the notifiers.

``emit`` returns one dict per scenario: ``kind``, ``request_id``,
``instance_uuid``, ``format`` and ``sent``, the notifications in the order
Nova sent them, each ``{'event_type', 'priority', 'publisher_id',
'message_id', 'topic', 'versioned', 'context', 'payload'}`` as they were
handed to the messaging driver (context and payload serialised by Nova's
``RequestContextSerializer``, as on the wire).  The ``test`` notification
driver of oslo.messaging, loaded next to ``messagingv2``, records them.
"""

import json
import os
import subprocess
import sys
import tempfile

KINDS = ('build_failure', 'schedule_failure', 'update_to_error',
         'wrap_exception')
FORMATS = ('both', 'versioned', 'unversioned')
DEFAULT_SERVICE_HOST = 'compute-01'


class EmitError(RuntimeError):
    """The Nova subprocess failed; the message carries its output."""


def emit(transport_url, scenarios, timeout=120, workdir=None):
    """Send every scenario's notifications through Nova; see the module doc.

    Returns the list of what was sent, one dict per scenario.  Raises
    ``EmitError`` (with Nova's output) when the subprocess fails.
    """
    for scenario in scenarios:
        if scenario.get('kind') not in KINDS:
            raise ValueError('kind must be one of %s, not %r' % (
                ', '.join(KINDS), scenario.get('kind')))
        if scenario.get('format', 'both') not in FORMATS:
            raise ValueError('format must be one of %s, not %r' % (
                ', '.join(FORMATS), scenario.get('format')))
    with tempfile.TemporaryDirectory(prefix='nen-nova-emit-',
                                     dir=workdir) as tmp:
        request = os.path.join(tmp, 'request.json')
        result = os.path.join(tmp, 'result.json')
        with open(request, 'w', encoding='utf-8') as handle:
            json.dump({'transport_url': transport_url,
                       'scenarios': list(scenarios)}, handle)
        cmd = [sys.executable, os.path.abspath(__file__), '--workdir', tmp,
               '--request', request, '--result', result]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout,
                                  cwd=tmp)
        except subprocess.TimeoutExpired as exc:
            raise EmitError('nova_emit timed out after %ss:\n%s' % (
                timeout, _text(exc.stderr)[-6000:])) from exc
        output = _text(proc.stdout) + _text(proc.stderr)
        if proc.returncode != 0 or not os.path.exists(result):
            raise EmitError('nova_emit failed with code %s:\n%s' % (
                proc.returncode, output[-8000:]))
        with open(result, encoding='utf-8') as handle:
            return json.load(handle)


def _text(data):
    if data is None:
        return ''
    if isinstance(data, bytes):
        return data.decode('utf-8', 'replace')
    return data


# --------------------------------------------------------------------------
# Everything below runs in the subprocess only.
# --------------------------------------------------------------------------

_NOVA_CONF = """\
[DEFAULT]
host = %(host)s
state_path = %(workdir)s
transport_url = %(url)s
use_stderr = true

[oslo_messaging_notifications]
driver = messagingv2
driver = test
transport_url = %(url)s

[notifications]
notification_format = %(format)s
notify_on_state_change = vm_and_task_state

[database]
connection = sqlite:///%(workdir)s/nova.sqlite

[api_database]
connection = sqlite:///%(workdir)s/nova_api.sqlite

[glance]
api_servers = http://glance.example.org:9292
"""


class _Nova:
    """Nova booted once in this process (imports happen in ``boot``)."""

    def __init__(self, workdir, url):
        self.workdir = workdir
        self.url = url
        self.format = None

    def boot(self, fmt):
        # This directory's keystone.py must not shadow the real package.
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path[:] = [p for p in sys.path
                       if os.path.abspath(p or '.') != here]
        os.environ['OS_NOVA_DISABLE_EVENTLET_PATCHING'] = '1'
        from nova import monkey_patch
        monkey_patch.patch()
        from nova import config as nova_config
        from nova.db import migration
        from nova import objects
        from nova import rpc

        conf_path = os.path.join(self.workdir, 'nova.conf')
        with open(conf_path, 'w', encoding='utf-8') as handle:
            handle.write(_NOVA_CONF % {'host': DEFAULT_SERVICE_HOST,
                                       'workdir': self.workdir,
                                       'url': self.url, 'format': fmt})
        nova_config.parse_args(['nova-emit', '--config-file', conf_path],
                               configure_db=True, init_rpc=True)
        objects.register_all()
        migration.db_sync(database='main')
        self.conf = nova_config.CONF
        self.rpc = rpc
        self.format = fmt

    def set_format(self, fmt):
        if self.format is None:
            self.boot(fmt)
        elif fmt != self.format:
            # Nova reads notification_format when its notifiers are made.
            self.rpc.cleanup()
            self.conf.set_override('notification_format', fmt,
                                   group='notifications')
            self.rpc.init(self.conf)
            self.format = fmt

    def cleanup(self):
        if self.format is not None:
            self.rpc.cleanup()


def _context(scenario, instance):
    from nova import context as nova_context

    values = dict(scenario.get('context') or {})
    values.setdefault('user_id', instance.get('user_id'))
    values.setdefault('project_id', instance.get('project_id'))
    if scenario.get('request_id'):
        values['request_id'] = scenario['request_id']
    if scenario.get('global_request_id'):
        values['global_request_id'] = scenario['global_request_id']
    values.setdefault('is_admin', False)
    values.setdefault('roles', ['member', 'reader'])
    return nova_context.RequestContext(overwrite=False, **values)


def _exception(spec):
    """Raise and catch the scenario's exception: it gets a traceback."""
    from nova import exception as nova_exception

    spec = spec or {'class': 'NoValidHost',
                    'message': 'No valid host was found. There are not '
                               'enough hosts available.'}
    name = spec.get('class', 'NoValidHost')
    cls = getattr(nova_exception, name, None)
    if cls is None:
        import builtins
        cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        raise ValueError('no exception class %r in nova.exception or the '
                         'builtins' % name)
    kwargs = dict(spec.get('kwargs') or {})
    if issubclass(cls, nova_exception.NovaException):
        if 'message' in spec:
            kwargs['message'] = spec['message']
        exc = cls(**kwargs)
    else:
        exc = cls(spec.get('message', name))
    try:
        raise exc
    except Exception as caught:
        return caught


def _instance(ctxt, spec):
    """A real Instance, created in the main database as nova-api would."""
    from nova.network import model as network_model
    from nova import objects
    from oslo_utils import uuidutils

    spec = dict(spec or {})
    flavor = objects.Flavor(
        id=1, flavorid='1', name='m1.small', memory_mb=2048, vcpus=1,
        root_gb=20, ephemeral_gb=0, swap=0, rxtx_factor=1.0, vcpu_weight=0,
        disabled=False, is_public=True, extra_specs={}, projects=[],
        description=None)
    inst = objects.Instance(context=ctxt)
    inst.uuid = spec.pop('uuid', None) or uuidutils.generate_uuid()
    inst.project_id = spec.pop('project_id', None) or ctxt.project_id
    inst.user_id = spec.pop('user_id', None) or ctxt.user_id
    inst.display_name = spec.pop('display_name', 'server-1')
    inst.hostname = spec.pop('hostname', 'server-1')
    inst.host = spec.pop('host', DEFAULT_SERVICE_HOST)
    inst.node = spec.pop('node', inst.host)
    inst.launched_on = inst.host
    inst.compute_id = None  # no ComputeNode record here
    inst.vm_state = spec.pop('vm_state', 'building')
    inst.task_state = spec.pop('task_state', 'spawning')
    inst.power_state = 0
    inst.flavor = flavor
    inst.instance_type_id = flavor.id
    inst.memory_mb = flavor.memory_mb
    inst.vcpus = flavor.vcpus
    inst.root_gb = flavor.root_gb
    inst.ephemeral_gb = flavor.ephemeral_gb
    inst.image_ref = spec.pop('image_ref', None) or uuidutils.generate_uuid()
    inst.availability_zone = spec.pop('availability_zone', 'nova')
    inst.launch_index = 0
    inst.metadata = spec.pop('metadata', {})
    inst.system_metadata = {}
    inst.info_cache = objects.InstanceInfoCache(
        network_info=network_model.NetworkInfo())
    inst.root_device_name = '/dev/vda'
    inst.config_drive = ''
    inst.locked = False
    inst.reservation_id = 'r-' + inst.uuid[:8]
    for key, value in spec.items():
        setattr(inst, key, value)
    inst.create()
    return inst


def _build_failure(ctxt, inst, exc, scenario, nova):
    from nova.compute import utils as compute_utils
    from nova.objects import fields

    host = nova.conf.host
    notifier = nova.rpc.get_notifier('compute', host)
    compute_utils.notify_about_instance_usage(notifier, ctxt, inst,
                                              'create.error', fault=exc)
    compute_utils.notify_about_instance_create(
        ctxt, inst, host, phase=fields.NotificationPhase.ERROR,
        exception=exc)


def _schedule_failure(ctxt, inst, exc, scenario, nova):
    from nova import objects
    from nova.scheduler import utils as scheduler_utils

    request_spec = objects.RequestSpec.from_primitives(ctxt, {
        'instance_properties': {'uuid': inst.uuid,
                                'project_id': inst.project_id},
        'instance_type': inst.flavor, 'num_instances': 1,
        'image': {}}, {})
    try:
        raise exc
    except Exception as caught:
        scheduler_utils.set_vm_state_and_notify(
            ctxt, inst.uuid, 'compute_task',
            scenario.get('method', 'build_instances'),
            {'vm_state': 'error', 'task_state': None}, caught, request_spec)


def _update_to_error(ctxt, inst, exc, scenario, nova):
    from nova import notifications

    old_vm_state, old_task_state = inst.vm_state, inst.task_state
    inst.vm_state = 'error'
    inst.task_state = None
    # Not inst.save(): that would send its own update.
    inst.obj_reset_changes()
    notifications.send_update_with_states(
        ctxt, inst, old_vm_state, 'error', old_task_state, None,
        service='compute', host=nova.conf.host)


def _wrap_exception(ctxt, inst, exc, scenario, nova):
    from nova import exception_wrapper

    def failing(self, context, instance, flavor=None, clean_shutdown=True):
        raise exc

    failing.__name__ = failing.__qualname__ = scenario.get(
        'method', 'resize_instance')
    wrapped = exception_wrapper.wrap_exception(
        service='compute', binary='nova-compute')(failing)
    try:
        wrapped(object(), ctxt, inst, flavor=inst.flavor)
    except type(exc):
        pass


_KINDS = {'build_failure': _build_failure,
          'schedule_failure': _schedule_failure,
          'update_to_error': _update_to_error,
          'wrap_exception': _wrap_exception}


def _sent(records):
    from oslo_serialization import jsonutils

    sent = []
    for ctxt, message, priority, _retry in records:
        payload = message.get('payload')
        versioned = isinstance(payload, dict) and \
            'nova_object.name' in payload
        sent.append(jsonutils.loads(jsonutils.dumps({
            'event_type': message.get('event_type'),
            'priority': priority,
            'publisher_id': message.get('publisher_id'),
            'message_id': message.get('message_id'),
            'timestamp': message.get('timestamp'),
            'topic': ('versioned_notifications' if versioned
                      else 'notifications'),
            'versioned': versioned,
            'context': ctxt,
            'payload': payload,
        })))
    return sent


def _run(scenario, nova):
    fmt = scenario.get('format', 'both')
    nova.set_format(fmt)  # boots Nova first: it must import before oslo
    from oslo_messaging.notify import _impl_test

    nova.conf.set_override('host', scenario.get('service_host',
                                                DEFAULT_SERVICE_HOST))
    spec = dict(scenario.get('instance') or {})
    spec.setdefault('project_id', 'a1b2c3d4e5f60718293a4b5c6d7e8f90')
    spec.setdefault('user_id', '0f9e8d7c6b5a49382716a5b4c3d2e1f0')
    ctxt = _context(scenario, spec)
    inst = _instance(ctxt, spec)
    exc = _exception(scenario.get('exception'))
    _impl_test.reset()
    _KINDS[scenario['kind']](ctxt, inst, exc, scenario, nova)
    return {'kind': scenario['kind'], 'format': fmt,
            'request_id': ctxt.request_id, 'instance_uuid': inst.uuid,
            'sent': _sent(_impl_test.NOTIFICATIONS)}


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--request', required=True)
    parser.add_argument('--result', required=True)
    args = parser.parse_args(argv)
    with open(args.request, encoding='utf-8') as handle:
        request = json.load(handle)
    nova = _Nova(os.path.abspath(args.workdir), request['transport_url'])
    try:
        results = [_run(s, nova) for s in request['scenarios']]
    finally:
        nova.cleanup()  # closes the transports (each send was synchronous)
    with open(args.result, 'w', encoding='utf-8') as handle:
        json.dump(results, handle)
    return 0


if __name__ == '__main__':
    sys.exit(main())
