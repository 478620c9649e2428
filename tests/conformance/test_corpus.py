"""Conformance over the whole shared Nova notification corpus.

Every file the manifest marks as an error yields exactly one record with
the expected fields, through the real endpoint plugins and oslo.messaging's
dispatcher; every other file yields none. No keystone token from a message
reaches a record, an alert line or any log line.
"""

import dataclasses
import logging

from oslo_config import cfg
import oslo_messaging
from oslo_messaging.notify import dispatcher as oslo_dispatcher
import pytest

from nova_error_notifier import alert as alert_mod
from nova_error_notifier.drivers import log as log_driver
from nova_error_notifier import listener
from nova_error_notifier import opts
from nova_error_notifier import record as rec
from nova_error_notifier import service
from nova_error_notifier import wire
from tests import shared_corpus

TRACEBACK_MARK = '\nTraceback (most recent call last):'


def _entries():
    try:
        return shared_corpus.manifest_entries()
    except FileNotFoundError as exc:
        # Collected as one failing test, never skipped.
        return [('missing', {'file': str(exc), 'missing': True})]


ENTRIES = _entries()


class _Incoming:
    def __init__(self, ctxt, message):
        self.ctxt = ctxt
        self.message = message


@pytest.fixture(scope='module', params=['batch', 'single'])
def dispatch(request):
    """The service's batch dispatcher, and the one replay uses."""
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], project='nova_error_notifier', default_config_files=[])
    records = []

    def sink(item):
        if isinstance(item, rec.ErrorRecord):
            records.append(item)

    def sink_many(items):
        for item in items:
            sink(item)
    endpoints = service.load_endpoints(conf, sink)
    if request.param == 'batch':
        dispatcher = oslo_dispatcher.BatchNotificationDispatcher(
            [listener.BatchEndpoint(endpoints, sink_many)],
            oslo_messaging.serializer.NoOpSerializer())
    else:
        dispatcher = listener.Recorder(listener.BatchEndpoint(
            endpoints, sink_many))

    def _dispatch(path):
        del records[:]
        messages = list(wire.read_file(path))
        assert len(messages) == 1, messages
        assert not isinstance(messages[0], wire.WireError), messages[0]
        incoming = _Incoming(messages[0].ctxt, messages[0].message)
        if request.param == 'batch':
            assert dispatcher.dispatch([incoming]) == set()
        else:
            dispatcher.dispatch(incoming.ctxt, incoming.message)
        return list(records)
    return _dispatch


def test_the_whole_corpus_in_one_batch_is_read_as_one_by_one():
    """One batch of every file: the records of the files one at a time."""
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], project='nova_error_notifier', default_config_files=[])
    single, batched, calls = [], [], []
    endpoints = service.load_endpoints(conf, lambda item: None)
    plain = listener.Recorder(listener.BatchEndpoint(endpoints,
                                                     single.extend))

    def sink_many(items):
        calls.append(len(items))
        batched.extend(items)
    batch = oslo_dispatcher.BatchNotificationDispatcher(
        [listener.BatchEndpoint(endpoints, sink_many)],
        oslo_messaging.serializer.NoOpSerializer())
    incoming = []
    for _, entry in ENTRIES:
        assert not entry.get('missing'), entry['file']
        for message in wire.read_file(shared_corpus.path_of(entry)):
            incoming.append(_Incoming(message.ctxt, message.message))
            plain.dispatch(message.ctxt, message.message)
    assert batch.dispatch(incoming) == set()
    # oslo.messaging calls the endpoint once per priority of the batch
    # (error, critical, info), each call one outbox write.
    assert sum(calls) == len(single) and len(calls) <= 3
    assert len(single) >= sum(1 for _, e in ENTRIES if e['is_error'])

    def key(item):
        return repr(sorted(dataclasses.asdict(item).items()))
    assert sorted(map(key, batched)) == sorted(map(key, single))


@pytest.fixture
def all_logs():
    """Every log record of the process, formatted."""
    lines = []

    class Handler(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Handler(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield lines
    root.removeHandler(handler)
    root.setLevel(old_level)


CHECKED_FIELDS = {
    # manifest key: record attribute
    'request_id': 'request_id',
    'global_request_id': 'global_request_id',
    'project_id': 'project_id',
    'user_id': 'user_id',
    'user_name': 'user_name',
    'project_name': 'project_name',
    'instance_uuid': 'instance_uuid',
    'publisher_service': 'publisher_service',
    'publisher_host': 'publisher_host',
    'exception_class': 'exception',
    'error_code': 'code',
    'state': 'state',
    'instance_host': 'instance_host',
    'tenant_id': 'instance_project_id',
}


@pytest.mark.parametrize('section,entry', ENTRIES,
                         ids=[e['file'] for _, e in ENTRIES])
def test_manifest_entry(section, entry, dispatch, all_logs):
    assert not entry.get('missing'), entry['file']
    records = dispatch(shared_corpus.path_of(entry))
    if not entry['is_error']:
        assert records == [], 'not an error, yet a record was made'
        return
    assert len(records) == 1, 'an error must yield exactly one record'
    record = records[0]
    assert record.event_type == entry['event_type']
    assert record.priority == entry['priority']
    assert record.publisher_id == entry['publisher_id']
    expected = entry.get('expected') or {}
    for key, attr in CHECKED_FIELDS.items():
        if key in expected:
            assert getattr(record, attr) == expected[key], key
    if 'error_message' in expected:
        message = expected['error_message'].split(TRACEBACK_MARK)[0]
        assert record.message == message
        assert TRACEBACK_MARK not in record.message
    if expected.get('exception_class_raw', '').endswith('_Remote'):
        assert record.remote is True
    if entry.get('exception_payload_path'):
        # Versioned doc samples: the ExceptionPayload was found.
        assert record.exception, 'exception not read from %s' % (
            entry['exception_payload_path'])
    if entry.get('instance_uuid_path'):
        assert record.instance_uuid, 'instance uuid not read from %s' % (
            entry['instance_uuid_path'])
    # Nothing of the token-carrying legacy args / request_spec / context.
    alert = alert_mod.from_records([record], receiver='r', rule='x',
                                   include_details=True)
    line = log_driver.format_alert(alert, with_details=True)
    assert '\n' not in line
    for text in (repr(dataclasses.asdict(record)), line, *all_logs):
        assert shared_corpus.FAKE_TOKEN not in text
    if entry.get('payload_contains_auth_token'):
        with open(shared_corpus.path_of(entry), encoding='utf-8') as handle:
            assert shared_corpus.FAKE_TOKEN in handle.read(), \
                'the corpus file should carry the token this test guards'


def test_corpus_has_both_formats_and_noise():
    sections = {section for section, _ in ENTRIES}
    assert {'legacy', 'versioned_wire', 'versioned_doc_samples'} <= sections
    assert any(not e['is_error'] for _, e in ENTRIES)
    assert sum(1 for _, e in ENTRIES if e['is_error']) >= 30
