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
"""nova_emit: Nova's own notification code onto a real RabbitMQ.

What Nova sent is read back from the broker (the default queues Nova's
notifier declares) and checked against what nova_emit reports; then the
real service turns the same traffic into one alert per failure.
"""

import json
import sys
import time
import uuid

from tests.functional import nova_emit
from tests.functional import rabbitmq as rq
from tests.functional import service_process

HOSTILE_NAME = ('web\r\nBcc: evil@example.com\n=?utf-8?q?x=0D=0AX:_1?= '
                '\u202e\u2028\x1b[31m\x00end')
QUEUES = ('notifications.error', 'notifications.info',
          'versioned_notifications.error', 'versioned_notifications.info')

# Event type, priority and topic of each message, in the order Nova sends
# them, per kind (notification_format = both).
EXPECTED = {
    'build_failure': [
        ('compute.instance.create.error', 'ERROR', 'notifications'),
        ('instance.create.error', 'ERROR', 'versioned_notifications'),
    ],
    'schedule_failure': [
        ('compute.instance.update', 'INFO', 'notifications'),
        ('instance.update', 'INFO', 'versioned_notifications'),
        ('compute_task.build_instances', 'ERROR', 'notifications'),
        ('compute_task.build_instances.error', 'ERROR',
         'versioned_notifications'),
    ],
    'update_to_error': [
        ('compute.instance.update', 'INFO', 'notifications'),
        ('instance.update', 'INFO', 'versioned_notifications'),
    ],
    'wrap_exception': [
        ('resize_instance', 'ERROR', 'notifications'),
        ('compute.exception', 'ERROR', 'versioned_notifications'),
    ],
}


def _request_id():
    return 'req-%s' % uuid.uuid4()


def _scenario(kind, **extra):
    scenario = {
        'kind': kind, 'request_id': _request_id(),
        'instance': {'display_name': HOSTILE_NAME,
                     'hostname': 'web-%s' % kind.replace('_', '-'),
                     'vm_state': 'building', 'task_state': 'spawning'},
        'exception': {'class': 'NoValidHost',
                      'message': 'No valid host for %s' % kind},
        'context': {'project_name': 'tenant\r\nX-Injected: 1',
                    'user_name': 'alice'},
    }
    scenario.update(extra)
    return scenario


def _read_queues(rabbitmq, vhost, expected_total, timeout=20):
    """{queue: [inner message dict, ...]} once *expected_total* are there."""
    deadline = time.monotonic() + timeout
    while True:
        counts = rabbitmq.queue_message_counts(vhost.name)
        total = sum(counts.get(q, 0) for q in QUEUES)
        if total >= expected_total or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert total == expected_total, counts
    assert set(counts) <= set(QUEUES), counts
    got = {}
    for queue in QUEUES:
        got[queue] = []
        if queue not in counts:
            continue
        for message in rq.fetch_messages(vhost.url, queue):
            assert message['exchange'] == 'nova'
            assert message['routing_key'] == queue
            body = json.loads(message['body'].decode('utf-8'))
            assert body['oslo.version'] == '2.0'
            got[queue].append(json.loads(body['oslo.message']))
    return got


def _display_name(message):
    payload = message['payload']
    if 'nova_object.data' in payload:
        data = payload['nova_object.data']
        return data.get('display_name')
    if 'args' in payload:  # wrap_exception: the call's arguments
        return payload['args']['instance']['display_name']
    return payload.get('display_name')


def test_each_kind_reaches_the_broker_as_nova_sends_it(rabbitmq,
                                                       rabbitmq_vhost):
    scenarios = [_scenario(kind) for kind in nova_emit.KINDS]
    results = nova_emit.emit(rabbitmq_vhost.url, scenarios)
    assert [r['kind'] for r in results] == list(nova_emit.KINDS)
    total = sum(len(EXPECTED[k]) for k in nova_emit.KINDS)
    assert sum(len(r['sent']) for r in results) == total
    on_broker = _read_queues(rabbitmq, rabbitmq_vhost, total)
    by_id = {m['message_id']: (queue, m) for queue, messages
             in on_broker.items() for m in messages}
    assert len(by_id) == total

    for scenario, result in zip(scenarios, results):
        kind = scenario['kind']
        assert result['request_id'] == scenario['request_id']
        sent = [(s['event_type'], s['priority'], s['topic'])
                for s in result['sent']]
        assert sent == EXPECTED[kind], kind
        for report in result['sent']:
            queue, message = by_id[report['message_id']]
            # On the queue of its topic and priority, as reported.
            assert queue == '%s.%s' % (report['topic'],
                                       report['priority'].lower())
            assert message['event_type'] == report['event_type']
            assert message['priority'] == report['priority']
            assert message['publisher_id'] == report['publisher_id']
            assert message['payload'] == report['payload']
            assert message['_context_request_id'] == scenario['request_id']
            assert message['_context_project_name'] == \
                'tenant\r\nX-Injected: 1'
            assert message['_context_user_name'] == 'alice'
            assert message['_context_auth_token'] is None
            if report['event_type'] not in ('compute_task.build_instances',
                                            'compute_task.build_instances'
                                            '.error', 'compute.exception'):
                # Byte for byte: no escaping, no truncation on Nova's side.
                assert _display_name(message) == HOSTILE_NAME, (
                    kind, report['event_type'])
            if report['versioned']:
                assert message['payload']['nova_object.namespace'] == 'nova'
        # Nova's payloads name the instance nova_emit created.
        uuids = json.dumps([s['payload'] for s in result['sent']])
        assert result['instance_uuid'] in uuids

    by_kind = {r['kind']: r for r in results}
    # The exception went through Nova's ExceptionPayload.
    fault = by_kind['build_failure']['sent'][1]['payload'][
        'nova_object.data']['fault']['nova_object.data']
    assert fault['exception'] == 'NoValidHost'
    assert fault['exception_message'] == 'No valid host for build_failure'
    legacy = by_kind['build_failure']['sent'][0]['payload']
    assert legacy['message'] == 'No valid host for build_failure'
    assert legacy['instance_id'] == by_kind['build_failure']['instance_uuid']
    update = by_kind['update_to_error']['sent'][1]['payload'][
        'nova_object.data']['state_update']['nova_object.data']
    assert (update['old_state'], update['state']) == ('building', 'error')
    task = by_kind['schedule_failure']['sent'][3]['payload'][
        'nova_object.data']
    assert task['instance_uuid'] == \
        by_kind['schedule_failure']['instance_uuid']
    assert task['reason']['nova_object.data']['exception'] == 'NoValidHost'
    assert by_kind['wrap_exception']['sent'][0]['publisher_id'] == \
        'compute.compute-01'
    assert by_kind['wrap_exception']['sent'][1]['publisher_id'] == \
        'nova-compute:compute-01'


def test_notification_format_decides_the_topics(rabbitmq, rabbitmq_vhost):
    scenarios = [_scenario('build_failure', format='versioned'),
                 _scenario('build_failure', format='unversioned'),
                 _scenario('update_to_error', format='versioned')]
    results = nova_emit.emit(rabbitmq_vhost.url, scenarios)
    assert [[s['event_type'] for s in r['sent']] for r in results] == [
        ['instance.create.error'], ['compute.instance.create.error'],
        ['instance.update']]
    on_broker = _read_queues(rabbitmq, rabbitmq_vhost, 3)
    assert [m['event_type'] for m in on_broker[
        'versioned_notifications.error']] == ['instance.create.error']
    assert [m['event_type'] for m in on_broker['notifications.error']] == [
        'compute.instance.create.error']
    assert [m['event_type'] for m in on_broker[
        'versioned_notifications.info']] == ['instance.update']
    assert on_broker['notifications.info'] == []


def test_bad_scenarios_are_refused_before_nova_starts():
    for bad in ({'kind': 'reboot'}, {'kind': 'build_failure',
                                     'format': 'json'}):
        try:
            nova_emit.emit('fake://', [bad])
        except ValueError as exc:
            assert repr(bad.get('format', bad['kind'])) in str(exc)
        else:
            raise AssertionError('accepted %r' % bad)
    # An unknown exception class is Nova's subprocess failing, loudly.
    try:
        nova_emit.emit('fake://', [_scenario(
            'build_failure', exception={'class': 'NoSuchError'})])
    except nova_emit.EmitError as exc:
        assert "no exception class 'NoSuchError'" in str(exc)
    else:
        raise AssertionError('an unknown exception class was accepted')


def test_nova_stays_out_of_the_test_process():
    assert nova_emit.emit('fake://', [_scenario('update_to_error')])
    assert not [name for name in sys.modules
                if name == 'nova' or name.startswith('nova.')]


def test_the_service_alerts_once_per_failure_of_nova_traffic(
        rabbitmq_vhost, tmp_path):
    proc = service_process.ServiceProcess(
        tmp_path, '[DEFAULT]\ntransport_url = %s\n' % rabbitmq_vhost.url)
    proc.start()
    try:
        scenarios = [_scenario(kind) for kind in nova_emit.KINDS]
        scenarios.append(_scenario('schedule_failure',
                                   method='migrate_server',
                                   exception={'class': 'NoValidHost',
                                              'message': 'no host'}))
        results = nova_emit.emit(rabbitmq_vhost.url, scenarios)
        lines = proc.wait_for_alerts(len(scenarios), timeout=60)
        # Nothing else comes: one alert per failure, twins folded in.
        time.sleep(service_process.GROUP_WAIT + 2)
        lines = proc.alert_lines()
        assert len(lines) == len(scenarios), lines
        alerts = [service_process.parse_alert(line) for line in lines]
        for result in results:
            [alert] = [a for a in alerts
                       if a['request_id'] == result['request_id']]
            assert alert['instance'] == result['instance_uuid']
            events = set(alert['events'].split(','))
            error_events = {s['event_type'] for s in result['sent']
                            if s['priority'] == 'ERROR' or
                            result['kind'] == 'update_to_error'}
            assert error_events <= events, (result['kind'], events)
            # The alert line shows the hostile name escaped, on one line.
            assert '\r' not in alert['name'] and '\n' not in alert['name']
        assert len({a['id'] for a in alerts}) == len(alerts)
    finally:
        status = proc.stop()
    assert status == 0
    log = proc.log()
    assert 'Traceback' not in log
    # No log line of the service starts with injected text.
    assert not [ln for ln in log.splitlines()
                if ln.startswith(('Bcc:', 'X-Injected', '=?utf-8?'))]
