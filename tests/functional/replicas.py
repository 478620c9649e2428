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
"""Several real ``nova-error-notifier`` replicas on one pool and database.

:class:`ReplicaSet` writes one configuration per replica (same ``[database]
connection``, same ``[listener] pool`` on one RabbitMQ vhost, each its own
``[listener] topics``), runs ``nova-error-notifier-manage db sync`` once on
the shared database and starts the replicas as real processes
(:mod:`tests.functional.service_process`).

:class:`DeliveryTrace` records, with RabbitMQ's firehose tracer, which
replica's connection each message of the pool's queue was delivered to:
oslo.messaging names its connections ``<program>:<pid>:<uuid>``, so every
delivery maps to the replica with that pid. The tests use it to show that
the twins of one failure really were consumed by different processes.

:func:`query` and :func:`outbox_summary` read the shared outbox on MariaDB
or PostgreSQL with SQLAlchemy.
"""

import contextlib
import json
import os
import re
import subprocess
import threading
import time

import kombu
import sqlalchemy as sa

from tests.functional import rabbitmq as rq
from tests.functional import service_process

POOL = 'nova-error-notifier'
#: [listener] topics of replicas 1, 2, 3.
TOPICS = ('notifications', 'versioned_notifications',
          'notifications, versioned_notifications')

_PID_RE = re.compile(r'nova-error-notifier:(\d+):')


def private_dir(path):
    os.makedirs(str(path), mode=0o700, exist_ok=True)
    os.chmod(str(path), 0o700)
    return str(path)


def replica_config(base_config, database_url, topics, extra=()):
    """``base_config`` plus the shared database and this replica's topics.

    ``base_config`` is the text of ``test_reliability.service_config``;
    ``extra`` are more lines appended (sections of their own).
    """
    lines = [base_config.rstrip('\n'),
             '[database]', 'connection = %s' % database_url,
             'max_retries = 3', 'retry_interval = 1',
             '[listener]', 'pool = %s' % POOL, 'topics = %s' % topics]
    lines += list(extra)
    return '\n'.join(lines) + '\n'


def manage(config_path, *args, timeout=120):
    """Run ``nova-error-notifier-manage --config-file F ARGS``."""
    cmd = [service_process.console_script('nova-error-notifier-manage'),
           '--config-file', config_path] + list(args)
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


class ReplicaSet:
    """Three (or more) replicas sharing one database and one pool.

    ``make_config(workdir, topics)`` returns the configuration text of the
    replica working in ``workdir`` that listens to ``topics``.
    """

    def __init__(self, root, make_config, topics=TOPICS):
        self.root = str(root)
        self.replicas = []
        for number, replica_topics in enumerate(topics, 1):
            workdir = private_dir(os.path.join(self.root,
                                               'replica-%d' % number))
            proc = service_process.ServiceProcess(
                workdir, make_config(workdir, replica_topics))
            proc.number = number
            self.replicas.append(proc)

    def __iter__(self):
        return iter(self.replicas)

    def __getitem__(self, index):
        return self.replicas[index]

    def db_sync(self):
        result = manage(self.replicas[0].config_path, 'db', 'sync')
        assert result.returncode == 0, (
            'db sync failed (%d):\n%s\n%s' % (result.returncode,
                                              result.stdout, result.stderr))
        return result

    def start(self, timeout=90):
        # Start them together, then wait for each: start-up takes seconds.
        for proc in self.replicas:
            proc.start(wait_for=None)
        for proc in self.replicas:
            proc.wait_for(re.escape('Listening to '), timeout=timeout)
        return self

    def by_pid(self):
        """Every process of every replica (supervisor and workers)."""
        return {pid: proc for proc in self.replicas
                if proc.process is not None for pid in proc.pids()}

    def kill_all(self):
        for proc in self.replicas:
            proc.kill()
            with contextlib.suppress(Exception):
                proc._output.close()

    def logs(self, tail=3000, pattern=None):
        """Each replica's log tail (or its lines matching ``pattern``)."""
        parts = []
        for proc in self.replicas:
            text = proc.log()
            if pattern is not None:
                text = '\n'.join(ln for ln in text.splitlines()
                                 if re.search(pattern, ln))
            parts.append('--- replica %d (pid %s) ---\n%s' % (
                proc.number, proc.process.pid if proc.process else '-',
                text[-tail:]))
        return '\n'.join(parts)

    def problems(self):
        """ERROR/CRITICAL lines and tracebacks of every replica."""
        found = []
        for proc in self.replicas:
            for line in proc.log().splitlines():
                if re.search(r' (ERROR|CRITICAL) |Traceback', line):
                    found.append('replica %d: %s' % (proc.number, line))
        return found


class DeliveryTrace(threading.Thread):
    """Which connection (replica pid) each message of ``queue`` went to.

    Turns the firehose on for the vhost and consumes ``deliver.<queue>``
    from ``amq.rabbitmq.trace``. ``deliveries`` is a list of dicts:
    ``pid``, ``message_id``, ``event_type``, ``request_id``,
    ``redelivered``.
    """

    def __init__(self, broker, vhost, queue=POOL):
        super().__init__(daemon=True, name='firehose')
        self.broker = broker
        self.vhost = vhost
        self.queue = queue
        self.deliveries = []
        self.errors = []
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pids = {}

    def __enter__(self):
        self.start()
        if not self._ready.wait(30):
            raise AssertionError('the firehose consumer did not start: %r'
                                 % self.errors)
        if self.errors:
            raise AssertionError('firehose: %r' % self.errors)
        self.broker.ctl('trace_on', '-p', self.vhost.name)
        return self

    def __exit__(self, *exc_info):
        with contextlib.suppress(Exception):
            self.broker.ctl('trace_off', '-p', self.vhost.name)
        self._stopping.set()
        self.join(10)

    def _record(self, body, message):
        try:
            headers = message.headers or {}
            connection = headers.get('connection', '')
            if isinstance(connection, bytes):
                connection = connection.decode('utf-8', 'replace')
            envelope = json.loads(body if isinstance(body, str)
                                  else body.decode('utf-8'))
            inner = json.loads(envelope['oslo.message'])
            entry = {'connection': connection,
                     'message_id': inner.get('message_id'),
                     'event_type': inner.get('event_type'),
                     'request_id': inner.get('_context_request_id'),
                     'redelivered': bool(headers.get('redelivered'))}
            with self._lock:
                self.deliveries.append(entry)
        except Exception as exc:
            self.errors.append('%s: %s' % (type(exc).__name__, exc))
        message.ack()

    def run(self):
        try:
            exchange = kombu.Exchange('amq.rabbitmq.trace', type='topic',
                                      durable=True, internal=True,
                                      passive=True)
            queue = kombu.Queue('firehose-' + self.queue, exchange=exchange,
                                routing_key='deliver.' + self.queue,
                                exclusive=True, auto_delete=True)
            with kombu.Connection(rq.kombu_url(self.vhost.url)) as conn:
                with conn.Consumer([queue], callbacks=[self._record],
                                   accept=None):
                    self._ready.set()
                    while not self._stopping.is_set():
                        with contextlib.suppress(TimeoutError, OSError):
                            conn.drain_events(timeout=0.5)
        except Exception as exc:
            self.errors.append('%s: %s' % (type(exc).__name__, exc))
            self._ready.set()

    def resolve(self):
        """Learn the pid behind each connection of the vhost (while open).

        The firehose names a connection ``<peer> -> <broker>``; its client
        properties carry oslo.messaging's ``<program>:<pid>:<uuid>``.
        """
        out = self.broker.ctl('list_connections', '-p', self.vhost.name,
                              'name', 'client_properties', '--formatter',
                              'json', '--quiet')
        for connection in json.loads(out.strip() or '[]'):
            match = _PID_RE.search(json.dumps(connection.get(
                'client_properties')))
            if match:
                self._pids[connection['name']] = int(match.group(1))
        return dict(self._pids)

    def snapshot(self, resolve=True):
        """The deliveries so far, each with the ``pid`` it went to."""
        if resolve:
            self.resolve()
        with self._lock:
            entries = [dict(e) for e in self.deliveries]
        for entry in entries:
            entry['pid'] = self._pids.get(entry['connection'])
        return entries


def query(url, sql, **params):
    """Rows of ``sql`` on the shared outbox database."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def outbox_summary(url):
    """{'deliveries.done': n, 'incidents.routed': n, 'dead_letters': n...}"""
    counts = {}
    for table in ('deliveries', 'incidents'):
        for state, count in query(url, 'SELECT state, count(*) FROM %s '
                                  'GROUP BY state' % table):
            counts['%s.%s' % (table, state)] = count
    counts['dead_letters'] = query(
        url, 'SELECT count(*) FROM dead_letters')[0][0]
    return counts


def wait_quiet(predicate, timeout, settle=3.0):
    """Wait until ``predicate()`` (a value) stops changing for ``settle``."""
    deadline = time.monotonic() + timeout
    last, since = predicate(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        value = predicate()
        if value != last:
            last, since = value, time.monotonic()
        elif time.monotonic() - since >= settle:
            break
    return last
