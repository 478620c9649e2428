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
"""The service's batch dispatcher: one outbox write per batch, bad input
dropped message by message, requeues only for what was not stored."""

import logging

from oslo_config import cfg
import oslo_messaging
import pytest

from nova_error_notifier.endpoints import base as endpoint_base
from nova_error_notifier.endpoints import versioned
from nova_error_notifier import opts
from nova_error_notifier import outbox
from nova_error_notifier import record as rec
from nova_error_notifier import service
from tests.unit import nova_messages as nm

REQUEUE = oslo_messaging.NotificationResult.REQUEUE


class Incoming:
    def __init__(self, message, ctxt=None):
        self.ctxt = nm.context() if ctxt is None else ctxt
        self.message = message


def message(event_type, payload, priority='ERROR', message_id='m-1'):
    return Incoming({'message_id': message_id,
                     'publisher_id': 'compute.hv-1',
                     'event_type': event_type, 'priority': priority,
                     'payload': payload,
                     'timestamp': '2026-10-05 08:30:00.000000'})


def legacy_error(message_id):
    return message('compute.instance.create.error', nm.legacy_usage(
        exception="NoValidHost('No valid host was found.')"),
        message_id=message_id)


def versioned_error(message_id):
    return message('instance.create.error', nm.nova_object(
        'InstanceCreatePayload', nm.versioned_instance(
            fault=nm.exception_payload())), message_id=message_id)


def noise(message_id, event_type='instance.exists'):
    return message(event_type, nm.nova_object(
        'InstancePayload', nm.versioned_instance(state='active')),
        priority='INFO', message_id=message_id)


@pytest.fixture
def conf():
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], project='nova_error_notifier', default_config_files=[])
    return conf


@pytest.fixture
def logs():
    lines = []

    class Handler(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = Handler()
    logger = logging.getLogger('nova_error_notifier')
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(old)


class Sink:
    """sink_many: records the calls; fails as told."""

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    def __call__(self, items):
        self.calls.append(list(items))
        if self.fail is not None:
            error = self.fail(items)
            if error is not None:
                raise error


def make(conf, sink):
    endpoints = service.load_endpoints(conf, lambda item: None)
    return endpoint_base.BatchDispatcher(endpoints, None, sink)


def test_a_batch_is_stored_in_one_call_in_order(conf):
    sink = Sink()
    dispatcher = make(conf, sink)
    batch = [legacy_error('a'), noise('n1'), versioned_error('b'),
             noise('n2'), legacy_error('c')]
    assert dispatcher.dispatch(batch) == set()
    assert len(sink.calls) == 1
    assert [r.message_id for r in sink.calls[0]] == ['a', 'b', 'c']
    assert [r.format for r in sink.calls[0]] == ['legacy', 'versioned',
                                                 'legacy']


def test_info_noise_is_skipped_before_parsing(conf, monkeypatch):
    parsed, unpacked = [], []
    real = versioned.VersionedNovaEndpoint.parse

    def counting(*args):
        parsed.append(args[3])
        return real(*args)
    monkeypatch.setattr(versioned.VersionedNovaEndpoint, 'parse',
                        staticmethod(counting))
    sink = Sink()
    dispatcher = make(conf, sink)
    unpack = dispatcher._extract_user_message

    def counting_unpack(incoming):
        unpacked.append(incoming.message['message_id'])
        return unpack(incoming)
    dispatcher._extract_user_message = counting_unpack
    batch = [noise('n%d' % i) for i in range(50)]
    batch.append(message('instance.update',
                         nm.versioned_update('building', 'error'),
                         priority='INFO', message_id='u1'))
    assert dispatcher.dispatch(batch) == set()
    assert parsed == ['instance.update']
    assert unpacked == ['u1']
    assert [r.message_id for r in sink.calls[0]] == ['u1']
    assert sink.calls[0][0].state == 'error'


def test_nothing_to_store_makes_no_call(conf):
    sink = Sink()
    dispatcher = make(conf, sink)
    assert dispatcher.dispatch([noise('n1'), noise('n2')]) == set()
    assert sink.calls == []


@pytest.mark.parametrize('bad', [
    Incoming(['not', 'a', 'dict']),
    Incoming({'priority': 3, 'event_type': 'x', 'payload': {}}),
    Incoming({'priority': 'INFO', 'event_type': ['un', 'hashable'],
              'payload': {}}),
    Incoming({'priority': ['ERROR'], 'event_type': 'x', 'payload': {}}),
    Incoming({'priority': 'ERROR', 'event_type': 'compute.instance.'
              'create.error', 'payload': 'not an object',
              'message_id': 'bad-payload'}),
], ids=['list', 'int-priority', 'list-event-type', 'list-priority',
        'string-payload'])
def test_bad_messages_are_dropped_and_the_rest_stored(conf, logs, bad):
    sink = Sink()
    dispatcher = make(conf, sink)
    result = dispatcher.dispatch([legacy_error('a'), bad,
                                  versioned_error('b')])
    assert result == set()
    assert [r.message_id for r in sink.calls[0]] == ['a', 'b']


def test_a_context_of_the_wrong_type_does_not_stop_the_batch(conf):
    sink = Sink()
    dispatcher = make(conf, sink)
    odd = legacy_error('odd')
    odd.ctxt = 'not a context'
    assert dispatcher.dispatch([legacy_error('a'), odd]) == set()
    assert [(r.message_id, r.request_id) for r in sink.calls[0]] == [
        ('a', nm.REQUEST), ('odd', None)]


def test_unreadable_envelope_is_logged(conf, logs):
    dispatcher = make(conf, Sink())
    dispatcher.dispatch([Incoming({'priority': 7, 'message_id': 'p7'})])
    assert any('p7' in line and 'priority is a int' in line
               for line in logs), logs


def test_store_down_requeues_only_what_was_not_stored(conf, logs,
                                                      monkeypatch):
    monkeypatch.setattr(endpoint_base, 'REQUEUE_DELAY', 0)
    # The requeue line is rate-limited process-wide: start (and leave)
    # the limiter as it was.
    monkeypatch.setitem(endpoint_base._requeue_state, 'logged_at', 0.0)
    sink = Sink(fail=lambda items: rec.RetryLater('database is locked'))
    dispatcher = make(conf, sink)
    a, b, n = legacy_error('a'), versioned_error('b'), noise('n')
    assert dispatcher.dispatch([a, n, b]) == {a, b}
    assert any('back to the queue' in line for line in logs)


def test_a_record_that_breaks_the_sink_costs_only_itself(conf, logs):
    def fail(items):
        if any(r.message_id == 'b' for r in items):
            return RuntimeError('bug on this one')
        return None
    sink = Sink(fail=fail)
    dispatcher = make(conf, sink)
    assert dispatcher.dispatch([legacy_error('a'), versioned_error('b'),
                                legacy_error('c')]) == set()
    # The batch, then each record on its own.
    assert [[r.message_id for r in call] for call in sink.calls] == [
        ['a', 'b', 'c'], ['a'], ['b'], ['c']]
    # Without a rejection store, the line is what keeps it.
    assert any('message_id=b' in line and 'Rejected notification' in line
               for line in logs), logs


class Rejects:
    """reject(): records what it was given; fails as told."""

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    def __call__(self, key, reason, item, metadata):
        self.calls.append((key, reason, item.message_id))
        if self.fail is not None:
            raise self.fail


def make_guarded(conf, sink, reject, healthy=True, attempts=3):
    endpoints = service.load_endpoints(conf, lambda item: None)
    return endpoint_base.BatchDispatcher(
        endpoints, None, sink, reject=reject, healthy=lambda: healthy,
        max_attempts=attempts)


def poisoned(error, bad='b'):
    return Sink(fail=lambda items: error if any(
        r.message_id == bad for r in items) else None)


@pytest.fixture
def no_delay(monkeypatch):
    monkeypatch.setattr(endpoint_base, 'REQUEUE_DELAY', 0)
    monkeypatch.setitem(endpoint_base._requeue_state, 'logged_at', 0.0)


def test_a_message_that_can_never_be_stored_is_rejected_at_once(
        conf, logs, no_delay):
    rejects = Rejects()
    sink = poisoned(outbox.StoreError('DataError: value too long'))
    dispatcher = make_guarded(conf, sink, rejects)
    a, b, c = legacy_error('a'), versioned_error('b'), legacy_error('c')
    assert dispatcher.dispatch([a, b, c]) == set()
    stored = [[r.message_id for r in call] for call in sink.calls]
    assert stored == [['a', 'b', 'c'], ['a'], ['b'], ['c']]
    [(key, reason, message_id)] = rejects.calls
    assert key == 'b' and message_id == 'b'
    assert 'DataError: value too long' in reason and '1 try' in reason
    assert any('Rejected notification message_id=b' in line
               for line in logs), logs


@pytest.mark.parametrize('error', [
    rec.RetryLater('lock wait timeout'),
    outbox.StoreError('IntegrityError: UNIQUE', retryable=True)],
    ids=['lock', 'unique'])
def test_a_failure_that_may_pass_is_retried_a_few_times(conf, no_delay,
                                                        error):
    rejects = Rejects()
    dispatcher = make_guarded(conf, poisoned(error), rejects, attempts=3)
    for attempt in (1, 2):
        a, b = legacy_error('a%d' % attempt), versioned_error('b')
        assert dispatcher.dispatch([a, b]) == {b}, attempt
        assert rejects.calls == []
    a, b = legacy_error('a3'), versioned_error('b')
    assert dispatcher.dispatch([a, b]) == set()
    assert [call[0] for call in rejects.calls] == ['b']
    assert 'after 3 tries' in rejects.calls[0][1]


def test_store_down_requeues_everything_and_counts_nothing(conf, no_delay):
    rejects = Rejects()
    sink = Sink(fail=lambda items: rec.RetryLater('connection refused'))
    dispatcher = make_guarded(conf, sink, rejects, healthy=False)
    batch = [legacy_error('a'), versioned_error('b')]
    for _ in range(10):
        assert dispatcher.dispatch(batch) == set(batch)
    assert rejects.calls == []
    # Never one by one while the store is down: one call per batch.
    assert len(sink.calls) == 10


def test_the_store_going_down_mid_batch_stops_counting(conf, no_delay):
    state = {'up': True}
    rejects = Rejects()

    def fail(items):
        if len(items) > 1:
            return outbox.StoreError('IntegrityError', retryable=True)
        state['up'] = False
        return rec.RetryLater('server has gone away')
    endpoints = service.load_endpoints(conf, lambda item: None)
    dispatcher = endpoint_base.BatchDispatcher(
        endpoints, None, Sink(fail=fail), reject=rejects,
        healthy=lambda: state['up'])
    batch = [legacy_error('a'), versioned_error('b'), legacy_error('c')]
    assert dispatcher.dispatch(batch) == set(batch)
    assert rejects.calls == [] and dispatcher._tries == {}


def test_a_rejection_the_store_cannot_take_is_requeued(conf, no_delay):
    rejects = Rejects(fail=rec.RetryLater('locked'))
    dispatcher = make_guarded(conf, poisoned(ValueError('NUL byte')),
                              rejects)
    a, b = legacy_error('a'), versioned_error('b')
    assert dispatcher.dispatch([a, b]) == {b}


def test_a_rejection_that_fails_otherwise_leaves_the_record_in_the_log(
        conf, logs, no_delay):
    rejects = Rejects(fail=RuntimeError('bug in the rejection'))
    dispatcher = make_guarded(conf, poisoned(RuntimeError('bug')), rejects)
    a, b = legacy_error('a'), versioned_error('b')
    assert dispatcher.dispatch([a, b]) == set()
    [line] = [line for line in logs if 'all that is left' in line]
    assert 'message_id=b' in line and 'record=' in line
    assert 'versioned' in line


def test_a_plain_endpoint_plugin_still_works(conf):
    class Plain:
        filter_rule = None

        def __init__(self):
            self.seen = []

        def error(self, ctxt, publisher_id, event_type, payload, metadata):
            self.seen.append(metadata['message_id'])
            return REQUEUE if metadata['message_id'] == 'again' else None

    plain = Plain()
    sink = Sink()
    nova = service.load_endpoints(conf, lambda item: None)
    dispatcher = endpoint_base.BatchDispatcher(nova + [plain], None, sink)
    again = legacy_error('again')
    assert dispatcher.dispatch([legacy_error('a'), again]) == {again}
    assert plain.seen == ['a', 'again']
    # The Nova endpoints stored both all the same.
    assert [r.message_id for r in sink.calls[0]] == ['a', 'again']


def test_the_service_uses_the_batch_listener_with_bounded_prefetch(
        conf, tmp_path):
    conf.set_override('state_dir', str(tmp_path), group='delivery')
    conf.set_override('batch_size', 40, group='listener')
    service.set_messaging_defaults(conf)
    assert conf.oslo_messaging_rabbit.rabbit_qos_prefetch_count == 80
    # oslo.messaging registers its own (equal) options afterwards.
    transport = oslo_messaging.get_notification_transport(conf,
                                                          url='rabbit://')
    transport.cleanup()
    assert conf.oslo_messaging_rabbit.rabbit_qos_prefetch_count == 80


def test_a_configured_prefetch_wins(conf, tmp_path):
    path = tmp_path / 'c.conf'
    path.write_text('[oslo_messaging_rabbit]\n'
                    'rabbit_qos_prefetch_count = 7\n')
    conf(['--config-file', str(path)], project='nova_error_notifier',
         default_config_files=[])
    service.set_messaging_defaults(conf)
    assert conf.oslo_messaging_rabbit.rabbit_qos_prefetch_count == 7
