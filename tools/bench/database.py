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
"""Benchmark phase "database": the outbox's backend and replicas.

In interleaved rounds, the same traffic is drained by

* the no-op batch listener (the ceiling oslo.messaging sets),
* one service process with its outbox on SQLite (the default file), on
  MariaDB and on PostgreSQL (a fresh database each, ``db sync`` first),
* N replicas (3 unless told) on one pool and one MariaDB / PostgreSQL
  database.

Every contestant is *gated*: its processes are started on the pool's empty
queue, and once the broker counts their consumers they are stopped with
SIGSTOP; the queue is then filled, and the clock starts when they are all
resumed with SIGCONT. So replicas start together, and no contestant is
timed while it starts or while the publisher competes for the CPU. A
service contestant's clock stops when its last error message is stored
(the outbox's ``messages`` table stops growing after the tail sentinel);
the no-op listener's when it handles the tail sentinel.

The database servers are the test servers of ``tests/databases.py``
(``tools/ensure-mariadb.sh`` and ``tools/ensure-postgresql.sh``, or
``NEN_TEST_MYSQL_URL`` / ``NEN_TEST_POSTGRESQL_URL``).
"""

import contextlib
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import sqlalchemy as sa

POOL = 'nova-error-notifier'
#: The clock of a service contestant stops once its outbox's message count
#: has not moved for this long after the tail sentinel is stored.
QUIET = 2.0
POLL = 0.02
READY_TIMEOUT = 180.0


class Contestant:
    """The processes of one contestant and how to read its progress."""

    def __init__(self, label, backend, replicas, workers=1):
        self.label = label
        self.backend = backend
        self.replicas = replicas
        self.workers = workers
        self.processes = []
        self.services = []
        self.engine = None
        self.result_path = None

    @property
    def pids(self):
        """Every process: a service's supervisor and its workers."""
        if self.services:
            return [pid for service in self.services
                    for pid in service.pids()]
        return [p.pid for p in self.processes]


class DatabasePhase:

    def __init__(self, bench, run_module):
        self.bench = bench
        self.run = run_module
        self.args = bench.args
        self.databases = importlib.import_module('tests.databases')
        self.manage = importlib.import_module(
            'tests.functional.replicas').manage

    # -- helpers -----------------------------------------------------------

    def check_servers(self, backends):
        for backend in backends:
            if backend in self.databases.SERVERS:
                try:
                    self.databases.server(backend).check()
                except self.databases.Unreachable as exc:
                    raise self.run.BenchError(str(exc))

    def queue_state(self, url):
        """(messages ready, consumers) of the pool's queue."""
        kombu = self.bench.kombu
        with kombu.Connection(self.bench.rabbitmq.kombu_url(url),
                              connect_timeout=10) as conn:
            _, ready, consumers = conn.default_channel.queue_declare(
                queue=POOL, passive=True)
        return ready, consumers

    def wait_consumers(self, url, contestant):
        """Until the broker counts a steady number of consumers."""
        deadline = time.monotonic() + READY_TIMEOUT
        last, since = None, time.monotonic()
        while True:
            for process in contestant.processes:
                if process.poll() is not None:
                    raise self.failed(contestant, 'exited while starting')
            _, consumers = self.queue_state(url)
            now = time.monotonic()
            if consumers != last:
                last, since = consumers, now
            elif consumers and now - since >= 1.0:
                return consumers
            if now > deadline:
                raise self.run.BenchError(
                    '%s: no steady consumers within %.0f s'
                    % (contestant.label, READY_TIMEOUT))
            time.sleep(0.1)

    def failed(self, contestant, what):
        if contestant.services:
            return self.bench._failed(contestant.services[0], what)
        return self.run.BenchError('%s %s' % (contestant.label, what))

    @contextlib.contextmanager
    def database(self, backend):
        """A fresh database URL for ``backend`` (None: the default file)."""
        if backend == 'sqlite':
            yield None
            return
        with self.databases.fresh_database(backend) as url:
            yield url

    # -- contestants -------------------------------------------------------

    def start_noop(self, url, stream):
        contestant = Contestant('no-op batch', None, 1)
        workdir = self.bench.workdir('db-noop')
        contestant.result_path = os.path.join(workdir, 'result.json')
        args = [sys.executable, os.path.join(self.run.HERE,
                                             'noop_listener.py'),
                '--url', url, '--pool', POOL, '--mode', 'batch',
                '--head', stream['head'].request_id,
                '--tail', stream['tail'].request_id,
                '--result', contestant.result_path,
                '--batch-size', str(self.run.BATCH_SIZE),
                '--timeout', str(self.run.DRAIN_TIMEOUT)]
        contestant.output = open(os.path.join(workdir, 'output.txt'), 'wb')
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                   stdout=contestant.output,
                                   stderr=subprocess.STDOUT, cwd=workdir)
        self.bench.processes.append(process)
        contestant.processes.append(process)
        return contestant

    def start_services(self, url, backend, replicas, database_url,
                       workers=1):
        label = '%s x%d' % (backend, replicas)
        contestant = Contestant(label, backend, replicas, workers)
        rules = [('all', {'events': '*', 'receivers': 'ops_log'})]
        config = self.bench.service_config(
            url, POOL, '@STATE_DIR@', rules, self.bench.log_receiver())
        if database_url:
            config += '\n[database]\nconnection = %s\n' % database_url
        if workers != 1:
            config += '\n[listener]\nworkers = %d\n' % workers
        for number in range(replicas):
            service = self.bench.start_service(
                'db-%s-%d' % (backend, number + 1), config)
            contestant.services.append(service)
            contestant.processes.append(service.process)
            if number == 0 and database_url is None:
                database_url = 'sqlite:///%s' % os.path.join(
                    service.workdir, 'nova_error_notifier.sqlite')
        for service in contestant.services:
            try:
                service.wait_for('Listening to ', count=workers,
                                 timeout=READY_TIMEOUT)
            except AssertionError as exc:
                raise self.run.BenchError(str(exc))
        contestant.engine = sa.create_engine(
            database_url, poolclass=sa.pool.NullPool,
            isolation_level='AUTOCOMMIT')
        return contestant

    def db_sync(self, url, database_url):
        """``nova-error-notifier-manage db sync`` on a shared database."""
        workdir = self.bench.workdir('db-sync')
        path = os.path.join(workdir, 'nova_error_notifier.conf')
        with open(path, 'w', encoding='utf-8') as handle:
            handle.write('[DEFAULT]\ntransport_url = %s\n[delivery]\n'
                         'state_dir = %s\n[database]\nconnection = %s\n'
                         % (url, workdir, database_url))
        done = self.manage(path, 'db', 'sync')
        if done.returncode != 0:
            raise self.run.BenchError('db sync failed: %s'
                                      % (done.stdout + done.stderr)[-2000:])

    # -- one round ---------------------------------------------------------

    def gated(self, contestant_factory, stream, label):
        """Start, stop, fill, resume, time: a contestant's figures."""
        bench = self.bench
        vhost, url = bench.new_vhost('db-' + label.replace(' ', ''))
        bench.declare_pools(url, [POOL])
        with contestant_factory(url) as contestant:
            self.wait_consumers(url, contestant)
            stopped = []
            try:
                for pid in contestant.pids:
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
                bench.fill(vhost, url, [POOL], stream)
                started = time.time()
            finally:
                for pid in stopped:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGCONT)
            if contestant.backend is None:
                figures = self.finish_noop(contestant, started, stream)
            else:
                figures = self.finish_service(contestant, started, stream)
        bench.broker.delete_vhost(vhost)
        figures['rate'] = len(stream['messages']) / figures['seconds']
        return figures

    def finish_noop(self, contestant, started, stream):
        process = contestant.processes[0]
        try:
            status = process.wait(self.run.DRAIN_TIMEOUT + 60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise self.run.BenchError('the no-op listener did not finish')
        finally:
            contestant.output.close()
        try:
            with open(contestant.result_path, encoding='utf-8') as handle:
                result = json.load(handle)
        except (OSError, ValueError):
            result = {}
        if status != 0 or not result.get('tail'):
            raise self.run.BenchError('no-op listener failed with %s'
                                      % status)
        return {'seconds': result['tail'] - started}

    def finish_service(self, contestant, started, stream):
        head = stream['head'].request_id
        tail = stream['tail'].request_id
        count_sql = sa.text('SELECT count(*) FROM messages')
        tail_sql = sa.text('SELECT count(*) FROM incidents '
                           'WHERE request_id = :tail')
        deadline = time.monotonic() + self.run.DRAIN_TIMEOUT
        tail_at = None
        count, count_at = -1, None
        with contestant.engine.connect() as conn:
            while True:
                now = time.time()
                current = conn.execute(count_sql).scalar()
                if current != count:
                    count, count_at = current, now
                if tail_at is None and conn.execute(
                        tail_sql, {'tail': tail}).scalar():
                    tail_at = now
                if tail_at is not None and now - count_at >= QUIET:
                    break
                for process in contestant.processes:
                    if process.poll() is not None:
                        raise self.failed(contestant, 'exited while draining')
                if time.monotonic() > deadline:
                    raise self.run.BenchError(
                        '%s did not store the tail sentinel within %.0f s'
                        % (contestant.label, self.run.DRAIN_TIMEOUT))
                time.sleep(POLL)
            requests = conn.execute(sa.text(
                'SELECT count(DISTINCT request_id) FROM incidents')).scalar()
            heads = conn.execute(tail_sql, {'tail': head}).scalar()
        return {'seconds': max(tail_at, count_at) - started,
                'messages_stored': count, 'requests': requests,
                'expected_requests': stream['failures'] + 2,
                'head_stored': bool(heads)}

    @contextlib.contextmanager
    def noop(self, url, stream):
        contestant = self.start_noop(url, stream)
        try:
            yield contestant
        finally:
            for process in contestant.processes:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)

    def services(self, backend, replicas, workers=1):
        @contextlib.contextmanager
        def factory(url):
            with self.database(backend) as database_url:
                if database_url:
                    self.db_sync(url, database_url)
                contestant = self.start_services(url, backend, replicas,
                                                 database_url, workers)
                try:
                    yield contestant
                finally:
                    for service in contestant.services:
                        self.bench.stop_service(service)
                    contestant.engine.dispose()
        return factory

    # -- the phase ---------------------------------------------------------

    def contestants(self):
        """(key, backend, replicas, listener workers) of each contestant."""
        backends = self.args.db_backends
        order = [('noop', None, 1, 1)]
        order += [(b, b, 1, 1) for b in backends]
        if self.args.db_replicas > 1:
            order += [('%s x%d' % (b, self.args.db_replicas), b,
                       self.args.db_replicas, 1)
                      for b in backends if b != 'sqlite']
        if self.args.db_workers > 1:
            order.append(('%s w%d' % (backends[0], self.args.db_workers),
                          backends[0], 1, self.args.db_workers))
        return order

    def measure(self, stream):
        args = self.args
        self.check_servers(args.db_backends)
        rounds = []
        for number in range(1, args.db_pairs + 1):
            order = self.contestants()
            if number % 2 == 0:
                order.reverse()
            figures = {}
            for key, backend, replicas, workers in order:
                if backend is None:
                    factory = (lambda url: self.noop(url, stream))
                else:
                    factory = self.services(backend, replicas, workers)
                figures[key] = self.gated(factory, stream, key)
            rounds.append({'order': [c[0] for c in order],
                           'figures': figures})
            print('  round %d/%d: %s' % (number, args.db_pairs, ', '.join(
                '%s %.0f' % (c[0], figures[c[0]]['rate'])
                for c in self.contestants())))
            sys.stdout.flush()
        self.report(rounds, stream)

    def report(self, rounds, stream):
        run = self.run
        keys = [c[0] for c in self.contestants()]
        replicas = self.args.db_replicas

        def ratio(round_, top, bottom):
            figures = round_['figures']
            return figures[top]['rate'] / figures[bottom]['rate']

        rows = []
        for number, round_ in enumerate(rounds, 1):
            rows.append([str(number)] + [
                run.fmt(round_['figures'][key]['rate']) for key in keys])
        rows.append(['median'] + [
            run.fmt(statistics.median(r['figures'][key]['rate']
                                      for r in rounds)) for key in keys])
        rows.append(['/ no-op'] + [
            '%.3f' % statistics.median(ratio(r, key, 'noop')
                                       for r in rounds) for key in keys])
        results = {}
        notes = []
        for backend in self.args.db_backends:
            if backend != 'sqlite' and 'sqlite' in self.args.db_backends:
                value = statistics.median(ratio(r, backend, 'sqlite')
                                          for r in rounds)
                results['db_ratio_%s' % backend] = round(value, 3)
                notes.append('%s / sqlite (one process): %.3f (median of '
                             'the rounds\' ratios)' % (backend, value))
            many = '%s x%d' % (backend, replicas)
            if many in keys:
                value = statistics.median(ratio(r, many, backend)
                                          for r in rounds)
                results['replicas_ratio_%s' % backend] = round(value, 3)
                notes.append('%d replicas / one on %s: %.3f'
                             % (replicas, backend, value))
        first = self.args.db_backends[0]
        results['service_ratio_%s' % first] = round(statistics.median(
            ratio(r, first, 'noop') for r in rounds), 3)
        notes.append('one service process (%s) / no-op batch: %.3f'
                     % (first, results['service_ratio_%s' % first]))
        several = '%s w%d' % (first, self.args.db_workers)
        if several in keys:
            value = statistics.median(ratio(r, several, 'noop')
                                      for r in rounds)
            results['workers_ratio'] = round(value, 3)
            notes.append('[listener] workers = %d (%s) / no-op batch: %.3f'
                         % (self.args.db_workers, first, value))
        checks = []
        for round_ in rounds:
            for key in keys:
                figures = round_['figures'][key]
                if 'requests' in figures and (
                        figures['requests'] != figures['expected_requests']
                        or not figures['head_stored']):
                    checks.append('%s stored %d of %d failures' % (
                        key, figures['requests'],
                        figures['expected_requests']))
        notes.append('msgs/s over %d messages, from SIGCONT of the stopped '
                     'contestant (the queue filled meanwhile) to its last '
                     'stored error; order reversed every other round'
                     % len(stream['messages']))
        notes.append('incidents check: %s' % ('; '.join(checks) if checks
                                              else 'every failure stored '
                                              'by every service contestant'))
        run.table('5. Database and replicas', ['round'] + keys, rows, notes)
        results['database_all_stored'] = not checks
        self.bench.results.update(results)
        self.bench.results['database'] = {
            'rounds': [{key: round(r['figures'][key]['rate'], 1)
                        for key in keys} for r in rounds]}
