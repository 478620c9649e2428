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
"""Benchmark of nova-error-notifier against a private RabbitMQ.

``tox -e bench`` (or ``python tools/bench/run.py [--quick]``) starts its own
RabbitMQ node, as the functional tests do, runs the real
``nova-error-notifier`` console script and measures:

1. throughput: queues pre-filled with the same realistic Nova traffic are
   drained by a no-op oslo.messaging listener (plain and batch form) and by
   the service (state-change watching on, log driver to a file), in
   interleaved pairs;
2. latency: at a steady rate with 5 % errors, publishing an error to the
   webhook receiver getting its alert, minus ``[correlation] group_wait``;
3. rules: the service's throughput with 1 rule and with 1,000 rules;
4. storm: a burst of errors: the service's peak RSS, the time until every
   message is durable, the alerts and digests each receiver got;
5. database: one service process with its outbox on SQLite, MariaDB and
   PostgreSQL, and three replicas on one MariaDB / PostgreSQL database,
   against the no-op batch listener (``database.py``).

It prints one table per measurement and, last, one line of JSON. Every loop
is bounded in count and time; all traffic goes to 127.0.0.1; the broker,
the service and the listeners it starts are stopped on the way out.
"""

import argparse
import collections
import contextlib
import gc
import importlib
import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

#: What the service subscribes to with watch_state_changes on.
PRIORITIES = ('info', 'error', 'critical')
#: Messages published after the tail sentinel, so that a batch listener's
#: last batch before it is full and never waits for its batch_timeout.
TRAILER = 200
BATCH_SIZE = 100
WEBHOOK_SECRET = 'bench-webhook-secret'
DRAIN_TIMEOUT = 900.0
MB = 1024.0 * 1024.0
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')


class BenchError(RuntimeError):
    """The benchmark could not measure something."""


class Interrupted(BaseException):
    """SIGTERM: stop and clean up."""


def _on_sigterm(signum, frame):
    raise Interrupted()


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def percentile(values, share):
    """Nearest-rank percentile of ``values`` (0 < share <= 1)."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, int(math.ceil(share * len(ordered))))
    return ordered[rank - 1]


def most_in_window(times, width):
    """The most of the sorted ``times`` within any ``width`` seconds."""
    best = start = 0
    for end, value in enumerate(times):
        while value - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def cpu_per_message(pairs, kind, count):
    """'U + S us' median CPU microseconds per message of one consumer."""
    used = [p[kind]['cpu'] for p in pairs if p[kind].get('cpu')]
    if not used or not count:
        return '-'
    return '%.0f + %.0f us' % (
        statistics.median(u for u, _ in used) / count * 1e6,
        statistics.median(s for _, s in used) / count * 1e6)


def fmt(value, spec='%.0f', none='-'):
    return none if value is None else spec % value


def table(title, header, rows, notes=()):
    """Print an aligned text table."""
    widths = [len(h) for h in header]
    cells = [[str(c) for c in row] for row in rows]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    print()
    print(title)
    print('-' * len(title))
    print('  '.join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in cells:
        print('  '.join(c.rjust(w) if i else c.ljust(w)
                        for i, (c, w) in enumerate(zip(row, widths)))
              .rstrip())
    for note in notes:
        print(note)
    sys.stdout.flush()


def proc_status(pid, field):
    """A ``/proc/PID/status`` value in bytes (VmRSS, VmHWM), or None."""
    try:
        with open('/proc/%d/status' % pid, encoding='ascii') as handle:
            for line in handle:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid):
    """(user, system) CPU seconds of a process (all its threads)."""
    try:
        with open('/proc/%d/stat' % pid, encoding='ascii') as handle:
            fields = handle.read().rsplit(')', 1)[1].split()
        return (int(fields[11]) / float(CLOCK_TICKS),
                int(fields[12]) / float(CLOCK_TICKS))
    except (OSError, ValueError, IndexError):
        return None


_TITLE_RE = re.compile(r'nova-error-notifier: (\w+) worker\(\d+\)')
#: The stages of the service's process model, in the order reported.
STAGES = ('listener', 'store', 'router', 'delivery', 'housekeeping',
          'supervisor')


def stage_of(pid, supervisor):
    """The stage a process of the service runs (from its title)."""
    if pid == supervisor:
        return 'supervisor'
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            raw = handle.read()
    except OSError:
        return None
    title = raw.replace(b'\0', b' ').decode('utf-8', 'replace')
    match = _TITLE_RE.search(title)
    return match.group(1) if match else None


def stage_cpu(service):
    """{stage: (user, system) CPU seconds} of the service's processes."""
    totals = {}
    for pid in service.pids():
        stage = stage_of(pid, service.process.pid)
        used = cpu_seconds(pid)
        if stage is None or used is None:
            continue
        user, system = totals.get(stage, (0.0, 0.0))
        totals[stage] = (user + used[0], system + used[1])
    return totals


def stage_delta(before, after):
    """CPU seconds per stage between two :func:`stage_cpu` readings."""
    return {stage: (after[stage][0] - before.get(stage, (0, 0))[0],
                    after[stage][1] - before.get(stage, (0, 0))[1])
            for stage in after}


def service_rss(service, field):
    """(largest, total) ``field`` (VmHWM, VmRSS) over the service's processes.

    The service is one process per stage: the largest is what a storm may
    grow (the listener's), the total what the host gives it.
    """
    values = [proc_status(pid, field) or 0 for pid in service.pids()]
    return (max(values) if values else None), sum(values)


def listener_pid(service):
    """The pid of the service's first listener process (or the service)."""
    for pid in sorted(service.pids()):
        if stage_of(pid, service.process.pid) == 'listener':
            return pid
    return service.process.pid


def cpu_per_stage(pairs, count):
    """'stage U + S us' for each stage, medians per message."""
    parts = []
    for stage in STAGES:
        used = [p['service']['stages'][stage] for p in pairs
                if stage in (p['service'].get('stages') or {})]
        if used and count:
            parts.append('%s %.0f + %.0f us' % (
                stage, statistics.median(u for u, _ in used) / count * 1e6,
                statistics.median(s for _, s in used) / count * 1e6))
    return ', '.join(parts) or '-'


#: Frames whose share of the profile is reported, with a label each.
PROFILE_FRAMES = (
    ('PollStyleListenerAdapter._runner', 'listener thread: AMQP reads, '
                                         'JSON decoding, acks'),
    ('BatchEndpoint.handle', 'batches: reading and storing them'),
    ('BatchEndpoint._collect', '  parsing'),
    ('Ingest._add_many', '  outbox transaction of a batch'),
    ('Ingest._resolve', '    builds that succeeded'),
    ('Service._route_loop', 'router thread'),
    ('RuleSet.match', '  rule matching'),
    ('DeliveryPool._run', 'delivery workers'),
    ('ThreadWorker._wait_for_work', 'idle executor threads waking up'),
)


def summarise_profile(path):
    """Lines: share of GIL samples under key frames, top self frames."""
    inclusive = collections.Counter()
    own = collections.Counter()
    total = 0
    try:
        with open(path, encoding='utf-8', errors='replace') as handle:
            for line in handle:
                stack, _, count = line.rstrip('\n').rpartition(' ')
                if not count.isdigit():
                    continue
                count = int(count)
                total += count
                frames = [re.sub(r' \(.*\)$', '', f)
                          for f in stack.split(';')[1:]]
                for frame in set(frames):
                    inclusive[frame] += count
                if frames:
                    own[frames[-1]] += count
    except OSError as exc:
        return ['profile unreadable: %s' % exc]
    if not total:
        return ['profile is empty']
    lines = ['%d samples holding the GIL; share under:' % total]
    for frame, label in PROFILE_FRAMES:
        lines.append('  %5.1f %%  %s (%s)' % (
            100.0 * inclusive[frame] / total, label, frame))
    lines.append('top functions by own samples: ' + ', '.join(
        '%s %.1f %%' % (frame, 100.0 * count / total)
        for frame, count in own.most_common(8)))
    return lines


class OutboxReader:
    """Read-only queries on a service's SQLite outbox (WAL mode)."""

    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, 'nova_error_notifier.sqlite')
        self.conn = None

    def query(self, sql, params=()):
        """The rows, or None while the database cannot be read yet."""
        try:
            if self.conn is None:
                if not os.path.exists(self.path):
                    return None
                self.conn = sqlite3.connect('file:%s?mode=ro' % self.path,
                                            uri=True, timeout=5,
                                            check_same_thread=False)
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error:
            self.close()
            return None

    def scalar(self, sql, params=()):
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def close(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


# --------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------

class Bench:

    def __init__(self, args):
        self.args = args
        self.rabbitmq = importlib.import_module('tests.functional.rabbitmq')
        self.service_process = importlib.import_module(
            'tests.functional.service_process')
        self.webhook = importlib.import_module(
            'tests.functional.webhook_server')
        self.traffic = importlib.import_module('traffic')
        self.kombu = importlib.import_module('kombu')
        self.tmpdir = tempfile.mkdtemp(prefix='nen-bench-',
                                       dir=args.workdir)
        self.broker = None
        self.processes = []
        self.servers = []
        self.vhosts = 0
        self.dirs = 0
        self.results = {}

    # -- life cycle ----------------------------------------------------------

    def start_broker(self):
        started = time.monotonic()
        self.broker = self.rabbitmq.RabbitMQBroker(base_dir=self.tmpdir)
        self.broker.start()
        print('RabbitMQ %s on 127.0.0.1:%d, up in %.1f s'
              % (self.broker.node_name, self.broker.port,
                 time.monotonic() - started))

    def cleanup(self):
        """Stop everything this run started, each by its own handle."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop(check=False)
        if self.broker is not None:
            self.broker.stop()
        if not self.args.keep:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        else:
            print('work directory kept: %s' % self.tmpdir)

    def workdir(self, name):
        self.dirs += 1
        path = os.path.join(self.tmpdir, '%03d-%s' % (self.dirs, name))
        os.makedirs(path)
        return path

    def new_vhost(self, name):
        self.vhosts += 1
        vhost = 'bench-%d-%s' % (self.vhosts, name)
        return vhost, self.broker.add_vhost(vhost)

    # -- queues --------------------------------------------------------------

    def declare_pools(self, url, pools):
        """Each pool's queue, bound as the service's listener binds it."""
        exchange = self.rabbitmq.oslo_exchange('nova')
        with self.kombu.Connection(self.rabbitmq.kombu_url(url),
                                   connect_timeout=10) as conn:
            channel = conn.default_channel
            for pool in pools:
                for topic in self.traffic.TOPICS:
                    for priority in PRIORITIES:
                        self.kombu.Queue(
                            pool, exchange=exchange,
                            routing_key='%s.%s' % (topic, priority),
                            durable=False, auto_delete=False)(
                                channel).declare()

    def drop_other_queues(self, vhost, url, keep):
        """Delete the notifier's default queues (they hold a copy too)."""
        names = [q['name'] for q in self.broker.list_queues(vhost)
                 if q['name'] not in keep]
        if not names:
            return
        with self.kombu.Connection(self.rabbitmq.kombu_url(url),
                                   connect_timeout=10) as conn:
            channel = conn.default_channel
            for name in names:
                channel.queue_delete(name)

    def publish(self, url, messages, threads=2, rate=None, stamps=None,
                timeout=None):
        """Publish like Nova; return (seconds, achieved rate, max lag).

        With ``rate``, message ``i`` is due at ``start + i / rate``;
        ``stamps[i]`` gets the time it was handed to the notifier.
        """
        if not messages:
            return 0.0, 0.0, 0.0
        threads = max(1, min(threads, len(messages)))
        errors = []
        lags = [0.0] * threads
        budget = timeout or max(120.0, 10.0 * len(messages) /
                                (rate or 1000.0))
        start = time.monotonic() + 0.2
        deadline = start + budget

        def work(index):
            try:
                with self.rabbitmq.Publisher(url) as publisher:
                    for i in range(index, len(messages), threads):
                        now = time.monotonic()
                        if now > deadline:
                            raise BenchError('publishing took more than '
                                             '%.0f s' % budget)
                        if rate:
                            due = start + i / rate
                            if due > now:
                                time.sleep(due - now)
                            else:
                                lags[index] = max(lags[index], now - due)
                        message = messages[i]
                        if stamps is not None:
                            stamps[i] = time.time()
                        publisher.publish(message.ctxt, message.publisher_id,
                                          message.event_type,
                                          message.priority, message.payload,
                                          topics=(message.topic,))
            except Exception as exc:
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(i,), daemon=True,
                                    name='publisher-%d' % i)
                   for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(max(1.0, deadline - time.monotonic() + 30))
        if any(w.is_alive() for w in workers):
            raise BenchError('a publisher thread did not finish')
        if errors:
            raise BenchError('publishing failed: %s' % errors[0])
        seconds = max(1e-6, time.monotonic() - start)
        return seconds, len(messages) / seconds, max(lags)

    def fill(self, vhost, url, pools, stream):
        """Head sentinel, the stream, tail sentinel, trailer: into pools.

        Every pool's queue gets the very same messages in the same order
        (one publish, routed to each queue).
        """
        self.declare_pools(url, pools)
        head, tail, trailer = stream['head'], stream['tail'], \
            stream['trailer']
        self.publish(url, [head], threads=1)
        seconds, rate, _ = self.publish(url, stream['messages'])
        self.publish(url, [tail] + trailer, threads=1)
        expected = len(stream['messages']) + 2 + len(trailer)
        for pool in pools:
            self.broker.wait_for_message_count(pool, expected, vhost=vhost,
                                               timeout=120)
        self.drop_other_queues(vhost, url, pools)
        return seconds, rate

    # -- consumers -----------------------------------------------------------

    def drain_noop(self, url, pool, mode, stream):
        """Run the no-op listener until the tail sentinel; msgs/s."""
        workdir = self.workdir('noop-%s' % mode)
        result_path = os.path.join(workdir, 'result.json')
        args = [sys.executable, os.path.join(HERE, 'noop_listener.py'),
                '--url', url, '--pool', pool, '--mode', mode,
                '--head', stream['head'].request_id,
                '--tail', stream['tail'].request_id,
                '--result', result_path, '--batch-size', str(BATCH_SIZE),
                '--timeout', str(DRAIN_TIMEOUT)]
        with open(os.path.join(workdir, 'output.txt'), 'wb') as output:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                       stdout=output,
                                       stderr=subprocess.STDOUT,
                                       cwd=workdir)
            self.processes.append(process)
            try:
                status = process.wait(DRAIN_TIMEOUT + 60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
                raise BenchError('the no-op listener did not finish')
        try:
            with open(result_path, encoding='utf-8') as handle:
                result = json.load(handle)
        except (OSError, ValueError):
            result = {}
        if status != 0 or not result.get('head') or not result.get('tail'):
            with open(os.path.join(workdir, 'output.txt'), 'rb') as handle:
                tail = handle.read()[-3000:].decode('utf-8', 'replace')
            raise BenchError('no-op listener (%s) failed with %s:\n%s'
                             % (mode, status, tail))
        seconds = result['tail'] - result['head']
        return {'seconds': seconds,
                'rate': len(stream['messages']) / seconds,
                'cpu': result.get('cpu'),
                'startup': result['head'] - result['started']}

    def service_config(self, url, pool, state_dir, rules, receivers,
                       correlation=None, delivery=None):
        """The text of a service configuration file.

        ``--service-option SECTION.KEY=VALUE`` values come last and win.
        """
        sections = collections.OrderedDict()
        sections['DEFAULT'] = collections.OrderedDict([
            ('transport_url', url),
            ('rules', ', '.join(name for name, _ in rules))])
        for name, options in rules:
            sections['rule:' + name] = options
        for name, options in receivers:
            sections['receiver:' + name] = options
        sections['listener'] = {'pool': pool, 'watch_state_changes': 'true'}
        sections['correlation'] = dict({'group_wait': self.args.group_wait},
                                       **(correlation or {}))
        sections['delivery'] = dict({'state_dir': state_dir},
                                    **(delivery or {}))
        for section, key, value in self.args.service_option:
            sections.setdefault(section, collections.OrderedDict())
            sections[section] = dict(sections[section], **{key: value})
        lines = []
        for section, options in sections.items():
            lines.append('[%s]' % section)
            lines.extend('%s = %s' % item for item in options.items())
            lines.append('')
        return '\n'.join(lines)

    def start_service(self, name, config_text):
        workdir = self.workdir('service-%s' % name)
        service = self.service_process.ServiceProcess(
            workdir, config_text.replace('@STATE_DIR@', workdir))
        started = time.time()
        service.start(wait_for=None)
        self.processes.append(service.process)
        service.started_at = started
        service.workdir = workdir
        return service

    def stop_service(self, service):
        try:
            status = service.stop(timeout=30)
        except AssertionError as exc:
            raise BenchError(str(exc))
        if status not in (0, None):
            raise BenchError('nova-error-notifier exited with %s; log '
                             'tail:\n%s' % (status, service.log()[-3000:]))

    def _failed(self, service, what):
        return BenchError('nova-error-notifier %s (exit status %s); log '
                          'tail:\n%s\noutput:\n%s' % (
                              what, service.process.poll(),
                              service.log()[-3000:],
                              service.output()[-2000:]))

    def wait_listening(self, service, timeout=120):
        try:
            service.wait_for(re.escape('Listening to '), timeout=timeout)
        except AssertionError as exc:
            raise BenchError(str(exc))

    def drain_service(self, name, url, pool, stream, rules, receivers,
                      delivery=None, profile=None):
        """Run the service until it stored the tail sentinel; msgs/s."""
        config = self.service_config(url, pool, '@STATE_DIR@', rules,
                                     receivers, delivery=delivery)
        service = self.start_service(name, config)
        reader = OutboxReader(service.workdir)
        head, tail = stream['head'].request_id, stream['tail'].request_id
        seen = {}
        cpu = {}
        spy = None
        deadline = time.monotonic() + DRAIN_TIMEOUT
        try:
            if profile:
                spy = self.start_profiler(service, profile)
            while len(seen) < 2:
                rows = reader.query('SELECT request_id FROM incidents WHERE '
                                    'request_id IN (?, ?)', (head, tail))
                now = time.time()
                for (request_id,) in rows or ():
                    if request_id not in seen:
                        seen[request_id] = now
                        cpu[request_id] = stage_cpu(service)
                if service.process.poll() is not None:
                    raise self._failed(service, 'exited while draining')
                if time.monotonic() > deadline:
                    raise BenchError('the service did not store the tail '
                                     'sentinel within %.0f s' % DRAIN_TIMEOUT)
                time.sleep(0.01)
            if spy is not None:
                self.stop_profiler(spy)
                spy = None
            # Everything before the tail is in, give or take the messages
            # still in worker threads: check the stream's failures arrived.
            expected = stream['failures'] + 2
            check_until = time.monotonic() + 30
            incidents = 0
            while time.monotonic() < check_until:
                incidents = reader.scalar('SELECT count(*) FROM incidents')
                if incidents is not None and incidents >= expected:
                    break
                time.sleep(0.1)
            peak, peak_total = service_rss(service, 'VmHWM')
        finally:
            if spy is not None:
                self.stop_profiler(spy)
            reader.close()
            self.stop_service(service)
        seconds = seen[tail] - seen[head]
        stages = (stage_delta(cpu[head], cpu[tail])
                  if None not in (cpu.get(tail), cpu.get(head)) else None)
        # The service's CPU per message is its listener processes' (the
        # other stages are reported apart).
        used = (stages or {}).get('listener')
        return {'seconds': seconds,
                'rate': len(stream['messages']) / seconds,
                'cpu': used, 'stages': stages,
                'startup': seen[head] - service.started_at,
                'incidents': incidents, 'expected_incidents': expected,
                'peak_rss': peak}

    # -- profiling (optional) ------------------------------------------------

    def start_profiler(self, service, path):
        py_spy = shutil.which('py-spy') or os.path.join(
            os.path.dirname(sys.executable), 'py-spy')
        if not os.path.exists(py_spy):
            raise BenchError('--profile needs py-spy (pip install py-spy)')
        # Wait until the service forked its listener process.
        deadline = time.monotonic() + 60
        while listener_pid(service) == service.process.pid:
            if time.monotonic() > deadline:
                raise BenchError('no listener process to profile')
            time.sleep(0.05)
        output = open(path + '.out', 'wb')
        # --nonblocking: never pause the service; --gil: only samples
        # holding the GIL, i.e. where the CPU time of Python code goes.
        process = subprocess.Popen(
            [py_spy, 'record', '--pid', str(listener_pid(service)),
             '--rate', '400', '--nonblocking', '--gil', '--format', 'raw',
             '--output', path], stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process, output

    def stop_profiler(self, spy):
        process, output = spy
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        output.close()

    # -- streams -------------------------------------------------------------

    def make_stream(self, generator, messages):
        traffic = self.traffic
        return {'messages': messages,
                'head': generator.sentinel('head'),
                'tail': generator.sentinel('tail'),
                'trailer': generator.fillers(TRAILER),
                'failures': len({m.group for m in messages
                                 if m.kind != 'info'}),
                'info': traffic.describe(messages)}

    # -- 1. throughput -------------------------------------------------------

    def log_receiver(self):
        return [('ops_log', {'driver': 'log'})]

    def throughput(self, stream):
        args = self.args
        pairs = []
        all_rule = [('all', {'events': '*', 'receivers': 'ops_log'})]
        for number in range(1, args.pairs + 1):
            vhost, url = self.new_vhost('throughput-%d' % number)
            pools = {'plain': 'bench-noop-plain', 'batch': 'bench-noop-batch',
                     'service': 'nova-error-notifier'}
            fill_seconds, fill_rate = self.fill(vhost, url,
                                                list(pools.values()), stream)
            order = ['plain', 'batch', 'service']
            if number % 2 == 0:
                order.reverse()
            pair = {'order': order, 'fill_rate': fill_rate}
            for kind in order:
                if kind == 'service':
                    pair[kind] = self.drain_service(
                        'throughput-%d' % number, url, pools[kind], stream,
                        all_rule, self.log_receiver())
                else:
                    pair[kind] = self.drain_noop(url, pools[kind], kind,
                                                 stream)
            self.broker.delete_vhost(vhost)
            pairs.append(pair)
            print('  pair %d/%d: no-op plain %.0f, no-op batch %.0f, '
                  'service %.0f msgs/s' % (
                      number, args.pairs, pair['plain']['rate'],
                      pair['batch']['rate'], pair['service']['rate']))
            sys.stdout.flush()
        profile = None
        if args.profile:
            profile = self.profile_throughput(stream, all_rule)
        median = {kind: statistics.median(p[kind]['rate'] for p in pairs)
                  for kind in ('plain', 'batch', 'service')}
        faster = 'batch' if median['batch'] >= median['plain'] else 'plain'
        ratios = [p['service']['rate'] / p[faster]['rate'] for p in pairs]
        other = 'plain' if faster == 'batch' else 'batch'
        ratio = statistics.median(ratios)
        rows = []
        for number, pair in enumerate(pairs, 1):
            rows.append([
                str(number), '>'.join(k[0] for k in pair['order']),
                fmt(pair['plain']['rate']), fmt(pair['batch']['rate']),
                fmt(pair['service']['rate']),
                '%.3f' % (pair['service']['rate'] / pair[faster]['rate']),
                '%.3f' % (pair['service']['rate'] / pair[other]['rate']),
                '%d/%d' % (pair['service']['incidents'] or 0,
                           pair['service']['expected_incidents'])])
        rows.append(['median', '', fmt(median['plain']),
                     fmt(median['batch']), fmt(median['service']),
                     '%.3f' % ratio,
                     '%.3f' % statistics.median(
                         p['service']['rate'] / p[other]['rate']
                         for p in pairs), ''])
        info = stream['info']
        notes = [
            'msgs/s between the head and tail sentinels of %d messages '
            '(%.1f KB mean, %.1f-%.1f KB; %.1f %% ERROR priority, %d '
            'updates into ERROR, %d instance updates; %d failures)'
            % (info['count'], info['size_mean'] / 1024.0,
               info['size_min'] / 1024.0, info['size_max'] / 1024.0,
               100.0 * info['error_share'], info['updates_into_error'],
               info['instance_updates'], stream['failures']),
            'order: p = no-op plain, b = no-op batch (batch_size %d), s = '
            'service; b/a against the faster no-op form (%s)'
            % (BATCH_SIZE, faster),
            'CPU per message (median, user + system): %s' % ', '.join(
                '%s %s' % (label, cpu_per_message(pairs, kind, info['count']))
                for kind, label in (('plain', 'no-op plain'),
                                    ('batch', 'no-op batch'),
                                    ('service', 'service listener'))),
            'CPU per message per stage of the service (median): %s'
            % cpu_per_stage(pairs, info['count']),
            'service peak RSS while draining: %s MB (median); pre-fill rate '
            '%.0f msgs/s' % (
                fmt(statistics.median(
                    (p['service']['peak_rss'] or 0) / MB for p in pairs)),
                statistics.median(p['fill_rate'] for p in pairs)),
        ]
        if profile:
            notes.append('profile (py-spy --gil, extra unpaired drain at '
                         '%.0f msgs/s): %s' % (profile['rate'],
                                               profile['path']))
            notes.extend(summarise_profile(profile['path']))
        table('1. Throughput', ['pair', 'order', 'no-op plain',
                                'no-op batch', 'service',
                                'b/a(%s)' % faster, 'b/a(%s)' % other,
                                'incidents'],
              rows, notes)
        self.results['throughput_ratio'] = round(ratio, 3)
        self.results['throughput'] = {
            'faster_noop': faster, 'median_rates': median,
            'ratios': [round(r, 3) for r in ratios]}

    def profile_throughput(self, stream, rules):
        vhost, url = self.new_vhost('profile')
        self.fill(vhost, url, ['nova-error-notifier'], stream)
        path = os.path.abspath(os.path.join(self.args.profile,
                                            'service-throughput.txt'))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        result = self.drain_service('profile', url, 'nova-error-notifier',
                                    stream, rules, self.log_receiver(),
                                    profile=path)
        self.broker.delete_vhost(vhost)
        result['path'] = path
        return result

    def webhook_server(self):
        """A started HTTP webhook receiver, stopped on the way out."""
        server = self.webhook.WebhookServer(mode='http',
                                            secret=WEBHOOK_SECRET)
        self.servers.append(server)
        server.start()
        return server

    # -- 2. latency ----------------------------------------------------------

    def latency(self, messages):
        args = self.args
        server = self.webhook_server()
        vhost, url = self.new_vhost('latency')
        config = self.service_config(
            url, 'nova-error-notifier', '@STATE_DIR@',
            [('all', {'events': '*', 'receivers': 'hook'})],
            [('hook', {'driver': 'webhook', 'url': server.url,
                       'secret': WEBHOOK_SECRET})],
            delivery={'max_alerts_per_interval': 0})
        service = self.start_service('latency', config)
        reader = OutboxReader(service.workdir)
        try:
            self.wait_listening(service)
            stamps = [None] * len(messages)
            seconds, rate, lag = self.publish(url, messages, threads=2,
                                              rate=args.latency_rate,
                                              stamps=stamps)
            first = {}
            for message, stamp in zip(messages, stamps):
                if message.kind != 'info' and stamp is not None:
                    first[message.group] = min(first.get(message.group,
                                                         stamp), stamp)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if len(server.requests) >= len(first):
                    break
                if service.process.poll() is not None:
                    raise self._failed(service, 'exited')
                time.sleep(0.2)
            peak, peak_total = service_rss(service, 'VmHWM')
            # The service's own times: incident opened (first message
            # stored), delivery written (routed), delivery finished.
            steps = {row[0]: row[1:] for row in reader.query(
                "SELECT i.request_id, i.opened_at, d.created_at, "
                "d.finished_at FROM incidents i JOIN deliveries d ON "
                "d.incident_id = i.id WHERE d.receiver = 'hook'") or ()}
        finally:
            reader.close()
            self.stop_service(service)
            server.stop(check=False)
            self.servers.remove(server)
            self.broker.delete_vhost(vhost)
        parts = collections.defaultdict(list)
        unknown = bad = 0
        wait = args.group_wait
        for request in server.requests:
            if request.signature_ok is False or request.schema_errors:
                bad += 1
            document = request.json or {}
            for alert in document.get('alerts', ())[:1]:
                request_id = alert.get('request_id')
                sent = first.get(request_id)
                if sent is None:
                    unknown += 1
                    continue
                got = request.received_at
                parts['total'].append((got - sent - wait) * 1000.0)
                if request_id in steps:
                    opened, routed, finished = steps[request_id]
                    parts['ingest'].append((opened - sent) * 1000.0)
                    parts['routing'].append(
                        (routed - opened - wait) * 1000.0)
                    parts['delivery'].append((got - routed) * 1000.0)
        labels = (
            ('total', 'publish -> receiver, minus group_wait'),
            ('ingest', '  publish -> incident stored'),
            ('routing', '  stored + group_wait -> delivery written'),
            ('delivery', '  delivery written -> receiver'))
        rows = []
        for key, label in labels:
            values = parts.get(key) or []
            rows.append([label, str(len(values)),
                         fmt(percentile(values, 0.5), '%.1f'),
                         fmt(percentile(values, 0.99), '%.1f'),
                         fmt(max(values) if values else None, '%.1f')])
        p50 = percentile(parts['total'], 0.50)
        p99 = percentile(parts['total'], 0.99)
        table('2. Latency (%.0f msgs/s for %.0f s, %d failures; '
              'group_wait %.1f s)' % (rate, seconds, len(first), wait),
              ['ms', 'alerts', 'p50', 'p99', 'max'], rows,
              ['5 %% ERROR traffic; one webhook receiver; '
               'max_alerts_per_interval = 0 (every incident alerted); '
               'publisher max lag %.1f ms; bad requests %d, unknown alerts '
               '%d, missing alerts %d; service peak RSS %s MB'
               % (lag * 1000.0, bad, unknown,
                  len(first) - len(parts['total']),
                  fmt(peak / MB if peak else None))])
        self.results['latency_p99_over_wait_ms'] = (
            None if p99 is None else round(p99, 1))
        self.results['latency'] = {
            'p50_ms': None if p50 is None else round(p50, 1),
            'failures': len(first), 'alerts': len(parts['total']),
            'rate': round(rate, 1),
            'p99_parts_ms': {key: round(percentile(values, 0.99), 1)
                             for key, values in parts.items() if values}}

    # -- 3. rules ------------------------------------------------------------

    def many_rules(self, count, seed):
        """``count`` rules: exact names, globs, exception filters, mixed.

        Every rule sends to one of a few log receivers and none sets
        ``continue``, so each incident gets exactly one alert, as with the
        single catch-all rule: only the rule set differs.
        """
        rng = random.Random(seed)
        actions = ('create', 'delete', 'rebuild', 'resize', 'resize_confirm',
                   'resize_revert', 'live_migration', 'live_migration_pre',
                   'migrate', 'evacuate', 'shelve', 'unshelve', 'snapshot',
                   'power_on', 'power_off', 'reboot', 'rescue', 'unrescue',
                   'suspend', 'resume', 'pause', 'unpause', 'volume_attach',
                   'volume_detach', 'interface_attach', 'interface_detach',
                   'trigger_crash_dump', 'soft_delete', 'restore',
                   'lock', 'unlock', 'shutdown')
        methods = ('resize_instance', 'attach_volume', 'detach_volume',
                   'create_key_pair', 'live_migration', 'rebuild_instance',
                   'reboot_instance', 'snapshot_instance', 'shelve_instance',
                   'unshelve_instance', 'prep_resize', 'finish_resize',
                   'confirm_resize', 'revert_resize', 'attach_interface',
                   'detach_interface', 'add_fixed_ip_to_instance',
                   'build_and_run_instance', 'terminate_instance')
        exceptions = ('NoValidHost', 'PortBindingFailed',
                      'BuildAbortException', 'ResizeError', 'KeyPairExists',
                      'VolumeAttachFailed',
                      'MigrationPreCheckError', 'libvirtError',
                      'InstanceNotFound', 'FlavorNotFound',
                      'ImageNotFound', 'QuotaError', 'RescheduledException',
                      'InstanceFaultRollback', 'ComputeHostNotFound',
                      'Invalid*', '*NotFound', '*Timeout', '*Failed*',
                      'AggregateNameExists', 'InstanceExists')
        exact = ['instance.%s.error' % a for a in actions]
        exact += ['compute.instance.%s.error' % a for a in actions]
        exact += list(methods)
        exact += ['compute.exception', 'compute_task.build_instances',
                  'compute_task.build_instances.error',
                  'compute_task.migrate_server',
                  'compute_task.migrate_server.error',
                  'compute_task.rebuild_server',
                  'compute_task.rebuild_server.error',
                  'compute.libvirt.error', 'libvirt.connect.error',
                  'notifier.instance.create_failed',
                  'notifier.instance.error_state']
        globs = ['instance.*.error', 'compute.instance.*.error',
                 'compute_task.*', 'instance.volume_*.error',
                 'instance.live_migration_*', '*_instance', 'libvirt.*',
                 'instance.resize*.error', 'compute.instance.resize*',
                 'instance.interface_*.error', '*.create.error',
                 'compute_task.*.error', 'notifier.*', 'instance.shelve*',
                 'compute.instance.live_migration*', '*attach*', '*key_pair',
                 'instance.[a-m]*.error', 'instance.[n-z]*.error',
                 'instance.?????.error']
        receivers = ['ops_log', 'team_compute', 'team_network', 'oncall']
        rules = []
        for number in range(count - 1):
            kind = rng.random()
            options = {'receivers': rng.choice(receivers)}
            if kind < 0.45:
                options['events'] = ', '.join(rng.sample(exact,
                                                         rng.randint(1, 3)))
            elif kind < 0.8:
                options['events'] = ', '.join(rng.sample(globs,
                                                         rng.randint(1, 2)))
            else:
                options['events'] = rng.choice(exact + globs)
            if rng.random() < 0.3:
                key = rng.choice(('include_exceptions',
                                  'exclude_exceptions'))
                options[key] = ', '.join(rng.sample(exceptions,
                                                    rng.randint(1, 3)))
            rules.append(('r%04d' % number, options))
        rules.append(('everything_else', {
            'events': '*', 'receivers': 'ops_log',
            'exclude_exceptions': 'KeyPairExists, AggregateNameExists'}))
        return rules, [(name, {'driver': 'log'}) for name in receivers]

    def match_cost(self, stream, rule_sets):
        """Microseconds per match, per rule set, in this process.

        ``NAME`` is the cost of matching an incident against the rules
        (RuleSet._match, no cache); ``NAME cached`` the cost of
        RuleSet.match when the incident's events and exception were seen
        before.
        """
        from nova_error_notifier.parse import legacy
        from nova_error_notifier.parse import versioned
        from nova_error_notifier import record as rec
        from nova_error_notifier import routing
        from nova_error_notifier import rules as rules_mod
        records = collections.defaultdict(list)
        for message in stream['messages']:
            if message.kind == 'info':
                continue
            parser = (versioned if message.topic ==
                      self.traffic.VERSIONED_TOPIC else legacy)
            record = parser.parse(message.priority, message.ctxt,
                                  message.publisher_id, message.event_type,
                                  message.payload, {'message_id': 'm'})
            if isinstance(record, rec.ErrorRecord):
                records[message.group].append(record)
        incidents = [routing.Incident(r) for r in records.values() if r]
        costs = {}
        for name, rules in rule_sets.items():
            ruleset = rules_mod.RuleSet(
                rules_mod.Rule(rule_name, [e.strip() for e in
                                           options['events'].split(',')],
                               [options['receivers']],
                               [e.strip() for e in options.get(
                                   'include_exceptions', '').split(',')
                                if e.strip()],
                               [e.strip() for e in options.get(
                                   'exclude_exceptions', '').split(',')
                                if e.strip()], order=order)
                for order, (rule_name, options) in enumerate(rules))
            for label, match in (
                    (name, lambda i: ruleset._match(i.events, i.exception)),
                    (name + ' cached', ruleset.match)):
                started = time.perf_counter()
                rounds = 0
                while rounds < 20 and time.perf_counter() - started < 2.0:
                    for incident in incidents:
                        match(incident)
                    rounds += 1
                elapsed = time.perf_counter() - started
                costs[label] = elapsed / max(1, rounds * len(incidents)) * 1e6
        return costs

    def rules(self, stream):
        args = self.args
        one = ([('all', {'events': '*', 'receivers': 'ops_log'})],
               [('ops_log', {'driver': 'log'})])
        many = self.many_rules(1000, args.seed)
        configs = {'1': one, '1000': many}
        delivery = {'max_alerts_per_interval': 0}
        pairs = []
        for number in range(1, args.rules_pairs + 1):
            vhost, url = self.new_vhost('rules-%d' % number)
            pools = {'1': 'nen-rules-1', '1000': 'nen-rules-1000'}
            self.fill(vhost, url, list(pools.values()), stream)
            order = ['1', '1000'] if number % 2 else ['1000', '1']
            pair = {'order': order}
            for name in order:
                rules, receivers = configs[name]
                pair[name] = self.drain_service(
                    'rules-%s-%d' % (name, number), url, pools[name], stream,
                    rules, receivers, delivery=delivery)
            self.broker.delete_vhost(vhost)
            pairs.append(pair)
            print('  rules pair %d/%d: 1 rule %.0f, 1000 rules %.0f msgs/s'
                  % (number, args.rules_pairs, pair['1']['rate'],
                     pair['1000']['rate']))
            sys.stdout.flush()
        costs = self.match_cost(stream, {'1': one[0], '1000': many[0]})
        ratios = [p['1000']['rate'] / p['1']['rate'] for p in pairs]
        ratio = statistics.median(ratios)
        rows = [[str(n), '>'.join(p['order']), fmt(p['1']['rate']),
                 fmt(p['1000']['rate']), '%.3f' % r,
                 '%.2f' % p['1']['startup'], '%.2f' % p['1000']['startup']]
                for n, (p, r) in enumerate(zip(pairs, ratios), 1)]
        rows.append(['median', '',
                     fmt(statistics.median(p['1']['rate'] for p in pairs)),
                     fmt(statistics.median(p['1000']['rate']
                                           for p in pairs)),
                     '%.3f' % ratio, '', ''])
        table('3. Rules (service throughput, msgs/s)',
              ['pair', 'order', '1 rule', '1000 rules', '1000/1',
               'start 1 s', 'start 1000 s'], rows,
              ['1,000 rules: ~45 % exact names, ~35 % globs, the rest '
               'single patterns; ~30 % with include/exclude exception '
               'globs; a final catch-all; 4 log receivers; '
               'max_alerts_per_interval = 0',
               'matching one incident: %.1f us with 1 rule, %.1f us with '
               '1,000 rules (%.1f / %.1f us when its events and exception '
               'were seen before); start = service start to first message '
               'stored' % (costs['1'], costs['1000'], costs['1 cached'],
                           costs['1000 cached'])])
        self.results['rules_1000_ratio'] = round(ratio, 3)
        self.results['rules'] = {'ratios': [round(r, 3) for r in ratios],
                                 'match_us': {k: round(v, 1)
                                              for k, v in costs.items()}}

    # -- 4. storm ------------------------------------------------------------

    def storm(self, messages):
        args = self.args
        interval = args.group_interval
        server = self.webhook_server()
        vhost, url = self.new_vhost('storm')
        config = self.service_config(
            url, 'nova-error-notifier', '@STATE_DIR@',
            [('all', {'events': '*', 'receivers': 'hook, ops_log'})],
            [('hook', {'driver': 'webhook', 'url': server.url,
                       'secret': WEBHOOK_SECRET}),
             ('ops_log', {'driver': 'log'})],
            delivery={'group_interval': interval})
        failures = {m.group for m in messages}
        service = self.start_service('storm', config)
        reader = OutboxReader(service.workdir)
        rss = {'max': 0}
        sampling = threading.Event()

        def sample():
            while not sampling.wait(0.05):
                value = service_rss(service, 'VmRSS')[0]
                if value:
                    rss['max'] = max(rss['max'], value)

        sampler = threading.Thread(target=sample, daemon=True,
                                   name='rss-sampler')
        try:
            self.wait_listening(service)
            sampler.start()
            started = time.time()
            seconds, rate, lag = self.publish(
                url, messages, threads=2,
                rate=len(messages) / args.storm_seconds)
            published = time.time()
            durable_at = None
            deadline = time.monotonic() + args.storm_timeout
            stored = 0
            while time.monotonic() < deadline:
                stored = reader.scalar('SELECT count(*) FROM messages') or 0
                if stored >= len(messages):
                    durable_at = time.time()
                    break
                if service.process.poll() is not None:
                    raise self._failed(service, 'exited during the storm')
                time.sleep(0.05)
            # Then every incident routed, every digest closed and sent.
            settle = time.monotonic() + interval * 2 + 60
            quiet = False
            while durable_at and time.monotonic() < settle:
                busy = reader.scalar(
                    "SELECT (SELECT count(*) FROM incidents WHERE state = "
                    "'open') + (SELECT count(*) FROM digests WHERE state = "
                    "'collecting') + (SELECT count(*) FROM deliveries WHERE "
                    "state IN ('pending', 'in_flight'))")
                if busy == 0:
                    quiet = True
                    break
                time.sleep(0.2)
            settled = time.time()
            incidents = reader.query(
                'SELECT state, count(*) FROM incidents GROUP BY state') or []
            requests = reader.scalar(
                'SELECT count(DISTINCT request_id) FROM incidents') or 0
            deliveries = reader.query(
                'SELECT receiver, kind, state, count(*) FROM deliveries '
                'GROUP BY receiver, kind, state') or []
            digest_times = reader.query(
                "SELECT receiver, created_at FROM deliveries WHERE kind = "
                "'digest' ORDER BY created_at") or []
            single_times = reader.query(
                "SELECT receiver, created_at FROM deliveries WHERE kind = "
                "'single' ORDER BY created_at") or []
            digest_members = reader.query(
                'SELECT receiver, sum(count) FROM digests GROUP BY '
                'receiver') or []
            peak, peak_total = service_rss(service, 'VmHWM')
        finally:
            sampling.set()
            reader.close()
            self.stop_service(service)
            server.stop(check=False)
            self.servers.remove(server)
            self.broker.delete_vhost(vhost)
        # What each receiver got.
        got = {'hook': {'alerts': 0, 'digests': 0, 'incidents': 0,
                        'digest_times': []},
               'ops_log': {'alerts': 0, 'digests': 0, 'incidents': 0,
                           'digest_times': []}}
        bad = 0
        for request in server.requests:
            if request.signature_ok is False or request.schema_errors:
                bad += 1
            document = request.json or {}
            if 'digest' in document:
                got['hook']['digests'] += 1
                got['hook']['incidents'] += document['digest']['count']
                got['hook']['digest_times'].append(request.received_at)
            else:
                got['hook']['alerts'] += 1
                got['hook']['incidents'] += len(document.get('alerts', ()))
        digest_re = re.compile(r' digest=(\d+) ')
        for line in service.log().splitlines():
            if 'nova-error-notifier alert ' in line:
                got['ops_log']['alerts'] += 1
                got['ops_log']['incidents'] += 1
            elif 'nova-error-notifier digest ' in line:
                match = digest_re.search(line)
                got['ops_log']['digests'] += 1
                got['ops_log']['incidents'] += int(match.group(1)) \
                    if match else 0
        # At most one digest per receiver per group_interval (outbox time).
        by_receiver = collections.defaultdict(list)
        for receiver, created in digest_times:
            by_receiver[receiver].append(created)
        gaps = [b - a for times in by_receiver.values()
                for a, b in zip(times, times[1:])]
        min_gap = min(gaps) if gaps else None
        singles = collections.defaultdict(list)
        for receiver, created in single_times:
            singles[receiver].append(created)
        most_singles = max((most_in_window(times, interval)
                            for times in singles.values()), default=0)
        window = max(1e-6, (settled if quiet else time.time()) - started)
        windows = int(math.ceil(window / interval))
        digests_ok = ((min_gap is None or min_gap >= interval - 0.001) and
                      all(g['digests'] <= windows for g in got.values()))
        incident_states = dict(incidents)
        total_incidents = sum(incident_states.values())
        # Durable: every message stored, every failure has an incident, and
        # every incident reached every receiver in an alert or a digest.
        durable = (durable_at is not None and requests == len(failures) and
                   quiet and all(g['incidents'] == total_incidents
                                 for g in got.values()))
        split = total_incidents - requests
        rows = []
        for name in ('hook', 'ops_log'):
            g = got[name]
            rows.append([name, str(g['alerts']), str(g['digests']),
                         '%d/%d' % (g['incidents'], total_incidents)])
        durable_after = (durable_at - started) if durable_at else None
        table('4. Storm (%d error messages, %d failures, in %.0f s)'
              % (len(messages), len(failures), args.storm_seconds),
              ['receiver', 'alerts', 'digests', 'incidents in them'], rows,
              ['published at %.0f msgs/s (max lag %.0f ms); all %d messages '
               'durable %s s after the first publish (%s s after the last); '
               '%d incidents in the outbox (%s) for %d/%d failures; %d '
               'failure(s) split in two incidents (a twin stored after the '
               'first incident was routed)'
               % (rate, lag * 1000.0, len(messages),
                  fmt(durable_after, '%.1f'),
                  fmt((durable_at - published) if durable_at else None,
                      '%.1f'),
                  total_incidents, ', '.join('%s %d' % kv for kv in sorted(
                      incident_states.items())), requests, len(failures),
                  split),
               'group_interval %d s, max_alerts_per_interval 20 (default); '
               'digests per receiver at most one per interval: %s (closest '
               'two: %s s apart); most single alerts to one receiver in '
               'one interval: %d; everything routed and sent %s s after '
               'the first publish' % (
                   interval, 'yes' if digests_ok else 'NO',
                   fmt(min_gap, '%.1f'), most_singles,
                   fmt(settled - started if quiet else None, '%.1f')),
               'service peak RSS %.1f MB (VmHWM of its largest process; '
               'all processes %.1f MB; sampled max %.1f MB); bad '
               'webhook requests %d; outbox deliveries: %s'
               % ((peak or 0) / MB, (peak_total or 0) / MB, rss['max'] / MB,
                  bad,
                  ', '.join('%s/%s/%s %d' % row for row in deliveries))])
        self.results['storm_peak_rss_mb'] = round((peak or 0) / MB, 1)
        self.results['storm_total_rss_mb'] = round((peak_total or 0) / MB, 1)
        self.results['storm_all_durable'] = bool(durable)
        self.results['storm_alerts'] = {
            'alerts': sum(g['alerts'] for g in got.values()),
            'digests': sum(g['digests'] for g in got.values()),
            'per_receiver': {name: {'alerts': g['alerts'],
                                    'digests': g['digests']}
                             for name, g in got.items()}}
        self.results['storm'] = {
            'durable_seconds': (None if durable_after is None
                                else round(durable_after, 1)),
            'split_failures': split,
            'most_singles_per_interval': most_singles,
            'digests_per_interval_ok': digests_ok,
            'digest_members': dict(digest_members)}

    # -- the run -------------------------------------------------------------

    @staticmethod
    def settle_memory():
        """Keep this process's garbage collector off the generated traffic.

        Tens of thousands of message dicts make each full collection take
        a good part of a second, which would stall the publisher and the
        webhook receiver living in this process and distort the figures.
        """
        gc.collect()
        gc.freeze()

    def run(self):
        args = self.args
        phases = set(args.phases.split(','))
        generator = self.traffic.Traffic(seed=args.seed)
        started = time.monotonic()
        stream = None
        if phases & {'throughput', 'rules'}:
            stream = self.make_stream(generator,
                                      generator.mixed(args.messages))
            self.settle_memory()
            info = stream['info']
            print('traffic: %d messages, %.1f KB mean, %.1f %% ERROR, %d '
                  'failures (made in %.1f s)' % (
                      info['count'], info['size_mean'] / 1024.0,
                      100.0 * info['error_share'], stream['failures'],
                      time.monotonic() - started))
        self.start_broker()
        if 'throughput' in phases:
            self.throughput(stream)
        if 'latency' in phases:
            count = int(args.latency_rate * args.latency_seconds)
            messages = self.traffic.Traffic(seed=args.seed + 1).mixed(count)
            self.settle_memory()
            self.latency(messages)
            del messages
        if 'rules' in phases:
            self.rules(stream)
        if 'storm' in phases:
            messages = self.traffic.Traffic(seed=args.seed + 2).failures(
                args.storm_errors)
            self.settle_memory()
            self.storm(messages)
            del messages
        if 'database' in phases:
            if stream is None or args.db_messages != args.messages:
                generator = self.traffic.Traffic(seed=args.seed + 3)
                stream = self.make_stream(generator,
                                          generator.mixed(args.db_messages))
                self.settle_memory()
            database = importlib.import_module('database')
            database.DatabasePhase(self, sys.modules[__name__]).measure(
                stream)
        figures = (time.monotonic() - started, os.cpu_count() or 0)
        print('\nbenchmark done in %.0f s on %d cores (load average now '
              '%.2f %.2f %.2f)' % (figures + os.getloadavg()))


GOALS = (
    ('throughput_ratio', lambda v: v >= 0.9, 'b/a >= 0.9'),
    ('latency_p99_over_wait_ms', lambda v: v <= 100.0, 'p99 <= 100 ms'),
    ('rules_1000_ratio', lambda v: v >= 0.9, '1000 rules >= 0.9 x 1 rule'),
    ('storm_peak_rss_mb', lambda v: v <= 200.0,
     'peak RSS <= 200 MB (largest process)'),
    ('storm_all_durable', lambda v: v is True, 'all durable'),
    ('db_ratio_mariadb', lambda v: v >= 0.85, 'MariaDB >= 0.85 x SQLite'),
    ('db_ratio_postgresql', lambda v: v >= 0.85,
     'PostgreSQL >= 0.85 x SQLite'),
    ('replicas_ratio_mariadb', lambda v: v >= 1.2,
     '3 replicas >= 1.2 x 1 (MariaDB)'),
    ('replicas_ratio_postgresql', lambda v: v >= 1.2,
     '3 replicas >= 1.2 x 1 (PostgreSQL)'),
    ('database_all_stored', lambda v: v is True, 'every failure stored'),
    ('service_ratio_sqlite', lambda v: v >= 0.9,
     '1 listener >= 0.9 x no-op batch (gated)'),
    ('workers_ratio', lambda v: v >= 1.3,
     'workers = 2 >= 1.3 x no-op batch'),
)


def summary(bench, args):
    results = bench.results
    goals = {}
    rows = []
    for key, check, text in GOALS:
        value = results.get(key)
        met = None if value is None else bool(check(value))
        goals[key] = met
        rows.append([key, text, json.dumps(value),
                     {None: 'not run', True: 'met',
                      False: 'MISSED'}[met]])
    storm = results.get('storm')
    if storm is not None:
        met = storm['digests_per_interval_ok']
        goals['storm_digests_per_interval'] = met
        rows.append(['storm digests', '<= 1 per receiver and interval',
                     json.dumps(met), 'met' if met else 'MISSED'])
    table('Goals', ['figure', 'goal', 'measured', 'verdict'], rows)
    line = {key: results.get(key) for key, _, _ in GOALS}
    line['storm_alerts'] = results.get('storm_alerts')
    line['cores'] = os.cpu_count()
    line['quick'] = bool(args.quick)
    line['messages'] = args.messages
    line['goals_met'] = goals
    if args.service_option:
        line['service_options'] = ['%s.%s=%s' % option
                                   for option in args.service_option]
    print(json.dumps(line, sort_keys=True))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description='Benchmark nova-error-notifier against a private '
                    'RabbitMQ (throughput, latency, rules, storm, '
                    'database).')
    parser.add_argument('--quick', action='store_true',
                        help='a smaller run (about a fifth of the work)')
    parser.add_argument('--messages', type=int,
                        help='messages per throughput queue (20000; quick '
                             '4000)')
    parser.add_argument('--pairs', type=int,
                        help='throughput pairs (5; quick 3)')
    parser.add_argument('--rules-pairs', type=int,
                        help='rules pairs (5; quick 2)')
    parser.add_argument('--latency-rate', type=float, default=500.0,
                        help='msgs/s of the latency run (500)')
    parser.add_argument('--latency-seconds', type=float,
                        help='length of the latency run (60; quick 15)')
    parser.add_argument('--storm-errors', type=int,
                        help='error messages of the storm (10000; quick '
                             '2000)')
    parser.add_argument('--storm-seconds', type=float,
                        help='length of the storm (10; quick 2)')
    parser.add_argument('--storm-timeout', type=float, default=300.0,
                        help='seconds to wait for the storm to be durable')
    parser.add_argument('--group-wait', type=float, default=0.5,
                        help='[correlation] group_wait of the service (0.5)')
    parser.add_argument('--group-interval', type=int, default=10,
                        help='[delivery] group_interval of the storm run '
                             '(10)')
    parser.add_argument('--db-backends', default='sqlite,mariadb,postgresql',
                        help='outbox backends of the database phase')
    parser.add_argument('--db-replicas', type=int, default=3,
                        help='replicas on one MariaDB / PostgreSQL database '
                             '(3; 1 to skip)')
    parser.add_argument('--db-workers', type=int, default=2,
                        help='[listener] workers of one more contestant '
                             'on the first backend (2; 1 to skip)')
    parser.add_argument('--db-pairs', type=int,
                        help='rounds of the database phase (3; quick 2)')
    parser.add_argument('--db-messages', type=int,
                        help='messages per database-phase queue (20000; '
                             'quick 8000)')
    parser.add_argument('--phases',
                        default='throughput,latency,rules,storm,database',
                        help='comma-separated subset to run')
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--profile', metavar='DIR',
                        help='also profile one extra service drain with '
                             'py-spy (collapsed stacks in DIR)')
    parser.add_argument('--service-option', action='append', default=[],
                        metavar='SECTION.KEY=VALUE',
                        help='add an option to every service configuration '
                             '(repeatable), e.g. oslo_messaging_rabbit.'
                             'rabbit_qos_prefetch_count=100, to try a '
                             'setting')
    parser.add_argument('--workdir', help='parent of the temporary work '
                                          'directory')
    parser.add_argument('--keep', action='store_true',
                        help='keep the work directory (logs, outboxes)')
    args = parser.parse_args(argv)
    defaults = {'messages': (20000, 4000), 'pairs': (5, 3),
                'rules_pairs': (5, 2), 'latency_seconds': (60.0, 15.0),
                'storm_errors': (10000, 2000), 'storm_seconds': (10.0, 2.0),
                'db_pairs': (3, 2), 'db_messages': (20000, 8000)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    options = []
    for text in args.service_option:
        match = re.match(r'([^.=\s]+)\.([^=\s]+)=(.*)\Z', text)
        if not match:
            parser.error('--service-option wants SECTION.KEY=VALUE, not %r'
                         % text)
        options.append(match.groups())
    args.service_option = options
    args.db_backends = [b.strip() for b in args.db_backends.split(',')
                        if b.strip()]
    wrong = set(args.db_backends) - {'sqlite', 'mariadb', 'postgresql'}
    if wrong or not args.db_backends:
        parser.error('--db-backends: sqlite, mariadb, postgresql, not %s'
                     % ', '.join(sorted(wrong)))
    unknown = set(args.phases.split(',')) - {'throughput', 'latency',
                                             'rules', 'storm', 'database'}
    if unknown:
        parser.error('unknown phase(s): %s' % ', '.join(sorted(unknown)))
    if args.messages < 100 or args.pairs < 1 or args.rules_pairs < 1:
        parser.error('--messages >= 100, --pairs and --rules-pairs >= 1')
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings('ignore', category=DeprecationWarning)
    warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')
    for path in (ROOT, HERE):
        if path not in sys.path:
            sys.path.insert(0, path)
    signal.signal(signal.SIGTERM, _on_sigterm)
    print('nova-error-notifier benchmark (%s run, %d cores, Python %s, '
          'load average %.2f %.2f %.2f)'
          % (('quick' if args.quick else 'full', os.cpu_count() or 0,
              sys.version.split()[0]) + os.getloadavg()))
    if args.service_option:
        print('service options: %s' % ', '.join(
            '[%s] %s = %s' % option for option in args.service_option))
    bench = Bench(args)
    status = 0
    try:
        bench.run()
    except (BenchError, KeyboardInterrupt, Interrupted) as exc:
        print('\nbenchmark stopped: %s: %s' % (type(exc).__name__, exc))
        status = 1
    finally:
        bench.cleanup()
    summary(bench, args)
    return status


if __name__ == '__main__':
    sys.exit(main())
