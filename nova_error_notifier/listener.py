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
"""The listener stage: Nova's notifications in, error records stored.

Only oslo.messaging's public API is used, as Ceilometer's notification
agent does: :func:`make_listener` builds
``oslo_messaging.get_batch_notification_listener`` with one
:class:`BatchEndpoint`. oslo.messaging hands the endpoint up to
``[listener] batch_size`` messages of one priority at a time; the endpoint
passes each message to the endpoint plugins (``nova_error_notifier.
endpoints``: the versioned and legacy Nova parsers), each in its own
``try``, and stores the error records and resolutions of the whole call in
one outbox transaction (``sink_many``) before oslo.messaging acknowledges
the messages.

What a failure costs:

* a message a plugin cannot read (a malformed payload, a wrong type
  anywhere in it) is logged with its message id and dropped: it costs only
  itself;
* when the batch cannot be stored while the outbox answers, each record is
  stored on its own: one that may pass (a lock, a deadlock, a unique key
  another replica took first) is tried again in this thread, up to
  ``[listener] max_store_attempts`` times, one that cannot (a value the
  database refuses) is kept at once as a rejected message
  (``nova-error-notifier-manage rejected list``); so the others are stored
  and acknowledged, and nothing is requeued for them;
* while the outbox is down, the endpoint answers ``REQUEUE``: the broker
  gets the messages back, after a wait that doubles up to
  ``MAX_REQUEUE_DELAY`` so that an outage does not make it redeliver every
  message every second.

What the public API cannot do, and why:

* ``REQUEUE`` hands back every message of the call (one priority of one
  batch), not a chosen few. The endpoint only answers it when nothing (an
  outage from the start) or only part (the outbox went down in the middle
  of the one-by-one pass) could be stored; the part that was stored comes
  back too and is recognised by its message id (the outbox's ``messages``
  table): no alert is doubled.
* oslo.messaging reads the envelope (``priority``, ``event_type``, the
  context) before any endpoint sees the batch. A body that is not a JSON
  object is dropped by oslo.messaging's driver itself, but a ``priority``
  that is not a string (which no oslo.messaging publisher sends; a raw AMQP
  client can) makes its batch dispatcher raise, and the listener then
  hands the whole batch back, every time it is delivered: the message
  would hold its batch-mates back for good. No public hook runs earlier (a
  serializer only sees the context and the payload), so
  :func:`make_listener` wraps the listener's ``dispatcher`` attribute in
  :class:`EnvelopeGuard`, which takes such messages out of the batch
  (logged with their message id, acknowledged) before oslo.messaging's
  own dispatcher reads it. That attribute is the one thing outside the
  public API the service touches; without it (another oslo.messaging
  release) the service warns at start-up and runs unguarded. Any other
  exception of oslo.messaging's dispatcher is logged as one clear line
  per ``REQUEUE_LOG_INTERVAL`` (:func:`quiet_oslo_failures`) instead of a
  traceback per delivery. The guard belongs in oslo.messaging itself.
* A third-party endpoint plugin without ``collect`` is called one message
  at a time with oslo.messaging's usual signature; its ``REQUEUE`` hands
  back the whole call.

Several buses (``[bus:NAME]`` sections, :mod:`nova_error_notifier.bus`)
get one listener each, with its own transport, and one endpoint each that
stamps the bus's region on every record and resolution it reads
(``BatchEndpoint(..., region=...)``), as Ceilometer's notification agent
runs one listener per messaging URL.

The same reading and storing is used by ``nova-error-notifier-replay`` and
``manage test-route`` through :func:`read_envelope` and
:meth:`BatchEndpoint.handle`, without a broker.
"""

import collections
import functools
import hashlib
import json
import logging
import threading
import time

from oslo_config import cfg
from oslo_log import log
import oslo_messaging

from nova_error_notifier.endpoints import base as endpoint_base
from nova_error_notifier import logsafe
from nova_error_notifier import outbox
from nova_error_notifier import record as rec

LOG = log.getLogger(__name__)

GROUP = 'listener'

#: oslo.messaging's notification priorities, lower case.
PRIORITIES = ('audit', 'debug', 'info', 'warn', 'error', 'critical',
              'sample')
REQUEUE = oslo_messaging.NotificationResult.REQUEUE
HANDLED = oslo_messaging.NotificationResult.HANDLED

#: Seconds between two tries of a record that may pass, and the first wait
#: before handing a batch back while the outbox is down.
REQUEUE_DELAY = 1.0
#: Seconds between two log lines about requeued messages.
REQUEUE_LOG_INTERVAL = 30.0
#: Longest wait before handing a batch back while the outbox stays down.
MAX_REQUEUE_DELAY = 10.0
#: Tries of a record that keeps failing while the outbox is up.
MAX_STORE_ATTEMPTS = 3

LISTENER_OPTS = [
    cfg.ListOpt('topics',
                default=['notifications', 'versioned_notifications'],
                help='Notification topics to listen to. Nova sends legacy '
                     'notifications to "notifications" and versioned ones '
                     'to "versioned_notifications" (see Nova\'s '
                     '[oslo_messaging_notifications] topics and '
                     '[notifications] versioned_notifications_topics).'),
    cfg.StrOpt('exchange',
               default='nova',
               help='Exchange Nova publishes its notifications to (Nova\'s '
                    'control_exchange).'),
    cfg.StrOpt('pool',
               default='nova-error-notifier',
               help='Listener pool name. With a pool the service consumes '
                    'its own copy of every notification from a queue named '
                    'after the pool, and never takes messages from '
                    'Ceilometer or other consumers of the default queues. '
                    'Leave it empty only if nothing else consumes Nova\'s '
                    'notifications.'),
    cfg.ListOpt('endpoints',
                default=['versioned', 'legacy'],
                help='Endpoint plugins to load, by entry point name in the '
                     'namespace "nova_error_notifier.endpoints". A missing '
                     'or broken plugin stops start-up.'),
    cfg.BoolOpt('watch_state_changes',
                default=True,
                help='Also subscribe to INFO notifications to catch '
                     'instance.update / compute.instance.update into the '
                     'ERROR state (needs Nova\'s [notifications] '
                     'notify_on_state_change). Costs reading all INFO '
                     'traffic of the topics.'),
    cfg.StrOpt('region_name',
               help='Region of the default bus ([DEFAULT] transport_url or '
                    '[oslo_messaging_notifications] transport_url): its '
                    'records, incidents and alerts carry it, and enrichment '
                    'asks the Nova API of that region. Empty: no region '
                    '(alerts show [DEFAULT] region_name, if set). Needed '
                    'only when [bus:NAME] sections add buses and the '
                    'default bus is listened to as well.'),
    cfg.IntOpt('workers',
               default=1,
               min=1,
               help='Listener processes started by nova-error-notifier. '
                    'They consume the same pool queue, each with its own '
                    'connection: on a machine with several cores, two or '
                    'more drain a busy bus faster than one (the cost per '
                    'message is mostly oslo.messaging\'s own). Each '
                    'process listens to every bus.'),
    cfg.BoolOpt('store_process',
                default=True,
                help='Give each listener process a store process of its '
                     'own: the listener reads the bus, leaves routine INFO '
                     'traffic out and hands the rest of each batch to the '
                     'store process, which parses it and writes it to the '
                     'outbox before the batch is acknowledged. On two cores '
                     'or more this drains a busy bus about a tenth faster '
                     'than one process doing both (False: one process '
                     'fewer, everything in the listener process).'),
    cfg.IntOpt('batch_size',
               default=100,
               min=1,
               help='Most messages oslo.messaging\'s batch listener hands '
                    'over at once. The error records of a batch are '
                    'written to the outbox in one transaction, and its '
                    'messages acknowledged after it committed. Unless '
                    '[oslo_messaging_rabbit] rabbit_qos_prefetch_count is '
                    'set, the service asks RabbitMQ for at most twice this '
                    'many unacknowledged messages per queue (oslo.messaging '
                    'alone sets no limit).'),
    cfg.FloatOpt('batch_timeout',
                 default=0.02,
                 min=0.001,
                 help='Longest wait, in seconds, for a batch to fill before '
                      'the messages received so far are handled; it adds '
                      'at most this much to the delay of an alert.'),
    cfg.IntOpt('stop_timeout',
               default=10,
               min=1,
               help='Seconds every process of the service has, when it is '
                    'asked to stop (SIGTERM), to finish the messages, '
                    'incidents and deliveries in progress.'),
    cfg.IntOpt('max_store_attempts',
               default=MAX_STORE_ATTEMPTS,
               min=1,
               help='Tries of an error record that cannot be stored while '
                    'the outbox is up (a lock or unique-key conflict that '
                    'does not pass), about a second apart, before its '
                    'message is kept as a rejected message and '
                    'acknowledged ("nova-error-notifier-manage rejected '
                    'list"). A record that can never be stored (a value '
                    'the database refuses) is rejected at once; while the '
                    'outbox is down, messages go back to the queue without '
                    'counting.'),
]

#: Messages RabbitMQ may push ahead of acknowledgements, per consumer,
#: unless [oslo_messaging_rabbit] rabbit_qos_prefetch_count says otherwise
#: (oslo.messaging's default is no limit, which lets a storm's whole
#: backlog into memory).
PREFETCH_BATCHES = 2
RABBIT_GROUP = 'oslo_messaging_rabbit'


def register_opts(conf):
    conf.register_opts(LISTENER_OPTS, group=GROUP)


def list_opts():
    return [(GROUP, LISTENER_OPTS)]


def set_messaging_defaults(conf):
    """Bound RabbitMQ's prefetch to two batches, unless configured.

    oslo.messaging registers its driver options when the transport is
    made; registering the same (equal) options first lets the service
    change their default. A value in the configuration file still wins.
    """
    import oslo_messaging.opts as messaging_opts
    register_opts(conf)
    for group, opts in messaging_opts.list_opts():
        if group == RABBIT_GROUP:
            conf.register_opts(opts, group=group)
    conf.set_default('rabbit_qos_prefetch_count',
                     PREFETCH_BATCHES * conf[GROUP].batch_size,
                     group=RABBIT_GROUP)


#: What oslo.messaging's batch listener logs when its dispatcher raises.
OSLO_FAILURE = 'Exception during messages handling.'
OSLO_LISTENER_LOGGER = 'oslo_messaging.notify.listener'


class _OsloFailureFilter(logging.Filter):
    """One clear line per interval instead of a traceback per delivery."""

    def __init__(self, interval=REQUEUE_LOG_INTERVAL, clock=time.monotonic):
        super().__init__()
        self.interval = interval
        self.clock = clock
        self.logged_at = None
        self.count = 0
        self.lock = threading.Lock()

    def filter(self, record):
        if record.msg != OSLO_FAILURE:
            return True
        now = self.clock()
        with self.lock:
            self.count += 1
            if self.logged_at is not None and \
                    now - self.logged_at < self.interval:
                return False
            count, self.count = self.count, 0
            self.logged_at = now
        error = record.exc_info[1] if record.exc_info else None
        record.msg = ('oslo.messaging could not dispatch a batch of '
                      'notifications (%s): the batch goes back to the '
                      'queue, and comes back each time it is delivered '
                      'while the cause stays (%d batch(es) handed back '
                      'since the last line)')
        record.args = (_error_text(error) if error is not None else '?',
                       count)
        record.exc_info = None
        record.exc_text = None
        return True


_oslo_filter = _OsloFailureFilter()


def quiet_oslo_failures():
    """Install the filter of oslo.messaging's batch failure lines (once)."""
    logger = logging.getLogger(OSLO_LISTENER_LOGGER)
    if _oslo_filter not in logger.filters:
        logger.addFilter(_oslo_filter)


def targets(conf, bus=None):
    """The targets of the default bus, or of ``bus`` (a ``bus.Bus``)."""
    options = conf[GROUP]
    topics = options.topics if bus is None else bus.topics
    exchange = options.exchange if bus is None else bus.exchange
    return [oslo_messaging.Target(topic=topic.strip(), exchange=exchange)
            for topic in topics if topic.strip()]


def make_listener(conf, transport, endpoint, on_drop=None, bus=None):
    """oslo.messaging's batch notification listener around ``endpoint``.

    :param bus: the :class:`nova_error_notifier.bus.Bus` listened to (its
        exchange, topics and pool); by default ``[listener]``'s.
    """
    options = conf[GROUP]
    pool = options.pool if bus is None else bus.pool
    quiet_oslo_failures()
    server = oslo_messaging.get_batch_notification_listener(
        transport, targets(conf, bus), [endpoint], executor='threading',
        allow_requeue=True, pool=pool or None,
        batch_size=options.batch_size, batch_timeout=options.batch_timeout)
    dispatcher = getattr(server, 'dispatcher', None)
    if callable(getattr(dispatcher, 'dispatch', None)):
        server.dispatcher = EnvelopeGuard(dispatcher, on_drop=on_drop)
    else:
        LOG.warning('This oslo.messaging release has no listener '
                    'dispatcher to guard: a message whose priority is not '
                    'a string would hold its batch back')
    return server


def envelope_problem(message):
    """Why oslo.messaging cannot read this message's envelope, or None."""
    if not isinstance(message, dict):
        return 'the message is a %s, not an object' % type(message).__name__
    priority = message.get('priority', '')
    if not isinstance(priority, str):
        return 'priority is a %s, not a string' % type(priority).__name__
    return None


class EnvelopeGuard:
    """oslo.messaging's batch dispatcher, unreadable envelopes taken out.

    The messages it takes out are logged and, not being handed back by the
    dispatcher, acknowledged: each costs only itself.
    """

    def __init__(self, dispatcher, on_drop=None):
        self.dispatcher = dispatcher
        self.on_drop = on_drop

    def __getattr__(self, name):
        return getattr(self.dispatcher, name)

    def dispatch(self, incoming):
        readable = []
        for one in incoming:
            message = getattr(one, 'message', None)
            reason = envelope_problem(message)
            if reason is None:
                readable.append(one)
                continue
            mid = (message.get('message_id')
                   if isinstance(message, dict) else None)
            LOG.warning('Dropped unreadable notification message_id=%s: %s',
                        logsafe.escape(mid, 128), reason)
            if self.on_drop is not None:
                self.on_drop('unreadable: ' + reason)
        if not readable:
            return set()
        return self.dispatcher.dispatch(readable)


# --------------------------------------------------------------------------
# Reading one message
# --------------------------------------------------------------------------

def message_id(metadata):
    if isinstance(metadata, dict):
        return logsafe.escape(metadata.get('message_id'), 128)
    return '-'


def read_envelope(ctxt, message):
    """(priority, message dict) as oslo.messaging hands them over.

    For the tools that read wire files without a broker (replay,
    ``manage test-route``). A message oslo.messaging could not read raises
    :class:`UnreadableEnvelope`.
    """
    problem = envelope_problem(message)
    if problem is not None:
        raise UnreadableEnvelope(problem)
    return message.get('priority', '').lower(), {
        'ctxt': ctxt, 'publisher_id': message.get('publisher_id'),
        'event_type': message.get('event_type'),
        'payload': message.get('payload'),
        'metadata': {'message_id': message.get('message_id'),
                     'timestamp': message.get('timestamp')}}


class UnreadableEnvelope(ValueError):
    """The envelope of a message cannot be read."""


# --------------------------------------------------------------------------
# The batch endpoint
# --------------------------------------------------------------------------

#: The process's one limiter of "goes back to the queue" lines.
_requeue_state = endpoint_base._requeue_state
_requeue_log = endpoint_base.requeue_log


def _error_text(exc):
    return '%s: %s' % (type(exc).__name__, logsafe.escape(exc, 400))


class BatchEndpoint:
    """The one endpoint of the service's oslo.messaging batch listener.

    It has a method for each priority some endpoint plugin reads (``error``
    and ``critical``; ``info`` with ``[listener] watch_state_changes``);
    oslo.messaging subscribes to those and calls them with a list of
    message dicts (``ctxt``, ``publisher_id``, ``event_type``,
    ``payload``, ``metadata``). The answer is None (acknowledge them all)
    or ``REQUEUE`` (hand them all back).
    """

    def __init__(self, plugins, sink_many, on_drop=None, reject=None,
                 healthy=None, max_attempts=MAX_STORE_ATTEMPTS,
                 retry_delay=REQUEUE_DELAY, sleep=time.sleep, region=None):
        """Build the endpoint.

        :param plugins: the endpoint plugins (``NovaEndpoint`` objects, or
            third-party ones with oslo.messaging's per-message methods).
        :param sink_many: stores a list of records and resolutions in one
            transaction; raises RetryLater when the store is down.
        :param reject: ``reject(key, reason, item, metadata)`` keeps a
            message that cannot be stored; may raise RetryLater.
        :param healthy: returns whether the store answers at all.
        :param max_attempts: tries of a record that keeps failing while the
            store is up, before it is rejected.
        :param region: the region of the bus listened to, stamped on every
            record and resolution (None: the default bus without one).
        """
        self.region = region or None
        self.sink_many = sink_many
        self.on_drop = on_drop
        self.reject = reject
        self.healthy = healthy
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.sleep = sleep
        self._outages = 0
        self._routes = {}
        for priority in PRIORITIES:
            routes = []
            for plugin in plugins:
                method = getattr(plugin, priority, None)
                if not callable(method):
                    continue
                collect = getattr(plugin, 'collect', None)
                routes.append((getattr(plugin, 'filter_rule', None),
                               collect if callable(collect) else None,
                               method))
            if routes:
                self._routes[priority] = routes
                setattr(self, priority,
                        functools.partial(self.handle, priority))
        # INFO traffic is mostly noise: when every INFO plugin says which
        # event types it reads (and which of their state changes are
        # routine), the others are skipped before any parsing.
        info = self._routes.get('info', ())
        screens = []
        for _, collect, _ in info:
            plugin = getattr(collect, '__self__', None)
            events = getattr(plugin, 'INFO_EVENTS', None)
            if events is None:
                screens = None
                break
            routine = getattr(plugin, 'routine', None)
            screens.append((events, routine if callable(routine) else None))
        self._info_screens = screens if info else None

    @property
    def priorities(self):
        return sorted(self._routes)

    # -- reading ---------------------------------------------------------

    def _drop(self, message, reason):
        metadata = (message.get('metadata')
                    if isinstance(message, dict) else None)
        LOG.warning('Dropped unreadable notification message_id=%s: %s',
                    message_id(metadata), reason)
        if self.on_drop is not None:
            self.on_drop('unreadable: ' + reason)

    def _collect(self, priority, message, pending):
        """Pass one message to the plugins; True if one wants REQUEUE."""
        requeue = False
        for screen, collect, method in self._routes.get(priority, ()):
            try:
                if screen is not None and not screen.match(
                        message['ctxt'], message['publisher_id'],
                        message['event_type'], message['metadata'],
                        message['payload']):
                    continue
                if collect is not None:
                    item = collect(priority, message['ctxt'],
                                   message['publisher_id'],
                                   message['event_type'],
                                   message['payload'], message['metadata'])
                    if item is not None:
                        pending.append((message['metadata'],
                                        rec.with_region(item, self.region)))
                elif method(message['ctxt'], message['publisher_id'],
                            message['event_type'], message['payload'],
                            message['metadata']) == REQUEUE:
                    requeue = True
            except Exception as exc:
                self._drop(message, '%s: %s' % (type(exc).__name__,
                                                logsafe.escape(exc, 512)))
        return requeue

    def _noise(self, message):
        """True for an INFO message no plugin reads (told cheaply)."""
        try:
            event_type = message.get('event_type')
            payload = message.get('payload')
            for events, routine in self._info_screens:
                if event_type in events and not (
                        routine is not None and routine(event_type, payload)):
                    return False
        except Exception:
            # For the plugins to read, or refuse, the way they do.
            return False
        return True

    def wanted(self, priority, messages):
        """The messages of ``priority`` some plugin may read.

        Routine INFO traffic (event types no plugin reads, state changes
        they find routine) is left out before any parsing; everything else
        is kept, unreadable messages included (for :meth:`handle` to log).
        """
        if priority != 'info' or self._info_screens is None:
            return list(messages)
        return [message for message in messages
                if not self._noise(message)]

    # -- one call of oslo.messaging --------------------------------------

    def handle(self, priority, messages):
        """Read and store ``messages`` of ``priority``; None or REQUEUE."""
        pending = []
        requeue = False
        for message in self.wanted(priority, messages):
            if not isinstance(message, dict):
                self._drop(message, 'the message is a %s, not an object'
                           % type(message).__name__)
                continue
            if self._collect(priority, message, pending):
                requeue = True
        if pending and not self._store(pending):
            requeue = True
        return REQUEUE if requeue else None

    def _store(self, pending):
        """Store the batch; True when every record was taken care of."""
        try:
            self.sink_many([item for _, item in pending])
        except Exception as exc:
            error = exc
        else:
            self._outages = 0
            return True
        if isinstance(error, rec.RetryLater) and not self._store_up():
            _requeue_log(pending[0][0], error, len(pending))
            self.sleep(self._outage_delay())
            return False
        self._outages = 0
        LOG.warning('A batch of %d record(s) could not be stored (%s): '
                    'storing them one by one', len(pending),
                    _error_text(error))
        return self._one_by_one(pending)

    def _one_by_one(self, pending):
        for index, (metadata, item) in enumerate(pending):
            tries = 0
            while True:
                tries += 1
                try:
                    self.sink_many([item])
                except Exception as exc:
                    error = exc
                else:
                    break
                if isinstance(error, rec.RetryLater) and \
                        not self._store_up():
                    # The store went down meanwhile: the call goes back,
                    # what was stored is recognised when it comes again.
                    _requeue_log(metadata, error, len(pending) - index)
                    return False
                may_pass = isinstance(error, rec.RetryLater) or getattr(
                    error, 'retryable', False)
                if may_pass and tries < self.max_attempts:
                    LOG.warning('Could not store notification message_id=%s '
                                '(try %d of %d): %s; trying again',
                                message_id(metadata), tries,
                                self.max_attempts, _error_text(error))
                    self.sleep(self.retry_delay)
                    continue
                reason = '%s (after %d tr%s)' % (
                    _error_text(error), tries, 'y' if tries == 1 else 'ies')
                if not self._reject(message_key(metadata, item), reason,
                                    item, metadata):
                    return False
                break
        return True

    def _outage_delay(self):
        self._outages += 1
        return min(MAX_REQUEUE_DELAY,
                   REQUEUE_DELAY * 2 ** min(self._outages - 1, 10))

    def _store_up(self):
        if self.healthy is None:
            return False
        try:
            return bool(self.healthy())
        except Exception:
            return False

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
                return True
        LOG.error('Rejected notification %s: %s; it is kept with its '
                  'record (nova-error-notifier-manage rejected list) and '
                  'acknowledged', summary, logsafe.escape(reason, 600))
        return True


def message_key(metadata, item):
    """The key a message is rejected under (its region's)."""
    mid = getattr(item, 'message_id', None)
    if not mid and isinstance(metadata, dict):
        mid = metadata.get('message_id')
    if not mid or not isinstance(mid, str):
        mid = 'record:' + hashlib.sha256(
            record_json(item).encode('utf-8')).hexdigest()
    region = getattr(item, 'region', None)
    return outbox.fit_key(rec.scoped(region if isinstance(region, str)
                                     else None, mid))


def stamping(sink, region):
    """``sink`` of one record, stamping ``region`` on what it is given.

    For the endpoint plugins of one bus that store a message at a time
    (third-party ones without ``collect``); ``sink`` itself without a
    region.
    """
    if not region:
        return sink

    def _sink(item):
        return sink(rec.with_region(item, region))
    on_drop = getattr(sink, 'on_drop', None)
    if on_drop is not None:
        _sink.on_drop = on_drop
    return _sink


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
        message_id(metadata), logsafe.escape(getattr(item, 'event_type',
                                                     None), 255),
        logsafe.escape(getattr(item, 'request_id', None), 255),
        logsafe.escape(getattr(item, 'instance_uuid', None), 255))


def rejecter(store):
    """How the listener keeps a message it cannot store."""
    def _reject(key, reason, item, metadata):
        store.add_rejected(
            key, reason, event_type=getattr(item, 'event_type', None),
            priority=getattr(item, 'priority', None),
            publisher_id=getattr(item, 'publisher_id', None),
            body=record_json(item))
    return _reject


class Handoff:
    """The endpoint of a listener whose store process reads the messages.

    It subscribes to the priorities of ``screen`` (the
    :class:`BatchEndpoint` of the same plugins, used here only to leave
    routine INFO traffic out) and hands the rest of each batch to
    ``store_process`` (a :class:`nova_error_notifier.handoff.StoreProcess`),
    whose answer is oslo.messaging's.
    """

    def __init__(self, screen, store_process, bus_index=0):
        self.screen = screen
        self.store_process = store_process
        self.bus_index = bus_index
        for priority in screen.priorities:
            setattr(self, priority, functools.partial(self.handle, priority))

    @property
    def priorities(self):
        return self.screen.priorities

    def handle(self, priority, messages):
        wanted = self.screen.wanted(priority, messages)
        if not wanted:
            return None
        return self.store_process.handle(self.bus_index, priority, wanted)


def screen_only(item):
    """The sink of plugins loaded to screen messages: never called."""
    raise RuntimeError('records are stored by the store process')


class Recorder(collections.namedtuple('Recorder', 'endpoint')):
    """Replay and test-route: one wire message at a time, no broker."""

    def dispatch(self, ctxt, message):
        """Read one message; return the endpoint's answer (or None)."""
        try:
            priority, user = read_envelope(ctxt, message)
        except UnreadableEnvelope as exc:
            mid = (message.get('message_id')
                   if isinstance(message, dict) else None)
            self.endpoint._drop({'metadata': {'message_id': mid}}, str(exc))
            return None
        if priority not in self.endpoint.priorities:
            return None
        return self.endpoint.handle(priority, [user])
