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
"""Staff users: who holds the staff role in Keystone, and their e-mails.

Staff are the enabled users holding ``[staff] role`` (``admin`` by
default), directly or through a group, on any project or domain or, with
``[staff] project``, on that project only, plus the users holding the role
on the system scope. Users without an ``email`` attribute are skipped.

Keystone is asked through keystoneauth1 with the credentials of
``[service_credentials]`` (any auth plugin: password, application
credentials...). Listing role assignments and reading users needs
``admin``, or ``reader`` on the system or a domain.

The list is cached for ``[staff] cache_ttl`` seconds. When Keystone cannot
be reached the last good list is used, and the failure is logged once per
outage, not once per alert.
"""

import threading
import time
from urllib import parse

from keystoneauth1 import adapter as ks_adapter
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg
from oslo_log import log

from nova_error_notifier import logsafe

LOG = log.getLogger(__name__)

CREDENTIALS_GROUP = 'service_credentials'
STAFF_GROUP = 'staff'

STAFF_OPTS = [
    cfg.StrOpt('role',
               default='admin',
               help='Keystone role that makes a user staff.'),
    cfg.StrOpt('project',
               help='If set (a project name or id), only users holding the '
                    'role on this project (directly or through a group) '
                    'are staff, besides those holding it on the system '
                    'scope. By default the role on any project or domain '
                    'counts.'),
    cfg.IntOpt('cache_ttl',
               default=300,
               min=0,
               help='Seconds the staff list is kept before Keystone is '
                    'asked again.'),
    cfg.IntOpt('retry_interval',
               default=30,
               min=1,
               help='While Keystone is unreachable, seconds between two '
                    'attempts; the last good list is used meanwhile.'),
    cfg.StrOpt('interface',
               default='public',
               choices=['public', 'internal', 'admin'],
               help='Interface of the identity endpoint in the catalog.'),
]


def register_opts(conf):
    conf.register_opts(STAFF_OPTS, group=STAFF_GROUP)
    register_credentials(conf)


def register_credentials(conf):
    """keystoneauth's own registration of [service_credentials].

    The session options and ``auth_type``; the options of the auth plugin
    it names are registered by keystoneauth when the plugin is loaded
    (the sample file shows the password plugin's).
    """
    ks_loading.register_auth_conf_options(conf, CREDENTIALS_GROUP)
    ks_loading.register_session_conf_options(conf, CREDENTIALS_GROUP)


def list_opts():
    auth_opts = ks_loading.get_auth_common_conf_options()
    plugin_opts = ks_loading.get_auth_plugin_conf_options('password')
    names = {o.dest for o in auth_opts}
    return [
        (STAFF_GROUP, STAFF_OPTS),
        (CREDENTIALS_GROUP,
         ks_loading.get_session_conf_options() + auth_opts +
         [o for o in plugin_opts if o.dest not in names]),
    ]


class StaffLookupError(Exception):
    """Keystone could not tell who the staff are."""


class StaffDirectory:
    """The cached list of staff e-mail addresses. Thread-safe."""

    def __init__(self, conf, clock=time.monotonic):
        self.conf = conf
        self.clock = clock
        self._lock = threading.Lock()
        self._emails = None          # last good list
        self._fetched_at = None
        self._next_try = 0.0
        self._outage = False
        self._adapter = None

    def check(self):
        """Problems that make the directory unusable, as a list."""
        problems = []
        try:
            auth = ks_loading.load_auth_from_conf_options(
                self.conf, CREDENTIALS_GROUP)
        except Exception as exc:
            return ['[%s]: %s' % (CREDENTIALS_GROUP, exc)]
        if auth is None:
            problems.append('[%s] auth_type is not set: staff users are '
                            'looked up in Keystone with these credentials'
                            % CREDENTIALS_GROUP)
        return problems

    def reset_session(self):
        """Forget the Keystone session (new credentials, after a reload)."""
        with self._lock:
            self._adapter = None

    def adapter(self):
        if self._adapter is None:
            auth = ks_loading.load_auth_from_conf_options(
                self.conf, CREDENTIALS_GROUP)
            session = ks_loading.load_session_from_conf_options(
                self.conf, CREDENTIALS_GROUP, auth=auth)
            region = getattr(self.conf, 'region_name', None)
            self._adapter = ks_adapter.Adapter(
                session, service_type='identity',
                interface=self.conf[STAFF_GROUP].interface,
                region_name=region or None, version=(3, 0))
        return self._adapter

    def emails(self):
        """The staff e-mail addresses, or None if never known.

        Never raises: Keystone failures are logged (once per outage) and the
        last good list is returned.
        """
        with self._lock:
            now = self.clock()
            ttl = self.conf[STAFF_GROUP].cache_ttl
            fresh = (self._fetched_at is not None and
                     now - self._fetched_at < ttl)
            if fresh or now < self._next_try:
                return self._emails
            try:
                emails = self._fetch()
            except Exception as exc:
                self._next_try = now + self.conf[STAFF_GROUP].retry_interval
                if not self._outage:
                    self._outage = True
                    LOG.error('Cannot list the staff users in Keystone: %s; '
                              '%s', logsafe.escape(exc, 500),
                              'using the last good list of %d address(es)'
                              % len(self._emails) if self._emails is not None
                              else 'no staff list is known yet')
                return self._emails
            if self._outage:
                LOG.info('Keystone answers again: %d staff address(es)',
                         len(emails))
                self._outage = False
            self._emails = emails
            self._fetched_at = now
            return emails

    # -- Keystone queries -------------------------------------------------

    def _get(self, path, **params):
        try:
            return self.adapter().get(path, params=params or None).json()
        except ks_exc.ClientException as exc:
            raise StaffLookupError('GET %s: %s' % (path, exc))
        except ValueError as exc:
            raise StaffLookupError('GET %s: not JSON: %s' % (path, exc))

    def _role_id(self, name):
        roles = self._get('/roles', name=name).get('roles') or []
        for role in roles:
            if role.get('name') == name:
                return role['id']
        raise StaffLookupError('role %r does not exist' % name)

    def _project_id(self, value):
        try:
            project = self.adapter().get(
                '/projects/%s' % parse.quote(value, safe='')).json()
            return project['project']['id']
        except ks_exc.NotFound:
            pass
        except ks_exc.ClientException as exc:
            raise StaffLookupError('GET /projects/%s: %s' % (value, exc))
        projects = self._get('/projects', name=value).get('projects') or []
        if len(projects) != 1:
            raise StaffLookupError('project %r: %d projects have that name'
                                   % (value, len(projects)))
        return projects[0]['id']

    def _assigned_user_ids(self, role_id):
        staff = self.conf[STAFF_GROUP]
        user_ids = []
        params = {'role.id': role_id, 'effective': ''}
        if staff.project:
            params['scope.project.id'] = self._project_id(staff.project)
        # "effective" expands group memberships and inherited grants, but
        # leaves out grants on the system scope: ask for those separately.
        for assignment in self._get('/role_assignments', **params).get(
                'role_assignments') or []:
            user_ids.append((assignment.get('user') or {}).get('id'))
        system = self._get('/role_assignments', **{
            'role.id': role_id, 'scope.system': 'all'}).get(
                'role_assignments') or []
        for assignment in system:
            if assignment.get('user'):
                user_ids.append(assignment['user'].get('id'))
            elif assignment.get('group'):
                group_id = assignment['group'].get('id')
                for user in self._get('/groups/%s/users' % group_id).get(
                        'users') or []:
                    user_ids.append(user.get('id'))
        return list(dict.fromkeys(u for u in user_ids if u))

    def _fetch(self):
        role_id = self._role_id(self.conf[STAFF_GROUP].role)
        emails = []
        for user_id in self._assigned_user_ids(role_id):
            user = self._get('/users/%s' % user_id).get('user') or {}
            name = logsafe.escape(user.get('name') or user_id, 100)
            if not user.get('enabled', True):
                LOG.debug('Staff user %s is disabled: skipped', name)
                continue
            email = user.get('email')
            if not isinstance(email, str) or '@' not in email:
                LOG.debug('Staff user %s has no e-mail address: skipped',
                          name)
                continue
            if email.lower() not in (e.lower() for e in emails):
                emails.append(email.strip())
        return emails
