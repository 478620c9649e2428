"""Endpoint plugins behind the listener's batch endpoint, on bad input
too (read as replay reads wire messages, one at a time)."""

import json
import logging

from oslo_config import cfg
import oslo_messaging
import pytest

from nova_error_notifier.endpoints import legacy
from nova_error_notifier.endpoints import versioned
from nova_error_notifier import listener
from nova_error_notifier import opts
from nova_error_notifier import record as rec
from nova_error_notifier import service
from tests.unit import nova_messages as nm

HANDLED = oslo_messaging.NotificationResult.HANDLED


def make_conf(*args):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(list(args), project='nova_error_notifier', default_config_files=[])
    return conf


@pytest.fixture
def logs():
    lines = []

    class Handler(logging.Handler):
        def emit(self, record):
            lines.append((record.levelno, record.getMessage()))

    handler = Handler()
    logger = logging.getLogger('nova_error_notifier')
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(old)


@pytest.fixture
def harness():
    conf = make_conf()
    records = []
    endpoints = service.load_endpoints(conf, lambda item: None)
    recorder = listener.Recorder(listener.BatchEndpoint(
        endpoints, records.extend))

    def dispatch(message, ctxt=None):
        result = recorder.dispatch(nm.context() if ctxt is None else ctxt,
                                   message)
        return HANDLED if result is None else result
    dispatch.records = records
    return dispatch


def message(event_type, payload, priority='ERROR', publisher='compute.hv-1',
            message_id='m-1'):
    return {'message_id': message_id, 'publisher_id': publisher,
            'event_type': event_type, 'priority': priority,
            'payload': payload, 'timestamp': '2026-10-05 08:30:00.000000'}


def test_plugins_load_by_name_in_order():
    conf = make_conf()
    endpoints = service.load_endpoints(conf, lambda r: None)
    assert [type(e) for e in endpoints] == [versioned.VersionedNovaEndpoint,
                                            legacy.LegacyNovaEndpoint]


def test_missing_plugin_stops_startup(tmp_path):
    path = tmp_path / 'c.conf'
    path.write_text('[listener]\nendpoints = versioned, legasy\n')
    conf = make_conf('--config-file', str(path))
    with pytest.raises(service.EndpointLoadError, match='legasy'):
        service.load_endpoints(conf, lambda r: None)


def test_empty_plugin_list_stops_startup(tmp_path):
    path = tmp_path / 'c.conf'
    path.write_text('[listener]\nendpoints =\n')
    conf = make_conf('--config-file', str(path))
    with pytest.raises(service.EndpointLoadError, match='empty'):
        service.load_endpoints(conf, lambda r: None)


def test_info_subscription_follows_watch_state_changes(tmp_path):
    on = service.load_endpoints(make_conf(), lambda r: None)
    assert all(hasattr(e, 'info') for e in on)
    path = tmp_path / 'c.conf'
    path.write_text('[listener]\nwatch_state_changes = false\n')
    off = service.load_endpoints(make_conf('--config-file', str(path)),
                                 lambda r: None)
    assert not any(hasattr(e, 'info') for e in off)
    endpoint = listener.BatchEndpoint(off, lambda items: None)
    assert endpoint.priorities == ['critical', 'error']
    assert not hasattr(endpoint, 'info')


def test_each_format_reaches_exactly_one_endpoint(harness):
    harness(message('compute.instance.create.error', nm.legacy_usage(
        exception="X('y')", message='y')))
    harness(message('instance.create.error', nm.nova_object(
        'InstanceCreatePayload',
        nm.versioned_instance(fault=nm.exception_payload())),
        publisher='nova-compute:hv-1'))
    assert [r.format for r in harness.records] == ['legacy', 'versioned']


def test_info_noise_is_filtered_cheaply(harness):
    assert harness(message('compute.instance.exists', nm.legacy_usage(),
                           priority='INFO')) == HANDLED
    assert harness(message('instance.update',
                           nm.versioned_update('active', 'active'),
                           priority='INFO')) == HANDLED
    assert harness.records == []


@pytest.mark.parametrize('event_type,payload,publisher', [
    ('instance.update', nm.versioned_update('building', 'active'),
     'nova-compute:hv-1'),
    ('instance.create.end', nm.nova_object(
        'InstanceCreatePayload', nm.versioned_instance(state='active')),
     'nova-compute:hv-1'),
    ('compute.instance.create.end', nm.legacy_usage(state='active'),
     'compute.hv-1'),
    ('compute.instance.update', nm.legacy_usage(
        state='active', old_state='building'), 'compute.hv-1'),
])
def test_successful_builds_are_resolutions(harness, event_type, payload,
                                           publisher):
    assert harness(message(event_type, payload, priority='INFO',
                           publisher=publisher)) == HANDLED
    [resolution] = harness.records
    assert isinstance(resolution, rec.Resolution)
    assert resolution.instance_uuid == nm.INSTANCE
    assert resolution.request_id == nm.REQUEST


@pytest.mark.parametrize('bad', [
    message('compute.instance.create.error', None),
    message('compute.instance.create.error', ['list', 'payload']),
    message('compute.instance.create.error', 'a string payload'),
    message(12345, {'x': 1}),
    message(None, {'x': 1}),
    message('compute.instance.create.error', {}, publisher=['x']),
    {'message_id': 'm-1', 'priority': 'ERROR'},
    message('compute.instance.create.error', {}, priority=7),
    message('compute.instance.create.error', {}, priority=None),
    message('instance.create.error', {'nova_object.data': 'not a dict'}),
])
def test_malformed_messages_are_logged_and_dropped(harness, logs, bad):
    assert harness(bad) == HANDLED
    assert harness.records == []
    text = '\n'.join(m for _, m in logs)
    if bad.get('priority') in ('ERROR',):
        assert 'm-1' in text, 'the message id must be logged'
        assert 'Dropped' in text


def test_bad_context_types_do_not_stop_processing(harness):
    assert harness(message('compute.instance.create.error',
                           nm.legacy_usage()), ctxt=None) == HANDLED
    harness(message('compute.instance.create.error', nm.legacy_usage()),
            ctxt={'request_id': ['x'], 'project_id': {'a': 1}})
    assert len(harness.records) == 2
    assert harness.records[1].request_id is None


def test_huge_payload_is_bounded(harness):
    huge = 'A' * (5 * 1024 * 1024)
    harness(message('compute.instance.create.error', nm.legacy_usage(
        exception=huge, message=huge, display_name=huge)))
    record = harness.records[0]
    assert len(record.message) < 5000
    assert len(record.instance_name) < 300


def test_deep_nesting_is_harmless(harness):
    nested = {}
    node = nested
    for _ in range(5000):
        node['args'] = {}
        node = node['args']
    payload = nm.legacy_usage()
    payload['args'] = nested
    payload['exception'] = '[' * 10000 + ']' * 10000
    harness(message('resize_instance', payload))
    assert harness.records[0].event_type == 'resize_instance'


def test_sink_failure_is_logged_and_the_listener_keeps_going(logs):
    conf = make_conf()
    calls = []

    def sink(record):
        calls.append(record)
        raise RuntimeError('downstream broke')

    [plugin] = [e for e in service.load_endpoints(conf, sink)
                if e.FORMAT == 'legacy']
    # The plugin's own per-message method (oslo.messaging's plain
    # listener would call it).
    result = plugin.error(nm.context(), 'compute.hv-1',
                          'compute.instance.create.error', nm.legacy_usage(
                              exception="X('y')"),
                          {'message_id': 'm-sink'})
    assert result == HANDLED
    assert len(calls) == 1
    assert any('m-sink' in m for _, m in logs)


def test_hostile_strings_in_malformed_logs_are_escaped(harness, logs):
    bad = message('compute.instance.create.error\nFAKE LINE', 'x',
                  message_id='id\r\nforged')
    harness(bad)
    for _, text in logs:
        assert '\n' not in text and '\r' not in text


def test_wire_body_round_trip(harness):
    inner = message('compute.instance.create.error', nm.legacy_usage(
        exception="X('y')"))
    for key, value in nm.context().items():
        inner['_context_' + key] = value
    body = {'oslo.version': '2.0', 'oslo.message': json.dumps(inner)}
    from nova_error_notifier import wire
    parsed = wire.to_message(body, 'test')
    harness(parsed.message, ctxt=parsed.ctxt)
    assert harness.records[0].request_id == nm.REQUEST


def test_store_down_requeues_the_message(monkeypatch, logs):
    from nova_error_notifier.endpoints import base as endpoint_base
    monkeypatch.setattr(endpoint_base, 'REQUEUE_DELAY', 0)
    conf = make_conf()

    def sink(record):
        raise rec.RetryLater('database is locked')

    [plugin] = [e for e in service.load_endpoints(conf, sink)
                if e.FORMAT == 'legacy']
    result = plugin.error(nm.context(), 'compute.hv-1',
                          'compute.instance.create.error', nm.legacy_usage(
                              exception="X('y')"),
                          {'message_id': 'm-requeue'})
    assert result == oslo_messaging.NotificationResult.REQUEUE
    assert any('m-requeue' in m and 'back to the queue' in m
               for _, m in logs)
