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
"""Fresh, empty databases on real MariaDB and PostgreSQL servers for tests.

The servers are the ones ``tools/ensure-mariadb.sh`` and
``tools/ensure-postgresql.sh`` install and start (``tools/run-tests.sh``
runs them), reached with oslo.db's "opportunistic" test account: user
``openstack_citest``, password ``openstack_citest``, database
``openstack_citest``, allowed to create and drop databases, on 127.0.0.1
(MariaDB 3306, PostgreSQL 5432). ``NEN_TEST_MYSQL_URL`` and
``NEN_TEST_POSTGRESQL_URL`` name another account allowed to create
databases (an SQLAlchemy URL).

:func:`fresh_database` creates ``nen_test_<random>`` with that account,
yields its SQLAlchemy URL (``mysql+pymysql://...?charset=utf8mb4``,
``postgresql+psycopg2://...``) and drops it afterwards, whatever is still
connected to it. A server that cannot be reached raises
:class:`Unreachable` with a message saying what to run; the fixtures in
``tests/conftest.py`` turn it into a test failure, never a skip.
"""

import contextlib
import os
import secrets

import sqlalchemy as sa
from sqlalchemy.engine import url as sa_url

#: What ``backend_url`` is parametrised over.
BACKENDS = ('sqlite', 'mariadb', 'postgresql')
#: The backends that need a server.
SERVERS = ('mariadb', 'postgresql')

CITEST = 'openstack_citest'
DEFAULT_URLS = {
    'mariadb': 'mysql+pymysql://%s:%s@127.0.0.1:3306/%s?charset=utf8mb4' % (
        CITEST, CITEST, CITEST),
    'postgresql': 'postgresql+psycopg2://%s:%s@127.0.0.1:5432/%s' % (
        CITEST, CITEST, CITEST),
}
ENVIRONMENT = {
    'mariadb': 'NEN_TEST_MYSQL_URL',
    'postgresql': 'NEN_TEST_POSTGRESQL_URL',
}
ENSURE = {
    'mariadb': 'tools/ensure-mariadb.sh',
    'postgresql': 'tools/ensure-postgresql.sh',
}
PREFIX = 'nen_test_'
CONNECT_TIMEOUT = 5


class Unreachable(Exception):
    """The test database server cannot be used."""


def admin_url(backend):
    """The URL of the account that creates ``backend``'s test databases."""
    return sa_url.make_url(os.environ.get(ENVIRONMENT[backend]) or
                           DEFAULT_URLS[backend])


def database_url(backend, name):
    """The URL string of database ``name`` on ``backend``'s server."""
    return admin_url(backend).set(database=name).render_as_string(
        hide_password=False)


def new_name():
    return PREFIX + secrets.token_hex(6)


class Server:
    """The test account on one database server."""

    def __init__(self, backend):
        if backend not in SERVERS:
            raise ValueError('not a database server: %r' % (backend,))
        self.backend = backend
        self.url = admin_url(backend)
        # PyMySQL and psycopg2 both call it connect_timeout.
        self.engine = sa.create_engine(
            self.url, poolclass=sa.pool.NullPool,
            isolation_level='AUTOCOMMIT',
            connect_args={'connect_timeout': CONNECT_TIMEOUT})
        self._checked = None

    def describe(self):
        return self.url.render_as_string(hide_password=True)

    def check(self):
        """Raise :class:`Unreachable` unless the account can log in."""
        if self._checked is None:
            try:
                with self.engine.connect() as conn:
                    conn.execute(sa.text('SELECT 1'))
                self._checked = ''
            except Exception as exc:
                orig = getattr(exc, 'orig', None) or exc
                self._checked = (
                    'the %s test server is not reachable at %s (%s: %s). '
                    'Run %s as root (tools/run-tests.sh does), or set %s '
                    'to the URL of an account allowed to create databases.'
                    % (self.backend, self.describe(), type(orig).__name__,
                       str(orig).strip().split('\n')[0], ENSURE[self.backend],
                       ENVIRONMENT[self.backend]))
        if self._checked:
            raise Unreachable(self._checked)

    def create(self, name):
        self.check()
        with self.engine.connect() as conn:
            if self.backend == 'mariadb':
                conn.execute(sa.text(
                    'CREATE DATABASE `%s` CHARACTER SET utf8mb4' % name))
            else:
                conn.execute(sa.text(
                    'CREATE DATABASE "%s" ENCODING \'UTF8\' '
                    'TEMPLATE template0' % name))
        return database_url(self.backend, name)

    def drop(self, name):
        """Drop database ``name``, closing whatever is connected to it."""
        with self.engine.connect() as conn:
            if self.backend == 'mariadb':
                for (pid,) in conn.execute(sa.text(
                        'SELECT id FROM information_schema.processlist '
                        'WHERE db = :name AND id != CONNECTION_ID()'),
                        {'name': name}):
                    with contextlib.suppress(sa.exc.DBAPIError):
                        conn.execute(sa.text('KILL CONNECTION %d' % pid))
                conn.execute(sa.text('DROP DATABASE IF EXISTS `%s`' % name))
            else:
                conn.execute(sa.text(
                    'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name))

    def exists(self, name):
        with self.engine.connect() as conn:
            if self.backend == 'mariadb':
                query = ('SELECT 1 FROM information_schema.schemata '
                         'WHERE schema_name = :name')
            else:
                query = 'SELECT 1 FROM pg_database WHERE datname = :name'
            return conn.execute(sa.text(query), {'name': name}).first() \
                is not None


_servers = {}


def server(backend):
    """The (cached) :class:`Server` of ``backend``."""
    if backend not in _servers:
        _servers[backend] = Server(backend)
    return _servers[backend]


@contextlib.contextmanager
def fresh_database(backend, directory=None):
    """Yield the URL of a new, empty database; drop it afterwards.

    ``sqlite``: a file in ``directory`` (which must exist and be private,
    as the outbox wants). ``mariadb``, ``postgresql``: a database
    ``nen_test_<random>`` on the test server.

    :raises Unreachable: when the server cannot be used.
    """
    if backend == 'sqlite':
        if directory is None:
            raise ValueError('a SQLite test database needs a directory')
        path = os.path.join(str(directory), new_name() + '.sqlite')
        yield 'sqlite:///' + path
        return
    db = server(backend)
    name = new_name()
    url = db.create(name)
    try:
        yield url
    finally:
        db.drop(name)
