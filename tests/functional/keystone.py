"""A throw-away Keystone for functional tests, and seeding helpers.

``KeystoneServer`` runs a private Keystone (the ``keystone`` package from
PyPI, installed by test-requirements.txt) in its own temporary directory:
keystone.conf, an SQLite database, Fernet token/receipt and credential key
repositories, logs.  It listens on 127.0.0.1 on a free port and serves
``/v3`` there.

Start-up is Keystone's own: ``keystone-manage db_sync``, ``fernet_setup``,
``credential_setup`` (these three in parallel), then ``bootstrap`` (admin
user, project and role, region ``RegionOne``, the identity service with its
public endpoint).  Then ``wsgi_serve.py keystone`` (next to this file)
serves ``keystone.server.wsgi.initialize_public_application()``.  ``start()``
returns once the admin can get a project-scoped token.  The start-up and
clean-up it shares with ``nova_api.py`` are in ``wsgi_service.py``.

Every process it starts carries a marker environment variable.  ``stop()``
kills whatever still carries the marker, and a small watchdog process does the
same if the test process dies without calling ``stop()``.  The server also
exits by itself when its standard input, a pipe from the test process,
closes.

Seeding goes through the REST API with the admin session; every helper raises
(keystoneauth1's ``HttpError``, with Keystone's message) on an error answer.
"""

import grp
import logging
import os
import pwd
import secrets
import subprocess
import sys
import time

from keystoneauth1.identity import v3
from keystoneauth1 import session as ks_session
import requests

try:  # tests/ and tests/functional/ are packages, or the root is on sys.path
    from tests.functional import procutil
    from tests.functional import wsgi_service
except ModuleNotFoundError as exc:
    if exc.name not in ('tests', 'tests.functional'):
        raise
    import procutil  # rootdir-less run: this directory is on sys.path
    import wsgi_service

LOG = logging.getLogger(__name__)

MARKER_ENV = 'NOVA_ERROR_NOTIFIER_TEST_KEYSTONE'
DEFAULT_START_TIMEOUT = wsgi_service.DEFAULT_START_TIMEOUT
HOST = wsgi_service.HOST
ADMIN_USER = 'admin'
ADMIN_PROJECT = 'admin'
ADMIN_ROLE = 'admin'
REGION = 'RegionOne'
DEFAULT_DOMAIN_ID = 'default'

# keystone-manage, run by the interpreter of the tests (the same virtualenv,
# whatever PATH says).  cwd is the temporary directory, so the '' that -c
# puts on sys.path finds no stray "keystone" module.
_MANAGE = ('import sys; from keystone.cmd.manage import main; '
           'sys.exit(main())')


class KeystoneStartError(RuntimeError):
    """Keystone did not come up; the message carries the logs' tails."""


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

_excerpt = procutil.excerpt


_marked_pids, _sweep = procutil.marker_functions(MARKER_ENV)


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------

class KeystoneServer(wsgi_service.WSGIServiceFixture):
    """A private Keystone for tests.

    Example::

        ks = KeystoneServer()
        ks.start()          # blocks until the admin can get a token
        ks.auth_url         # 'http://127.0.0.1:PORT/v3'
        pid = ks.create_project('p1')
        uid = ks.create_user('u1', 'pw', email='u1@example.org', project=pid)
        ks.grant_project('member', pid, user_id=uid)
        ks.stop()
    """

    MARKER_ENV = MARKER_ENV
    NAME = 'Keystone'
    APPLICATION = 'keystone'
    TMPDIR_PREFIX = 'nen-keystone-'
    CONFIG_FILE = 'keystone.conf'
    LOG_FILE = 'keystone.log'
    READY_TIMEOUT = 2
    PROOF_STEP = 'admin_token'
    start_error = KeystoneStartError

    def __init__(self, start_timeout=DEFAULT_START_TIMEOUT,
                 keep_tmpdir=False, base_dir=None, admin_password=None,
                 extra_config=''):
        """*extra_config*: text appended to keystone.conf."""
        super().__init__(start_timeout=start_timeout,
                         keep_tmpdir=keep_tmpdir, base_dir=base_dir,
                         extra_config=extra_config)
        self.admin_password = admin_password or (
            'Pw' + secrets.token_urlsafe(16))
        self._session = None
        self._role_ids = {}

    # -- public properties --------------------------------------------------

    @property
    def auth_url(self):
        self._require_started()
        return 'http://%s:%d/v3' % (HOST, self.port)

    @property
    def ready_url(self):
        return self.auth_url

    @property
    def db_path(self):
        return os.path.join(self.tmpdir, 'keystone.db')

    # -- start / stop --------------------------------------------------------

    def _prepare(self, deadline):
        self._write_keystone_conf()
        self._setup_keystone(deadline)

    def _write_keystone_conf(self):
        d = self.tmpdir
        self._write_config('\n'.join([
            '[DEFAULT]',
            'log_file = %s' % self.log_path,
            'use_stderr = false',
            # Error answers say why (e.g. which check failed on a 401).
            'insecure_debug = true',
            '',
            '[database]',
            'connection = sqlite:///%s' % self.db_path,
            '',
            '[fernet_tokens]',
            'key_repository = %s' % os.path.join(d, 'fernet-keys'),
            '',
            '[fernet_receipts]',
            'key_repository = %s' % os.path.join(d, 'fernet-receipts'),
            '',
            '[credential]',
            'key_repository = %s' % os.path.join(d, 'credential-keys'),
            '',
            '[identity]',
            # The default, bcrypt with 12 rounds, takes ~0.35 s per login.
            'password_hash_algorithm = bcrypt',
            'password_hash_rounds = 4',
            # bcrypt reads 72 bytes at most; a larger limit makes Keystone
            # log a warning on every password it hashes or checks.
            'max_password_length = 72',
            '',
        ]))

    def _manage_cmd(self, *args):
        return [sys.executable, '-c', _MANAGE, '--config-file',
                self.config_path] + list(args)

    def _owner_args(self):
        # Required when running as root; harmless otherwise.
        return ['--keystone-user', pwd.getpwuid(os.getuid()).pw_name,
                '--keystone-group', grp.getgrgid(os.getgid()).gr_name]

    def _run_manage(self, steps, deadline):
        """Run keystone-manage commands in parallel; raise if any fails.

        Each command's output goes to manage-NAME.log in the directory.
        """
        with self._step('+'.join(n for n, _a in steps)):
            self._run_manage_steps(steps, deadline)

    def _run_manage_steps(self, steps, deadline):
        procs = []
        try:
            for name, args in steps:
                out_path = os.path.join(self.tmpdir, 'manage-%s.log' % name)
                with open(out_path, 'wb') as out:
                    procs.append((name, out_path, subprocess.Popen(
                        self._manage_cmd(*args), env=self._env,
                        cwd=self.tmpdir, stdin=subprocess.DEVNULL,
                        stdout=out, stderr=subprocess.STDOUT)))
            failures = []
            for name, out_path, proc in procs:
                try:
                    rc = proc.wait(timeout=max(1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    failures.append('keystone-manage %s did not finish within '
                                    'the start timeout (%.0fs)' % (
                                        name, self.start_timeout))
                    continue
                if rc != 0:
                    failures.append(
                        'keystone-manage %s failed with code %d:\n%s' % (
                            name, rc, _excerpt(out_path, tail=30)))
            if failures:
                raise KeystoneStartError('\n'.join(failures))
        finally:
            for _name, _path, proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def _setup_keystone(self, deadline):
        self._run_manage([
            ('db_sync', ['db_sync']),
            ('fernet_setup', ['fernet_setup'] + self._owner_args()),
            ('credential_setup', ['credential_setup'] + self._owner_args()),
        ], deadline)
        self._run_manage([
            ('bootstrap', [
                'bootstrap',
                # '=' form: a random password may start with '-', which
                # argparse would take for an option.
                '--bootstrap-password=%s' % self.admin_password,
                '--bootstrap-username', ADMIN_USER,
                '--bootstrap-project-name', ADMIN_PROJECT,
                '--bootstrap-role-name', ADMIN_ROLE,
                '--bootstrap-region-id', REGION,
                '--bootstrap-public-url', self.auth_url,
            ]),
        ], deadline)

    def _prove_ready(self):
        # The admin gets a project-scoped token.
        self._session = self.admin_session()
        self._session.get_token()

    def stop(self):
        """Stop Keystone and remove everything it started.  Idempotent."""
        self._session = None
        self._role_ids = {}
        super().stop()

    # -- sessions and configuration -----------------------------------------

    def admin_session(self):
        """A new keystoneauth1 Session, scoped to the admin project."""
        return self.user_session(ADMIN_USER, self.admin_password,
                                 ADMIN_PROJECT)

    def user_session(self, username, password, project_name=None,
                     system_scope=None, user_domain_id=DEFAULT_DOMAIN_ID,
                     project_domain_id=DEFAULT_DOMAIN_ID):
        """A keystoneauth1 Session for *username* (password auth).

        Project-scoped with *project_name*, system-scoped with
        ``system_scope='all'``, unscoped with neither.  It ignores proxy
        settings from the environment.
        """
        kwargs = {}
        if project_name is not None:
            kwargs.update(project_name=project_name,
                          project_domain_id=project_domain_id)
        if system_scope is not None:
            kwargs['system_scope'] = system_scope
        auth = v3.Password(auth_url=self.auth_url, username=username,
                           password=password, user_domain_id=user_domain_id,
                           **kwargs)
        http = requests.Session()
        http.trust_env = False
        return ks_session.Session(auth=auth, session=http)

    def service_credentials_conf(self, username, password, project_name,
                                 user_domain='Default',
                                 project_domain='Default'):
        """INI text of a ``[service_credentials]`` section for this Keystone.

        For keystoneauth1's conf loading
        (``loading.load_auth_from_conf_options(conf, 'service_credentials')``
        after ``register_auth_conf_options``).  ``$`` is written as ``$$``,
        which oslo.config reads back as ``$``.
        """
        return procutil.ini_section('service_credentials', [
            ('auth_type', 'password'),
            ('auth_url', self.auth_url),
            ('username', username),
            ('password', password),
            ('project_name', project_name),
            ('user_domain_name', user_domain),
            ('project_domain_name', project_domain),
        ])

    # -- REST helpers --------------------------------------------------------

    @property
    def session(self):
        """The admin Session the seeding helpers use."""
        self._require_started()
        if self._session is None:
            self._session = self.admin_session()
        return self._session

    def _url(self, path):
        return self.auth_url + path

    def get(self, path, **params):
        """GET /v3*path* as the admin; the decoded JSON answer."""
        return self.session.get(self._url(path), params=params or None).json()

    def _post(self, path, body):
        return self.session.post(self._url(path), json=body).json()

    def _put(self, path):
        self.session.put(self._url(path))

    def create_project(self, name, domain_id=DEFAULT_DOMAIN_ID,
                       description=''):
        """Create a project; return its id."""
        body = {'project': {'name': name, 'domain_id': domain_id,
                            'description': description, 'enabled': True}}
        return self._post('/projects', body)['project']['id']

    def create_user(self, name, password, email=None, enabled=True,
                    project=None, domain_id=DEFAULT_DOMAIN_ID):
        """Create a user; return its id.

        *email* is stored as an extra attribute (GET /v3/users/{id} returns
        it); *project* is a project id, stored as the default project.
        """
        user = {'name': name, 'password': password, 'enabled': enabled,
                'domain_id': domain_id}
        if email is not None:
            user['email'] = email
        if project is not None:
            user['default_project_id'] = project
        return self._post('/users', {'user': user})['user']['id']

    def get_user(self, user_id):
        """GET /v3/users/{id}: the user dict (with extra attributes)."""
        return self.get('/users/%s' % user_id)['user']

    def disable_user(self, user_id):
        self.session.patch(self._url('/users/%s' % user_id),
                           json={'user': {'enabled': False}})

    def create_group(self, name, domain_id=DEFAULT_DOMAIN_ID):
        """Create a group; return its id."""
        body = {'group': {'name': name, 'domain_id': domain_id}}
        return self._post('/groups', body)['group']['id']

    def add_user_to_group(self, user_id, group_id):
        self._put('/groups/%s/users/%s' % (group_id, user_id))

    def create_role(self, name):
        """Create a global role; return its id."""
        role_id = self._post('/roles', {'role': {'name': name}})['role']['id']
        self._role_ids[name] = role_id
        return role_id

    def role_id(self, name):
        """The id of the global role *name*; LookupError if there is none.

        Keystone's bootstrap makes admin, member and reader.
        """
        if name not in self._role_ids:
            roles = self.get('/roles', name=name)['roles']
            if not roles:
                raise LookupError('no role named %r in Keystone' % name)
            self._role_ids[name] = roles[0]['id']
        return self._role_ids[name]

    @staticmethod
    def _actor(user_id, group_id):
        if (user_id is None) == (group_id is None):
            raise ValueError('give exactly one of user_id and group_id')
        if user_id is not None:
            return 'users/%s' % user_id
        return 'groups/%s' % group_id

    def grant_project(self, role, project_id, user_id=None, group_id=None):
        """Grant role *role* (a name) on a project to a user or a group."""
        self._put('/projects/%s/%s/roles/%s' % (
            project_id, self._actor(user_id, group_id), self.role_id(role)))

    def grant_system(self, role, user_id=None, group_id=None):
        """Grant role *role* (a name) on the system to a user or a group."""
        self._put('/system/%s/roles/%s' % (
            self._actor(user_id, group_id), self.role_id(role)))

    def role_assignments(self, effective=False, include_names=False,
                         **filters):
        """GET /v3/role_assignments as the admin; the list of assignments.

        *filters* are query parameters with dots written as double
        underscores: ``scope__system='all'``, ``user__id=...``,
        ``scope__project__id=...``, ``role__id=...``.

        Keystone's own rules, which the tests prove: ``effective`` expands
        group membership and implied roles but leaves out every system
        grant, and ignores ``scope.system`` (it then answers with the
        project and domain assignments); without ``effective``,
        ``scope.system='all'`` lists system grants, to groups as groups.
        Disabled users are listed like any other.
        """
        params = {k.replace('__', '.'): v for k, v in filters.items()}
        if effective:
            params['effective'] = ''
        if include_names:
            params['include_names'] = ''
        return self.get('/role_assignments', **params)['role_assignments']
