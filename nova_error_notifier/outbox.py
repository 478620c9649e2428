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
* ``incidents``: the messages of one failure (same request id, instance
  and region: the bus's), their records as JSON, and whether the incident
  is ``open``
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

Every statement of the stages (grouping, routing, storm control, the
delivery workers) is a named method of :class:`Transaction`, the object
:meth:`Store.write` and :meth:`Store.read` hand to their work; the
statements are built once, at import. JSON columns (records, alerts, digest
members) go in and come out as text (:func:`dumps`, :func:`loads`), so that
a stage decodes a document only when it needs it.
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

#: The [delivery] options of the outbox and the delivery workers (storm
#: control declares its own: :mod:`nova_error_notifier.storm`).
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
#: Records kept per incident (its message count goes on beyond).
MAX_RECORDS = 50
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
    #: Region of the bus the incident's messages came from (fit_key), NULL
    #: for the default bus without a region. Incidents of two regions never
    #: merge.
    sa.Column('region', KeyString, nullable=True),
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


def transient(exc):
    """Whether a database error may pass on a later try.

    A lost connection, a lock, a deadlock, a full pool (what
    :meth:`Store.write` raises as :class:`StoreUnavailable`), as opposed
    to a write that cannot succeed as it is.
    """
    if isinstance(exc, (StoreUnavailable, db_exc.DBDeadlock,
                        db_exc.DBConnectionError, db_exc.RetryRequest)):
        return True
    if isinstance(exc, db_exc.DBError):
        return isinstance(exc.inner_exception, Store.TRANSIENT)
    if isinstance(exc, Store.TRANSIENT):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and \
        bool(exc.connection_invalidated)


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
        """Run ``work(transaction)`` in one transaction and return its value.

        ``transaction`` is a :class:`Transaction` on the connection.

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
            return work(Transaction(connection, self))

    def read(self, work):
        """Run ``work(transaction)`` on a connection, without committing."""
        lock = self._lock or contextlib.nullcontext()
        with self._guard(), lock, self.engine.connect() as connection:
            return work(Transaction(connection, self))

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

        ``conn`` is the :class:`Transaction` of a :meth:`write`.

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


# -- the statements of the stages ---------------------------------------------
#
# Built once: compiling a statement costs more than running it on SQLite.

_msg = messages
_inc = incidents
_dl = deliveries
_dg = digests

# Grouping.
_SEEN = sa.select(_msg.c.message_id).where(
    _msg.c.message_id.in_(sa.bindparam('keys', expanding=True)))
_INSERT_MESSAGES = _msg.insert()
_INCIDENT_BY_KEY = sa.select(_inc).where(_inc.c.key == sa.bindparam('key'))
_INCIDENTS_BY_KEYS = sa.select(_inc).where(
    _inc.c.key.in_(sa.bindparam('keys', expanding=True)))
# A region is compared as NULL-safe equality (IS on SQLite, <=> on MySQL,
# IS NOT DISTINCT FROM on PostgreSQL): NULL is the default bus's region.
_INCIDENTS_OF_REQUEST = sa.select(_inc).where(
    _inc.c.request_id == sa.bindparam('request_id'),
    _inc.c.region.is_not_distinct_from(sa.bindparam('region'))).limit(2)
_OPEN_OF_INSTANCES = sa.select(
    _inc.c.id, _inc.c.instance_uuid, _inc.c.request_id).where(
        _inc.c.instance_uuid.in_(sa.bindparam('uuids', expanding=True)),
        _inc.c.region.is_not_distinct_from(sa.bindparam('region')),
        _inc.c.state == 'open')
_RESOLVE_OPEN = _inc.update().where(
    _inc.c.id.in_(sa.bindparam('ids', expanding=True)),
    _inc.c.state == 'open').values(resolved=True)
# Compare-and-swap on the message count: another replica that added to the
# incident meanwhile makes this update change nothing, and the batch is
# stored again on what that replica wrote (no lost records).
_UPDATE_INCIDENT = _inc.update().where(
    _inc.c.id == sa.bindparam('b_id'),
    _inc.c.message_count == sa.bindparam('b_old_count')).values(
        key=sa.bindparam('b_key'),
        instance_uuid=sa.bindparam('b_instance_uuid'),
        records=sa.bindparam('b_records'),
        message_count=sa.bindparam('b_message_count'),
        resolved=sa.bindparam('b_resolved'),
        updated_at=sa.bindparam('b_updated_at'))
_INSERT_INCIDENTS = _inc.insert()

# Routing.
_DUE_INCIDENTS = sa.select(_inc).where(
    _inc.c.state == 'open', _inc.c.due_at <= sa.bindparam('b_now')).order_by(
        _inc.c.due_at).limit(sa.bindparam('b_limit'))
_OTHERS_OF_REQUEST = sa.select(_inc).where(
    _inc.c.request_id == sa.bindparam('b_request_id'),
    _inc.c.region.is_not_distinct_from(sa.bindparam('b_region')),
    _inc.c.id != sa.bindparam('b_id')).limit(20)
_MERGE_INTO = _inc.update().where(
    _inc.c.id == sa.bindparam('b_id'),
    _inc.c.message_count == sa.bindparam('b_old_count')).values(
        records=sa.bindparam('b_records'),
        message_count=sa.bindparam('b_message_count'),
        updated_at=sa.bindparam('b_updated_at'))
_FINISH_INCIDENT = _inc.update().where(
    _inc.c.id == sa.bindparam('b_id'), _inc.c.state == 'open').values(
        state=sa.bindparam('b_state'), note=sa.bindparam('b_note'),
        updated_at=sa.bindparam('b_updated_at'))
_NEXT_INCIDENT = sa.select(sa.func.min(_inc.c.due_at)).where(
    _inc.c.state == 'open')
_NEXT_DIGEST = sa.select(sa.func.min(_dg.c.due_at)).where(
    _dg.c.state == 'collecting')

# Storm control.
_SINGLES_SENT = sa.select(sa.func.count()).select_from(_dl).where(
    _dl.c.receiver == sa.bindparam('b_receiver'), _dl.c.kind == 'single',
    _dl.c.created_at >= sa.bindparam('b_since'))
_COLLECTING_DIGEST = sa.select(_dg.c.id, _dg.c.count).where(
    _dg.c.receiver == sa.bindparam('b_receiver'),
    _dg.c.state == 'collecting')
_OPEN_DIGEST = _dg.insert()
_DIGEST_MEMBERS = sa.select(_dg.c.members).where(
    _dg.c.id == sa.bindparam('b_id'))
_COUNT_IN_DIGEST = _dg.update().where(_dg.c.id == sa.bindparam('b_id')).values(
    count=_dg.c.count + 1)
_ADD_TO_DIGEST = _dg.update().where(_dg.c.id == sa.bindparam('b_id')).values(
    count=_dg.c.count + 1, members=sa.bindparam('b_members'))
_DUE_DIGESTS = sa.select(_dg).where(
    _dg.c.state == 'collecting', _dg.c.due_at <= sa.bindparam('b_now'))
_CLOSE_DIGEST = _dg.update().where(_dg.c.id == sa.bindparam('b_id')).values(
    state='closed')

# Deliveries.
_INSERT_DELIVERY = _dl.insert()
_DELIVERY_OF = sa.select(_dl.c.id).where(
    _dl.c.incident_id == sa.bindparam('b_incident_id'),
    _dl.c.receiver == sa.bindparam('b_receiver'))
_NEXT_PENDING = sa.select(_dl).where(
    _dl.c.state == 'pending',
    _dl.c.next_attempt_at <= sa.bindparam('b_now')).order_by(
        _dl.c.next_attempt_at, _dl.c.id).limit(1)
_CLAIM = _dl.update().where(
    _dl.c.id == sa.bindparam('b_id'), _dl.c.state == 'pending').values(
        state='in_flight', claimed_by=sa.bindparam('b_owner'),
        claimed_until=sa.bindparam('b_until'))
_HAND_BACK_ALL = _dl.update().where(_dl.c.state == 'in_flight').values(
    state='pending', claimed_by=None, claimed_until=None,
    next_attempt_at=sa.bindparam('b_now'))
_HAND_BACK_EXPIRED = _dl.update().where(
    _dl.c.state == 'in_flight',
    _dl.c.claimed_until < sa.bindparam('b_now')).values(
        state='pending', claimed_by=None, claimed_until=None,
        next_attempt_at=sa.bindparam('b_now'))
_ADD_DEAD_LETTER = dead_letters.insert()
_BATCH = 500


class Transaction:
    """One transaction on the outbox, as the stages use it.

    :meth:`Store.write` and :meth:`Store.read` hand one to their work. Each
    method is one named statement (or a few, for chunked lists); rows come
    back as SQLAlchemy rows, read by column name (``row.id``,
    ``row.records``). A compare-and-swap says whether it changed the row
    (True) or found it changed by another writer (False).
    """

    __slots__ = ('connection', 'store')

    def __init__(self, connection, store):
        self.connection = connection
        self.store = store

    def execute(self, statement, parameters=None):
        """Run a statement of one's own (tests, tools, ``ping``)."""
        return self.connection.execute(statement, parameters)

    def savepoint(self):
        """A nested transaction (``with tx.savepoint():``).

        An error inside rolls back only what was written in it.
        """
        return self.connection.begin_nested()

    begin_nested = savepoint

    def take_lease(self, name, ttl):
        """:meth:`Store.take_lease` in this transaction."""
        return self.store.take_lease(self, name, ttl)

    # -- messages and incidents (grouping) -------------------------------

    def seen_message_ids(self, keys):
        """The message ids among ``keys`` that the outbox knows already."""
        seen = set()
        for start in range(0, len(keys), _BATCH):
            seen.update(self.connection.execute(_SEEN, {
                'keys': keys[start:start + _BATCH]}).scalars())
        return seen

    def insert_messages(self, rows):
        """Remember message ids.

        :param rows: dicts of ``message_id``, ``incident_id``,
            ``received_at``.
        """
        if rows:
            self.connection.execute(_INSERT_MESSAGES, rows)

    def incident_by_key(self, key):
        """The incident of ``key``, or None."""
        return self.connection.execute(_INCIDENT_BY_KEY, {'key': key}).first()

    def incidents_by_keys(self, keys):
        """The incidents of those keys: a dict of key to row.

        One query per few hundred keys, where :meth:`incident_by_key`
        takes one per key (a round trip each on a database server).
        """
        keys = sorted(set(keys))
        found = {}
        for start in range(0, len(keys), _BATCH):
            for row in self.connection.execute(_INCIDENTS_BY_KEYS, {
                    'keys': keys[start:start + _BATCH]}):
                found[row.key] = row
        return found

    def incidents_of_request(self, request_id, region=None):
        """Two incidents of the request in ``region`` at most.

        Enough to tell one. ``region`` None is the default bus's.
        """
        return self.connection.execute(_INCIDENTS_OF_REQUEST, {
            'request_id': request_id, 'region': region}).all()

    def open_incidents_of_instances(self, uuids, region=None):
        """The open incidents of those instances in ``region``.

        Rows of (id, instance_uuid, request_id); ``region`` None is the
        default bus's.
        """
        uuids = list(uuids)
        found = []
        for start in range(0, len(uuids), _BATCH):
            found.extend(self.connection.execute(_OPEN_OF_INSTANCES, {
                'uuids': uuids[start:start + _BATCH], 'region': region}))
        return found

    def resolve_open_incidents(self, ids):
        """Mark those incidents, if still open, as resolved.

        Their builds were rescheduled and succeeded.
        """
        self.connection.execute(_RESOLVE_OPEN, {'ids': list(ids)})

    def insert_incidents(self, rows):
        """New incidents: dicts of every column of ``incidents``."""
        if rows:
            self.connection.execute(_INSERT_INCIDENTS, rows)

    def update_incident(self, incident_id, old_count, key, instance_uuid,
                        records, message_count, resolved, updated_at):
        """Rewrite an incident, unless another writer changed it.

        A compare-and-swap on the message count as read (``old_count``):
        False when another writer added to the incident meanwhile.
        """
        return self.connection.execute(_UPDATE_INCIDENT, {
            'b_id': incident_id, 'b_old_count': old_count, 'b_key': key,
            'b_instance_uuid': instance_uuid, 'b_records': records,
            'b_message_count': message_count, 'b_resolved': resolved,
            'b_updated_at': updated_at}).rowcount == 1

    # -- incidents (routing) -----------------------------------------------

    def due_incidents(self, now, limit):
        """Open incidents due by ``now``, earliest first, ``limit`` at most."""
        return self.connection.execute(_DUE_INCIDENTS, {
            'b_now': now, 'b_limit': limit}).all()

    def other_incidents_of_request(self, request_id, incident_id,
                                   region=None):
        """The request's incidents in ``region`` but ``incident_id``.

        Twenty at most; ``region`` None is the default bus's.
        """
        return self.connection.execute(_OTHERS_OF_REQUEST, {
            'b_request_id': request_id, 'b_id': incident_id,
            'b_region': region}).all()

    def merge_into_incident(self, incident_id, old_count, records,
                            message_count, updated_at):
        """Set the records and count of an incident, unless it changed.

        A compare-and-swap on the message count: False when a listener
        changed the incident meanwhile.
        """
        return self.connection.execute(_MERGE_INTO, {
            'b_id': incident_id, 'b_old_count': old_count,
            'b_records': records, 'b_message_count': message_count,
            'b_updated_at': updated_at}).rowcount == 1

    def finish_incident(self, incident_id, state, note, updated_at):
        """Take an open incident to ``state``; False if it is not open."""
        return self.connection.execute(_FINISH_INCIDENT, {
            'b_id': incident_id, 'b_state': state, 'b_note': note,
            'b_updated_at': updated_at}).rowcount == 1

    def next_due_times(self):
        """When the first open incident and collecting digest are due.

        A pair; None for either when there is none.
        """
        return (self.connection.execute(_NEXT_INCIDENT).scalar(),
                self.connection.execute(_NEXT_DIGEST).scalar())

    # -- digests (storm control) -------------------------------------------

    def singles_sent_since(self, receiver, since):
        """Single alerts written for ``receiver`` since ``since``."""
        return self.connection.execute(_SINGLES_SENT, {
            'b_receiver': receiver, 'b_since': since}).scalar()

    def collecting_digest(self, receiver):
        """(id, count) of the receiver's collecting digest, or None."""
        return self.connection.execute(_COLLECTING_DIGEST, {
            'b_receiver': receiver}).first()

    def open_digest(self, digest_id, receiver, rule, members, opened_at,
                    due_at):
        """A collecting digest with its first member (``members``: JSON)."""
        self.connection.execute(_OPEN_DIGEST, {
            'id': digest_id, 'receiver': receiver, 'rule': rule,
            'state': 'collecting', 'members': members, 'count': 1,
            'opened_at': opened_at, 'due_at': due_at})

    def digest_members(self, digest_id):
        """The members of a digest, as JSON text."""
        return self.connection.execute(_DIGEST_MEMBERS, {
            'b_id': digest_id}).scalar()

    def count_in_digest(self, digest_id):
        """One more incident in the digest, not listed."""
        self.connection.execute(_COUNT_IN_DIGEST, {'b_id': digest_id})

    def add_to_digest(self, digest_id, members):
        """One more incident in the digest, and its members (JSON) now."""
        self.connection.execute(_ADD_TO_DIGEST, {'b_id': digest_id,
                                                 'b_members': members})

    def due_digests(self, now):
        """The collecting digests due by ``now``."""
        return self.connection.execute(_DUE_DIGESTS, {'b_now': now}).all()

    def close_digest(self, digest_id):
        self.connection.execute(_CLOSE_DIGEST, {'b_id': digest_id})

    # -- deliveries ----------------------------------------------------------

    @staticmethod
    def _delivery(incident_id, receiver, rule, kind, alert, now):
        return {'incident_id': incident_id, 'receiver': receiver,
                'rule': rule, 'kind': kind, 'alert': alert,
                'state': 'pending', 'attempts': 0, 'created_at': now,
                'next_attempt_at': now}

    def insert_delivery(self, incident_id, receiver, rule, kind, alert, now):
        """A pending delivery, due ``now`` (``alert``: JSON).

        A second one for the same (incident, receiver) fails the
        transaction (see :meth:`insert_delivery_once`).
        """
        self.connection.execute(_INSERT_DELIVERY, self._delivery(
            incident_id, receiver, rule, kind, alert, now))

    def insert_delivery_once(self, incident_id, receiver, rule, kind, alert,
                             now):
        """:meth:`insert_delivery`, unless the receiver has it already.

        In a savepoint: returns False, the transaction going on, when the
        (incident, receiver) delivery exists. (oslo.db's exception filters
        raise DBDuplicateEntry for the unique key, on SQLite too.)
        """
        try:
            with self.connection.begin_nested():
                self.insert_delivery(incident_id, receiver, rule, kind,
                                     alert, now)
        except (sa_exc.IntegrityError, db_exc.DBDuplicateEntry):
            return False
        return True

    def delivery_exists(self, incident_id, receiver):
        return self.connection.execute(_DELIVERY_OF, {
            'b_incident_id': incident_id,
            'b_receiver': receiver}).first() is not None

    def claim_delivery(self, now, until):
        """Claim the next pending delivery due by ``now`` until ``until``.

        Returns its row as it was before the claim, or None when there is
        none or another worker claimed it first.
        """
        row = self.connection.execute(_NEXT_PENDING, {'b_now': now}).first()
        if row is None:
            return None
        claimed = self.connection.execute(_CLAIM, {
            'b_id': row.id, 'b_owner': self.store.owner,
            'b_until': until}).rowcount
        return row if claimed == 1 else None

    def update_claimed_delivery(self, delivery_id, **values):
        """Record an outcome on a delivery this store's owner claimed.

        ``values`` are the columns to set.

        A compare-and-swap on the claim: a worker whose lease ran out (and
        whose delivery another worker or replica took over) changes
        nothing, and gets False.
        """
        return self.connection.execute(_dl.update().where(
            _dl.c.id == delivery_id, _dl.c.state == 'in_flight',
            _dl.c.claimed_by == self.store.owner).values(
                **values)).rowcount == 1

    def hand_back_claims(self, now, all_owners=False):
        """Hand in-flight deliveries back to pending, due ``now``.

        Those whose claim ran out, or all of them; returns how many.
        """
        return self.connection.execute(
            _HAND_BACK_ALL if all_owners else _HAND_BACK_EXPIRED,
            {'b_now': now}).rowcount

    def add_dead_letter(self, delivery_id, incident_id, receiver, reason,
                        created_at):
        self.connection.execute(_ADD_DEAD_LETTER, {
            'delivery_id': delivery_id, 'incident_id': incident_id,
            'receiver': receiver, 'reason': reason,
            'created_at': created_at})


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
