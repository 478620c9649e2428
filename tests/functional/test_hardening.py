"""Hostile bus traffic through the real service: nothing loops, nothing is
lost, no secret is shown, the outbox is private.

Real RabbitMQ, the real ``nova-error-notifier`` process, its real SQLite
outbox. Messages are published raw (kombu), so that their message ids and
timestamps are the attacker's, not oslo.messaging's.
"""

import contextlib
import json
import os
import stat
import subprocess
import uuid

from tests.functional import rabbitmq as rq
from tests.functional import service_process
from tests.functional import test_reliability as rel

POOL = rel.POOL
services = rel.services
ERROR_KEY = 'notifications.error'


def wire(event_type, payload, message_id=None, request_id=None,
         timestamp='2026-12-03 10:00:00.000000', priority='ERROR',
         publisher='compute.compute-1'):
    """The exact body oslo.messaging's messagingv2 driver publishes."""
    inner = {
        'message_id': message_id or str(uuid.uuid4()),
        'publisher_id': publisher, 'event_type': event_type,
        'priority': priority, 'payload': payload, 'timestamp': timestamp,
        '_unique_id': uuid.uuid4().hex,
        '_context_request_id': request_id,
        '_context_project_id': rel.PROJECT, '_context_user_id': rel.USER,
        '_context_project_name': 'web-prod', '_context_user_name': 'alice',
    }
    return json.dumps({'oslo.version': '2.0',
                       'oslo.message': json.dumps(inner)}).encode('utf-8')


def create_error(instance, name='web-1', message='No valid host'):
    return {'instance_id': instance, 'display_name': name,
            'state': 'building', 'host': 'compute-1',
            'tenant_id': rel.PROJECT,
            'exception': rel.nova_exception('NoValidHost', message),
            'message': message}


def publish(url, bodies):
    for body in bodies:
        rq.publish_raw(url, 'nova', ERROR_KEY, body)


def pool_depth(broker, vhost):
    return broker.queue_message_counts(vhost.name).get(POOL)


def start(services, tmp_path, vhost, extra=''):
    config = '[DEFAULT]\ntransport_url = %s\n%s' % (vhost.url, extra)
    return services(tmp_path, config)


def valid_error(url):
    request_id = 'req-%s' % uuid.uuid4()
    instance = str(uuid.uuid4())
    publish(url, [wire('compute.instance.create.error',
                       create_error(instance), request_id=request_id)])
    return request_id, instance


def test_long_ids_neither_loop_nor_merge(tmp_path, rabbitmq, rabbitmq_vhost,
                                         services):
    # No storm digest: every alert on its own line.
    proc = start(services, tmp_path, rabbitmq_vhost,
                 '[delivery]\nstate_dir = %s\nmax_alerts_per_interval = 0\n'
                 % tmp_path)
    count = 60
    long = 'x' * 290
    bodies = [wire('compute.instance.create.error',
                   create_error(long + 'i%04d' % n, 'long-%d' % n),
                   message_id=long + 'm%04d' % n,
                   request_id='req-' + long + 'r%04d' % n)
              for n in range(count)]
    publish(rabbitmq_vhost.url, bodies)
    rel.wait_until(lambda: pool_depth(rabbitmq, rabbitmq_vhost) == 0, 60,
                   lambda: 'pool queue holds %s messages; log tail:\n%s' % (
                       pool_depth(rabbitmq, rabbitmq_vhost),
                       proc.log()[-3000:]))
    request_id, instance = valid_error(rabbitmq_vhost.url)
    [line] = proc.wait_for(request_id, timeout=30)
    assert instance in line
    # Every long-id failure is an incident of its own, alerted once.
    rel.wait_until(lambda: len(proc.alert_lines()) == count + 1, 30,
                   lambda: '%d alert lines' % len(proc.alert_lines()))
    rows = rel.query(tmp_path, 'SELECT key, request_id, instance_uuid '
                     'FROM incidents')
    assert len(rows) == count + 1
    assert all(len(v) <= 255 for row in rows for v in row if v)
    assert rel.query(tmp_path, 'SELECT count(*) FROM messages')[0][0] == \
        count + 1
    log = proc.log()
    assert 'Rejected notification' not in log
    assert 'goes back to the queue' not in log
    assert proc.stop() == 0


def test_odd_timestamps_do_not_cost_the_error(tmp_path, rabbitmq_vhost,
                                              services):
    proc = start(services, tmp_path, rabbitmq_vhost)
    stamps = ['9999-12-31 23:59:59.999999-23:59',
              '0001-01-01T00:00:00+23:59', 'not a time', '2026-13-45',
              '9999-12-31T23:59:59Z']
    requests = ['req-%s' % uuid.uuid4() for _ in stamps]
    publish(rabbitmq_vhost.url, [
        wire('compute.instance.create.error', create_error(str(uuid.uuid4())),
             request_id=request_id, timestamp=stamp)
        for request_id, stamp in zip(requests, stamps)])
    for request_id in requests:
        proc.wait_for(request_id, timeout=30)
    assert 'Rejected notification' not in proc.log()
    assert proc.stop() == 0


POISON_TRIGGER = (
    "CREATE TRIGGER poison BEFORE INSERT ON incidents "
    "WHEN NEW.request_id LIKE 'req-poison%' "
    "BEGIN SELECT RAISE(ABORT, 'poisoned by the test'); END")


def test_a_poison_message_is_rejected_and_holds_nothing_back(
        tmp_path, rabbitmq, rabbitmq_vhost, services):
    proc = start(services, tmp_path, rabbitmq_vhost)
    rel.query(tmp_path, POISON_TRIGGER)
    good = ['req-%s' % uuid.uuid4() for _ in range(5)]
    poison_id = 'poison-message-1'
    bodies = [wire('compute.instance.create.error',
                   create_error(str(uuid.uuid4())), request_id=r)
              for r in good[:2]]
    bodies.append(wire('compute.instance.create.error',
                       create_error(str(uuid.uuid4()), 'poisoned'),
                       message_id=poison_id,
                       request_id='req-poison-%s' % uuid.uuid4()))
    bodies += [wire('compute.instance.create.error',
                    create_error(str(uuid.uuid4())), request_id=r)
               for r in good[2:]]
    publish(rabbitmq_vhost.url, bodies)
    for request_id in good:
        proc.wait_for(request_id, timeout=30)
    [line] = proc.wait_for('Rejected notification message_id=%s'
                           % poison_id, timeout=60)
    assert 'poisoned by the test' in line and 'after 3 tries' in line
    rel.wait_until(lambda: pool_depth(rabbitmq, rabbitmq_vhost) == 0, 30,
                   lambda: 'pool queue: %s' % pool_depth(rabbitmq,
                                                         rabbitmq_vhost))
    [(key, event_type, reason, body)] = rel.query(
        tmp_path, 'SELECT message_key, event_type, reason, body '
        'FROM rejected_messages')
    assert key == poison_id and event_type == 'compute.instance.create.error'
    assert 'poisoned by the test' in reason
    kept = json.loads(body)
    assert kept['instance_name'] == 'poisoned'
    assert kept['request_id'].startswith('req-poison-')
    # Tried a bounded number of times, then acknowledged: it is not seen
    # again, and the service goes on.
    assert proc.log().count('Rejected notification message_id=%s'
                            % poison_id) == 1
    request_id, _ = valid_error(rabbitmq_vhost.url)
    proc.wait_for(request_id, timeout=30)
    assert proc.stop() == 0


@contextlib.contextmanager
def umask(value):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_outbox_is_private_whatever_the_umask(tmp_path, rabbitmq_vhost):
    state = tmp_path / 'state' / 'outbox'
    with umask(0o022):
        proc = service_process.ServiceProcess(
            tmp_path, '[DEFAULT]\ntransport_url = %s\n[delivery]\n'
            'state_dir = %s\n' % (rabbitmq_vhost.url, state)).start()
    try:
        request_id, _ = valid_error(rabbitmq_vhost.url)
        proc.wait_for(request_id, timeout=30)
        names = sorted(os.listdir(state))
        assert rel.OUTBOX in names and rel.OUTBOX + '-wal' in names
        assert mode(state) == 0o700
        for name in names:
            assert mode(state / name) == 0o600, (name, oct(mode(state /
                                                                name)))
    finally:
        assert proc.stop() == 0
    # Someone widened them: tightened at the next start, and said so.
    os.chmod(state, 0o755)
    os.chmod(state / rel.OUTBOX, 0o644)
    with umask(0o022):
        again = service_process.ServiceProcess(
            tmp_path / 'state', '[DEFAULT]\ntransport_url = %s\n[delivery]\n'
            'state_dir = %s\n' % (rabbitmq_vhost.url, state)).start()
    try:
        assert mode(state) == 0o700 and mode(state / rel.OUTBOX) == 0o600
        assert 'had mode 0755: tightened to 0700' in again.log()
        assert 'had mode 0644: tightened to 0600' in again.log()
    finally:
        assert again.stop() == 0


def test_a_shared_state_dir_is_refused(tmp_path, rabbitmq_vhost):
    shared = tmp_path / 'shared'
    shared.mkdir()
    os.chmod(shared, 0o1777)
    proc = service_process.ServiceProcess(
        tmp_path, '[DEFAULT]\ntransport_url = %s\n[delivery]\n'
        'state_dir = %s\n' % (rabbitmq_vhost.url, shared))
    assert proc.run_to_exit() == 2
    assert 'can be read or written by other users' in proc.log()
    assert mode(shared) == 0o1777


DB_PASSWORD = 'S3cret-Db-Pw9'


def test_database_passwords_are_never_shown(tmp_path, rabbitmq_vhost):
    for number, url in enumerate([
            'mysql+pymysql://nen:%s@127.0.0.1:9/nen?charset=utf8'
            % DB_PASSWORD,
            'postgresql://nen:%s@127.0.0.1:9/nen?sslpassword=%s'
            % (DB_PASSWORD, DB_PASSWORD),
            'mysql+pymysql://nen:%s@127.0.0.1:notaport/nen' % DB_PASSWORD,
            'nosuchdb://nen:%s@127.0.0.1/nen' % DB_PASSWORD]):
        workdir = tmp_path / str(number)
        workdir.mkdir()
        # The deprecated [delivery] connection and [database] connection
        # alike; one quick connection attempt (no server there).
        alias = '[delivery]\n' if number % 2 else ''
        config = ('[DEFAULT]\ntransport_url = %s\n[database]\n'
                  'max_retries = 1\nretry_interval = 1\n%sconnection = %s\n'
                  % (rabbitmq_vhost.url, alias, url))
        proc = service_process.ServiceProcess(workdir, config,
                                              extra_args=['--debug'])
        assert proc.run_to_exit() == 2, proc.log()
        log = proc.log()
        assert 'outbox database is not usable' in log, log
        assert DB_PASSWORD not in log and DB_PASSWORD not in proc.output()
        check = subprocess.run(
            [service_process.console_script('nova-error-notifier-manage'),
             '--config-file', proc.config_path, 'check-config'],
            capture_output=True, text=True, timeout=60)
        assert check.returncode == 1
        assert 'outbox database is not usable' in check.stdout
        assert DB_PASSWORD not in check.stdout + check.stderr
