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
"""The listener's batch endpoint behind oslo.messaging's own batch
dispatcher: one outbox write per call, bad input dropped message by
message, requeues only when something could not be stored."""

import logging

from oslo_config import cfg
import oslo_messaging
from oslo_messaging.notify import dispatcher as oslo_dispatcher
import pytest

from nova_error_notifier.endpoints import versioned
from nova_error_notifier import listener
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


class Dispatcher:
    """oslo.messaging's batch dispatcher around the service's endpoint.

    What oslo.messaging's listener runs; ``dispatch`` returns the messages
    requeued.
    """

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.oslo = oslo_dispatcher.BatchNotificationDispatcher(
            [endpoint], oslo_messaging.serializer.NoOpSerializer())

    def dispatch(self, incoming):
        return self.oslo.dispatch(incoming)


def no_sleep(seconds):
    pass


def make(conf, sink, plugins=(), **kwargs):
    endpoints = service.load_endpoints(conf, lambda item: None)
    kwargs.setdefault('sleep', no_sleep)
    return Dispatcher(listener.BatchEndpoint(
        endpoints + list(plugins), sink, **kwargs))


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
    parsed = []
    real = versioned.VersionedNovaEndpoint.parse

    def counting(*args):
        parsed.append(args[3])
        return real(*args)
    monkeypatch.setattr(versioned.VersionedNovaEndpoint, 'parse',
                        staticmethod(counting))
    sink = Sink()
    dispatcher = make(conf, sink)
    batch = [noise('n%d' % i) for i in range(50)]
    batch.append(message('instance.update',
                         nm.versioned_update('building', 'error'),
                         priority='INFO', message_id='u1'))
    assert dispatcher.dispatch(batch) == set()
    assert parsed == ['instance.update']
    assert [r.message_id for r in sink.calls[0]] == ['u1']
    assert sink.calls[0][0].state == 'error'


def test_nothing_to_store_makes_no_call(conf):
    sink = Sink()
    dispatcher = make(conf, sink)
    assert dispatcher.dispatch([noise('n1'), noise('n2')]) == set()
    assert sink.calls == []


@pytest.mark.parametrize('bad', [
    Incoming({'priority': 'INFO', 'event_type': ['un', 'hashable'],
              'payload': {}}),
    Incoming({'priority': 'ERROR', 'event_type': {'a': 'dict'},
              'payload': {}}),
    Incoming({'priority': 'ERROR', 'event_type': 'compute.instance.'
              'create.error', 'payload': 'not an object',
              'message_id': 'bad-payload'}),
    Incoming({'priority': 'ERROR', 'event_type': 'instance.create.error',
              'payload': {'nova_object.data': ['x']},
              'message_id': 'bad-object'}),
], ids=['list-event-type', 'dict-event-type', 'string-payload',
        'list-object'])
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


@pytest.mark.parametrize('bad', [
    {'priority': 3, 'event_type': 'x', 'payload': {}},
    {'priority': ['ERROR'], 'event_type': 'x', 'payload': {}},
    {'priority': None, 'event_type': 'x', 'payload': {}},
    ['not', 'a', 'dict']],
    ids=['int-priority', 'list-priority', 'null-priority', 'list'])
def test_what_oslo_messaging_itself_cannot_read_costs_only_itself(
        conf, logs, bad):
    """oslo.messaging reads the priority before any endpoint sees a batch.

    Alone, its dispatcher raises and the listener hands the whole batch
    back at every delivery; the guard takes the message out first.
    """
    sink = Sink()
    dispatcher = make(conf, sink)
    with pytest.raises((AttributeError, TypeError)):
        dispatcher.dispatch([legacy_error('a'), Incoming(bad)])
    guarded = listener.EnvelopeGuard(dispatcher.oslo)
    assert guarded.dispatch([legacy_error('a'), Incoming(bad),
                             versioned_error('b')]) == set()
    assert [r.message_id for r in sink.calls[-1]] == ['a', 'b']
    assert any('Dropped unreadable notification' in line for line in logs)


def test_make_listener_guards_the_dispatcher(conf):
    transport = oslo_messaging.get_notification_transport(
        conf, url='fake:///')
    try:
        endpoint = listener.BatchEndpoint(
            service.load_endpoints(conf, lambda item: None), Sink())
        server = listener.make_listener(conf, transport, endpoint)
        assert isinstance(server.dispatcher, listener.EnvelopeGuard)
        assert set(server.dispatcher.supported_priorities) == {
            'error', 'critical', 'info'}
    finally:
        transport.cleanup()


def test_oslo_failure_lines_are_one_clear_line_per_interval():
    clock = [100.0]
    quiet = listener._OsloFailureFilter(interval=30, clock=lambda: clock[0])

    def record():
        try:
            raise AttributeError("'int' object has no attribute 'lower'")
        except AttributeError:
            import sys
            info = sys.exc_info()
        return logging.LogRecord(listener.OSLO_LISTENER_LOGGER,
                                 logging.ERROR, __file__, 1,
                                 listener.OSLO_FAILURE, (), info)
    first = record()
    assert quiet.filter(first)
    assert first.exc_info is None
    assert "'int' object has no attribute 'lower'" in first.getMessage()
    assert not quiet.filter(record())
    clock[0] += 31
    again = record()
    assert quiet.filter(again)
    assert '2 batch(es)' in again.getMessage()
    other = logging.LogRecord('x', logging.ERROR, __file__, 1, 'other', (),
                              None)
    assert quiet.filter(other)


def test_unreadable_envelope_is_logged_by_the_tools(conf, logs):
    """Replay and test-route read envelopes themselves: guarded."""
    records = []
    endpoints = service.load_endpoints(conf, lambda item: None)
    recorder = listener.Recorder(listener.BatchEndpoint(
        endpoints, records.extend))
    for bad in ({'priority': 7, 'message_id': 'p7'}, ['not', 'a', 'dict']):
        assert recorder.dispatch(nm.context(), bad) is None
    assert any('p7' in line and 'priority is a int' in line
               for line in logs), logs
    assert any('is a list, not an object' in line for line in logs), logs
    good = legacy_error('g')
    recorder.dispatch(good.ctxt, good.message)
    assert [r.message_id for r in records] == ['g']


def test_store_down_requeues_only_what_was_not_stored(conf, logs,
                                                      monkeypatch):
    # The requeue line is rate-limited process-wide: start (and leave)
    # the limiter as it was.
    monkeypatch.setitem(listener._requeue_state, 'logged_at', 0.0)
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


def make_guarded(conf, sink, reject, healthy=True, attempts=3, sleep=None):
    return make(conf, sink, reject=reject, healthy=lambda: healthy,
                max_attempts=attempts, sleep=sleep or no_sleep)


def poisoned(error, bad='b'):
    return Sink(fail=lambda items: error if any(
        r.message_id == bad for r in items) else None)


@pytest.fixture
def no_delay(monkeypatch):
    monkeypatch.setitem(listener._requeue_state, 'logged_at', 0.0)


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
    """Tried again in the listener's thread, a second apart.

    So the records stored beside it are acknowledged, not requeued.
    """
    rejects = Rejects()
    waits = []
    sink = poisoned(error)
    dispatcher = make_guarded(conf, sink, rejects, attempts=3,
                              sleep=waits.append)
    a, b = legacy_error('a'), versioned_error('b')
    assert dispatcher.dispatch([a, b]) == set()
    assert [[r.message_id for r in call] for call in sink.calls] == [
        ['a', 'b'], ['a'], ['b'], ['b'], ['b']]
    assert waits == [listener.REQUEUE_DELAY] * 2
    assert [call[0] for call in rejects.calls] == ['b']
    assert 'after 3 tries' in rejects.calls[0][1]


def test_a_failure_that_passes_is_stored_on_a_later_try(conf, no_delay):
    rejects = Rejects()
    tries = []

    def fail(items):
        if any(r.message_id == 'b' for r in items):
            tries.append(len(items))
            if len(tries) < 3:
                return outbox.StoreError('Deadlock found', retryable=True)
        return None
    sink = Sink(fail=fail)
    dispatcher = make_guarded(conf, sink, rejects)
    assert dispatcher.dispatch([legacy_error('a'), versioned_error('b')]) \
        == set()
    assert rejects.calls == []
    assert [r.message_id for r in sink.calls[-1]] == ['b']


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
    dispatcher = make(conf, Sink(fail=fail), reject=rejects,
                      healthy=lambda: state['up'])
    batch = [legacy_error('a'), versioned_error('b'), legacy_error('c')]
    # All of them go back: what was stored is recognised by its message
    # id when it comes again.
    assert dispatcher.dispatch(batch) == set(batch)
    assert rejects.calls == []


def test_a_rejection_the_store_cannot_take_is_requeued(conf, no_delay):
    rejects = Rejects(fail=rec.RetryLater('locked'))
    dispatcher = make_guarded(conf, poisoned(ValueError('NUL byte')),
                              rejects)
    a, b = legacy_error('a'), versioned_error('b')
    # The call goes back whole (a was stored: it is recognised again).
    assert dispatcher.dispatch([a, b]) == {a, b}


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
    dispatcher = make(conf, sink, plugins=[plain])
    a, again = legacy_error('a'), legacy_error('again')
    # Its REQUEUE hands back the whole call (the public API's limit).
    assert dispatcher.dispatch([a, again]) == {a, again}
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


def test_the_public_batch_listener_feeds_the_endpoint(conf):
    """make_listener: oslo.messaging's public batch listener.

    On the fake transport, fed by oslo.messaging's own Notifier.
    """
    import threading
    conf.set_override('batch_timeout', 0.05, group='listener')
    # Where oslo.messaging's Notifier sends without Nova's control_exchange.
    conf.set_override('exchange', 'openstack', group='listener')
    transport = oslo_messaging.get_notification_transport(
        conf, url='fake:///')
    stored = []
    done = threading.Event()

    def sink(items):
        stored.extend(items)
        if len(stored) >= 2:
            done.set()
    endpoint = listener.BatchEndpoint(
        service.load_endpoints(conf, lambda item: None), sink)
    server = listener.make_listener(conf, transport, endpoint)
    assert set(endpoint.priorities) == {'error', 'critical', 'info'}
    server.start()
    try:
        notifier = oslo_messaging.Notifier(
            transport, publisher_id='compute.hv-1', driver='messagingv2',
            topics=['notifications'])
        legacy = legacy_error('x').message
        notifier.error(nm.context(), legacy['event_type'],
                       legacy['payload'])
        versioned = versioned_error('y').message
        notifier.error(nm.context(), versioned['event_type'],
                       versioned['payload'])
        notifier.info(nm.context(), 'instance.exists', {})
        assert done.wait(10), stored
    finally:
        server.stop()
        server.wait()
        transport.cleanup()
    assert sorted(r.format for r in stored) == ['legacy', 'versioned']
