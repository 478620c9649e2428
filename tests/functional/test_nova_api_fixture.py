"""Proves the real-nova-api test infrastructure (tests/functional/nova_api.py).

Also pins down what Nova's API shows of an errored server and of an instance
action, with the default policy, to each kind of caller the enrichment may
run as (its credentials are a keystoneauth1 session): the admin of another
project, a member of the server's project, a user with only ``service`` on
it, a system-scoped admin.
"""

from concurrent import futures
import json
import os
import uuid

from keystoneauth1 import adapter as ks_adapter
from keystoneauth1 import exceptions as ks_exc
import pytest

try:
    from tests.functional import fixture_checks
    from tests.functional import nova_api as na
except ModuleNotFoundError as exc:
    if exc.name not in ('tests', 'tests.functional'):
        raise
    import fixture_checks
    import nova_api as na

BUILD_EVENT = 'compute__do_build_and_run_instance'
TRACEBACK = ('Traceback (most recent call last):\n'
             '  File "nova/compute/manager.py", line 2615, in _build\n'
             'nova.exception.BuildAbortException: Build of instance aborted')
FAULT_DETAILS = 'Traceback (most recent call last):\n  ... NoValidHost\n'


def _name(prefix):
    # The servers live for the whole session: names must not collide.
    return '%s-%s' % (prefix, uuid.uuid4().hex[:8])


def _req_id():
    return 'req-%s' % uuid.uuid4()


_port_open = fixture_checks.port_open


def _mv(version):
    return {'OpenStack-API-Version': 'compute %s' % version}


class _World:
    """Who asks, and what there is to see.

    One project with a member and a user with only ``service`` on it, and
    an errored server with a fault and a failed 'create' action.
    """

    def __init__(self, keystone, nova_api):
        self.keystone = keystone
        self.nova = nova_api
        self.project = _name('owner')
        self.project_id = keystone.create_project(self.project)
        self.member = _name('member')
        self.member_id = keystone.create_user(self.member, 'member-pw')
        keystone.grant_project('member', self.project_id,
                               user_id=self.member_id)
        try:
            keystone.role_id('service')
        except LookupError:
            keystone.create_role('service')
        self.service_only = _name('svc')
        self.service_only_id = keystone.create_user(self.service_only,
                                                    'svc-pw')
        keystone.grant_project('service', self.project_id,
                               user_id=self.service_only_id)
        self.server_name = _name('vm')
        self.server = nova_api.create_server(
            self.project_id, self.member_id, self.server_name,
            vm_state='error', host='compute-01', flavor='m1.nen-test')
        nova_api.add_fault(self.server, 500, 'No valid host was found. ',
                           FAULT_DETAILS, host='compute-01')
        self.request_id = _req_id()
        nova_api.add_action(self.server, self.request_id, action='create',
                            events=[{
                                'event': BUILD_EVENT, 'result': 'Error',
                                'traceback': TRACEBACK, 'host': 'compute-01',
                                'details': 'Build of instance aborted'}])

    def admin(self):
        return self.keystone.admin_session()

    def member_session(self):
        return self.keystone.user_session(self.member, 'member-pw',
                                          project_name=self.project)

    def service_session(self):
        return self.keystone.user_session(self.service_only, 'svc-pw',
                                          project_name=self.project)

    def get(self, session, path, version='2.84', **kwargs):
        return session.get(self.nova.url + path, headers=_mv(version),
                           raise_exc=False, **kwargs)


@pytest.fixture(scope='module')
def world(keystone, nova_api):
    return _World(keystone, nova_api)


# -- the fixture itself ------------------------------------------------------

def test_server_is_up_on_a_private_port(nova_api):
    assert nova_api.running
    assert nova_api.url == 'http://127.0.0.1:%d/v2.1' % nova_api.port
    assert nova_api.port not in (8774, 8775)
    assert nova_api.startup_seconds < na.DEFAULT_START_TIMEOUT
    assert nova_api.processes(), 'no nova-api processes found'
    # The version document needs no token.
    resp = na._NO_PROXY_OPENER.open(nova_api.url + '/', timeout=5)
    version = json.loads(resp.read())['version']
    assert version['id'] == 'v2.1'
    assert version['status'] == 'CURRENT'
    major, minor = version['version'].split('.')
    assert (int(major), int(minor)) >= (2, 84)


def test_catalog_has_compute_and_network(keystone, nova_api):
    sess = keystone.admin_session()
    for interface in na.INTERFACES:
        assert sess.get_endpoint(service_type='compute', interface=interface,
                                 region_name=na.REGION) == nova_api.url
        assert sess.get_endpoint(service_type='network', interface=interface,
                                 region_name=na.REGION) == \
            nova_api.neutron_url


def test_adapter_from_catalog_with_microversion(world):
    # What the enrichment does: a keystoneauth1 Adapter on the catalog's
    # compute endpoint, with a default microversion.
    adapter = ks_adapter.Adapter(world.member_session(),
                                 service_type='compute', interface='public',
                                 region_name=na.REGION,
                                 default_microversion='2.84')
    resp = adapter.get('/servers/%s' % world.server)
    assert resp.headers['OpenStack-API-Version'] == 'compute 2.84'
    assert resp.json()['server']['id'] == world.server


# -- GET /servers/{id} --------------------------------------------------------

def test_admin_sees_error_fault_details_and_host(world):
    resp = world.get(world.admin(), '/servers/%s' % world.server)
    assert resp.status_code == 200, resp.text
    server = resp.json()['server']
    assert server['status'] == 'ERROR'
    assert server['name'] == world.server_name
    assert server['tenant_id'] == world.project_id
    assert server['user_id'] == world.member_id
    assert server['flavor']['original_name'] == 'm1.nen-test'  # >= 2.47
    assert server['OS-EXT-STS:vm_state'] == 'error'
    assert server['OS-EXT-SRV-ATTR:host'] == 'compute-01'
    assert server['OS-EXT-SRV-ATTR:hypervisor_hostname'] == 'compute-01'
    assert server['OS-EXT-SRV-ATTR:instance_name'].startswith('instance-')
    fault = server['fault']
    assert fault['code'] == 500
    assert fault['message'] == 'No valid host was found. '
    assert fault['details'] == FAULT_DETAILS
    assert fault['created'].endswith('Z')
    # Nova asked our Neutron stub for the server's ports, with a token.
    asked = [r for r in world.nova.neutron_requests
             if r[1].startswith('/v2.0/ports') and world.server in r[1]]
    assert asked and all(token for _m, _p, token in asked)
    assert world.nova.neutron_unexpected == []


def test_member_sees_fault_without_details_and_no_host(world):
    resp = world.get(world.member_session(), '/servers/%s' % world.server)
    assert resp.status_code == 200, resp.text
    server = resp.json()['server']
    assert server['status'] == 'ERROR'
    assert server['fault']['code'] == 500
    assert server['fault']['message'] == 'No valid host was found. '
    assert 'details' not in server['fault']
    assert 'OS-EXT-SRV-ATTR:host' not in server
    assert server['hostId']  # the obfuscated host id is for everyone


def test_fault_details_of_other_codes_are_for_everyone(world, nova_api):
    server = nova_api.create_server(world.project_id, world.member_id,
                                    _name('vm'))
    nova_api.add_fault(server, 409, 'Conflict', 'details for all')
    body = world.get(world.member_session(), '/servers/%s' % server).json()
    assert body['server']['fault'] == {
        'code': 409, 'message': 'Conflict', 'details': 'details for all',
        'created': body['server']['fault']['created']}


def test_latest_fault_wins_and_active_servers_show_none(world, nova_api):
    server = nova_api.create_server(world.project_id, world.member_id,
                                    _name('vm'), vm_state='active',
                                    power_state='running')
    nova_api.add_fault(server, 500, 'old')
    nova_api.add_fault(server, 500, 'new')  # the highest id is the latest
    admin = world.admin()
    body = world.get(admin, '/servers/%s' % server).json()['server']
    assert body['status'] == 'ACTIVE'
    assert 'fault' not in body
    nova_api.update_server(server, vm_state='error')
    body = world.get(admin, '/servers/%s' % server).json()['server']
    assert body['status'] == 'ERROR'
    assert body['fault']['message'] == 'new'


def test_unknown_server_is_404(world):
    resp = world.get(world.admin(), '/servers/%s' % uuid.uuid4())
    assert resp.status_code == 404
    assert 'itemNotFound' in resp.json()


def test_service_only_user_is_forbidden(world):
    sess = world.service_session()
    resp = world.get(sess, '/servers/%s' % world.server)
    assert resp.status_code == 403, resp.text
    resp = world.get(sess, '/servers/%s/os-instance-actions/%s' % (
        world.server, world.request_id))
    assert resp.status_code == 403, resp.text


def test_system_scoped_admin_is_forbidden(world, keystone):
    name = _name('sysadmin')
    user_id = keystone.create_user(name, 'sys-pw')
    keystone.grant_system('admin', user_id=user_id)
    sess = keystone.user_session(name, 'sys-pw', system_scope='all')
    resp = world.get(sess, '/servers/%s' % world.server)
    assert resp.status_code == 403, resp.text
    resp = world.get(sess, '/servers/%s/os-instance-actions/%s' % (
        world.server, world.request_id))
    assert resp.status_code == 403, resp.text


def test_other_projects_member_gets_404(world, keystone):
    project = _name('other')
    project_id = keystone.create_project(project)
    name = _name('stranger')
    user_id = keystone.create_user(name, 'pw')
    keystone.grant_project('member', project_id, user_id=user_id)
    sess = keystone.user_session(name, 'pw', project_name=project)
    resp = world.get(sess, '/servers/%s' % world.server)
    assert resp.status_code == 404, resp.text


# -- GET /servers/{id}/os-instance-actions/{request_id} -----------------------

def test_admin_sees_event_result_host_details_traceback(world):
    resp = world.get(world.admin(), '/servers/%s/os-instance-actions/%s' % (
        world.server, world.request_id))
    assert resp.status_code == 200, resp.text
    action = resp.json()['instanceAction']
    assert action['action'] == 'create'
    assert action['request_id'] == world.request_id
    assert action['instance_uuid'] == world.server
    assert action['project_id'] == world.project_id
    assert action['user_id'] == world.member_id
    assert action['start_time']
    assert action['message'] == 'Error'
    [event] = action['events']
    assert event['event'] == BUILD_EVENT
    assert event['result'] == 'Error'
    assert event['host'] == 'compute-01'
    assert event['hostId']
    assert event['details'] == 'Build of instance aborted'
    assert event['traceback'] == TRACEBACK
    assert event['start_time'] and event['finish_time']


def test_member_sees_event_result_only(world):
    resp = world.get(world.member_session(),
                     '/servers/%s/os-instance-actions/%s' % (
                         world.server, world.request_id))
    assert resp.status_code == 200, resp.text
    [event] = resp.json()['instanceAction']['events']
    assert event['result'] == 'Error'
    assert event['hostId']
    for admin_only in ('traceback', 'host', 'details'):
        assert admin_only not in event


@pytest.mark.parametrize('version,expected', [
    ('2.51', {'traceback'}),
    ('2.62', {'traceback', 'host', 'hostId'}),
    ('2.84', {'traceback', 'host', 'hostId', 'details'}),
])
def test_event_fields_by_microversion(world, version, expected):
    resp = world.get(world.admin(), '/servers/%s/os-instance-actions/%s' % (
        world.server, world.request_id), version=version)
    assert resp.status_code == 200, resp.text
    [event] = resp.json()['instanceAction']['events']
    optional = {'traceback', 'host', 'hostId', 'details'}
    assert optional & set(event) == expected


def test_unknown_request_id_is_404(world):
    resp = world.get(world.admin(), '/servers/%s/os-instance-actions/%s' % (
        world.server, _req_id()))
    assert resp.status_code == 404, resp.text
    assert 'itemNotFound' in resp.json()


def test_running_and_successful_events(world, nova_api):
    request_id = _req_id()
    nova_api.add_action(world.server, request_id, action='reboot',
                        start_time='2030-01-02T03:04:05Z', finish=False,
                        events=[
                            {'event': 'compute_reboot_instance',
                             'result': 'Success', 'host': 'compute-01'},
                            {'event': 'compute_power_on_instance',
                             'result': None, 'host': 'compute-01'}])
    action = world.get(world.admin(), '/servers/%s/os-instance-actions/%s' % (
        world.server, request_id)).json()['instanceAction']
    assert action['action'] == 'reboot'
    assert action['start_time'] == '2030-01-02T03:04:05.000000'
    results = {e['event']: e['result'] for e in action['events']}
    assert results == {'compute_reboot_instance': 'Success',
                       'compute_power_on_instance': None}


def test_concurrent_requests(world):
    sessions = [world.admin(), world.member_session()]
    for sess in sessions:
        sess.get_token()

    def fetch(i):
        sess = sessions[i % 2]
        paths = ['/servers/%s' % world.server,
                 '/servers/%s/os-instance-actions/%s' % (
                     world.server, world.request_id)]
        return [world.get(sess, p).status_code for p in paths]

    with futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(fetch, range(16)))
    assert codes == [[200, 200]] * 16


# -- seeding, "API down", clean-up --------------------------------------------

def test_seeding_errors_are_loud(world, nova_api):
    with pytest.raises(na.NovaSeedError) as info:
        nova_api.add_action(str(uuid.uuid4()), _req_id())
    assert 'InstanceNotFound' in str(info.value)
    with pytest.raises(na.NovaSeedError) as info:
        nova_api.add_action(world.server, _req_id(), events=[
            {'event': 'x', 'result': 'Maybe'}])
    assert 'event result must be' in str(info.value)
    # The helper goes on after an error.
    assert nova_api.create_server(world.project_id, world.member_id,
                                  _name('vm'))


def test_stop_api_refuses_connections_until_start_api(world, nova_api):
    sess = world.admin()
    port, url = nova_api.port, nova_api.url
    nova_api.stop_api()
    try:
        assert not nova_api.running
        assert not _port_open(port)
        with pytest.raises(ks_exc.ConnectFailure):
            sess.get(url + '/servers/%s' % world.server)
        # Seeding goes on while the API is down.
        server = nova_api.create_server(world.project_id, world.member_id,
                                        _name('vm'))
    finally:
        nova_api.start_api()
    assert nova_api.running
    assert (nova_api.port, nova_api.url) == (port, url)
    resp = world.get(sess, '/servers/%s' % server)
    assert resp.status_code == 200, resp.text
    # The same token still works: keystonemiddleware validates it again.
    assert world.get(sess, '/servers/%s' % world.server).status_code == 200


def test_second_server_stops_without_leftovers(keystone, tmp_path):
    server = na.NovaAPIServer(keystone, base_dir=str(tmp_path))
    server.start()
    try:
        assert server.running
        assert server.processes()
        tmpdir, port = server.tmpdir, server.port
        user_id = server.service_user_id
        assert _port_open(port)
    finally:
        server.stop()
    fixture_checks.assert_stopped_clean(server, na._marked_pids, tmpdir,
                                        port)
    # Its catalog entries and service user are gone from Keystone.
    urls = [e['url'] for e in keystone.get('/endpoints')['endpoints']]
    assert not [u for u in urls if ':%d' % port in u]
    with pytest.raises(ks_exc.NotFound):
        keystone.get_user(user_id)
    server.stop()  # idempotent


def test_start_failure_reports_log_and_cleans_up(keystone, tmp_path):
    missing = tmp_path / 'no-such-dir' / 'nova_api.sqlite'
    server = na.NovaAPIServer(
        keystone, base_dir=str(tmp_path),
        extra_config='[api_database]\nconnection = sqlite:///%s\n' % missing)
    fixture_checks.assert_start_fails_clean(
        server, na.NovaAPIStartError, str(tmp_path),
        'nova-manage api_db sync failed', 'unable to open database file')


_CHILD = '''
import json, sys, time
sys.path.insert(0, sys.argv[1])
from tests.functional import keystone, nova_api
ks = keystone.KeystoneServer(admin_password=sys.argv[4])
ks.port = int(sys.argv[3])   # the test session's running Keystone
server = nova_api.NovaAPIServer(ks, base_dir=sys.argv[2])
server.start()
print(json.dumps({'tmpdir': server.tmpdir, 'port': server.port,
                  'pids': server.processes(),
                  'user_id': server.service_user_id}), flush=True)
time.sleep(600)
'''


def test_watchdog_cleans_up_after_the_test_process_dies(
        keystone, nova_api, tmp_path):

    def remove_catalog_entries(info):
        # A dead process cannot tidy Keystone: its catalog entries would
        # shadow the session's nova-api.  Remove them here.
        _remove_catalog_entries(keystone, os.path.basename(info['tmpdir']),
                                info['user_id'])

    fixture_checks.assert_watchdog_cleans_up(
        _CHILD, [str(tmp_path), str(keystone.port), keystone.admin_password],
        na._marked_pids, na._sweep, after=remove_catalog_entries)


def _remove_catalog_entries(keystone, marker, user_id):
    sess = keystone.session
    description = 'nova-error-notifier test %s' % marker
    for service in keystone.get('/services')['services']:
        if service.get('description') == description:
            # Keystone deletes the service's endpoints with it.
            sess.delete(keystone.auth_url + '/services/' + service['id'],
                        raise_exc=False)
    sess.delete(keystone.auth_url + '/users/' + user_id, raise_exc=False)
