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
  ``[delivery] group_interval`` once the receiver's limit is reached.
"""

import contextlib
import json
import os
import threading
import time
import uuid

from oslo_config import cfg
from oslo_log import log
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from nova_error_notifier import record as rec

LOG = log.getLogger(__name__)

GROUP = 'delivery'

DELIVERY_OPTS = [
    cfg.StrOpt('connection',
               secret=True,
               help='SQLAlchemy URL of the outbox database, as oslo.db\'s '
                    '[database] connection (e.g. '
                    'mysql+pymysql://user:pass@db/nova_error_notifier). '
                    'Default: a SQLite file in WAL mode in state_dir.'),
    cfg.StrOpt('state_dir',
               help='Directory of the default SQLite outbox. Default: '
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

messages = sa.Table(
    'messages', metadata,
    sa.Column('message_id', sa.String(255), primary_key=True),
    sa.Column('incident_id', sa.String(36), nullable=True),
    sa.Column('received_at', sa.Float, nullable=False, index=True),
)

incidents = sa.Table(
    'incidents', metadata,
    sa.Column('id', sa.String(36), primary_key=True),
    sa.Column('key', sa.String(255), nullable=False, unique=True),
    sa.Column('request_id', sa.String(255), nullable=True, index=True),
    sa.Column('instance_uuid', sa.String(255), nullable=True, index=True),
    sa.Column('state', sa.String(16), nullable=False, index=True),
    sa.Column('records', sa.Text, nullable=False),
    sa.Column('message_count', sa.Integer, nullable=False, default=1),
    sa.Column('resolved', sa.Boolean, nullable=False, default=False),
    sa.Column('opened_at', sa.Float, nullable=False),
    sa.Column('updated_at', sa.Float, nullable=False),
    sa.Column('due_at', sa.Float, nullable=False, index=True),
    sa.Column('note', sa.String(255), nullable=True),
)

deliveries = sa.Table(
    'deliveries', metadata,
    sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
    sa.Column('incident_id', sa.String(36), nullable=False),
    sa.Column('receiver', sa.String(255), nullable=False),
    sa.Column('rule', sa.String(255), nullable=True),
    sa.Column('kind', sa.String(16), nullable=False, default='single'),
    sa.Column('alert', sa.Text, nullable=False),
    sa.Column('state', sa.String(16), nullable=False, index=True),
    sa.Column('attempts', sa.Integer, nullable=False, default=0),
    sa.Column('created_at', sa.Float, nullable=False),
    sa.Column('next_attempt_at', sa.Float, nullable=False, index=True),
    sa.Column('claimed_by', sa.String(64), nullable=True),
    sa.Column('claimed_until', sa.Float, nullable=True),
    sa.Column('finished_at', sa.Float, nullable=True),
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
    sa.Column('created_at', sa.Float, nullable=False),
)

digests = sa.Table(
    'digests', metadata,
    sa.Column('id', sa.String(36), primary_key=True),
    sa.Column('receiver', sa.String(255), nullable=False),
    sa.Column('rule', sa.String(255), nullable=True),
    sa.Column('state', sa.String(16), nullable=False, index=True),
    sa.Column('members', sa.Text, nullable=False),
    sa.Column('count', sa.Integer, nullable=False),
    sa.Column('opened_at', sa.Float, nullable=False),
    sa.Column('due_at', sa.Float, nullable=False),
)


class StoreUnavailable(rec.RetryLater):
    """The outbox cannot be written now; the message must be requeued."""


def register_opts(conf):
    conf.register_opts(DELIVERY_OPTS, group=GROUP)


def list_opts():
    return [(GROUP, DELIVERY_OPTS)]


SYSTEM_STATE_DIR = '/var/lib/nova-error-notifier'


def default_state_dir():
    """/var/lib/nova-error-notifier where it can be used, else per user."""
    try:
        os.makedirs(SYSTEM_STATE_DIR, exist_ok=True)
        if os.access(SYSTEM_STATE_DIR, os.W_OK | os.X_OK):
            return SYSTEM_STATE_DIR
    except OSError:
        pass
    base = os.environ.get('XDG_STATE_HOME') or os.path.join(
        os.path.expanduser('~'), '.local', 'state')
    return os.path.join(base, 'nova-error-notifier')


def connection_url(conf):
    options = conf[GROUP]
    if options.connection:
        return options.connection
    state_dir = options.state_dir or default_state_dir()
    return 'sqlite:///' + os.path.join(os.path.abspath(state_dir),
                                       'nova_error_notifier.sqlite')


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

    def __init__(self, url, clock=time.time):
        self.url = url
        self.clock = clock
        self.owner = '%s-%s' % (os.getpid(), uuid.uuid4().hex[:8])
        self.is_sqlite = url.startswith('sqlite')
        if self.is_sqlite:
            path = url.split(':///', 1)[1] if ':///' in url else ''
            if path and path != ':memory:':
                os.makedirs(os.path.dirname(os.path.abspath(path)),
                            exist_ok=True)
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
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True)
        self._lock = threading.Lock() if self.is_sqlite else None

    @classmethod
    def from_conf(cls, conf):
        return cls(connection_url(conf))

    def create_schema(self):
        metadata.create_all(self.engine)

    def describe(self):
        """The database URL without its password."""
        try:
            return sa.engine.make_url(self.url).render_as_string(
                hide_password=True)
        except Exception:
            return '(unparsable URL)'

    # -- transactions --------------------------------------------------------

    @staticmethod
    @contextlib.contextmanager
    def _guard():
        """Any database failure becomes StoreUnavailable.

        An integrity error too: the caller requeues the message rather than
        acknowledge it unstored.
        """
        try:
            yield
        except (sa_exc.DBAPIError, sa_exc.DisconnectionError,
                OSError) as exc:
            raise StoreUnavailable('%s: %s' % (type(exc).__name__,
                                               str(exc).split('\n')[0]))

    def write(self, work):
        """Run ``work(connection)`` in one transaction and return its value.

        :raises StoreUnavailable: when the database cannot be written.
        """
        lock = self._lock or contextlib.nullcontext()
        with self._guard(), lock, self.engine.begin() as connection:
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

    def purge_dead(self, ids=None):
        def work(conn):
            query = dead_letters.delete()
            if ids:
                query = query.where(dead_letters.c.id.in_(ids))
            return conn.execute(query).rowcount
        return self.write(work)

    def counts(self):
        def work(conn):
            result = {}
            for table, column in ((incidents, incidents.c.state),
                                  (deliveries, deliveries.c.state)):
                for state, count in conn.execute(
                        sa.select(column, sa.func.count())
                        .group_by(column)):
                    result['%s.%s' % (table.name, state)] = count
            result['dead_letters'] = conn.execute(
                sa.select(sa.func.count()).select_from(dead_letters)
            ).scalar()
            return result
        return self.read(work)


def dumps(value):
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def loads(text):
    return json.loads(text)
