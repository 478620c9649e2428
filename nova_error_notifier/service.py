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
that Ceilometer and the other consumers of those topics keep their copies;
on one bus, or on several (``[bus:NAME]``, :mod:`nova_error_notifier.bus`).
"""


from oslo_log import log
import oslo_messaging
import stevedore

from nova_error_notifier import bus as bus_mod
from nova_error_notifier import config as config_mod
from nova_error_notifier import enrich
from nova_error_notifier import listener as listener_mod
from nova_error_notifier import logsafe
from nova_error_notifier import outbox
from nova_error_notifier import redact

LOG = log.getLogger(__name__)

ENDPOINT_NAMESPACE = 'nova_error_notifier.endpoints'

LISTENER_OPTS = listener_mod.LISTENER_OPTS
register_opts = listener_mod.register_opts
set_messaging_defaults = listener_mod.set_messaging_defaults


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


def describe_transport(conf, transport, bus=None):
    """Where the broker (of ``bus``, or the default one) is, no credentials."""
    if bus is not None and bus.transport_url:
        return bus_mod.describe(conf, bus)
    return bus_mod.describe_url(conf, bus_mod.default_url(conf))


PROJECT = 'nova_error_notifier'


def describe_listener(conf, bus=None):
    """Topics, exchange, broker (no credentials), pool and endpoints.

    Of ``bus`` (a :class:`nova_error_notifier.bus.Bus`) when given, with
    its name and region; else of ``[listener]``.
    """
    options = conf[listener_mod.GROUP]
    topics = options.topics if bus is None else bus.topics
    exchange = options.exchange if bus is None else bus.exchange
    pool = options.pool if bus is None else bus.pool
    topics = [t.strip() for t in topics if t.strip()]
    text = 'topics %s on exchange %s of %s, pool %s, endpoints %s' % (
        ','.join(topics), exchange, describe_transport(conf, None, bus),
        pool or '(none)', ','.join(options.endpoints))
    if bus is not None and bus.name is not None:
        text = 'bus %s: %s' % (bus.name, text)
    if bus is not None and bus.region:
        text += ', region %s' % bus.region
    return text


def describe_store(conf):
    """The outbox's database URL, its password masked."""
    return redact.url(outbox.connection_url(conf))


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


def make_transport(conf, bus=None):
    """The notification transport; a bad URL raises StartupError.

    Of ``bus`` (a :class:`nova_error_notifier.bus.Bus` with its own
    transport URL) when given, else the default one. oslo.messaging would
    only find a bad port or host list when it first connects, in the
    listener's thread: parse the URL here instead.
    """
    url = bus.transport_url if bus is not None else None
    try:
        transport = oslo_messaging.get_notification_transport(conf, url=url)
        oslo_messaging.TransportURL.parse(
            conf, url or conf.oslo_messaging_notifications.transport_url or
            conf.transport_url)
    except (oslo_messaging.MessagingException, ValueError) as exc:
        # The messages name the problem, never the URL and its password.
        where = ('%s transport_url' % bus.label if url else 'transport_url')
        raise StartupError('%s is not usable: %s: %s' % (
            where, type(exc).__name__,
            redact.text(exc, redact.url_secrets(url)) if url else exc))
    return transport


def preflight(conf, transport=True):
    """Problems that would stop the listener, besides rules and receivers.

    Checked before start-up so that every problem is reported at once.
    """
    problems = []
    if conf.enrichment.enabled:
        problems.extend('[enrichment] enabled: %s' % p
                        for p in enrich.Enricher(conf).check())
    try:
        load_endpoints(conf, lambda record: None)
    except StartupError as exc:
        problems.append(str(exc))
    if transport:
        buses = bus_mod.buses(conf)
        for bus in buses:
            try:
                make_transport(conf, bus if bus.transport_url
                               else None).cleanup()
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
    # The buses' groups are registered now: their URLs' passwords are
    # masked in every log line from here on.
    redact.refresh(conf)
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
