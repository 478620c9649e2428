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
"""The durable outbox: incidents and the deliveries they owe.

Everything a bus message changes is committed here before the message is
acknowledged. The schema is written for SQLAlchemy Core so that it runs on
the default SQLite file (WAL mode) as well as on MySQL or PostgreSQL:

* ``messages``: one row per Nova message id, so that a redelivered message
  changes nothing;
* ``incidents``: the messages of one failure (same request id and
  instance), their records as JSON, and whether the incident is ``open``
  (collecting during ``[correlation] group_wait``), ``routed`` (its
  deliveries exist), ``suppressed`` (a rescheduled build that succeeded, or
  no rule matched) or ``digested``;
* ``deliveries``: one row per (incident or digest, receiver), unique, with
  its state (``pending``, ``in_flight``, ``done``, ``dead``), attempts, the
  time of the next attempt and a claim (``claimed_by``, ``claimed_until``)
  so that several workers, or several replicas, never deliver one row at
  once;
* ``dead_letters``: deliveries that failed for good, with the reason;
* ``digests``: per receiver, the incidents folded together during one
  ``[delivery] group_interval`` once the receiver's limit is reached;
* ``leases``: which replica routes (one at a time, so that storm limits
  and digests hold across replicas), until when;
* ``rejected_messages``: bus messages that could not be stored after a few
  tries (see :mod:`nova_error_notifier.endpoints.base`), kept with the
  reason and their error record so that nothing is lost without a trace
  (``nova-error-notifier-manage rejected list``).

Every value fits its column on every backend before it is written:
identifiers longer than their column, or holding control characters, are
replaced by a hash (:func:`fit_key`), so that two different ids never share
a cut prefix; display texts are cut and cleaned (:func:`fit_text`).

Database errors are told apart: a lost connection, a lock timeout or a
deadlock raise :class:`StoreUnavailable` (try again later); anything else
raises :class:`StoreError` (this write cannot succeed as it is).
"""

import contextlib
import hashlib
import json
import os
import re
import stat
import threading
import time
import uuid

from oslo_config import cfg
from oslo_db import api as db_api
from oslo_db import exception as db_exc
from oslo_db import options as db_options
from oslo_db.sqlalchemy import engines
from oslo_db.sqlalchemy import exc_filters
from oslo_log import log
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy import exc as sa_exc

from nova_error_notifier import migration
from nova_error_notifier import record as rec
from nova_error_notifier import redact

LOG = log.getLogger(__name__)

GROUP = 'delivery'

DELIVERY_OPTS = [
    cfg.StrOpt('connection',
               secret=True,
               deprecated_for_removal=True,
               deprecated_reason='The outbox is configured like every '
                                 'OpenStack service\'s database: use '
                                 '[database] connection.',
               help='SQLAlchemy URL of the outbox database. Deprecated '
                    'alias of [database] connection, which wins when both '
                    'are set.'),
    cfg.StrOpt('state_dir',
               help='Directory of the default SQLite outbox, used when '
                    '[database] connection is not set. Default: '
                    '/var/lib/nova-error-notifier, or '
                    '~/.local/state/nova-error-notifier for a user who '
                    'cannot write there.'),
    cfg.IntOpt('workers',
               default=4,
               min=1,
               help='Delivery worker threads.'),
    cfg.IntOpt('retry_deadline',
               default=3600,
               min=0,
               help='Seconds during which a retryable failure is retried '
                    '(exponential backoff with jitter); after that the '
                    'delivery goes to the dead letters.'),
    cfg.FloatOpt('retry_initial_delay',
                 default=2.0,
                 min=0.01,
                 help='Seconds before the first retry.'),
    cfg.FloatOpt('retry_max_delay',
                 default=300.0,
                 min=0.01,
                 help='Longest wait between two attempts.'),
    cfg.StrOpt('fallback_receiver',
               help='Receiver that gets an alert whose delivery to another '
                    'receiver failed for good.'),
    cfg.IntOpt('group_interval',
               default=120,
               min=1,
               help='Seconds of the storm control window: per receiver, '
                    'at most max_alerts_per_interval single alerts in it; '
                    'past that, incidents are folded into one digest per '
                    'receiver and interval.'),
    cfg.IntOpt('max_alerts_per_interval',
               default=20,
               min=0,
               help='Single alerts per receiver and group_interval before '
                    'digests take over; 0 means no limit.'),
    cfg.IntOpt('digest_max_items',
               default=50,
               min=1,
               help='Incidents listed in a digest; beyond that they are '
                    'counted.'),
    cfg.IntOpt('lease',
               default=120,
               min=5,
               help='Seconds a delivery attempt may take before another '
                    'worker or replica may take the delivery over.'),
    cfg.IntOpt('retention',
               default=7 * 24 * 3600,
               min=60,
               help='Seconds finished incidents, deliveries and seen '
                    'message ids are kept.'),
]

metadata = sa.MetaData()

#: Text of JSON documents (records, alerts, digest members): MySQL's TEXT
#: stops at 64 KiB, MEDIUMTEXT at 16 MiB.
JSONText = sa.Text().with_variant(mysql.MEDIUMTEXT(), 'mysql')
#: Seconds since the epoch, to the microsecond: MySQL's FLOAT is single
#: precision (whole minutes at today's epoch), DOUBLE is not.
Time = sa.Float().with_variant(mysql.DOUBLE(asdecimal=False), 'mysql')
#: Length of the identifier and name columns.
KEY_LENGTH = 255
#: Identifier columns compare byte for byte on MySQL too (its default
#: collations take "ABC" and "abc " for "abc").
KeyString = sa.String(KEY_LENGTH).with_variant(
    mysql.VARCHAR(KEY_LENGTH, charset='utf8mb4', collation='utf8mb4_bin'),
    'mysql')
#: Longest display text kept in a Text column (a MySQL TEXT holds 65,535
#: bytes: 16,000 characters of up to four bytes).
MAX_TEXT = 16000
_HASHED = 'sha256:'
_KEY_UNSAFE_RE = re.compile('[\x00-\x1f\x7f-\x9f]|\\A\\s|\\s\\Z')
_NUL_RE = re.compile('[\x00\ud800-\udfff]')


def fit_key(value, length=KEY_LENGTH):
    """An identifier that fits a ``String(length)`` key column.

    Short, clean values are kept as they are; a longer one, one with
    control characters (a NUL byte, which PostgreSQL refuses) or leading or
    trailing white space (which MySQL ignores when it compares), or one
    that looks like a hash already, becomes ``sha256:<hex>`` of the whole
    value: two different ids never map to one key, as a cut prefix would.
    """
    if value is None:
        return None
    value = str(value)
    if len(value) <= length and not value.startswith(_HASHED) and \
            not _KEY_UNSAFE_RE.search(value) and \
            not _NUL_RE.search(value):
        return value
    return _HASHED + hashlib.sha256(
        value.encode('utf-8', 'surrogatepass')).hexdigest()


def fit_text(value, length=MAX_TEXT):
    """A display text cut to ``length`` characters, NUL bytes escaped."""
    if value is None:
        return None
    value = _NUL_RE.sub(lambda m: '\\x%02x' % ord(m.group(0))
                        if m.group(0) == '\x00' else '\ufffd', str(value))
    if len(value) > length:
        value = value[:length - 3] + '...'
    return value


messages = sa.Table(
    'messages', metadata,
    sa.Column('message_id', KeyString, primary_key=True),
    sa.Column('incident_id', sa.String(36), nullable=True),
    sa.Column('received_at', Time, nullable=False, index=True),
)

incidents = sa.Table(
    'incidents', metadata,
    sa.Column('id', sa.String(36), primary_key=True),
    sa.Column('key', KeyString, nullable=False, unique=True),
    sa.Column('request_id', KeyString, nullable=True, index=True),
    sa.Column('instance_uuid', KeyString, nullable=True, index=True),
    sa.Column('state', sa.String(16), nullable=False, index=True),
    sa.Column('records', JSONText, nullable=False),
    sa.Column('message_count', sa.Integer, nullable=False, default=1),
    sa.Column('resolved', sa.Boolean, nullable=False, default=False),
    sa.Column('opened_at', Time, nullable=False),
    sa.Column('updated_at', Time, nullable=False),
    sa.Column('due_at', Time, nullable=False, index=True),
    sa.Column('note', sa.String(255), nullable=True),
)

deliveries = sa.Table(
    'deliveries', metadata,
    sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
    sa.Column('incident_id', sa.String(36), nullable=False),
    sa.Column('receiver', sa.String(255), nullable=False),
    sa.Column('rule', sa.String(255), nullable=True),
    sa.Column('kind', sa.String(16), nullable=False, default='single'),
    sa.Column('alert', JSONText, nullable=False),
    sa.Column('state', sa.String(16), nullable=False, index=True),
    sa.Column('attempts', sa.Integer, nullable=False, default=0),
    sa.Column('created_at', Time, nullable=False),
    sa.Column('next_attempt_at', Time, nullable=False, index=True),
    sa.Column('claimed_by', sa.String(64), nullable=True),
    sa.Column('claimed_until', Time, nullable=True),
    sa.Column('finished_at', Time, nullable=True),
    sa.Column('last_error', sa.Text, nullable=True),
    sa.UniqueConstraint('incident_id', 'receiver',
                        name='uniq_deliveries0incident_id0receiver'),
    # Storm control counts a receiver's recent single alerts.
    sa.Index('deliveries_receiver_created_at_idx', 'receiver', 'created_at'),
)

dead_letters = sa.Table(
    'dead_letters', metadata,
    sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
    sa.Column('delivery_id', sa.Integer, nullable=False, unique=True),
    sa.Column('incident_id', sa.String(36), nullable=False),
    sa.Column('receiver', sa.String(255), nullable=False),
    sa.Column('reason', sa.Text, nullable=True),
    sa.Column('created_at', Time, nullable=False),
)

digests = sa.Table(
    'digests', metadata,
    sa.Column('id', sa.String(36), primary_key=True),
    sa.Column('receiver', sa.String(255), nullable=False),
    sa.Column('rule', sa.String(255), nullable=True),
    sa.Column('state', sa.String(16), nullable=False, index=True),
    sa.Column('members', JSONText, nullable=False),
    sa.Column('count', sa.Integer, nullable=False),
    sa.Column('opened_at', Time, nullable=False),
    sa.Column('due_at', Time, nullable=False),
)


rejected_messages = sa.Table(
    'rejected_messages', metadata,
    sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
    sa.Column('message_key', KeyString, nullable=False, unique=True),
    sa.Column('event_type', sa.String(255), nullable=True),
    sa.Column('priority', sa.String(16), nullable=True),
    sa.Column('publisher_id', sa.String(255), nullable=True),
    sa.Column('reason', sa.Text, nullable=True),
    sa.Column('attempts', sa.Integer, nullable=False, default=1),
    sa.Column('first_seen', Time, nullable=False, index=True),
    sa.Column('last_seen', Time, nullable=False),
    #: The error record (JSON, ASCII), or what could be read of it.
    sa.Column('body', JSONText, nullable=True),
)


leases = sa.Table(
    'leases', metadata,
    #: What the lease is for: ``router``.
    sa.Column('name', sa.String(64), primary_key=True),
    sa.Column('owner', sa.String(64), nullable=False),
    sa.Column('expires_at', Time, nullable=False),
)


class StoreUnavailable(rec.RetryLater):
    """The outbox cannot be written now; the message must be requeued.

    A lost connection, a lock wait timeout, a deadlock, a full pool: trying
    again later can succeed.
    """


class StoreError(Exception):
    """This write cannot succeed as it is.

    An integrity or data error, a value the driver refuses, a bug: the same
    write will fail again. ``retryable`` is set for a unique key another
    writer took first, which a later try may get past.
    """

    def __init__(self, message, retryable=False):
        super().__init__(message)
        self.retryable = retryable


class StoreConfigError(ValueError):
    """The outbox cannot be opened safely as configured."""


DATABASE_GROUP = 'database'


def register_opts(conf):
    conf.register_opts(DELIVERY_OPTS, group=GROUP)
    # oslo.db's [database] options (connection, max_retries,
    # connection_recycle_time, mysql_wsrep_sync_wait...), as every
    # OpenStack service has them.
    conf.register_opts(db_options.database_opts, group=DATABASE_GROUP)


def list_opts():
    return [(GROUP, DELIVERY_OPTS),
            (DATABASE_GROUP, db_options.database_opts)]


SYSTEM_STATE_DIR = '/var/lib/nova-error-notifier'


def default_state_dir():
    """/var/lib/nova-error-notifier where it can be used, else per user."""
    try:
        os.makedirs(SYSTEM_STATE_DIR, mode=0o700, exist_ok=True)
        if os.access(SYSTEM_STATE_DIR, os.W_OK | os.X_OK):
            return SYSTEM_STATE_DIR
    except OSError:
        pass
    base = os.environ.get('XDG_STATE_HOME') or os.path.join(
        os.path.expanduser('~'), '.local', 'state')
    return os.path.join(base, 'nova-error-notifier')


def connection_url(conf):
    """[database] connection, its deprecated alias, or the SQLite file."""
    register_opts(conf)
    options = conf[GROUP]
    if conf[DATABASE_GROUP].connection:
        return conf[DATABASE_GROUP].connection
    if options.connection:
        return options.connection
    state_dir = options.state_dir or default_state_dir()
    return 'sqlite:///' + os.path.join(os.path.abspath(state_dir),
                                       'nova_error_notifier.sqlite')


def _private_dir(path):
    """Create ``path`` 0700, or tighten it; refuse a shared directory."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path)
    except OSError as exc:
        raise StoreConfigError('outbox directory %s: %s' % (
            path, exc.strerror or exc))
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o077:
        return
    if mode & (stat.S_ISVTX | 0o002) or info.st_uid != os.geteuid():
        raise StoreConfigError(
            'outbox directory %s (mode %04o, owner uid %d) can be read or '
            'written by other users: give the outbox a directory of its own '
            '([delivery] state_dir), owned by the service\'s user, mode 0700'
            % (path, mode, info.st_uid))
    os.chmod(path, 0o700)
    LOG.warning('Outbox directory %s had mode %04o: tightened to 0700',
                path, mode)


def _private_file(path, create=False):
    """Make the file ``path`` 0600 (creating it empty if asked)."""
    if create:
        try:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as exc:
            raise StoreConfigError('outbox file %s: %s' % (
                path, exc.strerror or exc))
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o077:
        return
    try:
        os.chmod(path, 0o600)
    except OSError as exc:
        raise StoreConfigError(
            'outbox file %s has mode %04o and cannot be made private: %s'
            % (path, mode, exc.strerror or exc))
    LOG.warning('Outbox file %s had mode %04o: tightened to 0600', path,
                mode)


def sqlite_path(url):
    """The file of a SQLite URL, or None (in memory)."""
    path = url.split(':///', 1)[1] if ':///' in url else ''
    path = path.split('?', 1)[0]
    if not path or path == ':memory:' or path.startswith('file:'):
        return None
    return os.path.abspath(path)


def _sqlite_pragmas(dbapi_connection, connection_record):
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer; NORMAL: a commit survives a
    # crash of the process (kill -9); only a power loss can lose the last
    # transactions.
    cursor.execute('PRAGMA journal_mode=WAL')
    cursor.execute('PRAGMA synchronous=NORMAL')
    cursor.execute('PRAGMA busy_timeout=10000')
    cursor.execute('PRAGMA foreign_keys=ON')
    cursor.close()


class Store:
    """Transactions on the outbox. Thread-safe."""

    #: oslo.db options passed to its engine for a shared database.
    ENGINE_OPTIONS = ('mysql_sql_mode', 'mysql_wsrep_sync_wait',
                      'connection_recycle_time', 'connection_debug',
                      'max_pool_size', 'max_overflow', 'pool_timeout',
                      'connection_trace', 'max_retries', 'retry_interval',
                      'connection_parameters')

    def __init__(self, url, clock=time.time, engine_options=None):
        self.url = url
        self.clock = clock
        self.owner = '%s-%s' % (os.getpid(), uuid.uuid4().hex[:8])
        self.is_sqlite = url.startswith('sqlite')
        self._secrets = redact.url_secrets(url)
        #: Leases this process holds: name -> when they run out.
        self._leases = {}
        self.path = sqlite_path(url) if self.is_sqlite else None
        if self.path:
            # The outbox holds what tenants' failures say: 0700 and 0600
            # whatever the umask.
            _private_dir(os.path.dirname(self.path))
            _private_file(self.path, create=True)
            for suffix in ('-wal', '-shm', '-journal'):
                _private_file(self.path + suffix)
        if self.is_sqlite:
            # One connection for the whole process, used under one lock:
            # SQLite has one writer at a time anyway, and a connection's
            # page cache is only good until another connection writes.
            # Several pooled connections taking turns would each re-read
            # the pages the others changed, at every transaction.
            self.engine = sa.create_engine(
                url, connect_args={'check_same_thread': False,
                                   'timeout': 10},
                poolclass=sa.pool.StaticPool)
            sa.event.listen(self.engine, 'connect', _sqlite_pragmas)
            # oslo.db's exception filters: deadlocks, lost connections and
            # duplicate keys are told apart on every backend alike.
            exc_filters.register_engine(self.engine)
        else:
            # oslo.db's engine: connection retries at start-up, pool
            # recycling, MySQL's sql_mode and Galera's wsrep_sync_wait, its
            # exception filters.
            with self._guard():
                self.engine = engines.create_engine(
                    url, **dict(engine_options or {}))
        self._lock = threading.Lock() if self.is_sqlite else None

    @classmethod
    def from_conf(cls, conf):
        url = connection_url(conf)
        options = conf[DATABASE_GROUP]
        engine_options = {name: options[name]
                          for name in cls.ENGINE_OPTIONS}
        return cls(url, engine_options=engine_options)

    def upgrade(self, revision='head'):
        """Bring the schema to ``revision`` (``db sync``)."""
        with self._guard():
            lock = self._lock or contextlib.nullcontext()
            with lock:
                before, after = migration.upgrade(self.engine, revision)
        self._private_files()
        return before, after

    def create_schema(self):
        """The schema at head (what the default SQLite outbox does)."""
        return self.upgrade()

    def schema_problem(self):
        """Why the schema cannot be used as it is (not at head), or None."""
        with self._guard():
            lock = self._lock or contextlib.nullcontext()
            with lock:
                return migration.problem(self.engine)

    def schema_version(self):
        """(revision or None, head)."""
        with self._guard():
            lock = self._lock or contextlib.nullcontext()
            with lock:
                return migration.version(self.engine)[0], migration.head()

    def _private_files(self):
        if self.path:
            # SQLite makes -wal and -shm with the database's mode; make
            # sure of it.
            for suffix in ('', '-wal', '-shm'):
                _private_file(self.path + suffix)

    def describe(self):
        """The database URL, its password and query secrets masked."""
        return redact.url(self.url)

    def scrub(self, text):
        """``text`` without the database's password or URL secrets."""
        return redact.text(text, self._secrets)

    # -- transactions --------------------------------------------------------

    #: Errors that a later try can get past: the connection, a lock, a
    #: deadlock, a full pool.
    TRANSIENT = (sa_exc.OperationalError, sa_exc.InterfaceError,
                 sa_exc.DisconnectionError, sa_exc.TimeoutError, OSError)

    @contextlib.contextmanager
    def _guard(self):
        """Database failures become StoreUnavailable or StoreError.

        Nothing else escapes: the caller either requeues the message
        (StoreUnavailable) or keeps it as rejected (StoreError), and never
        acknowledges it unstored.
        """
        try:
            yield
        except (StoreUnavailable, StoreError):
            raise
        except (db_exc.DBDeadlock, db_exc.DBConnectionError,
                db_exc.RetryRequest) as exc:
            raise StoreUnavailable(self._reason(exc))
        except db_exc.DBDuplicateEntry as exc:
            raise StoreError(self._reason(exc), retryable=True)
        except db_exc.DBError as exc:
            inner = exc.inner_exception
            if isinstance(inner, self.TRANSIENT):
                raise StoreUnavailable(self._reason(exc))
            raise StoreError(self._reason(exc),
                             retryable=isinstance(inner,
                                                  sa_exc.IntegrityError))
        except self.TRANSIENT as exc:
            raise StoreUnavailable(self._reason(exc))
        except sa_exc.IntegrityError as exc:
            raise StoreError(self._reason(exc), retryable=True)
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(self._reason(exc))
            raise StoreError(self._reason(exc))
        except Exception as exc:
            raise StoreError(self._reason(exc))

    def _reason(self, exc):
        inner = getattr(exc, 'inner_exception', None)
        if inner is not None:
            exc = inner
        orig = getattr(exc, 'orig', None)
        name = type(orig if orig is not None else exc).__name__
        text = str(orig if orig is not None else exc).split('\n')[0]
        return fit_text(self.scrub('%s: %s' % (name, text)), 500)

    def ping(self):
        """Whether the outbox answers at all.

        Tells a message that cannot be stored from a database that is down.
        """
        try:
            self.read(lambda conn: conn.execute(sa.text('SELECT 1')).scalar())
        except (StoreUnavailable, StoreError):
            return False
        return True

    def write(self, work):
        """Run ``work(connection)`` in one transaction and return its value.

        A deadlock or a lost connection (another replica, a Galera
        failover) runs the whole transaction again, a few times, before
        giving up.

        :raises StoreUnavailable: when the database cannot be written.
        :raises StoreError: when this write cannot succeed.
        """
        with self._guard():
            return self._write_retried(work)

    @db_api.wrap_db_retry(max_retries=4, retry_interval=0.05,
                          inc_retry_interval=True, max_retry_interval=1,
                          retry_on_deadlock=True, retry_on_disconnect=True,
                          jitter=True)
    def _write_retried(self, work):
        lock = self._lock or contextlib.nullcontext()
        with lock, self.engine.begin() as connection:
            return work(connection)

    def read(self, work):
        lock = self._lock or contextlib.nullcontext()
        with self._guard(), lock, self.engine.connect() as connection:
            return work(connection)

    def purge(self, retention):
        """Forget finished work older than ``retention`` seconds.

        Dead letters and what they point to stay until purged by an
        operator.
        """
        cutoff = self.clock() - retention

        def work(conn):
            counts = {}
            counts['messages'] = conn.execute(messages.delete().where(
                messages.c.received_at < cutoff)).rowcount
            counts['deliveries'] = conn.execute(deliveries.delete().where(
                deliveries.c.state == 'done',
                deliveries.c.finished_at < cutoff)).rowcount
            live = sa.select(deliveries.c.incident_id).where(
                deliveries.c.state != 'done')
            counts['incidents'] = conn.execute(incidents.delete().where(
                incidents.c.state != 'open',
                incidents.c.updated_at < cutoff,
                incidents.c.id.not_in(live))).rowcount
            counts['digests'] = conn.execute(digests.delete().where(
                digests.c.state == 'closed',
                digests.c.due_at < cutoff)).rowcount
            return counts
        return self.write(work)

    # -- operator views ------------------------------------------------------

    def pending(self):
        def work(conn):
            return [dict(row._mapping) for row in conn.execute(
                sa.select(deliveries.c.id, deliveries.c.incident_id,
                          deliveries.c.receiver, deliveries.c.kind,
                          deliveries.c.state, deliveries.c.attempts,
                          deliveries.c.next_attempt_at,
                          deliveries.c.last_error)
                .where(deliveries.c.state.in_(('pending', 'in_flight')))
                .order_by(deliveries.c.next_attempt_at))]
        return self.read(work)

    def dead(self):
        def work(conn):
            return [dict(row._mapping) for row in conn.execute(
                sa.select(dead_letters).order_by(dead_letters.c.id))]
        return self.read(work)

    def retry_dead(self, ids=None):
        """Put dead letters back into the queue; return how many."""
        now = self.clock()

        def work(conn):
            query = sa.select(dead_letters.c.id, dead_letters.c.delivery_id)
            if ids:
                query = query.where(dead_letters.c.id.in_(ids))
            rows = conn.execute(query).all()
            for row in rows:
                conn.execute(deliveries.update().where(
                    deliveries.c.id == row.delivery_id).values(
                        state='pending', attempts=0, created_at=now,
                        next_attempt_at=now, claimed_by=None,
                        claimed_until=None, finished_at=None))
                conn.execute(dead_letters.delete().where(
                    dead_letters.c.id == row.id))
            return len(rows)
        return self.write(work)

    def _delete(self, table, ids=None):
        """Delete every row of ``table`` (or those ids); return how many."""
        def work(conn):
            query = table.delete()
            if ids:
                query = query.where(table.c.id.in_(ids))
            return conn.execute(query).rowcount
        return self.write(work)

    def purge_dead(self, ids=None):
        return self._delete(dead_letters, ids)

    # -- leases ---------------------------------------------------------------

    def take_lease(self, conn, name, ttl):
        """Whether this process holds the lease ``name`` (taken or renewed).

        Compare-and-swap on the row, so that two replicas never both hold
        it; a holder that stopped renewing loses it after ``ttl`` seconds.
        """
        now = self.clock()
        held = self._leases.get(name)
        if held is not None and now < held - ttl / 2:
            # Ours for a while yet: renewed only past half its time, not
            # at every routing cycle (a write under SQLite's one lock).
            return True
        row = conn.execute(sa.select(leases).where(
            leases.c.name == name)).first()
        if row is None:
            try:
                with conn.begin_nested():
                    conn.execute(leases.insert().values(
                        name=name, owner=self.owner, expires_at=now + ttl))
            except (sa_exc.IntegrityError, db_exc.DBDuplicateEntry):
                return False          # another replica took it first
            self._leases[name] = now + ttl
            return True
        if row.owner != self.owner and row.expires_at > now:
            self._leases.pop(name, None)
            return False
        taken = conn.execute(leases.update().where(
            leases.c.name == name, leases.c.owner == row.owner,
            leases.c.expires_at == row.expires_at).values(
                owner=self.owner, expires_at=now + ttl)).rowcount == 1
        if taken:
            self._leases[name] = now + ttl
        else:
            self._leases.pop(name, None)
        return taken

    def forget_leases(self):
        """Trust no lease renewal made in a transaction that failed."""
        self._leases.clear()

    # -- rejected messages --------------------------------------------------

    def add_rejected(self, message_key, reason, event_type=None,
                     priority=None, publisher_id=None, body=None):
        """Keep a message that could not be stored; return its row id.

        A message rejected again (redelivered by another replica) counts
        one more attempt on its row.
        """
        now = self.clock()
        rt = rejected_messages
        key = fit_key(message_key or 'unknown:%s' % uuid.uuid4())
        values = {
            'event_type': fit_text(event_type, KEY_LENGTH),
            'priority': fit_text(priority, 16),
            'publisher_id': fit_text(publisher_id, KEY_LENGTH),
            'reason': fit_text(reason, 2000),
            'body': fit_text(body, 1000000),
        }

        def work(conn):
            row = conn.execute(sa.select(rt.c.id).where(
                rt.c.message_key == key)).first()
            if row is not None:
                conn.execute(rt.update().where(rt.c.id == row.id).values(
                    attempts=rt.c.attempts + 1, last_seen=now,
                    reason=values['reason']))
                return row.id
            return conn.execute(rt.insert().values(
                message_key=key, attempts=1, first_seen=now, last_seen=now,
                **values)).inserted_primary_key[0]
        return self.write(work)

    def rejected(self):
        """Every rejected message, oldest first, as dicts."""
        rt = rejected_messages
        return self.read(lambda conn: [
            dict(row._mapping) for row in conn.execute(
                sa.select(rt).order_by(rt.c.first_seen, rt.c.id))])

    def rejected_one(self, rejected_id):
        rt = rejected_messages
        row = self.read(lambda conn: conn.execute(
            sa.select(rt).where(rt.c.id == rejected_id)).first())
        return dict(row._mapping) if row is not None else None

    def purge_rejected(self, ids=None):
        """Forget rejected messages (all, or those ids); return how many."""
        return self._delete(rejected_messages, ids)

    def counts(self):
        def work(conn):
            result = {}
            for table, column in ((incidents, incidents.c.state),
                                  (deliveries, deliveries.c.state)):
                for state, count in conn.execute(
                        sa.select(column, sa.func.count())
                        .group_by(column)):
                    result['%s.%s' % (table.name, state)] = count
            for table in (dead_letters, rejected_messages):
                result[table.name] = conn.execute(
                    sa.select(sa.func.count()).select_from(table)).scalar()
            return result
        return self.read(work)


def dumps(value):
    """JSON text for a JSON column; always valid UTF-8.

    Control characters (a NUL byte) are escaped by JSON itself; a lone
    surrogate, which no database can store as UTF-8, makes the whole
    document ASCII with escapes.
    """
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if not text.isascii():
        try:
            text.encode('utf-8')
        except UnicodeEncodeError:
            text = json.dumps(value, ensure_ascii=True, sort_keys=True)
    return text


def loads(text):
    return json.loads(text)
