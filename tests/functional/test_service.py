"""The real nova-error-notifier process against a real RabbitMQ.

Notifications are published the way Nova publishes them (oslo.messaging
Notifier, driver messagingv2, exchange ``nova``); the alerts are read from
the service's log file.
"""

import json
import re
import signal
import time

import pytest

from tests.functional import rabbitmq as rq
from tests.functional import service_process
from tests import shared_corpus

POOL = 'nova-error-notifier'
parse_alert = service_process.parse_alert


def wire_entries():
    return [(section, entry) for section, entry
            in shared_corpus.manifest_entries()
            if section in ('legacy', 'versioned_wire')]


def failures(errors):
    """The failures behind the corpus' error messages.

    Nova reports one failure several times (twins, build steps), all with
    the failure's request id; in this corpus each request touches at most
    one instance, so one request id is one failure.
    """
    return sorted({e['expected']['request_id'] for e in errors})


def assert_covered(alerts, errors):
    """Every error message is part of exactly one alert."""
    for entry in errors:
        expected = entry['expected']
        found = [a for a in alerts
                 if entry['event_type'] in a['events'].split(',') and
                 a['request_id'] == expected['request_id']]
        assert len(found) == 1, (entry['file'], found)
        if expected['instance_uuid']:
            assert found[0]['instance'] == expected['instance_uuid']


@pytest.fixture
def start_service(tmp_path):
    processes = []

    def _start(transport_url, extra_config='', extra_args=(), **kwargs):
        config = '[DEFAULT]\ntransport_url = %s\n%s' % (transport_url,
                                                        extra_config)
        workdir = tmp_path / ('svc%d' % len(processes))
        workdir.mkdir()
        proc = service_process.ServiceProcess(workdir, config, extra_args)
        processes.append(proc)
        return proc.start(**kwargs)

    yield _start
    for proc in processes:
        proc.kill()


def test_every_nova_error_becomes_one_alert_line(rabbitmq_vhost,
                                                 start_service):
    """Only [DEFAULT] transport_url configured: the acceptance scenario."""
    svc = start_service(rabbitmq_vhost.url)
    entries = wire_entries()
    errors = [e for _, e in entries if e['is_error']]
    with rq.Publisher(rabbitmq_vhost.url) as pub:
        for _, entry in entries:
            pub.publish_wire_file(shared_corpus.path_of(entry))
    lines = svc.wait_for_alerts(len(failures(errors)), timeout=60)
    alerts = [parse_alert(line) for line in lines]
    assert_covered(alerts, errors)
    # One alert line per failure, none for the noise, none twice.
    time.sleep(service_process.GROUP_WAIT + 1)
    assert len(svc.alert_lines()) == len(failures(errors))
    assert len({a['id'] for a in alerts}) == len(alerts)
    assert all('WARNING nova_error_notifier.alerts' in line
               for line in svc.alert_lines())
    status = svc.stop()
    assert status == 0
    assert svc.stop_seconds < 5
    log = svc.log()
    assert 'Traceback' not in log
    assert shared_corpus.FAKE_TOKEN not in log
    assert 'nova-error-notifier stopped' in log


def test_info_only_traffic_adds_no_alert(rabbitmq_vhost, start_service):
    svc = start_service(rabbitmq_vhost.url)
    noise = [e for _, e in wire_entries() if not e['is_error']]
    assert noise
    sentinel = next(e for _, e in wire_entries()
                    if e['event_type'] == 'compute.libvirt.error')
    with rq.Publisher(rabbitmq_vhost.url) as pub:
        for _ in range(5):
            for entry in noise:
                pub.publish_wire_file(shared_corpus.path_of(entry))
        # Queues are FIFO: once the sentinel is alerted on, the noise before
        # it has been consumed.
        pub.publish_wire_file(shared_corpus.path_of(sentinel))
    lines = svc.wait_for_alerts(1)
    assert len(svc.alert_lines()) == 1
    assert 'events=compute.libvirt.error' in lines[0]
    assert svc.stop() == 0


def test_default_queues_are_left_to_their_consumers(rabbitmq, rabbitmq_vhost,
                                                    start_service):
    svc = start_service(rabbitmq_vhost.url)
    entries = wire_entries()
    errors = [e for _, e in entries if e['is_error']]
    with rq.Publisher(rabbitmq_vhost.url) as pub:
        for _, entry in entries:
            pub.publish_wire_file(shared_corpus.path_of(entry))
    svc.wait_for_alerts(len(failures(errors)), timeout=60)
    counts = rabbitmq.queue_message_counts(rabbitmq_vhost.name)
    # What Nova's publisher put in its default queues is all still there.
    expected = {}
    for _, entry in entries:
        key = entry['amqp']['routing_key']
        expected[key] = expected.get(key, 0) + 1
    for queue, count in expected.items():
        assert counts[queue] == count, queue
    # Our own pool queue got its copy and drained it.
    assert counts[POOL] == 0
    queues = {q['name']: q for q in rabbitmq.list_queues(rabbitmq_vhost.name)}
    assert int(queues[POOL]['consumers']) == 1
    for name in expected:
        assert int(queues[name]['consumers']) == 0, name
    bindings = {b['routing_key'] for b in rabbitmq.queue_bindings(
        rabbitmq_vhost.name) if b['destination_name'] == POOL and
        b['source_name'] == 'nova'}
    assert {'notifications.error', 'versioned_notifications.error',
            'notifications.info', 'versioned_notifications.info'} <= bindings
    assert svc.stop() == 0


def _wire_body(inner):
    return json.dumps({'oslo.version': '2.0',
                       'oslo.message': json.dumps(inner)}).encode('utf-8')


def _inner(message_id, event_type='compute.instance.create.error',
           priority='ERROR', payload=None, **context):
    inner = {'message_id': message_id, 'publisher_id': 'compute.hv-1',
             'event_type': event_type, 'priority': priority,
             'timestamp': '2026-10-05 08:30:00.000000',
             '_context_request_id': context.pop('request_id', 'req-bad'),
             '_unique_id': message_id.replace('-', '')}
    if payload is not None:
        inner['payload'] = payload
    for key, value in context.items():
        inner['_context_' + key] = value
    return inner


def test_malformed_messages_are_dropped_and_the_service_keeps_running(
        rabbitmq_vhost, start_service):
    svc = start_service(rabbitmq_vhost.url)
    url = rabbitmq_vhost.url
    key = 'notifications.error'
    hostile = 'web\nnova-error-notifier alert rule=forged \x1b[31m\u2028x'
    bodies = [
        b'this is not JSON',
        b'\xff\xfe\x00 binary',
        b'[1, 2, 3]',
        b'"just a string"',
        b'{"oslo.version": "2.0", "oslo.message": "{not json"}',
        b'[' * 100000 + b']' * 100000,
        _wire_body(_inner('bad-no-payload')),
        _wire_body(_inner('bad-list-payload', payload=['x'])),
        _wire_body(_inner('bad-event-type', event_type=42, payload={})),
        _wire_body(_inner('bad-priority', priority=7, payload={})),
        _wire_body(_inner('bad-huge', payload={
            'exception': 'E' * (4 * 1024 * 1024), 'instance_id': 'i-huge',
            'display_name': 'n' * 100000})),
        _wire_body(_inner('bad-deep', payload=json.loads(
            '{"a":' * 500 + '1' + '}' * 500))),
        _wire_body(_inner('hostile-name', payload={
            'instance_id': 'c0ffee00-0000-4000-8000-000000000001',
            'display_name': hostile, 'state': 'building',
            'exception': "libvirtError('\ud800 odd unicode \u202e')",
            'message': 'libvirtError', 'code': 500})),
    ]
    for body in bodies:
        rq.publish_raw(url, 'nova', key, body)
    with rq.Publisher(url) as pub:
        pub.publish({'request_id': 'req-sentinel-0001'}, 'compute.hv-9',
                    'compute.instance.create.error', 'ERROR',
                    {'instance_id': 'sentinel-instance', 'exception':
                     "TimeoutError('sentinel')", 'message': 'TimeoutError'})
    svc.wait_for('req-sentinel-0001', timeout=60)
    assert svc.process.poll() is None, 'the service must keep running'
    log = svc.log()
    for message_id in ('bad-no-payload', 'bad-list-payload',
                       'bad-event-type', 'bad-priority'):
        assert re.search(r'Dropped .*message_id=%s' % message_id, log), \
            message_id
    # bad-priority: oslo.messaging's own dispatcher cannot read it; the
    # listener's guard takes it out of its batch (listener.py).
    assert 'Exception during messages handling' not in log
    assert 'could not dispatch a batch' not in log
    # The huge and deep ones are errors with bounded fields, or dropped:
    # either way a line names them and nothing else broke.
    assert 'i-huge' in log
    alerts = [parse_alert(line) for line in svc.alert_lines()]
    hostile_alerts = [a for a in alerts if a.get('instance') ==
                      'c0ffee00-0000-4000-8000-000000000001']
    assert len(hostile_alerts) == 1
    for line in log.splitlines():
        # No forged line: every alert line is a real log record line.
        if service_process.ALERT_MARK in line:
            assert re.match(r'\d{4}-\d\d-\d\d ', line), line
        assert '\x1b' not in line and '\u2028' not in line
    assert 'rule=forged' not in ' '.join(
        a.get('rule', '') for a in alerts)
    assert svc.stop() == 0


def test_sigint_stops_cleanly_too(rabbitmq_vhost, start_service):
    svc = start_service(rabbitmq_vhost.url)
    assert svc.stop(signal.SIGINT) == 0
    assert svc.stop_seconds < 5
    assert 'Traceback' not in svc.log() + svc.output()


def test_secrets_never_reach_the_log(rabbitmq, rabbitmq_vhost,
                                     start_service):
    password = 'S3cret-Rabbit-Pw-7f3a'
    rabbitmq.ctl('add_user', 'nen', password)
    rabbitmq.ctl('set_permissions', '-p', rabbitmq_vhost.name, 'nen',
                 '.*', '.*', '.*')
    url = rabbitmq_vhost.url.replace('guest:guest', 'nen:' + password)
    svc = start_service(url, extra_args=['--debug'])
    sample = next(e for _, e in wire_entries()
                  if e.get('payload_contains_auth_token'))
    with rq.Publisher(rabbitmq_vhost.url) as pub:
        pub.publish_wire_file(shared_corpus.path_of(sample))
    svc.wait_for_alerts(1)
    assert svc.stop() == 0
    text = svc.log() + svc.output()
    assert 'transport_url' in text          # options were logged (masked)
    assert password not in text
    assert shared_corpus.FAKE_TOKEN not in text
    rabbitmq.ctl('delete_user', 'nen')


def test_unreachable_broker_is_logged_and_retried(tmp_path, start_service):
    port = rq._free_ports(1)[0]
    svc = start_service('rabbit://guest:guest@127.0.0.1:%d/' % port,
                        wait_for='Connecting to')
    lines = svc.wait_for(r'ERROR oslo.messaging.*Connection failed.*'
                         r'retrying', timeout=30, count=2)
    assert lines
    assert '127.0.0.1:%d' % port in svc.log()
    assert svc.stop() == 0
    assert svc.stop_seconds < 5
    assert 'Traceback' not in svc.output()


def test_broken_config_stops_startup_with_every_problem(tmp_path):
    config = '\n'.join([
        '[DEFAULT]',
        'transport_url = rabbit://guest:guest@127.0.0.1:1/',
        'rules = a, b, c',
        '[rule:a]',
        'events = compute task',
        'receivers = nowhere',
        '[rule:b]',
        'events =',
        'receivers = typo',
        '[receiver:typo]',
        'driver = emial',
        '',
    ])
    proc = service_process.ServiceProcess(tmp_path, config)
    status = proc.run_to_exit()
    assert status == 2
    problems = [ln for ln in proc.log().splitlines()
                if 'Configuration error:' in ln]
    text = '\n'.join(problems)
    assert "'compute task'" in text
    assert 'nowhere' in text
    assert '[rule:b] events is empty' in text
    assert "'c'" in text
    assert 'emial' in text
    assert len(problems) >= 5
