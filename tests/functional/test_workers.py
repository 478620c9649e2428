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
"""The process model: listener workers, restarts, reloads in every process.

The real ``nova-error-notifier`` on a real RabbitMQ, with ``[listener]
workers = 2``: one process per stage and listener worker under a
supervisor.
"""

import os
import re
import signal
import threading
import time

import pytest

from tests.functional import rabbitmq as rq
from tests.functional import service_process

ROLES = ('listener', 'router', 'delivery', 'housekeeping')
_TITLE_RE = re.compile(r'nova-error-notifier: (\w+) worker\((\d+)\)')


def config(url, workdir, receiver='first', driver='log', workers=2):
    return service_process.service_config(
        url, workdir, receiver, driver,
        extra=['[listener]', 'workers = %d' % workers])


def workers_of(proc):
    """{(role, worker id): pid} of the service's worker processes."""
    found = {}
    for pid in proc.pids():
        if pid == proc.process.pid:
            continue
        try:
            with open('/proc/%d/cmdline' % pid, 'rb') as handle:
                title = handle.read().replace(b'\0', b' ').decode()
        except OSError:
            continue
        match = _TITLE_RE.search(title)
        if match:
            found[(match.group(1), int(match.group(2)))] = pid
    return found


def wait_workers(proc, expected, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        found = workers_of(proc)
        if set(found) == expected:
            return found
        assert time.monotonic() < deadline, (found, proc.log()[-3000:])
        time.sleep(0.2)


publish_error = service_process.publish_error


def alerts_by_request(proc):
    return proc.alerts_by_request()


@pytest.fixture
def service(tmp_path, rabbitmq_vhost):
    procs = []

    def start(text):
        proc = service_process.ServiceProcess(tmp_path, text)
        procs.append(proc)
        proc.start()
        proc.wait_for('Listening to ', count=2, timeout=60)
        return proc
    yield start
    for proc in procs:
        proc.kill()


#: Each listener process has its store process ([listener] store_process).
EXPECTED = {('listener', 0), ('listener', 1), ('store', 0), ('store', 1),
            ('router', 0), ('delivery', 0), ('housekeeping', 0)}


def _kill_mid_burst(url, workers, key, total=300):
    """Publish ``total`` failures; SIGKILL ``workers[key]`` a third in.

    Returns the request ids published and the pid killed.
    """
    published = []

    def burst():
        with rq.Publisher(url) as pub:
            for number in range(total):
                request_id = 'req-burst-%04d' % number
                publish_error(pub, request_id)
                published.append(request_id)
                time.sleep(0.01)
    thread = threading.Thread(target=burst)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(published) < total // 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = workers[key]
        os.kill(victim, signal.SIGKILL)
    finally:
        thread.join(60)
    return published, victim


def _once_each(proc, published):
    by_request = alerts_by_request(proc)
    assert set(by_request) == set(published)
    doubled = {k: v for k, v in by_request.items() if len(v) != 1}
    assert not doubled, doubled


def test_a_killed_store_process_is_replaced_and_nothing_is_lost(
        tmp_path, rabbitmq_vhost, service):
    url = rabbitmq_vhost.url
    proc = service(config(url, tmp_path))
    workers = wait_workers(proc, EXPECTED)
    total = 300
    published, victim = _kill_mid_burst(url, workers, ('store', 0),
                                        total)
    proc.wait_for_alerts(total, timeout=120)
    time.sleep(1.5)
    # Its listener handed the batch in progress back and started another.
    assert re.search(r'The store process of listener 0 (was killed by '
                     r'signal 9|stopped answering)', proc.log()), \
        proc.log()[-3000:]
    after = wait_workers(proc, EXPECTED)
    assert after[('store', 0)] != victim
    for key in EXPECTED - {('store', 0)}:
        assert after[key] == workers[key], key
    _once_each(proc, published)
    assert proc.stop() == 0


def test_a_killed_listener_is_restarted_and_nothing_is_lost(
        tmp_path, rabbitmq_vhost, service):
    url = rabbitmq_vhost.url
    proc = service(config(url, tmp_path))
    workers = wait_workers(proc, EXPECTED)
    total = 300
    # In the middle of the burst: one listener process dies hard.
    published, victim = _kill_mid_burst(url, workers, ('listener', 1),
                                        total)
    [line] = proc.wait_for(
        r'The listener process 1 was killed by signal 9: it is started '
        r'again', timeout=30)
    assert line
    after = wait_workers(proc, EXPECTED)
    assert after[('listener', 1)] != victim
    # Its store process saw the pipe close and made way for a new one;
    # the others kept their processes.
    assert after[('store', 1)] != workers[('store', 1)]
    for key in EXPECTED - {('listener', 1), ('store', 1)}:
        assert after[key] == workers[key], key
    proc.wait_for_alerts(total, timeout=120)
    time.sleep(1.5)
    # The victim's unacknowledged messages came back from the broker; the
    # outbox knew the ones it had stored: one alert per failure.
    _once_each(proc, published)
    assert proc.stop() == 0


def test_sighup_reaches_every_process_and_a_broken_file_none(
        tmp_path, rabbitmq_vhost, service):
    url = rabbitmq_vhost.url
    proc = service(config(url, tmp_path, 'first'))
    wait_workers(proc, EXPECTED)
    with open(proc.config_path, 'w') as handle:
        handle.write(config(url, tmp_path, 'second', driver='emial'))
    proc.process.send_signal(signal.SIGHUP)
    proc.wait_for('Reload refused: the configuration in force is kept')
    time.sleep(1)
    assert 'generation 1 in force' not in proc.log()
    with rq.Publisher(url) as pub:
        publish_error(pub, 'req-refused')
        proc.wait_for_alerts(1)
        with open(proc.config_path, 'w') as handle:
            handle.write(config(url, tmp_path, 'third'))
        proc.process.send_signal(signal.SIGHUP)
        lines = proc.wait_for(r'\w+ \d: configuration generation 1 in force',
                              count=len(EXPECTED), timeout=30)
        switched = {tuple(re.search(r'(\w+) (\d): configuration generation',
                                    line).groups()) for line in lines}
        assert switched == {(role, str(n)) for role, n in EXPECTED}
        publish_error(pub, 'req-third')
        proc.wait_for_alerts(2)
    by_request = alerts_by_request(proc)
    assert [a['receiver'] for a in by_request['req-refused']] == ['first']
    assert [a['receiver'] for a in by_request['req-third']] == ['third']
    assert proc.stop() == 0


def test_roles_start_apart(tmp_path, rabbitmq_vhost):
    """--role: a listener-only and a router+delivery process, one outbox."""
    url = rabbitmq_vhost.url
    text = config(url, tmp_path, workers=1)
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    listen = service_process.ServiceProcess(
        tmp_path / 'a', text, extra_args=['--role', 'listener'])
    rest = service_process.ServiceProcess(
        tmp_path / 'b', text, extra_args=['--role', 'router', '--role',
                                          'delivery'])
    try:
        listen.start()
        rest.start(wait_for='starting router, delivery')
        wait_workers(listen, {('listener', 0), ('store', 0)})
        wait_workers(rest, {('router', 0), ('delivery', 0)})
        with rq.Publisher(url) as pub:
            publish_error(pub, 'req-apart')
        # Routed and delivered by the other process, without a wake-up
        # shared with the listener: within its idle period.
        rest.wait_for_alerts(1, timeout=30)
        assert listen.alert_lines() == []
    finally:
        listen.kill()
        rest.kill()


def test_an_unknown_role_stops_startup(tmp_path):
    proc = service_process.ServiceProcess(
        tmp_path, config('rabbit://guest:guest@127.0.0.1:1/', tmp_path),
        extra_args=['--role', 'listner'])
    assert proc.run_to_exit() == 2
    assert '--role listner: not a role' in proc.log()
