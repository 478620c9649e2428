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
"""The staff directory's own logic (staff.py): options, the cache, outages,
and what it makes of Keystone's answers.

Keystone itself (the real queries, Keystone's rules on role assignments) is
in tests/functional/test_staff_keystone.py; here its answers come from a
stand-in for the keystoneauth1 adapter, hostile ones too.
"""

import logging
from urllib import parse

from keystoneauth1 import exceptions as ks_exc
import pytest

from nova_error_notifier import staff
from tests.unit import conf_fixtures

STAFF_LOGGER = 'nova_error_notifier.staff'


def make_conf(tmp_path, text=''):
    return conf_fixtures.conf_from_text(tmp_path, text,
                                        register=staff.register_opts)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Answer:
    def __init__(self, body):
        self.body = body

    def json(self):
        if isinstance(self.body, Exception):
            raise self.body
        return self.body


class FakeKeystone:
    """Answers GET path?params from a table; records every request."""

    def __init__(self, routes):
        self.routes = routes
        self.requests = []

    def get(self, path, params=None):
        key = (path, tuple(sorted((params or {}).items())))
        self.requests.append(key)
        for candidate in (key, path):
            if candidate in self.routes:
                answer = self.routes[candidate]
                if isinstance(answer, ks_exc.ClientException):
                    raise answer
                return Answer(answer)
        raise ks_exc.NotFound('no route for %r' % (key,))


def directory(tmp_path, routes, text='', clock=None):
    found = staff.StaffDirectory(make_conf(tmp_path, text),
                                 clock=clock or Clock())
    found._adapter = FakeKeystone(routes)
    return found


def assignments_route(role_id='r-admin', project_id=None):
    params = {'role.id': role_id, 'effective': ''}
    if project_id:
        params['scope.project.id'] = project_id
    return ('/role_assignments', tuple(sorted(params.items())))


SYSTEM_ROUTE = ('/role_assignments', tuple(sorted(
    {'role.id': 'r-admin', 'scope.system': 'all'}.items())))
ROLES_ROUTE = ('/roles', (('name', 'admin'),))


def routes_with(users, assigned=('u1',), system=()):
    routes = {
        ROLES_ROUTE: {'roles': [{'id': 'r-admin', 'name': 'admin'}]},
        assignments_route(): {'role_assignments': [
            {'user': {'id': u}} for u in assigned]},
        SYSTEM_ROUTE: {'role_assignments': list(system)},
    }
    for user_id, user in users.items():
        routes['/users/%s' % user_id] = {'user': user}
    return routes


# -- options ------------------------------------------------------------------

def test_options_and_their_defaults(tmp_path):
    conf = make_conf(tmp_path)
    options = conf[staff.STAFF_GROUP]
    assert (options.role, options.project, options.cache_ttl,
            options.retry_interval, options.interface) == (
        'admin', None, 300, 30, 'public')
    # keystoneauth1's options are registered in [service_credentials].
    assert conf[staff.CREDENTIALS_GROUP].auth_type is None


def test_list_opts_names_each_option_once():
    groups = dict(staff.list_opts())
    assert set(groups) == {staff.STAFF_GROUP, staff.CREDENTIALS_GROUP}
    names = [o.dest for o in groups[staff.CREDENTIALS_GROUP]]
    assert len(names) == len(set(names))
    for name in ('auth_type', 'auth_url', 'username', 'password',
                 'project_name', 'cafile', 'timeout'):
        assert name in names
    assert [o.dest for o in groups[staff.STAFF_GROUP]] == [
        'role', 'project', 'cache_ttl', 'retry_interval', 'interface']


@pytest.mark.parametrize('text', [
    '[staff]\ncache_ttl = -1\n',
    '[staff]\nretry_interval = 0\n',
    '[staff]\ninterface = private\n',
])
def test_bad_values_are_refused_by_oslo_config(tmp_path, text):
    conf = make_conf(tmp_path, text)
    name = text.split('\n')[1].split(' =')[0]
    with pytest.raises(ValueError):
        conf[staff.STAFF_GROUP][name]


def test_check_wants_credentials(tmp_path):
    found = staff.StaffDirectory(make_conf(tmp_path))
    [problem] = found.check()
    assert problem.startswith('[service_credentials] auth_type is not set')
    good = staff.StaffDirectory(make_conf(tmp_path, '\n'.join([
        '[service_credentials]', 'auth_type = password',
        'auth_url = http://127.0.0.1:5000/v3', 'username = nen',
        'password = pw', '']))).check()
    assert good == []


def test_check_names_an_unknown_auth_plugin(tmp_path):
    found = staff.StaffDirectory(make_conf(
        tmp_path, '[service_credentials]\nauth_type = no-such-plugin\n'))
    [problem] = found.check()
    assert problem.startswith('[service_credentials]: ')
    assert 'no-such-plugin' in problem


# -- the cache and outages ----------------------------------------------------

class Scripted(staff.StaffDirectory):
    """_fetch() answers from a script: lists, or exceptions to raise."""

    def __init__(self, conf, clock, script):
        super().__init__(conf, clock=clock)
        self.script = list(script)
        self.fetches = 0

    def _fetch(self):
        self.fetches += 1
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def test_the_list_is_cached_for_cache_ttl(tmp_path):
    clock = Clock()
    found = Scripted(make_conf(tmp_path, '[staff]\ncache_ttl = 60\n'),
                     clock, [['a@example.org'], ['b@example.org']])
    assert found.emails() == ['a@example.org']
    clock.now += 59
    assert found.emails() == ['a@example.org']
    assert found.fetches == 1
    clock.now += 1
    assert found.emails() == ['b@example.org']
    assert found.fetches == 2


def test_cache_ttl_zero_asks_every_time(tmp_path):
    found = Scripted(make_conf(tmp_path, '[staff]\ncache_ttl = 0\n'),
                     Clock(), [['a@example.org'], ['b@example.org']])
    assert found.emails() == ['a@example.org']
    assert found.emails() == ['b@example.org']


def test_an_outage_keeps_the_last_good_list_and_logs_once(tmp_path,
                                                          caplog):
    clock = Clock()
    down = staff.StaffLookupError('GET /roles: Unable to establish '
                                  'connection\r\nFORGED LINE')
    found = Scripted(
        make_conf(tmp_path, '[staff]\ncache_ttl = 10\nretry_interval = 5\n'),
        clock, [['a@example.org'], down, down, ['c@example.org']])
    assert found.emails() == ['a@example.org']
    clock.now += 10
    with caplog.at_level(logging.INFO, logger=STAFF_LOGGER):
        assert found.emails() == ['a@example.org']
        # Within retry_interval: Keystone is not asked again.
        clock.now += 4
        assert found.emails() == ['a@example.org']
        assert found.fetches == 2
        clock.now += 1
        assert found.emails() == ['a@example.org']
        assert found.fetches == 3
        clock.now += 5
        assert found.emails() == ['c@example.org']
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    [error] = errors
    text = error.getMessage()
    assert 'Cannot list the staff users in Keystone' in text
    assert 'using the last good list of 1 address(es)' in text
    # Keystone's message cannot forge a log line.
    assert '\r' not in text and '\n' not in text
    [info] = [r for r in caplog.records if r.levelno == logging.INFO]
    assert info.getMessage() == 'Keystone answers again: 1 staff address(es)'


def test_never_known_is_none_not_empty(tmp_path, caplog):
    found = Scripted(make_conf(tmp_path), Clock(),
                     [RuntimeError('boom')])
    with caplog.at_level(logging.ERROR, logger=STAFF_LOGGER):
        assert found.emails() is None
    assert 'no staff list is known yet' in caplog.records[0].getMessage()


def test_reset_session_forgets_the_adapter(tmp_path):
    found = directory(tmp_path, {})
    assert found._adapter is not None
    found.reset_session()
    assert found._adapter is None


# -- Keystone's answers -------------------------------------------------------

def test_staff_are_enabled_users_with_an_address(tmp_path, caplog):
    users = {
        'u1': {'name': 'alice', 'email': ' alice@example.org '},
        'u2': {'name': 'bob', 'email': 'ALICE@example.org'},   # twice
        'u3': {'name': 'carol', 'enabled': False,
               'email': 'carol@example.org'},
        'u4': {'name': 'dave\n\x1b[31mFORGED', 'email': 'no-at-sign'},
        'u5': {'name': 'erin', 'email': ['erin@example.org']},
        'u6': {'name': 'frank'},
        'u7': {'id': 'u7', 'email': 'grace@example.org'},
    }
    found = directory(tmp_path, routes_with(
        users, assigned=['u1', 'u2', 'u3', 'u4', 'u5', 'u6', 'u7', 'u1',
                         None]))
    with caplog.at_level(logging.DEBUG, logger=STAFF_LOGGER):
        assert found.emails() == ['alice@example.org', 'grace@example.org']
    lines = [r.getMessage() for r in caplog.records]
    assert 'Staff user carol is disabled: skipped' in lines
    assert 'Staff user frank has no e-mail address: skipped' in lines
    assert not any('\n' in line or '\x1b' in line for line in lines)
    # Each user is read once, though assigned twice; no id, no request.
    user_reads = [r for r in found._adapter.requests
                  if r[0].startswith('/users/')]
    assert len(user_reads) == 7


def test_system_grants_count_and_groups_are_expanded(tmp_path):
    routes = routes_with(
        {'u1': {'name': 'a', 'email': 'a@example.org'},
         'u2': {'name': 'b', 'email': 'b@example.org'},
         'u3': {'name': 'c', 'email': 'c@example.org'}},
        assigned=['u1'],
        system=[{'user': {'id': 'u2'}}, {'group': {'id': 'g1'}},
                {'group': {}}, {'role': {'id': 'r-admin'}}])
    routes['/groups/g1/users'] = {'users': [{'id': 'u3'}, {'id': 'u1'}]}
    routes['/groups/None/users'] = {'users': []}
    found = directory(tmp_path, routes)
    assert found.emails() == ['a@example.org', 'b@example.org',
                              'c@example.org']


def test_a_missing_role_is_a_lookup_error(tmp_path):
    found = directory(tmp_path, {ROLES_ROUTE: {'roles': [
        # Keystone filters by name; a look-alike answer is not taken.
        {'id': 'r-x', 'name': 'Admin'}]}})
    with pytest.raises(staff.StaffLookupError) as info:
        found._fetch()
    assert str(info.value) == "role 'admin' does not exist"


def test_the_project_is_found_by_id_then_by_name(tmp_path):
    routes = routes_with({'u1': {'name': 'a', 'email': 'a@example.org'}})
    del routes[assignments_route()]
    routes[assignments_route(project_id='p-ops')] = {'role_assignments': [
        {'user': {'id': 'u1'}}]}
    routes[('/projects', (('name', 'ops/../x'),))] = {
        'projects': [{'id': 'p-ops'}]}
    found = directory(tmp_path, routes, '[staff]\nproject = ops/../x\n')
    assert found.emails() == ['a@example.org']
    # The name is quoted into the path: no path traversal in the URL.
    assert ('/projects/%s' % parse.quote('ops/../x', safe=''), ()) in \
        found._adapter.requests


@pytest.mark.parametrize('projects', [[], [{'id': 'p1'}, {'id': 'p2'}]])
def test_a_project_name_must_name_one_project(tmp_path, projects):
    routes = routes_with({})
    routes[('/projects', (('name', 'ops'),))] = {'projects': projects}
    found = directory(tmp_path, routes, '[staff]\nproject = ops\n')
    with pytest.raises(staff.StaffLookupError) as info:
        found._fetch()
    assert str(info.value) == "project 'ops': %d projects have that name" % (
        len(projects))


def test_keystone_errors_and_garbage_become_lookup_errors(tmp_path):
    found = directory(tmp_path, {
        ROLES_ROUTE: ks_exc.Unauthorized('The request you have made '
                                         'requires authentication.')})
    with pytest.raises(staff.StaffLookupError) as info:
        found._fetch()
    assert str(info.value).startswith('GET /roles: ')
    found = directory(tmp_path, {ROLES_ROUTE: ValueError('<html>')})
    with pytest.raises(staff.StaffLookupError) as info:
        found._fetch()
    assert str(info.value) == 'GET /roles: not JSON: <html>'


def test_keystone_answering_nonsense_shapes_lists_nobody(tmp_path):
    routes = routes_with({}, assigned=[])
    routes[assignments_route()] = {'role_assignments': None}
    routes[SYSTEM_ROUTE] = {}
    found = directory(tmp_path, routes)
    assert found.emails() == []
