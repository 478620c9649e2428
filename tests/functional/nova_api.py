"""A real, read-only nova-api for functional tests, and seeding helpers.

``NovaAPIServer(keystone)`` runs Nova's own compute API (the ``nova`` package
from PyPI, installed by test-requirements.txt) in its own temporary
directory, against a started ``KeystoneServer`` (tests/functional/keystone.py):

* nova.conf and api-paste.ini; the API, cell0 and cell1 databases on SQLite;
  ``transport_url = fake://`` (no message bus: nothing is ever cast to a
  compute service); ``[api] auth_strategy = keystone`` with
  keystonemiddleware's ``[keystone_authtoken]`` validating tokens against the
  test Keystone, as a ``nova-XXXXXX`` service user that the fixture creates
  with the ``admin`` and ``service`` roles on the ``service`` project.
* ``nova-manage api_db sync``, ``cell_v2 map_cell0``, ``cell_v2 create_cell``
  and ``db sync``: Nova's own schemas and cell mappings (nova-manage's
  command code, run in the seeding helper: one Nova import instead of four).
* a tiny Neutron stub in the test process (a thread): ``GET /servers/{id}``
  asks Neutron for the server's ports and security groups, and answers 500
  without a network endpoint.  It answers empty lists, and records what was
  asked (``neutron_requests``).
* ``wsgi_serve.py nova-api`` (next to this file) serving
  ``nova.wsgi.osapi_compute:application`` on 127.0.0.1, on a free port.
* ``compute`` (``url``, ``http://127.0.0.1:PORT/v2.1``) and ``network``
  services in Keystone's catalog, public and internal endpoints in
  ``RegionOne``; ``stop()`` removes them again.

``start()`` returns once ``GET /v2.1/`` answers and the admin can list
servers through keystonemiddleware.

Seeding goes through ``nova_api_seed.py``, a long-lived helper process that
writes with Nova's own objects into the same databases
(``create_server``, ``add_fault``, ``add_action``, ``update_server``): the
test process never imports Nova.  Every helper raises ``NovaSeedError`` with
Nova's traceback on failure.

``stop_api()`` / ``start_api()`` stop and restart only the HTTP server, on
the same port (connections are refused meanwhile): "Nova's API is down".

Every process it starts carries a marker environment variable.  ``stop()``
kills whatever still carries the marker, and a small watchdog process does
the same if the test process dies without calling ``stop()``.  The server
and the seeding helper also exit by themselves when their standard input, a
pipe from the test process, closes.  The start-up and clean-up it shares
with ``keystone.py`` are in ``wsgi_service.py``.
"""

import http.server
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from urllib import parse as urllib_parse

try:  # tests/ and tests/functional/ are packages, or the root is on sys.path
    from tests.functional import procutil
    from tests.functional import wsgi_service
except ModuleNotFoundError as exc:
    if exc.name not in ('tests', 'tests.functional'):
        raise
    import procutil  # rootdir-less run: this directory is on sys.path
    import wsgi_service

LOG = logging.getLogger(__name__)

MARKER_ENV = 'NOVA_ERROR_NOTIFIER_TEST_NOVA'
DEFAULT_START_TIMEOUT = wsgi_service.DEFAULT_START_TIMEOUT
HOST = wsgi_service.HOST
REGION = 'RegionOne'
SERVICE_PROJECT = 'service'
SERVICE_USER_PREFIX = 'nova-'
INTERFACES = ('public', 'internal')

SEED_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'nova_api_seed.py')

# Loopback requests never go through an http_proxy from the environment.
_NO_PROXY_OPENER = procutil.NO_PROXY_OPENER

# Nova's own paste pipeline for the compute API (api-paste.ini as shipped by
# nova, less the metadata API and the legacy /v2 endpoint).
_API_PASTE_INI = '''\
[composite:osapi_compute]
use = call:nova.api.openstack.urlmap:urlmap_factory
/: oscomputeversions
/v2.1: oscomputeversion_v2
/v2.1/+: openstack_compute_api_v21

[composite:openstack_compute_api_v21]
use = call:nova.api.auth:pipeline_factory_v21
keystone = cors http_proxy_to_wsgi compute_req_id faultwrap request_log \
sizelimit osprofiler authtoken keystonecontext osapi_compute_app_v21

[filter:request_log]
paste.filter_factory = nova.api.openstack.requestlog:RequestLog.factory

[filter:compute_req_id]
paste.filter_factory = nova.api.compute_req_id:ComputeReqIdMiddleware.factory

[filter:faultwrap]
paste.filter_factory = nova.api.openstack:FaultWrapper.factory

[filter:osprofiler]
paste.filter_factory = nova.profiler:WsgiMiddleware.factory

[filter:sizelimit]
paste.filter_factory = oslo_middleware:RequestBodySizeLimiter.factory

[filter:http_proxy_to_wsgi]
paste.filter_factory = \
oslo_middleware.http_proxy_to_wsgi:HTTPProxyToWSGI.factory

[app:osapi_compute_app_v21]
paste.app_factory = nova.api.openstack.compute:APIRouterV21.factory

[pipeline:oscomputeversions]
pipeline = cors faultwrap request_log http_proxy_to_wsgi oscomputeversionapp

[pipeline:oscomputeversion_v2]
pipeline = cors compute_req_id faultwrap request_log http_proxy_to_wsgi \
oscomputeversionapp_v2

[app:oscomputeversionapp]
paste.app_factory = nova.api.openstack.compute.versions:Versions.factory

[app:oscomputeversionapp_v2]
paste.app_factory = nova.api.openstack.compute.versions:VersionsV2.factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = nova

[filter:keystonecontext]
paste.filter_factory = nova.api.auth:NovaKeystoneContext.factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
'''


class NovaAPIStartError(RuntimeError):
    """nova-api did not come up; the message carries the logs' tails."""


class NovaSeedError(RuntimeError):
    """The seeding helper failed; the message carries Nova's traceback."""


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

_excerpt = procutil.excerpt


_marked_pids, _sweep = procutil.marker_functions(MARKER_ENV)


def _sqlite_url(path):
    return 'sqlite:///%s' % path


# --------------------------------------------------------------------------
# The Neutron stub
# --------------------------------------------------------------------------

class _NeutronHandler(http.server.BaseHTTPRequestHandler):
    """Answers the listings nova-api asks Neutron for with empty lists."""

    protocol_version = 'HTTP/1.1'
    server_version = 'nen-neutron-stub'

    _LISTS = {
        'ports': 'ports',
        'security-groups': 'security_groups',
        'networks': 'networks',
        'subnets': 'subnets',
        'floatingips': 'floatingips',
        'extensions': 'extensions',
    }

    def log_message(self, format, *args):  # noqa: A002 (the base's name)
        LOG.debug('neutron stub: ' + format, *args)

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib_parse.urlsplit(self.path)
        path = url.path.rstrip('/')
        self.server.requests.append(
            (self.command, self.path, 'X-Auth-Token' in self.headers))
        if path in ('', '/v2.0'):
            self._answer(200, {'versions': [{
                'id': 'v2.0', 'status': 'CURRENT',
                'links': [{'rel': 'self', 'href': 'http://%s:%d/v2.0/' % (
                    HOST, self.server.server_port)}]}]})
            return
        name = path[len('/v2.0/'):] if path.startswith('/v2.0/') else None
        if name in self._LISTS:
            self._answer(200, {self._LISTS[name]: []})
            return
        self.server.unexpected.append((self.command, self.path))
        self._answer(404, {'NeutronError': {
            'type': 'HTTPNotFound', 'detail': '',
            'message': 'the test Neutron stub does not answer %s' % (
                self.path)}})

    def _refuse(self):
        self.server.requests.append(
            (self.command, self.path, 'X-Auth-Token' in self.headers))
        self.server.unexpected.append((self.command, self.path))
        length = int(self.headers.get('Content-Length') or 0)
        if length:
            self.rfile.read(length)
        self._answer(405, {'NeutronError': {
            'type': 'HTTPMethodNotAllowed', 'detail': '',
            'message': 'the test Neutron stub is read-only'}})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse


class _NeutronStub(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__((HOST, 0), _NeutronHandler)
        self.requests = []
        self.unexpected = []
        self._thread = None

    @property
    def url(self):
        return 'http://%s:%d' % (HOST, self.server_port)

    def server_bind(self):
        # No getfqdn() DNS look-up.
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name = HOST
        self.server_port = self.server_address[1]

    def start(self):
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={'poll_interval': 0.2},
            name='neutron-stub', daemon=True)
        self._thread.start()

    def stop(self):
        if self._thread is not None:
            self.shutdown()
            self._thread.join(10)
            self._thread = None
        self.server_close()


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------

class NovaAPIServer(wsgi_service.WSGIServiceFixture):
    """A private, read-only nova-api for tests.

    Example::

        nova = NovaAPIServer(keystone)   # a started KeystoneServer
        nova.start()      # blocks until the admin can list servers
        nova.url          # 'http://127.0.0.1:PORT/v2.1' (also in the catalog)
        uuid = nova.create_server(project_id, user_id, 'vm1')
        nova.add_fault(uuid, 500, 'boom', 'Traceback ...')
        nova.add_action(uuid, 'req-...', events=[{
            'event': 'compute__do_build_and_run_instance',
            'result': 'Error', 'traceback': '...', 'host': 'compute-01',
            'details': 'boom'}])
        nova.stop_api(); nova.start_api()   # "the API is down" and back
        nova.stop()
    """

    MARKER_ENV = MARKER_ENV
    NAME = 'nova-api'
    APPLICATION = 'nova-api'
    TMPDIR_PREFIX = 'nen-nova-'
    CONFIG_FILE = 'nova.conf'
    LOG_FILE = 'nova-api.log'
    READY_TIMEOUT = 5
    PROOF_STEP = 'admin_list'
    start_error = NovaAPIStartError

    def __init__(self, keystone, start_timeout=DEFAULT_START_TIMEOUT,
                 keep_tmpdir=False, base_dir=None, extra_config='',
                 debug=False):
        """*extra_config*: text appended to nova.conf."""
        super().__init__(start_timeout=start_timeout,
                         keep_tmpdir=keep_tmpdir, base_dir=base_dir,
                         extra_config=extra_config)
        self.keystone = keystone
        self.debug = debug
        self.service_user = None
        self.service_user_id = None
        self.service_password = None
        self.service_project_id = None
        self._seeder = None
        self._seed_lock = threading.Lock()
        self._neutron = None
        self._catalog = []  # (kind, id) to delete at stop: services, users

    # -- public properties --------------------------------------------------

    @property
    def url(self):
        """The compute endpoint, as in the catalog."""
        self._require_started()
        return 'http://%s:%d/v2.1' % (HOST, self.port)

    @property
    def ready_url(self):
        return self.url + '/'

    @property
    def neutron_url(self):
        self._require_started()
        return self._neutron.url

    @property
    def neutron_requests(self):
        """(method, path, had a token) of every request the stub got."""
        return list(self._neutron.requests) if self._neutron else []

    @property
    def neutron_unexpected(self):
        """(method, path) of requests the stub could not answer."""
        return list(self._neutron.unexpected) if self._neutron else []

    @property
    def paste_path(self):
        return os.path.join(self.tmpdir, 'api-paste.ini')

    @property
    def seed_log_path(self):
        return os.path.join(self.tmpdir, 'seed.log')

    def db_path(self, name):
        """'api', 'cell0' or 'cell1'."""
        return os.path.join(self.tmpdir, 'nova_%s.sqlite' % name)

    # -- start / stop --------------------------------------------------------

    def _started(self):
        # Started already: start_api() restarts the HTTP server after
        # stop_api().
        return self._seeder is not None

    def _child_env(self):
        # Nova's native-threading mode for every process, nova-manage too.
        return {'OS_NOVA_DISABLE_EVENTLET_PATCHING': '1'}

    def _prepare(self, deadline):
        self._neutron = _NeutronStub()
        self._neutron.start()
        # A user of its own: two servers on one Keystone do not share
        # it.  Made in Keystone while the seeding helper imports Nova.
        self.service_user = SERVICE_USER_PREFIX + self._marker[
            -8:].replace('_', '-')
        self.service_password = secrets.token_urlsafe(16)
        self._write_nova_conf()
        self._start_seeder()
        self._setup_keystone()
        self._setup_databases(deadline)

    def _setup_keystone(self):
        """The service user and project, and the catalog entries."""
        with self._step('keystone'):
            self._register_user()
            self._register_service('compute', 'nova', self.url)
            self._register_service('network', 'neutron', self._neutron.url)

    def _register_user(self):
        ks = self.keystone
        projects = ks.get('/projects', name=SERVICE_PROJECT)['projects']
        if projects:
            self.service_project_id = projects[0]['id']
        else:
            try:
                self.service_project_id = ks.create_project(SERVICE_PROJECT)
            except Exception:
                # Another fixture made it meanwhile.
                projects = ks.get('/projects',
                                  name=SERVICE_PROJECT)['projects']
                if not projects:
                    raise
                self.service_project_id = projects[0]['id']
        try:
            ks.role_id('service')  # Keystone's bootstrap makes it
        except LookupError:
            ks.create_role('service')
        self.service_user_id = ks.create_user(
            self.service_user, self.service_password,
            project=self.service_project_id)
        self._catalog.append(('users', self.service_user_id))
        for role in ('admin', 'service'):
            ks.grant_project(role, self.service_project_id,
                             user_id=self.service_user_id)

    def _register_service(self, service_type, name, url):
        ks = self.keystone
        body = {'service': {'type': service_type, 'name': name,
                            'enabled': True,
                            'description': 'nova-error-notifier test %s' % (
                                self._marker)}}
        service_id = ks.session.post(ks.auth_url + '/services',
                                     json=body).json()['service']['id']
        self._catalog.append(('services', service_id))
        for interface in INTERFACES:
            ks.session.post(ks.auth_url + '/endpoints', json={'endpoint': {
                'service_id': service_id, 'interface': interface,
                'region_id': REGION, 'url': url, 'enabled': True}})

    def _unregister(self):
        """Delete what _setup_keystone made (endpoints go with services)."""
        catalog, self._catalog = self._catalog, []
        if not catalog:
            return
        try:
            ks = self.keystone
            for kind, obj_id in reversed(catalog):
                if kind == 'services':
                    endpoints = ks.get('/endpoints', service_id=obj_id)
                    for ep in endpoints['endpoints']:
                        ks.session.delete(ks.auth_url + '/endpoints/' +
                                          ep['id'])
                ks.session.delete(ks.auth_url + '/%s/%s' % (kind, obj_id))
        except Exception as exc:  # Keystone may be gone already
            LOG.warning('could not remove the test Nova from Keystone: %s',
                        exc)

    def _write_nova_conf(self):
        ks = self.keystone
        auth = [
            ('auth_type', 'password'),
            ('auth_url', ks.auth_url),
            ('username', self.service_user),
            ('password', self.service_password),
            ('project_name', SERVICE_PROJECT),
            ('user_domain_name', 'Default'),
            ('project_domain_name', 'Default'),
            ('region_name', REGION),
        ]
        section = procutil.ini_section
        self._write_config('\n'.join([
            section('DEFAULT', [
                ('host', 'nen-nova-api'),
                ('transport_url', 'fake://'),
                ('state_path', self.tmpdir),
                ('log_file', self.log_path),
                ('use_stderr', 'false'),
                ('debug', 'true' if self.debug else 'false'),
                # No periodic or metadata work, no guru reports.
                ('enabled_apis', 'osapi_compute'),
            ]),
            section('api', [('auth_strategy', 'keystone')]),
            section('wsgi', [('api_paste_config', self.paste_path)]),
            section('api_database', [
                ('connection', _sqlite_url(self.db_path('api')))]),
            section('database', [
                ('connection', _sqlite_url(self.db_path('cell1')))]),
            section('oslo_concurrency', [
                ('lock_path', os.path.join(self.tmpdir, 'locks'))]),
            section('keystone_authtoken', auth + [
                ('www_authenticate_uri', ks.auth_url),
                # Keystone's bootstrap registers only a public identity
                # endpoint.
                ('interface', 'public'),
                ('service_token_roles_required', 'true'),
            ]),
            section('neutron', auth + [
                ('valid_interfaces', 'internal,public'),
            ]),
            section('placement', auth + [
                ('valid_interfaces', 'internal,public'),
            ]),
            section('service_user', auth + [
                ('send_service_user_token', 'false'),
            ]),
            section('notifications', [('notification_format', 'both')]),
            section('oslo_messaging_notifications', [('driver', 'noop')]),
        ]))
        with open(self.paste_path, 'w') as f:
            f.write(_API_PASTE_INI)
        os.mkdir(os.path.join(self.tmpdir, 'locks'))

    def _setup_databases(self, deadline):
        """nova-manage's own commands, in the seeding helper's process.

        ``api_db sync``, ``cell_v2 map_cell0``, ``cell_v2 create_cell`` and
        ``db sync`` (which syncs cell0 through its mapping): one Nova import
        (~2 s) instead of four.  Their output is in seed.log.
        """
        with self._step('databases'):
            output = self._seed(
                'setup_databases',
                timeout=max(1, deadline - time.monotonic()),
                cell0_url=_sqlite_url(self.db_path('cell0')),
                cell1_url=_sqlite_url(self.db_path('cell1')))
            LOG.debug('nova-manage output:\n%s', output)

    def _start_seeder(self):
        with open(self.seed_log_path, 'ab') as err:
            self._seeder = subprocess.Popen(
                [sys.executable, SEED_SCRIPT, '--config-file',
                 self.config_path],
                env=self._env, cwd=self.tmpdir, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, start_new_session=True)

    def _server_args(self):
        return ['--paste-file', self.paste_path]

    def _prove_ready(self):
        # A token goes through keystonemiddleware, the policy and the cell
        # databases.
        resp = self.keystone.admin_session().get(
            self.url + '/servers', raise_exc=False)
        if resp.status_code != 200:
            raise NovaAPIStartError(
                'GET /v2.1/servers as the admin answered %s: %s' % (
                    resp.status_code, resp.text[:2000]))

    def _report_logs(self):
        return super()._report_logs() + [
            ('seeding helper', self.seed_log_path)]

    def _stop_others(self):
        seeder, self._seeder = self._seeder, None
        self._stop_process(seeder, 'the seeding helper')
        neutron, self._neutron = self._neutron, None
        if neutron is not None:
            neutron.stop()
        self._unregister()

    # -- "the API is down" ---------------------------------------------------

    def stop_api(self):
        """Stop only the HTTP server: connections to url are refused.

        The databases, the seeding helper, the catalog and the Neutron stub
        stay; start_api() brings the API back on the same port.
        """
        self._require_started()
        server, self._server = self._server, None
        self._stop_process(server, 'nova-api')

    def start_api(self, timeout=None):
        """Start the HTTP server again on the same port; wait until ready."""
        self._require_started()
        if self.running:
            return
        deadline = time.monotonic() + (timeout or self.start_timeout)
        try:
            sock = socket.create_server((HOST, self.port), backlog=64)
        except OSError as exc:
            raise NovaAPIStartError('port %d, where the catalog sends '
                                    'clients, was taken meanwhile: %s' % (
                                        self.port, exc)) from exc
        try:
            self._start_server(sock)
        finally:
            sock.close()
        try:
            self._wait_until_ready(deadline)
        except Exception as exc:
            raise NovaAPIStartError(self._failure_report(exc)) from exc

    # -- seeding -------------------------------------------------------------

    def _seed(self, op, timeout=60.0, **kwargs):
        self._require_started()
        with self._seed_lock:
            proc = self._seeder
            if proc is None or proc.poll() is not None:
                raise NovaSeedError('the seeding helper is not running:\n%s'
                                    % _excerpt(self.seed_log_path))
            proc.stdin.write((json.dumps(dict(kwargs, op=op)) +
                              '\n').encode())
            proc.stdin.flush()
            line = self._read_line(proc, timeout)
        if not line:
            raise NovaSeedError('the seeding helper exited (code %s) during '
                                '%s:\n%s' % (proc.poll(), op,
                                             _excerpt(self.seed_log_path)))
        answer = json.loads(line)
        if not answer['ok']:
            raise NovaSeedError('%s failed: %s\n%s' % (
                op, answer['error'], answer['traceback']))
        return answer['result']

    def _read_line(self, proc, timeout):
        result = []
        reader = threading.Thread(
            target=lambda: result.append(proc.stdout.readline()),
            daemon=True)
        reader.start()
        reader.join(timeout)
        if reader.is_alive():
            # The helper is stuck: kill it so that the reader ends too.
            self._stop_process(proc, 'the seeding helper')
            reader.join(5)
            raise NovaSeedError('the seeding helper did not answer within '
                                '%.0fs:\n%s' % (timeout,
                                                _excerpt(self.seed_log_path)))
        return result[0] if result else b''

    def create_server(self, project_id, user_id, name, vm_state='error',
                      host='compute-01', flavor='m1.small', task_state=None,
                      power_state='nostate', node=None, image_ref=None,
                      availability_zone='nova', metadata=None, uuid=None):
        """Write a server (instance + mapping); return its uuid.

        *flavor* is a name (made with 1 vCPU, 2048 MB RAM, 20 GB disk if
        there is none of that name yet) or a dict of flavor fields (name,
        vcpus, memory_mb, root_gb, ephemeral_gb, swap, extra_specs).
        *power_state*: 'nostate', 'running', 'paused', 'shutdown',
        'crashed', 'suspended' (or Nova's integer).  *node* defaults to the
        host.
        """
        if isinstance(flavor, str):
            flavor = {'name': flavor}
        return self._seed(
            'create_server', project_id=project_id, user_id=user_id,
            name=name, vm_state=vm_state, task_state=task_state,
            power_state=power_state, host=host, node=node, flavor=flavor,
            image_ref=image_ref, availability_zone=availability_zone,
            metadata=metadata, uuid=uuid)

    def update_server(self, uuid, **fields):
        """Change Instance fields (vm_state, task_state, host ...)."""
        return self._seed('update_server', uuid=uuid, fields=fields)

    def add_fault(self, uuid, code=500, message='', details=None,
                  host=None):
        """Record an instance fault (the latest one is what GET shows)."""
        return self._seed('add_fault', uuid=uuid, code=code,
                          message=message, details=details, host=host)

    def add_action(self, uuid, request_id, action='create', events=(),
                   user_id=None, project_id=None, start_time=None,
                   finish=True):
        """Record an instance action and its events; return the action id.

        Each event is a dict: ``event`` (name), ``result`` ('Success',
        'Error' or None for still running), ``traceback``, ``host``,
        ``details`` (the exception message Nova stores with an error).
        *user_id* / *project_id* default to the server's; *start_time* is
        ISO 8601 (default: now).
        """
        return self._seed('add_action', uuid=uuid, request_id=request_id,
                          action=action, events=list(events),
                          user_id=user_id, project_id=project_id,
                          start_time=start_time, finish=finish)
