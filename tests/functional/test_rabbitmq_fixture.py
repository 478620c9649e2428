"""Proves the real-RabbitMQ test infrastructure (tests/functional/rabbitmq.py).
"""

import json
import os
import socket

import kombu
import pytest

try:
    from tests.functional import fixture_checks
    from tests.functional import rabbitmq as rmq
except ImportError:
    import fixture_checks
    import rabbitmq as rmq

SAMPLES = os.environ.get('NOVA_NOTIFICATION_SAMPLES', os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
    os.pardir, 'shared', 'nova-notification-samples'))
LEGACY_ERROR = os.path.join(
    SAMPLES, 'legacy',
    'error--compute.instance.create.error--PortBindingFailed.json')
VERSIONED_ERROR = os.path.join(
    SAMPLES, 'versioned-wire',
    'error--instance.create.error--PortBindingFailed.json')

# Fields the oslo Notifier generates afresh on every send.
REGENERATED = {'message_id', 'timestamp', '_unique_id'}


def _inner(message):
    body = json.loads(message['body'])
    assert body['oslo.version'] == '2.0'
    return json.loads(body['oslo.message'])


def _closed_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module', autouse=True)
def _samples_present():
    if not os.path.isfile(LEGACY_ERROR):
        pytest.fail('notification samples not found under %s (set '
                    'NOVA_NOTIFICATION_SAMPLES)' % SAMPLES, pytrace=False)


def test_broker_is_up_on_private_ports(rabbitmq):
    assert rabbitmq.running
    assert rabbitmq.url == 'rabbit://guest:guest@127.0.0.1:%d/' % (
        rabbitmq.port)
    # Never the system broker's ports or epmd.
    assert rabbitmq.port != 5672
    assert rabbitmq.dist_port != 25672
    assert rabbitmq.epmd_port != 4369
    assert rabbitmq.startup_seconds < rmq.DEFAULT_START_TIMEOUT
    assert rabbitmq.processes(), 'no broker processes found'
    with kombu.Connection(rmq.kombu_url(rabbitmq.url),
                          connect_timeout=5) as conn:
        conn.connect()
        assert conn.connected
    assert '/' in rabbitmq.list_vhosts()


def test_notifier_declares_default_queue_and_delivers_legacy_sample(
        rabbitmq, rabbitmq_vhost):
    vhost, url = rabbitmq_vhost
    assert rabbitmq.queue_message_counts(vhost) == {}

    sent = rmq.publish_wire_file(url, LEGACY_ERROR)

    # The oslo Notifier itself declared <topic>.<priority>, non-durable, on
    # the non-durable topic exchange 'nova'.
    counts = rabbitmq.wait_for_message_count('notifications.error', 1, vhost)
    assert counts == {'notifications.error': 1}
    (queue,) = rabbitmq.list_queues(vhost)
    assert queue['durable'] is False and queue['auto_delete'] is False
    exchanges = {e['name']: e for e in rabbitmq.list_exchanges(vhost)}
    assert exchanges['nova']['type'] == 'topic'
    assert exchanges['nova']['durable'] is False
    assert {'source_name': 'nova', 'source_kind': 'exchange',
            'destination_name': 'notifications.error',
            'destination_kind': 'queue',
            'routing_key': 'notifications.error'} in rabbitmq.queue_bindings(
                vhost)

    (msg,) = rmq.fetch_messages(url, 'notifications.error')
    assert msg['exchange'] == 'nova'
    assert msg['routing_key'] == 'notifications.error'
    assert msg['content_type'] == 'application/json'
    assert msg['content_encoding'] == 'utf-8'
    got = _inner(msg)
    assert set(got) == set(sent)
    assert {k for k in got if got[k] != sent[k]} == REGENERATED
    assert got['_context_request_id'] == (
        'req-6a0c5f2e-2a53-4a7b-9c1e-0d4f2b8a9e11')
    assert rabbitmq.queue_message_counts(vhost) == {'notifications.error': 0}


def test_queue_declared_first_like_a_consumer(rabbitmq, rabbitmq_vhost):
    vhost, url = rabbitmq_vhost
    rmq.declare_queue(url, 'notifications.error')
    assert rabbitmq.queue_message_counts(vhost) == {'notifications.error': 0}

    rmq.publish_wire_file(url, LEGACY_ERROR)

    # Same declare arguments as oslo's, so no PRECONDITION_FAILED and no
    # second queue.
    assert rabbitmq.wait_for_message_count(
        'notifications.error', 1, vhost) == {'notifications.error': 1}


def test_versioned_sample_goes_to_versioned_notifications(
        rabbitmq, rabbitmq_vhost):
    vhost, url = rabbitmq_vhost
    sent = rmq.publish_wire_file(url, VERSIONED_ERROR)
    assert 'nova_object.data' in sent['payload']
    rabbitmq.wait_for_message_count('versioned_notifications.error', 1,
                                    vhost)
    (msg,) = rmq.fetch_messages(url, 'versioned_notifications.error')
    got = _inner(msg)
    assert got['payload'] == sent['payload']
    assert got['publisher_id'] == 'nova-compute:compute-01'


def test_topic_override(rabbitmq, rabbitmq_vhost):
    vhost, url = rabbitmq_vhost
    rmq.publish_wire_file(url, VERSIONED_ERROR, topic='notifications')
    assert rabbitmq.wait_for_message_count(
        'notifications.error', 1, vhost) == {'notifications.error': 1}


def test_publisher_reuses_one_transport_for_all_samples(
        rabbitmq, rabbitmq_vhost):
    vhost, url = rabbitmq_vhost
    with open(os.path.join(SAMPLES, 'manifest.json')) as f:
        manifest = json.load(f)
    entries = manifest['legacy'] + manifest['versioned_wire']
    assert len(entries) == 27
    expected = {}
    with rmq.Publisher(url) as pub:
        for entry in entries:
            sent = pub.publish_wire_file(os.path.join(SAMPLES, entry['file']))
            key = '%s.%s' % (rmq.wire_topic(sent), sent['priority'].lower())
            # The default topic choice matches where Nova really sent it.
            assert key == entry['amqp']['routing_key'], entry['file']
            expected[key] = expected.get(key, 0) + 1
    for queue, count in expected.items():
        rabbitmq.wait_for_message_count(queue, count, vhost)
    assert rabbitmq.queue_message_counts(vhost) == expected
    assert expected == {'notifications.error': 13, 'notifications.info': 5,
                        'versioned_notifications.error': 7,
                        'versioned_notifications.info': 2}


def test_publish_notification_keeps_dict_context(rabbitmq, rabbitmq_vhost):
    # oslo's Notifier drops a context that is a plain dict; the helper must
    # still put _context_* keys on the wire as Nova's RequestContext does.
    vhost, url = rabbitmq_vhost
    rmq.publish_notification(
        url, {'request_id': 'req-1', 'project_id': 'p1'}, 'compute.host1',
        'compute.instance.reboot.error', 'ERROR', {'code': 500})
    rabbitmq.wait_for_message_count('notifications.error', 1, vhost)
    (msg,) = rmq.fetch_messages(url, 'notifications.error')
    got = _inner(msg)
    assert got['_context_request_id'] == 'req-1'
    assert got['_context_project_id'] == 'p1'
    assert got['priority'] == 'ERROR'
    assert got['publisher_id'] == 'compute.host1'
    assert got['payload'] == {'code': 500}


def test_raw_publish_delivers_bytes_unchanged(rabbitmq, rabbitmq_vhost):
    vhost, url = rabbitmq_vhost
    rmq.declare_queue(url, 'notifications.error')
    bodies = [b'not json {', b'\xff\xfe binary', b'{"oslo.version": "2.0"}']
    for body in bodies:
        rmq.publish_raw(url, 'nova', 'notifications.error', body)
    # Publisher confirms: counted without polling.
    assert rabbitmq.queue_message_counts(vhost) == {'notifications.error': 3}
    got = rmq.fetch_messages(url, 'notifications.error', ack=False)
    assert [m['body'] for m in got] == bodies
    assert {m['content_type'] for m in got} == {'application/json'}
    # ack=False left them in the queue.
    assert rabbitmq.wait_for_message_count(
        'notifications.error', 3, vhost) == {'notifications.error': 3}


def test_raw_and_notifier_exchange_declares_agree(rabbitmq, rabbitmq_vhost):
    vhost, url = rabbitmq_vhost
    # Raw first creates 'nova'; the Notifier then redeclares it: no conflict.
    rmq.publish_raw(url, 'nova', 'nobody.listens', b'dropped')
    rmq.publish_wire_file(url, LEGACY_ERROR)
    rmq.publish_raw(url, 'nova', 'notifications.error', b'raw',
                    content_type='text/plain')
    assert rabbitmq.wait_for_message_count(
        'notifications.error', 2, vhost) == {'notifications.error': 2}


def test_vhosts_are_isolated(rabbitmq, rabbitmq_vhost):
    vhost, url = rabbitmq_vhost
    rmq.publish_wire_file(url, LEGACY_ERROR)
    rabbitmq.wait_for_message_count('notifications.error', 1, vhost)
    assert 'notifications.error' not in rabbitmq.queue_message_counts('/')


def test_unreachable_broker_raises_instead_of_dropping():
    url = 'rabbit://guest:guest@127.0.0.1:%d/' % _closed_port()
    with rmq.Publisher(url, retry=0) as pub:
        with pytest.raises(rmq.NotificationPublishError):
            pub.publish({}, 'compute.host1', 'x.error', 'ERROR', {})


def test_bad_vhost_name_rejected(rabbitmq):
    with pytest.raises(ValueError):
        rabbitmq.add_vhost('a/b')


def test_second_broker_stops_without_leftovers(tmp_path):
    broker = rmq.RabbitMQBroker(base_dir=str(tmp_path))
    broker.start()
    try:
        assert broker.running
        # The wrapper script, beam.smp, epmd at least.
        assert len(broker.processes()) >= 3
        tmpdir, port = broker.tmpdir, broker.port
    finally:
        broker.stop()
    fixture_checks.assert_stopped_clean(broker, rmq._marked_pids, tmpdir,
                                        port)
    broker.stop()  # idempotent


def test_start_failure_reports_log_and_cleans_up(tmp_path):
    broker = rmq.RabbitMQBroker(base_dir=str(tmp_path), start_timeout=60,
                                extra_config='no_such_setting = 1')
    # The broker's own explanation is in the message.
    fixture_checks.assert_start_fails_clean(
        broker, rmq.RabbitMQStartError, str(tmp_path),
        'unknown variable: no_such_setting')
