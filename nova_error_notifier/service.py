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
"""The nova-error-notifier service: a notification listener on Nova's bus.

It listens on Nova's exchange (``nova``) to the topics ``notifications``
(legacy) and ``versioned_notifications`` with its own listener pool, so
that Ceilometer and the other consumers of those topics keep their copies.
"""

import signal
import threading
import time

from oslo_config import cfg
from oslo_log import log
import oslo_messaging
from oslo_messaging.notify import listener as listener_mod
import oslo_messaging.opts
import stevedore

from nova_error_notifier import config as config_mod
from nova_error_notifier import correlate
from nova_error_notifier import delivery
from nova_error_notifier.endpoints import base as endpoint_base
from nova_error_notifier import enrich
from nova_error_notifier import logsafe
from nova_error_notifier import outbox
from nova_error_notifier import redact

LOG = log.getLogger(__name__)

ENDPOINT_NAMESPACE = 'nova_error_notifier.endpoints'

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
               help='Seconds to wait for messages in progress when the '
                    'service is asked to stop.'),
    cfg.IntOpt('max_store_attempts',
               default=endpoint_base.MAX_STORE_ATTEMPTS,
               min=1,
               help='Tries of a message whose error cannot be stored while '
                    'the outbox is up (a lock or unique-key conflict that '
                    'does not pass) before it is kept as a rejected message '
                    'and acknowledged ("nova-error-notifier-manage rejected '
                    'list"). A message that can never be stored (a value '
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
    conf.register_opts(LISTENER_OPTS, group='listener')


def set_messaging_defaults(conf):
    """Bound RabbitMQ's prefetch to two batches, unless configured.

    oslo.messaging registers its driver options when the transport is
    made; registering the same (equal) options first lets the service
    change their default. A value in the configuration file still wins.
    """
    register_opts(conf)
    for group, opts in oslo_messaging.opts.list_opts():
        if group == RABBIT_GROUP:
            conf.register_opts(opts, group=group)
    conf.set_default('rabbit_qos_prefetch_count',
                     PREFETCH_BATCHES * conf.listener.batch_size,
                     group=RABBIT_GROUP)


class StartupError(ValueError):
    """The service cannot start as configured."""


class EndpointLoadError(StartupError):
    """An endpoint plugin is missing or broken."""


def _raise_load_failure(manager, entrypoint, exc):
    raise EndpointLoadError('endpoint plugin %r failed to load: %s: %s'
                            % (entrypoint.name, type(exc).__name__, exc))


def _raise_missing(names):
    raise EndpointLoadError('endpoint plugin(s) not installed: %s (no entry '
                            'point in namespace %s)'
                            % (', '.join(sorted(names)), ENDPOINT_NAMESPACE))


def load_endpoints(conf, sink):
    """Load the endpoint plugins named in ``[listener] endpoints``.

    :raises EndpointLoadError: when one is missing or cannot be loaded.
    """
    names = [n.strip() for n in conf.listener.endpoints if n.strip()]
    if not names:
        raise EndpointLoadError('[listener] endpoints is empty: name at '
                                'least one endpoint plugin (versioned, '
                                'legacy)')
    try:
        manager = stevedore.NamedExtensionManager(
            ENDPOINT_NAMESPACE, names,
            invoke_on_load=True, invoke_args=(conf, sink),
            name_order=True,
            on_load_failure_callback=_raise_load_failure,
            on_missing_entrypoints_callback=_raise_missing)
    except EndpointLoadError:
        raise
    except Exception as exc:
        raise EndpointLoadError('endpoint plugins failed to start: %s: %s'
                                % (type(exc).__name__, exc))
    return [ext.obj for ext in manager]


def describe_transport(conf, transport):
    """Where the broker is, without credentials."""
    try:
        url = oslo_messaging.TransportURL.parse(
            conf, conf.oslo_messaging_notifications.transport_url or
            conf.transport_url)
        hosts = ','.join('%s:%s' % (h.hostname, h.port or '')
                         for h in url.hosts) or 'localhost'
        return '%s://%s/%s' % (url.transport or 'rabbit', hosts,
                               url.virtual_host or '')
    except Exception:
        return '(transport URL not shown)'


def open_store(conf, upgrade_sqlite=True):
    """The outbox, its schema usable; a broken one raises StartupError.

    The default SQLite file is brought to the newest schema here; a shared
    database (MySQL, PostgreSQL) must have been brought there by ``db
    sync``: several replicas must not alter one schema at once.
    """
    url = outbox.connection_url(conf)
    if conf.delivery.connection and not conf.database.connection:
        LOG.warning('[delivery] connection is deprecated: set [database] '
                    'connection instead')
    try:
        store = outbox.Store.from_conf(conf)
        if store.is_sqlite and upgrade_sqlite:
            before, after = store.upgrade()
            if before is not None and before != after:
                LOG.info('Outbox schema upgraded from %s to revision %s',
                         before, after)
        else:
            problem = store.schema_problem()
            if problem:
                raise outbox.StoreConfigError(problem)
    except outbox.StoreConfigError as exc:
        raise StartupError('[delivery] %s' % redact.text(
            exc, redact.url_secrets(url)))
    except Exception as exc:
        # Database drivers repeat the URL (and its password) in some
        # messages: masked.
        raise StartupError('[delivery] the outbox database is not usable: '
                           '%s: %s' % (type(exc).__name__, redact.text(
                               str(exc).split('\n')[0],
                               redact.url_secrets(url))))
    return store


def reject(store):
    """How the listener keeps a message it cannot store."""
    def _reject(key, reason, item, metadata):
        metadata = metadata if isinstance(metadata, dict) else {}
        store.add_rejected(
            key, reason, event_type=getattr(item, 'event_type', None),
            priority=getattr(item, 'priority', None),
            publisher_id=getattr(item, 'publisher_id', None),
            body=endpoint_base.record_json(item))
    return _reject


def make_transport(conf):
    """The notification transport; a bad URL raises StartupError.

    oslo.messaging would only find a bad port or host list when it first
    connects, in the listener's thread: parse the URL here instead.
    """
    try:
        transport = oslo_messaging.get_notification_transport(conf)
        oslo_messaging.TransportURL.parse(
            conf, conf.oslo_messaging_notifications.transport_url or
            conf.transport_url)
    except (oslo_messaging.MessagingException, ValueError) as exc:
        # The messages name the problem, never the URL and its password.
        raise StartupError('transport_url is not usable: %s: %s'
                           % (type(exc).__name__, exc))
    return transport


class Service:
    """The listener, its endpoints and the pipeline behind them."""

    def __init__(self, conf, settings, reloader=None):
        """Build the service.

        :param reloader: returns checked Settings from the configuration
            files as they are now (on a new ConfigOpts), or raises
            config.ConfigError; called on SIGHUP.
        """
        self.conf = conf
        self.settings = settings
        self.reloader = reloader
        self._reload_requested = threading.Event()
        self.store = open_store(conf)
        self.correlator = correlate.Correlator(conf, self.store, settings)
        enrich.register_opts(conf)
        self.deliveries = delivery.DeliveryPool(
            conf, self.store, settings,
            wakeup=self.correlator.work_available,
            enricher=(enrich.Enricher(conf) if conf.enrichment.enabled
                      else None))
        self.endpoints = load_endpoints(conf, self.correlator.add)
        set_messaging_defaults(conf)
        self.transport = make_transport(conf)
        listener_conf = conf.listener
        topics = [t.strip() for t in listener_conf.topics if t.strip()]
        targets = [oslo_messaging.Target(topic=topic,
                                         exchange=listener_conf.exchange)
                   for topic in topics]
        pool = listener_conf.pool or None
        if pool is None:
            LOG.warning('[listener] pool is empty: the service shares '
                        'Nova\'s default notification queues and takes '
                        'messages away from their other consumers')
        self.listener = listener_mod.BatchNotificationServer(
            self.transport, targets,
            endpoint_base.BatchDispatcher(
                self.endpoints, None, self.correlator.add_many,
                reject=reject(self.store), healthy=self.store.ping,
                max_attempts=listener_conf.max_store_attempts),
            executor='threading', allow_requeue=True, pool=pool,
            batch_size=listener_conf.batch_size,
            batch_timeout=listener_conf.batch_timeout)
        self.description = ('topics %s on exchange %s of %s, pool %s, '
                            'endpoints %s' % (
                                ','.join(topics), listener_conf.exchange,
                                describe_transport(conf, self.transport),
                                pool or '(none)',
                                ','.join(listener_conf.endpoints)))
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._router_stop = threading.Event()
        self._router = threading.Thread(target=self._route_loop, daemon=True,
                                        name='router')

    #: Seconds between two hand-backs of expired delivery claims.
    RECLAIM_PERIOD = 30.0
    #: Seconds between two purges of finished work.
    PURGE_PERIOD = 3600.0

    def _housekeeping(self, state):
        """Expired claims back to pending; old finished work forgotten."""
        now = time.monotonic()
        # As often as claims run out, so that a killed replica's deliveries
        # are taken over about one lease after it died.
        period = min(self.RECLAIM_PERIOD, self.conf.delivery.lease)
        if now - state.get('reclaim', 0.0) >= period:
            state['reclaim'] = now
            self.deliveries.reclaim()
        if now - state.get('purge', now - self.PURGE_PERIOD + 60) >= \
                self.PURGE_PERIOD:
            state['purge'] = now
            counts = self.store.purge(self.conf.delivery.retention)
            if any(counts.values()):
                LOG.info('Outbox purged: %s', ', '.join(
                    '%d %s' % (v, k) for k, v in sorted(counts.items())))

    #: Longest sleep of the router: it also picks up incidents opened by
    #: another replica, and runs the housekeeping.
    ROUTER_IDLE = 1.0

    def _route_loop(self):
        """Route incidents when their group_wait is over, until stopped.

        The router sleeps until the earliest due incident or digest, or
        until the listener opens a new incident.
        """
        last_error = 0.0
        house = {'reclaim': time.monotonic()}
        correlator = self.correlator
        woken = correlator.incident_opened
        while not self._router_stop.is_set():
            # Planning: a listener that opens an incident meanwhile wakes
            # the router up again.
            correlator.router_wakes_at = None
            woken.clear()
            delay = self.ROUTER_IDLE
            try:
                correlator.route_due()
                self._housekeeping(house)
                due = correlator.next_due_at
                now = correlator.clock()
                if due is not None:
                    delay = min(delay, max(0.0, due - now))
            except (outbox.StoreUnavailable, outbox.StoreError) as exc:
                if time.monotonic() - last_error > 30:
                    LOG.error('Outbox unavailable, incidents wait: %s', exc)
                    last_error = time.monotonic()
            except Exception:
                LOG.exception('Routing incidents failed')
            # After a failure too: then only the idle period wakes it.
            correlator.router_wakes_at = correlator.clock() + delay
            woken.wait(delay)

    def _start(self):
        try:
            self.listener.start()
        except Exception:
            if not self._stopping.is_set():
                LOG.exception('The notification listener failed to start')
                self._stopping.set()
            return
        self._started.set()
        LOG.info('Listening to %s', self.description)

    def run(self):
        """Run until SIGTERM or SIGINT; return the exit status."""
        def _on_signal(signum, frame):
            LOG.info('Received %s, stopping', signal.Signals(signum).name)
            self._stopping.set()

        def _on_hup(signum, frame):
            self._reload_requested.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGHUP, _on_hup)
        LOG.info('Outbox: %s', self.store.describe())
        self.deliveries.start()
        self._router.start()
        LOG.info('Connecting to %s', self.description)

        # The broker may be unreachable: oslo.messaging then logs and
        # retries inside start(). Starting in a thread keeps this one free to
        # answer signals in the meantime.
        starter = threading.Thread(target=self._start, daemon=True,
                                   name='listener-start')
        starter.start()
        while not self._stopping.wait(0.2):
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
        return self.stop(starter)

    def reload(self):
        """Re-read rules and receivers; keep the old ones if broken.

        The new configuration is read into a new ConfigOpts and checked as
        at start-up; only when it is sound do the router and the delivery
        workers switch to it, in one assignment each, so that no incident
        or delivery is lost or doubled. Listener options ([listener],
        transport_url) need a restart.
        """
        LOG.info('SIGHUP: reloading the rules and receivers')
        if self.reloader is None:
            LOG.warning('Reload is not available: restart the service')
            return False
        try:
            settings = self.reloader()
        except config_mod.ConfigError as exc:
            problems = exc.problems
        else:
            problems = []
        if problems:
            for problem in problems:
                LOG.error('Reload refused: %s', logsafe.escape(problem))
            LOG.error('Reload refused: the configuration in force is kept')
            return False
        self.settings = settings
        self.correlator.settings = settings
        self.deliveries.settings = settings
        LOG.info('Reloaded: %d rule(s), receivers %s', len(settings.ruleset),
                 ', '.join(sorted(settings.receivers)))
        return True

    def _stop_workers(self, timeout):
        """Stop routing and delivering; pending work stays in the outbox."""
        self._router_stop.set()
        self.correlator.incident_opened.set()
        self._router.join(timeout)
        if not self.deliveries.stop(timeout):
            LOG.warning('Deliveries still in progress after %d s; they are '
                        'resumed at the next start', timeout)

    def stop(self, starter):
        timeout = self.conf.listener.stop_timeout
        if not self._started.is_set():
            starter.join(0.1)
        if not self._started.is_set():
            LOG.info('Stopped before the listener was connected')
            self._stop_workers(timeout)
            return 0 if starter.is_alive() or self._started.is_set() else 1
        done = threading.Event()

        def _stop():
            try:
                self.listener.stop()
                self.listener.wait()
                self.transport.cleanup()
            except Exception:
                LOG.exception('Error while stopping the listener')
            done.set()

        stopper = threading.Thread(target=_stop, daemon=True,
                                   name='listener-stop')
        stopper.start()
        if not done.wait(timeout):
            LOG.warning('The listener did not stop within %d s; exiting '
                        'anyway', timeout)
        self._stop_workers(timeout)
        LOG.info('nova-error-notifier stopped')
        return 0


def preflight(conf, transport=True):
    """Problems that would stop the listener, besides rules and receivers.

    Checked before start-up so that every problem is reported at once.
    """
    problems = []
    enrich.register_opts(conf)
    if conf.enrichment.enabled:
        problems.extend('[enrichment] enabled: %s' % p
                        for p in enrich.Enricher(conf).check())
    try:
        load_endpoints(conf, lambda record: None)
    except StartupError as exc:
        problems.append(str(exc))
    if transport:
        try:
            make_transport(conf).cleanup()
        except StartupError as exc:
            problems.append(str(exc))
        try:
            open_store(conf).engine.dispose()
        except StartupError as exc:
            problems.append(str(exc))
    return problems


def check(conf, transport=True):
    """Every check at once: (settings or None, problems, warnings)."""
    try:
        settings = config_mod.load(conf)
        problems, warnings = [], settings.warnings
    except config_mod.ConfigError as exc:
        settings = None
        problems, warnings = list(exc.problems), exc.warnings
    problems.extend(preflight(conf, transport=transport))
    return (None if problems else settings), problems, warnings


def load_checked(conf, transport=True):
    """Settings, once every check passed; else None.

    Every problem is logged, one ``Configuration error:`` line each, and
    warnings as ``Configuration:`` lines.
    """
    settings, problems, warnings = check(conf, transport=transport)
    # Logged outside the except block: oslo.log appends the exception being
    # handled to ERROR lines, which would repeat every problem on each line.
    for problem in problems:
        LOG.error('Configuration error: %s', logsafe.escape(problem))
    for warning in warnings:
        LOG.warning('Configuration: %s', logsafe.escape(warning))
    return settings
