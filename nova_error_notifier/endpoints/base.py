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
"""Common machinery of the Nova endpoint plugins.

An endpoint subscribes to the ``error`` and ``critical`` priorities, and to
``info`` when ``[listener] watch_state_changes`` is on (for
``instance.update`` into ERROR). Its ``filter_rule`` cheaply sends each
message to the one endpoint that understands its format. Each message is
handled in its own ``try``: a malformed or unexpected message is logged with
its message id and dropped, and the listener keeps running.
"""

import collections
import hashlib
import json
import threading
import time

from oslo_log import log
import oslo_messaging
from oslo_messaging.notify import dispatcher as oslo_dispatcher

from nova_error_notifier import logsafe
from nova_error_notifier import outbox
from nova_error_notifier.parse import common
from nova_error_notifier.parse import versioned
from nova_error_notifier import record as rec

LOG = log.getLogger(__name__)

HANDLED = oslo_messaging.NotificationResult.HANDLED
REQUEUE = oslo_messaging.NotificationResult.REQUEUE

#: Seconds a listener thread waits before handing a message back, so that
#: a broken store does not spin the CPU on redeliveries.
REQUEUE_DELAY = 1.0
#: Seconds between two log lines about requeued messages.
REQUEUE_LOG_INTERVAL = 30.0
#: Longest wait before handing a batch back while the outbox stays down:
#: the wait doubles from REQUEUE_DELAY at each batch that finds it down, so
#: that an outage does not make the broker redeliver every message every
#: second.
MAX_REQUEUE_DELAY = 10.0
#: Tries (deliveries of one message by the bus) before a message that
#: keeps failing while the outbox is up is kept as rejected.
MAX_STORE_ATTEMPTS = 3
#: Messages whose failed tries are remembered (per process).
TRIES_REMEMBERED = 10000


class FormatFilter:
    """An oslo.messaging filter rule: versioned payloads or the others."""

    def __init__(self, want_versioned):
        self.want_versioned = want_versioned

    def match(self, ctxt, publisher_id, event_type, metadata, payload):
        return versioned.is_versioned(payload) == self.want_versioned


def _message_id(metadata):
    if isinstance(metadata, dict):
        return logsafe.escape(metadata.get('message_id'), 128)
    return '-'


class NovaEndpoint:
    """Base of the versioned and legacy Nova endpoints."""

    #: ``versioned`` or ``legacy``.
    FORMAT = None
    #: Event types worth reading at INFO priority.
    INFO_EVENTS = frozenset()
    #: True for the endpoint of versioned payloads.
    VERSIONED = False
    #: The parser: a pure function returning an ErrorRecord or None.
    parse = None

    def __init__(self, conf, sink):
        self.sink = sink
        # Optional: a callable told why a message was dropped (replay).
        self.on_drop = getattr(sink, 'on_drop', None)
        self.filter_rule = FormatFilter(self.VERSIONED)
        if conf.listener.watch_state_changes:
            # oslo.messaging subscribes to the priorities an endpoint has a
            # method for: only define ``info`` when it is wanted.
            self.info = self._info

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        return self.process('ERROR', ctxt, publisher_id, event_type,
                            payload, metadata)

    def critical(self, ctxt, publisher_id, event_type, payload, metadata):
        return self.process('CRITICAL', ctxt, publisher_id, event_type,
                            payload, metadata)

    @staticmethod
    def _requeue(metadata, exc):
        _requeue_log(metadata, exc)
        time.sleep(REQUEUE_DELAY)
        return REQUEUE

    def _info(self, ctxt, publisher_id, event_type, payload, metadata):
        if event_type not in self.INFO_EVENTS:
            return HANDLED
        return self.process('INFO', ctxt, publisher_id, event_type,
                            payload, metadata)

    def collect(self, priority, ctxt, publisher_id, event_type, payload,
                metadata):
        """The record or resolution of one message, or None.

        ``priority`` is oslo.messaging's lower-case priority. INFO traffic
        other than the few event types worth reading is skipped before any
        parsing. A message that cannot be read is logged and dropped (None).
        """
        if priority == 'info':
            if event_type not in self.INFO_EVENTS:
                return None
        return self._parse(priority.upper(), ctxt, publisher_id, event_type,
                           payload, metadata)

    def _parse(self, priority, ctxt, publisher_id, event_type, payload,
               metadata):
        problem = None
        try:
            return self.parse(priority, ctxt, publisher_id, event_type,
                              payload, metadata)
        except common.MalformedNotification as exc:
            problem = ('malformed', str(exc))
        except Exception as exc:
            problem = ('unreadable', '%s: %s' % (type(exc).__name__,
                                                 logsafe.escape(exc, 512)))
        # Logged outside the except block: oslo.log would append the
        # exception to the line a second time.
        LOG.warning('Dropped %s %s notification message_id=%s '
                    'event_type=%s priority=%s: %s', problem[0],
                    self.FORMAT, _message_id(metadata),
                    logsafe.escape(event_type, 255), priority, problem[1])
        if self.on_drop is not None:
            self.on_drop('%s: %s' % problem)
        return None

    def process(self, priority, ctxt, publisher_id, event_type, payload,
                metadata):
        """Parse one notification and pass any error record on."""
        record = self._parse(priority, ctxt, publisher_id, event_type,
                             payload, metadata)
        if record is None:
            return HANDLED
        try:
            self.sink(record)
        except rec.RetryLater as exc:
            return self._requeue(metadata, exc)
        except Exception:
            _log_unprocessed(metadata, record)
        return HANDLED


def _log_unprocessed(metadata, record):
    LOG.exception('Could not process the error in notification '
                  'message_id=%s event_type=%s request_id=%s '
                  'instance=%s exception=%s',
                  _message_id(metadata),
                  logsafe.escape(record.event_type),
                  logsafe.escape(record.request_id),
                  logsafe.escape(record.instance_uuid),
                  logsafe.escape(getattr(record, 'exception', None)))


_requeue_lock = threading.Lock()
_requeue_state = {'logged_at': 0.0, 'count': 0}


def _requeue_log(metadata, exc):
    """One log line per REQUEUE_LOG_INTERVAL, counting the others."""
    now = time.monotonic()
    with _requeue_lock:
        _requeue_state['count'] += 1
        if now - _requeue_state['logged_at'] < REQUEUE_LOG_INTERVAL:
            return
        count, _requeue_state['count'] = _requeue_state['count'], 0
        _requeue_state['logged_at'] = now
    LOG.error('Could not store notification message_id=%s: %s; it goes back '
              'to the queue (%d message(s) requeued since the last line)',
              _message_id(metadata), logsafe.escape(exc, 300), count)


class GuardedDispatcher(oslo_dispatcher.NotificationDispatcher):
    """oslo.messaging's dispatcher, safe against unreadable envelopes.

    oslo.messaging reads ``priority``, ``event_type`` and the context before
    an endpoint sees the message; a wrong type there (a numeric priority,
    say) raises, and the listener would then requeue the message forever.
    Endpoints never raise, so anything raised here comes from the envelope:
    the message is logged and dropped.
    """

    def __init__(self, endpoints, serializer, on_drop=None):
        super().__init__(endpoints, serializer)
        self.on_drop = on_drop

    def dispatch(self, incoming):
        message = getattr(incoming, 'message', None)
        reason = _envelope_problem(message)
        if reason is None:
            try:
                return super().dispatch(incoming)
            except Exception as exc:
                reason = '%s: %s' % (type(exc).__name__,
                                     logsafe.escape(exc, 512))
        _unreadable(message, reason, self.on_drop)
        return HANDLED


def _envelope_problem(message):
    """Why oslo.messaging cannot read this message's envelope, or None."""
    if not isinstance(message, dict):
        return 'the message is a %s, not an object' % type(message).__name__
    priority = message.get('priority', '')
    if not isinstance(priority, str):
        return 'priority is a %s, not a string' % type(priority).__name__
    return None


def _unreadable(message, reason, on_drop):
    message_id = (message.get('message_id')
                  if isinstance(message, dict) else None)
    LOG.warning('Dropped unreadable notification message_id=%s: %s',
                logsafe.escape(message_id, 128), reason)
    if on_drop is not None:
        on_drop('unreadable: ' + reason)


_INFO = frozenset(('INFO', 'info'))


def _noise(incoming, info_events):
    """True for an INFO message of an event type nobody reads."""
    message = incoming.message
    if type(message) is not dict:
        return False
    try:
        return (message.get('priority') in _INFO and
                message.get('event_type') not in info_events)
    except TypeError:       # unhashable values: left to the full checks
        return False


class BatchDispatcher(oslo_dispatcher.BatchNotificationDispatcher):
    """The service's dispatcher: a batch of messages, one outbox write.

    oslo.messaging's batch listener hands over up to ``[listener]
    batch_size`` messages at a time. Each is read on its own, guarded as in
    :class:`GuardedDispatcher`; the error records and resolutions of the
    whole batch then go to ``sink_many`` in one call (one outbox
    transaction). The dispatcher returns the messages to requeue: those
    whose records could not be stored, never the ones that were.

    Endpoints with a ``collect`` method (the Nova endpoints) take part in
    the batch; any other endpoint gets oslo.messaging's usual call, one
    message at a time, and may answer REQUEUE.
    """

    def __init__(self, endpoints, serializer, sink_many, on_drop=None,
                 reject=None, healthy=None,
                 max_attempts=MAX_STORE_ATTEMPTS):
        """Build the dispatcher.

        :param sink_many: stores a list of records and resolutions in one
            transaction; raises RetryLater when the store is down.
        :param reject: ``reject(key, reason, item, metadata)`` keeps a
            message that cannot be stored (the outbox's rejected messages);
            may raise RetryLater.
        :param healthy: returns whether the store answers at all, to tell
            a message that cannot be stored from a store that is down.
        :param max_attempts: tries of a message that keeps failing, while
            the store is up, before it is rejected.
        """
        super().__init__(endpoints, serializer)
        self.sink_many = sink_many
        self.on_drop = on_drop
        self.reject = reject
        self.healthy = healthy
        self.max_attempts = max_attempts
        self._tries = collections.OrderedDict()
        self._tries_lock = threading.Lock()
        self._outages = 0
        self._routes = {}
        for priority in oslo_dispatcher.PRIORITIES:
            routes = []
            for endpoint in endpoints:
                method = getattr(endpoint, priority, None)
                if not callable(method):
                    continue
                collect = getattr(endpoint, 'collect', None)
                routes.append((getattr(endpoint, 'filter_rule', None),
                               collect if callable(collect) else None,
                               method))
            if routes:
                self._routes[priority] = routes
        # INFO traffic is mostly noise: when every INFO endpoint says which
        # event types it reads, the others are skipped before oslo.messaging
        # unpacks them.
        info = self._routes.get('info', ())
        wanted = [getattr(collect.__self__, 'INFO_EVENTS', None)
                  for _, collect, _ in info if collect is not None]
        self._info_events = (frozenset().union(*wanted)
                             if len(wanted) == len(info) and
                             None not in wanted else None)

    def _read(self, incoming):
        """(priority, message dict) of one incoming message, or None."""
        message = getattr(incoming, 'message', None)
        reason = _envelope_problem(message)
        if reason is None:
            try:
                priority, _, user = self._extract_user_message(incoming)
                return priority, user
            except Exception as exc:
                reason = '%s: %s' % (type(exc).__name__,
                                     logsafe.escape(exc, 512))
        _unreadable(message, reason, self.on_drop)
        return None

    def _collect(self, incoming, pending, requeue):
        read = self._read(incoming)
        if read is None:
            return
        priority, msg = read
        for screen, collect, method in self._routes.get(priority, ()):
            try:
                if screen is not None and not screen.match(
                        msg['ctxt'], msg['publisher_id'], msg['event_type'],
                        msg['metadata'], msg['payload']):
                    continue
                if collect is not None:
                    item = collect(priority, msg['ctxt'],
                                   msg['publisher_id'], msg['event_type'],
                                   msg['payload'], msg['metadata'])
                    if item is not None:
                        pending.append((incoming, msg['metadata'], item))
                elif method(msg['ctxt'], msg['publisher_id'],
                            msg['event_type'], msg['payload'],
                            msg['metadata']) == REQUEUE:
                    requeue.add(incoming)
            except Exception as exc:
                reason = '%s: %s' % (type(exc).__name__,
                                     logsafe.escape(exc, 512))
                _unreadable(incoming.message, reason, self.on_drop)

    def dispatch(self, incoming):
        """Handle a batch; return the incoming messages to requeue.

        The batch is stored in one call. When that fails and the store
        still answers, each message is stored on its own, so that one that
        cannot be stored never holds the others back: it is requeued for a
        few tries (``max_attempts``) when the failure may pass (a lock, a
        deadlock, a unique key another writer took first), and kept as a
        rejected message with its reason at once when it cannot (a value
        the database refuses, a bug), or after its last try. While the
        store is down, every message goes back to the queue, uncounted.
        """
        pending = []
        requeue = set()
        info_events = self._info_events
        for one in incoming:
            if info_events is not None and _noise(one, info_events):
                continue
            self._collect(one, pending, requeue)
        if not pending:
            return requeue
        try:
            self.sink_many([item for _, _, item in pending])
        except Exception as exc:
            error = exc
        else:
            self._outages = 0
            if self._tries:
                self._forget(pending)
            return requeue
        if isinstance(error, rec.RetryLater) and not self._store_up():
            _requeue_log(pending[0][1], error)
            time.sleep(self._outage_delay())
            requeue.update(one for one, _, _ in pending)
            return requeue
        self._outages = 0
        LOG.warning('A batch of %d record(s) could not be stored (%s): '
                    'storing them one by one', len(pending),
                    _error_text(error))
        if self._one_by_one(pending, requeue):
            time.sleep(REQUEUE_DELAY)
        return requeue

    def _one_by_one(self, pending, requeue):
        """Store each record alone; return True if any goes back."""
        back = False
        for index, (one, metadata, item) in enumerate(pending):
            try:
                self.sink_many([item])
            except Exception as exc:
                error = exc
            else:
                self._forget([(one, metadata, item)])
                continue
            if isinstance(error, rec.RetryLater) and not self._store_up():
                # The store went down meanwhile: the rest waits for it.
                _requeue_log(metadata, error)
                requeue.update(o for o, _, _ in pending[index:])
                return True
            key = _message_key(metadata, item)
            tries = self._count(key)
            may_pass = isinstance(error, rec.RetryLater) or getattr(
                error, 'retryable', False)
            if may_pass and tries < self.max_attempts:
                LOG.warning('Could not store notification message_id=%s '
                            '(try %d of %d): %s; it goes back to the queue',
                            _message_id(metadata), tries, self.max_attempts,
                            _error_text(error))
                requeue.add(one)
                back = True
                continue
            reason = '%s (after %d tr%s)' % (
                _error_text(error), tries, 'y' if tries == 1 else 'ies')
            if not self._reject(key, reason, item, metadata):
                requeue.add(one)
                back = True
        return back

    def _outage_delay(self):
        """Seconds to wait before handing back a batch the outbox refused."""
        self._outages = getattr(self, '_outages', 0) + 1
        return min(MAX_REQUEUE_DELAY,
                   REQUEUE_DELAY * 2 ** min(self._outages - 1, 10))

    def _store_up(self):
        if self.healthy is None:
            return False
        try:
            return bool(self.healthy())
        except Exception:
            return False

    def _count(self, key):
        with self._tries_lock:
            tries = self._tries.pop(key, 0) + 1
            self._tries[key] = tries
            while len(self._tries) > TRIES_REMEMBERED:
                self._tries.popitem(last=False)
            return tries

    def _forget(self, stored):
        with self._tries_lock:
            for _, metadata, item in stored:
                self._tries.pop(_message_key(metadata, item), None)

    def _reject(self, key, reason, item, metadata):
        """Keep the message as rejected; True when it may be acknowledged.

        False (requeue) while the store cannot take even that. If keeping
        it fails for any other reason, the record is written to the log in
        full, the last place left, and the message acknowledged.
        """
        summary = _record_summary(metadata, item)
        if self.reject is not None:
            try:
                self.reject(key, reason, item, metadata)
            except rec.RetryLater as exc:
                _requeue_log(metadata, exc)
                return False
            except Exception as exc:
                LOG.error('Rejected notification %s could not be kept in '
                          'the outbox either (%s); it is acknowledged, and '
                          'this line is all that is left of it: reason=%s '
                          'record=%s', summary, _error_text(exc),
                          logsafe.quote(reason, 1000),
                          logsafe.quote(record_json(item), 20000))
                self._forget([(None, metadata, item)])
                return True
        LOG.error('Rejected notification %s: %s; it is kept with its '
                  'record (nova-error-notifier-manage rejected list) and '
                  'acknowledged', summary, logsafe.escape(reason, 600))
        self._forget([(None, metadata, item)])
        return True


def _error_text(exc):
    return '%s: %s' % (type(exc).__name__, logsafe.escape(exc, 400))


def _message_key(metadata, item):
    """The key a message is remembered and rejected under."""
    message_id = getattr(item, 'message_id', None)
    if not message_id and isinstance(metadata, dict):
        message_id = metadata.get('message_id')
    if not message_id or not isinstance(message_id, str):
        message_id = 'record:' + hashlib.sha256(
            record_json(item).encode('utf-8')).hexdigest()
    return outbox.fit_key(message_id)


def record_json(item):
    """The record or resolution as ASCII JSON (what a rejection keeps)."""
    try:
        return json.dumps(rec.to_dict(item), ensure_ascii=True,
                          sort_keys=True, default=str)
    except Exception as exc:
        return json.dumps({'unserialisable': '%s: %s' % (
            type(exc).__name__, exc)})


def _record_summary(metadata, item):
    return 'message_id=%s event_type=%s request_id=%s instance=%s' % (
        _message_id(metadata), logsafe.escape(getattr(item, 'event_type',
                                                      None), 255),
        logsafe.escape(getattr(item, 'request_id', None), 255),
        logsafe.escape(getattr(item, 'instance_uuid', None), 255))
