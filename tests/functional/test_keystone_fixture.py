"""Proves the real-Keystone test infrastructure (tests/functional/keystone.py).

Also pins down the Keystone behaviour that recipient lookups rely on:
``effective`` role assignments leave system grants out, disabled users stay
in role assignments, ``email`` is an extra user attribute, and reading users
and role assignments needs admin or a system reader.
"""

from concurrent import futures
import sqlite3
import uuid

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg
import pytest

try:
    from tests.functional import fixture_checks
    from tests.functional import keystone as ks
except ModuleNotFoundError as exc:
    if exc.name not in ('tests', 'tests.functional'):
        raise
    import fixture_checks
    import keystone as ks

SYSTEM_ALL = {'system': {'all': True}}


def _name(prefix):
    # The server lives for the whole session: names must not collide.
    return '%s-%s' % (prefix, uuid.uuid4().hex[:8])


def _summary(assignments):
    """(actor kind, actor id, role name, scope) for each assignment."""
    result = []
    for a in assignments:
        kind = 'user' if 'user' in a else 'group'
        scope = a['scope']
        if 'system' in scope:
            where = 'system'
        elif 'project' in scope:
            where = 'project:%s' % scope['project']['id']
        else:
            where = 'domain:%s' % scope['domain']['id']
        result.append((kind, a[kind]['id'], a['role']['name'], where))
    return result


def test_server_is_up_on_a_private_port(keystone):
    assert keystone.running
    assert keystone.auth_url == 'http://127.0.0.1:%d/v3' % keystone.port
    assert keystone.port not in (5000, 35357)
    assert keystone.startup_seconds < ks.DEFAULT_START_TIMEOUT
    assert keystone.processes(), 'no Keystone processes found'
    version = keystone.get('')['version']
    assert version['status'] == 'stable'
    assert version['id'].startswith('v3.')


def test_admin_token_is_project_scoped_with_catalog(keystone):
    sess = keystone.admin_session()
    token = sess.get_token()
    assert token
    body = sess.get(keystone.auth_url + '/auth/tokens',
                    headers={'X-Subject-Token': token}).json()['token']
    assert body['user']['name'] == ks.ADMIN_USER
    assert body['project']['name'] == ks.ADMIN_PROJECT
    assert 'admin' in {r['name'] for r in body['roles']}
    (identity,) = [s for s in body['catalog'] if s['type'] == 'identity']
    (endpoint,) = identity['endpoints']
    assert endpoint['interface'] == 'public'
    assert endpoint['region_id'] == ks.REGION
    assert endpoint['url'] == keystone.auth_url


def test_user_email_is_an_extra_attribute(keystone):
    project_id = keystone.create_project(_name('proj'))
    name = _name('alice')
    user_id = keystone.create_user(name, 'pw-alice', email='alice@example.org',
                                   project=project_id)
    user = keystone.get_user(user_id)
    assert user['name'] == name
    assert user['email'] == 'alice@example.org'
    assert user['enabled'] is True
    assert user['default_project_id'] == project_id
    assert 'password' not in user
    # No email given: no email attribute at all.
    other = keystone.get_user(keystone.create_user(_name('bob'), 'pw-bob'))
    assert 'email' not in other

    # The seeded user logs in; the hash is bcrypt with 4 rounds, which is
    # what keeps a login cheap.
    keystone.grant_project('member', project_id, user_id=user_id)
    assert keystone.user_session(name, 'pw-alice').get_token()
    with sqlite3.connect(keystone.db_path) as db:
        (hashed,) = db.execute(
            'SELECT p.password_hash FROM password p JOIN local_user l '
            'ON p.local_user_id = l.id WHERE l.user_id = ?',
            (user_id,)).fetchone()
    assert hashed.startswith('$2b$04$'), hashed


def test_project_scoped_login_for_seeded_user(keystone):
    project = _name('proj')
    project_id = keystone.create_project(project)
    name = _name('carol')
    user_id = keystone.create_user(name, 'pw-carol', project=project_id)
    keystone.grant_project('member', project_id, user_id=user_id)
    sess = keystone.user_session(name, 'pw-carol', project_name=project)
    assert sess.get_project_id() == project_id
    assert sess.get_user_id() == user_id


def test_group_grant_is_effective_through_membership(keystone):
    project_id = keystone.create_project(_name('proj'))
    user_id = keystone.create_user(_name('dave'), 'pw')
    group_id = keystone.create_group(_name('grp'))
    keystone.add_user_to_group(user_id, group_id)
    keystone.grant_project('member', project_id, group_id=group_id)
    where = 'project:%s' % project_id

    # Direct assignments: the grant belongs to the group, not the user.
    assert keystone.role_assignments(user__id=user_id) == []
    assert _summary(keystone.role_assignments(
        group__id=group_id, include_names=True)) == [
            ('group', group_id, 'member', where)]

    # Effective: the user gets member through the group, and reader, which
    # member implies.
    effective = keystone.role_assignments(effective=True, user__id=user_id,
                                          include_names=True)
    assert sorted(_summary(effective)) == [
        ('user', user_id, 'member', where),
        ('user', user_id, 'reader', where)]
    for a in effective:
        assert a['links']['membership'].endswith(
            '/groups/%s/users/%s' % (group_id, user_id))


def test_system_grants_are_absent_from_effective_assignments(keystone):
    user_id = keystone.create_user(_name('erin'), 'pw')
    member_id = keystone.create_user(_name('frank'), 'pw')
    group_id = keystone.create_group(_name('sysgrp'))
    keystone.add_user_to_group(member_id, group_id)
    keystone.grant_system('reader', user_id=user_id)
    keystone.grant_system('reader', group_id=group_id)

    # Direct, scope.system=all: both grants, the group's as the group.
    system = keystone.role_assignments(scope__system='all',
                                       include_names=True)
    assert all(a['scope'] == SYSTEM_ALL for a in system)
    summary = _summary(system)
    assert ('user', user_id, 'reader', 'system') in summary
    assert ('group', group_id, 'reader', 'system') in summary
    assert ('user', member_id, 'reader', 'system') not in summary

    # Effective: neither the direct nor the group system grant is there.
    assert keystone.role_assignments(effective=True, user__id=user_id) == []
    assert keystone.role_assignments(effective=True,
                                     user__id=member_id) == []
    # And with effective, scope.system is ignored: the answer holds no system
    # grant but every project grant (the admin's, for one).
    mixed = keystone.role_assignments(effective=True, scope__system='all',
                                      include_names=True)
    assert not [a for a in mixed if 'system' in a['scope']]
    admin = keystone.session
    assert ('user', admin.get_user_id(), 'admin',
            'project:%s' % admin.get_project_id()) in _summary(mixed)


def test_disabled_user_still_in_role_assignments(keystone):
    project_id = keystone.create_project(_name('proj'))
    name = _name('gina')
    user_id = keystone.create_user(name, 'pw-gina', email='gina@example.org')
    keystone.grant_project('member', project_id, user_id=user_id)
    keystone.grant_system('reader', user_id=user_id)
    keystone.disable_user(user_id)

    user = keystone.get_user(user_id)
    assert user['enabled'] is False
    assert user['email'] == 'gina@example.org'
    where = 'project:%s' % project_id
    assert sorted(_summary(keystone.role_assignments(
        user__id=user_id, include_names=True))) == [
            ('user', user_id, 'member', where),
            ('user', user_id, 'reader', 'system')]
    assert ('user', user_id, 'member', where) in _summary(
        keystone.role_assignments(effective=True, user__id=user_id,
                                  include_names=True))
    with pytest.raises(ks_exc.Unauthorized):
        keystone.user_session(name, 'pw-gina').get_token()


def test_reading_users_needs_admin_or_system_reader(keystone):
    project = _name('proj')
    project_id = keystone.create_project(project)
    target = keystone.create_user(_name('target'), 'pw',
                                  email='target@example.org')
    reader = _name('sysreader')
    keystone.grant_system('reader',
                          user_id=keystone.create_user(reader, 'pw-r'))
    member = _name('member')
    keystone.grant_project('member', project_id,
                           user_id=keystone.create_user(member, 'pw-m'))

    def status(sess, path):
        return sess.get(keystone.auth_url + path, raise_exc=False).status_code

    system_reader = keystone.user_session(reader, 'pw-r', system_scope='all')
    assert status(system_reader, '/users/%s' % target) == 200
    assert status(system_reader, '/role_assignments') == 200
    project_member = keystone.user_session(member, 'pw-m',
                                           project_name=project)
    assert status(project_member, '/users/%s' % target) == 403
    assert status(project_member, '/role_assignments') == 403


def test_service_credentials_conf_loads_with_keystoneauth(keystone, tmp_path):
    project = _name('service')
    project_id = keystone.create_project(project)
    username = _name('nen')
    password = 'pa$$ w%rd$x'  # oslo.config would expand a bare $x
    user_id = keystone.create_user(username, password)
    keystone.grant_project('member', project_id, user_id=user_id)

    text = keystone.service_credentials_conf(username, password, project)
    assert text.splitlines()[0] == '[service_credentials]'
    assert 'auth_type = password' in text
    assert 'auth_url = %s' % keystone.auth_url in text
    assert 'user_domain_name = Default' in text
    assert 'project_domain_name = Default' in text
    path = tmp_path / 'nen.conf'
    path.write_text(text)

    conf = cfg.ConfigOpts()
    ks_loading.register_auth_conf_options(conf, 'service_credentials')
    ks_loading.register_session_conf_options(conf, 'service_credentials')
    conf(args=[], default_config_files=[str(path)], default_config_dirs=[])
    auth = ks_loading.load_auth_from_conf_options(conf, 'service_credentials')
    sess = ks_loading.load_session_from_conf_options(
        conf, 'service_credentials', auth=auth)
    assert conf.service_credentials.password == password
    assert sess.get_project_id() == project_id
    assert sess.get_user_id() == user_id

    with pytest.raises(ValueError):
        keystone.service_credentials_conf(username, 'two\nlines', project)


def test_helpers_fail_loudly(keystone):
    project = _name('proj')
    project_id = keystone.create_project(project)
    with pytest.raises(ks_exc.Conflict):
        keystone.create_project(project)
    with pytest.raises(ValueError):
        keystone.grant_project('member', project_id)
    with pytest.raises(ValueError):
        keystone.grant_system('reader', user_id='u', group_id='g')
    with pytest.raises(LookupError):
        keystone.role_id(_name('no-such-role'))
    with pytest.raises(ks_exc.NotFound):
        keystone.grant_project('member', project_id, user_id=uuid.uuid4().hex)
    role = _name('role')
    role_id = keystone.create_role(role)
    assert keystone.role_id(role) == role_id
    assert keystone.role_id('admin') != keystone.role_id('reader')


def test_concurrent_requests(keystone):
    # One thread per request: parallel logins and reads all succeed.
    project = _name('proj')
    project_id = keystone.create_project(project)
    users = []
    for i in range(4):
        name = _name('par%d' % i)
        user_id = keystone.create_user(name, 'pw-%d' % i,
                                       email='%s@example.org' % name)
        keystone.grant_project('member', project_id, user_id=user_id)
        users.append((name, 'pw-%d' % i, user_id))

    def login_and_read(user):
        name, password, user_id = user
        sess = keystone.user_session(name, password, project_name=project)
        assert sess.get_user_id() == user_id
        return admin.get(keystone.auth_url + '/users/%s' % user_id).json()[
            'user']['email']

    admin = keystone.admin_session()
    admin.get_token()
    with futures.ThreadPoolExecutor(8) as pool:
        emails = list(pool.map(login_and_read, users * 2))
    assert emails == ['%s@example.org' % u[0] for u in users] * 2


def test_second_server_stops_without_leftovers(tmp_path):
    server = ks.KeystoneServer(base_dir=str(tmp_path))
    server.start()
    try:
        assert server.running
        pids = server.processes()
        assert pids
        tmpdir, port = server.tmpdir, server.port
        assert fixture_checks.port_open(port)
    finally:
        server.stop()
    fixture_checks.assert_stopped_clean(server, ks._marked_pids, tmpdir,
                                        port)
    server.stop()  # idempotent


def test_start_failure_reports_log_and_cleans_up(tmp_path):
    missing = tmp_path / 'no-such-dir' / 'keystone.db'
    server = ks.KeystoneServer(
        base_dir=str(tmp_path),
        extra_config='[database]\nconnection = sqlite:///%s\n' % missing)
    # Keystone's own explanation is in the message.
    fixture_checks.assert_start_fails_clean(
        server, ks.KeystoneStartError, str(tmp_path),
        'keystone-manage db_sync failed', 'unable to open database file')


_CHILD = '''
import json, sys, time
sys.path.insert(0, sys.argv[1])
from tests.functional import keystone
server = keystone.KeystoneServer(base_dir=sys.argv[2])
server.start()
print(json.dumps({'tmpdir': server.tmpdir, 'port': server.port,
                  'pids': server.processes()}), flush=True)
time.sleep(600)
'''


def test_watchdog_cleans_up_after_the_test_process_dies(tmp_path):
    fixture_checks.assert_watchdog_cleans_up(
        _CHILD, [str(tmp_path)], ks._marked_pids, ks._sweep)
