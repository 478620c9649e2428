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
"""The buses the service listens to, and what their brokers already have.

The default bus is Nova's notification bus of ``[DEFAULT] transport_url``
(or ``[oslo_messaging_notifications] transport_url``), with the exchange,
topics and pool of ``[listener]``. Named buses let one deployment listen to
several Nova deployments or cells, each with its own notification broker::

    [bus:region-two]
    transport_url = rabbit://nen:secret@r2-ctl:5672/
    region_name = RegionTwo          # default: the bus name
    pool = nova-error-notifier       # default: [listener] pool
    # exchange, topics: default to [listener] exchange / topics

Every ``[bus:NAME]`` section is a bus. The default bus is listened to when
there is no ``[bus:NAME]`` section, or when its transport URL is set
explicitly; its region is ``[listener] region_name`` (empty: none). Each
bus's records, incidents and alerts carry its region, and incidents of two
buses never merge. :func:`load` finds the buses and says what is wrong
with them: a bus without a transport URL, two buses with one region, a
transport URL that does not parse (never showing the URL's password).

oslo.messaging declares the listener pool's queue with the arguments of
``[oslo_messaging_rabbit]``: a classic queue by default (durable with
``amqp_durable_queues``), a quorum queue with ``rabbit_quorum_queue``
(always durable). RabbitMQ refuses to declare an existing queue with other
arguments (``PRECONDITION_FAILED``), so a queue made by an earlier
configuration stops the listener. :func:`pool_queue_warnings` declares the
existing queue as oslo.messaging would, and says what differs and how to
move from one type to the other.
"""

import dataclasses
import typing

import kombu
from kombu import exceptions as kombu_exc
from oslo_config import cfg
import oslo_messaging
import oslo_messaging.opts

from nova_error_notifier import redact

#: Sections of the named buses: ``[bus:NAME]``.
GROUP_PREFIX = 'bus:'
LISTENER_GROUP = 'listener'
NOTIFICATIONS_GROUP = 'oslo_messaging_notifications'

BUS_OPTS = [
    cfg.StrOpt('transport_url',
               secret=True,
               help='oslo.messaging URL of the bus\'s notification broker, '
                    'e.g. rabbit://user:password@host:5672/vhost. '
                    'Required. Its password is never shown.'),
    cfg.StrOpt('region_name',
               help='Region the bus\'s notifications come from: every '
                    'record, incident and alert of the bus carries it '
                    '(e-mail subjects, webhook bodies, log lines), '
                    'incidents of two buses never merge, and enrichment '
                    'asks the Nova API of this region. Two buses cannot '
                    'have the same region. Default: the bus name (NAME of '
                    '[bus:NAME]).'),
    cfg.StrOpt('pool',
               help='Listener pool on this bus (the queue the service '
                    'consumes). Default: [listener] pool.'),
    cfg.StrOpt('exchange',
               help='Exchange Nova publishes its notifications to on this '
                    'bus. Default: [listener] exchange.'),
    cfg.ListOpt('topics',
                help='Notification topics to listen to on this bus. '
                     'Default: [listener] topics.'),
]


@dataclasses.dataclass(frozen=True)
class Bus:
    """One notification bus the listeners consume."""

    #: NAME of ``[bus:NAME]``; None for the default bus.
    name: typing.Optional[str]
    #: The transport URL; None for the default bus when oslo.messaging
    #: picks it (``[oslo_messaging_notifications]``, ``[DEFAULT]``).
    transport_url: typing.Optional[str]
    #: Region of its records and alerts, or None (the default bus only).
    region: typing.Optional[str]
    #: Listener pool ('' or None: none).
    pool: typing.Optional[str]
    exchange: str
    topics: typing.Tuple[str, ...]

    @property
    def label(self):
        """``[bus:NAME]``, or ``the default bus``, for messages."""
        if self.name is None:
            return 'the default bus'
        return '[%s%s]' % (GROUP_PREFIX, self.name)


def list_opts():
    """The ``[bus:NAME]`` options, for the sample configuration."""
    return [(GROUP_PREFIX + '<name>', BUS_OPTS)]


def _register_messaging_opts(conf):
    for group, opts in oslo_messaging.opts.list_opts():
        if group in (None, NOTIFICATIONS_GROUP):
            conf.register_opts(opts, group=group)


def section_names(conf):
    """NAME of every ``[bus:NAME]`` section of the configuration files.

    A section copied from the sample (``[bus:<name>]``) is left out.
    """
    try:
        sections = conf.list_all_sections()
    except Exception:        # not parsed yet
        return []
    return sorted(section[len(GROUP_PREFIX):] for section in sections
                  if section.startswith(GROUP_PREFIX) and
                  '<' not in section)


def register_opts(conf):
    """Register the options of every ``[bus:NAME]`` section on ``conf``.

    With oslo.messaging's transport URL options, so that the default bus's
    URL can be read before any transport is made.
    """
    _register_messaging_opts(conf)
    for name in section_names(conf):
        conf.register_opts(BUS_OPTS, group=GROUP_PREFIX + name)


def default_url(conf):
    """The default bus's transport URL, as oslo.messaging picks it."""
    _register_messaging_opts(conf)
    return (conf[NOTIFICATIONS_GROUP].transport_url or
            conf.transport_url or None)


#: Where an option's value comes from when nobody set it.
_IMPLICIT = (cfg.Locations.opt_default, cfg.Locations.set_default)


def default_url_is_set(conf):
    """Whether the default bus's transport URL is set explicitly.

    In a configuration file, on the command line, the environment or by
    an override: ``[DEFAULT] transport_url`` has a default of its own
    (``rabbit://``), which does not count.
    """
    _register_messaging_opts(conf)
    for group in (NOTIFICATIONS_GROUP, None):
        value = conf[group].transport_url if group else conf.transport_url
        if not value:
            continue
        try:
            location = conf.get_location('transport_url', group).location
        except Exception:       # an oslo.config without locations
            return True
        if location not in _IMPLICIT:
            return True
    return False


def _text(value):
    value = (value or '').strip()
    return value or None


def _url_problem(conf, label, url):
    """Why the transport URL does not parse, or None (never the URL)."""
    try:
        parsed = oslo_messaging.TransportURL.parse(conf, url)
        for host in parsed.hosts:
            if host.port is not None and not 0 < host.port < 65536:
                return ('%s transport_url: port %d of host %s is out of '
                        'range' % (label, host.port, host.hostname))
    except (oslo_messaging.InvalidTransportURL, ValueError) as exc:
        return '%s transport_url does not parse: %s: %s' % (
            label, type(exc).__name__, _masked(str(exc), url))
    return None


def _masked(text, url):
    """``text`` without the URL's credentials or query values.

    Also for a URL that does not parse, whose password
    :func:`redact.url_secrets` cannot find.
    """
    secrets = list(redact.url_secrets(url))
    netloc = url.split('://', 1)[-1].split('/', 1)[0]
    for part in netloc.split(','):
        if '@' in part:
            userinfo = part.rsplit('@', 1)[0]
            secrets.extend((userinfo, userinfo.partition(':')[2]))
    return redact.text(text, sorted({s for s in secrets if s}, key=len,
                                    reverse=True))


def describe_url(conf, url):
    """scheme://host:port/vhost of a URL, without credentials."""
    try:
        parsed = oslo_messaging.TransportURL.parse(conf, url)
        hosts = ','.join('%s:%s' % (h.hostname, h.port or '')
                         for h in parsed.hosts) or 'localhost'
        return '%s://%s/%s' % (parsed.transport or 'rabbit', hosts,
                               parsed.virtual_host or '')
    except Exception:
        return '(transport URL not shown)'


def describe(conf, bus):
    """Where a bus's broker is, without credentials."""
    url = bus.transport_url if bus.transport_url else default_url(conf)
    return describe_url(conf, url)


def load(conf):
    """The buses to listen to, and the problems and warnings of them.

    :returns: (list of :class:`Bus`, default bus first, then the named
        ones by name; problems; warnings). Every line of a problem or a
        warning names the section and never shows a password.
    """
    register_opts(conf)
    listener = conf[LISTENER_GROUP]
    problems, warnings = [], []
    found = []
    names = section_names(conf)
    url = default_url(conf)
    if not names or default_url_is_set(conf):
        found.append(Bus(None, None, _text(listener.region_name),
                         listener.pool, listener.exchange,
                         tuple(listener.topics)))
    for name in names:
        group = GROUP_PREFIX + name
        label = '[%s]' % group
        if not name.strip():
            problems.append('%s: a bus needs a name ([bus:NAME])' % label)
            continue
        options = conf[group]
        bus_url = _text(options.transport_url)
        if bus_url is None:
            problems.append('%s transport_url is not set: every bus needs '
                            'the URL of its broker' % label)
            continue
        problem = _url_problem(conf, label, bus_url)
        if problem:
            problems.append(problem)
            continue
        topics = tuple(t.strip() for t in (
            options.topics if options.topics is not None
            else listener.topics) if t.strip())
        if not topics:
            problems.append('%s topics is empty: name at least one topic, '
                            'or leave it out for [listener] topics' % label)
            continue
        found.append(Bus(
            name, bus_url, _text(options.region_name) or name,
            listener.pool if options.pool is None else options.pool,
            _text(options.exchange) or listener.exchange, topics))
    by_region = {}
    for bus in found:
        other = by_region.setdefault(bus.region, bus)
        if other is not bus:
            problems.append(
                '%s and %s have the same region %s: give each bus a '
                'region_name of its own ([listener] region_name for the '
                'default bus), so that their incidents are told apart'
                % (other.label, bus.label, bus.region))
    seen = {}
    for bus in found:
        where = (bus.transport_url or url, bus.exchange, bus.pool)
        if not bus.pool:
            continue
        other = seen.setdefault(where, bus)
        if other is not bus:
            warnings.append(
                '%s and %s consume the same pool queue of the same broker: '
                'each gets part of the messages, under its own region'
                % (other.label, bus.label))
    return found, problems, warnings


def buses(conf):
    """The buses to listen to (the problems are :func:`load`'s)."""
    return load(conf)[0]


#: Seconds to wait for the broker.
TIMEOUT = 3

MOVE = ('to change the pool queue\'s type, stop every replica of the pool, '
        'let it drain, delete the queue (rabbitmqctl delete_queue %s -p %s) '
        'and start the replicas with the new [oslo_messaging_rabbit] '
        'settings')
EXCHANGE = ('Nova and the service declare the exchange alike: set the same '
            'rabbit_quorum_queue / amqp_durable_queues in nova.conf (a '
            'quorum queue needs a durable exchange; moving from a '
            'non-durable one means deleting the exchange while every '
            'publisher and consumer of it is stopped)')


def _queue_arguments(rabbit):
    """(durable, auto_delete, arguments) as oslo.messaging declares them."""
    quorum = rabbit.rabbit_quorum_queue
    arguments = {}
    if quorum:
        arguments['x-queue-type'] = 'quorum'
        for option, key in (('rabbit_quorum_delivery_limit',
                             'x-delivery-limit'),
                            ('rabbit_quorum_max_memory_length',
                             'x-max-in-memory-length'),
                            ('rabbit_quorum_max_memory_bytes',
                             'x-max-in-memory-bytes')):
            if rabbit[option]:
                arguments[key] = rabbit[option]
    if rabbit.rabbit_ha_queues:
        arguments['x-ha-policy'] = 'all'
    return (bool(rabbit.amqp_durable_queues or quorum),
            bool(rabbit.amqp_auto_delete), arguments)


def pool_queue_warnings(conf):
    """Warnings about every bus's existing pool queue (a list).

    A named bus's warnings start with its section (``[bus:NAME]: ``).
    """
    for group, opts in oslo_messaging.opts.list_opts():
        if group in (None, 'oslo_messaging_notifications',
                     'oslo_messaging_rabbit'):
            conf.register_opts(opts, group=group)
    warnings = []
    for bus in buses(conf):
        url_text = bus.transport_url or default_url(conf)
        found = _pool_queue_warnings(conf, url_text, bus.pool, bus.exchange)
        if bus.name is not None:
            found = ['%s: %s' % (bus.label, w) for w in found]
        warnings.extend(found)
    return warnings


def _pool_queue_warnings(conf, url_text, pool, exchange):
    """Warnings about one broker's existing pool queue (a list)."""
    if not pool or not url_text:
        return []
    try:
        url = oslo_messaging.TransportURL.parse(conf, url_text)
    except Exception:
        return []               # reported by the transport check
    if (url.transport or 'rabbit') != 'rabbit' or not url.hosts:
        return []
    rabbit = conf.oslo_messaging_rabbit
    host = url.hosts[0]
    vhost = url.virtual_host or '/'
    durable, auto_delete, arguments = _queue_arguments(rabbit)
    wanted = 'quorum' if rabbit.rabbit_quorum_queue else 'classic'
    connection = kombu.Connection(
        hostname=host.hostname, port=host.port or 5672,
        userid=host.username or 'guest', password=host.password or 'guest',
        virtual_host=vhost, ssl=bool(rabbit.ssl), connect_timeout=TIMEOUT)
    secrets = redact.url_secrets(url_text)
    warnings = []
    try:
        with connection:
            channel = connection.channel()
            try:
                channel.exchange_declare(exchange, 'topic', passive=True)
            except kombu_exc.ChannelError:
                channel = connection.channel()
            else:
                try:
                    channel.exchange_declare(exchange, 'topic',
                                             durable=durable,
                                             auto_delete=auto_delete)
                except kombu_exc.ChannelError as exc:
                    channel = connection.channel()
                    warnings.append(
                        'the broker\'s exchange %s (vhost %s) is not %s as '
                        'the service would declare it: %s; %s' % (
                            exchange, vhost,
                            'durable' if durable else 'non-durable',
                            redact.text(str(exc), secrets), EXCHANGE))
            try:
                channel.queue_declare(pool, passive=True)
            except kombu_exc.ChannelError:
                return warnings  # not made yet: the service makes it
            channel = connection.channel()
            try:
                channel.queue_declare(pool, durable=durable,
                                      auto_delete=auto_delete,
                                      arguments=arguments)
            except kombu_exc.ChannelError as exc:
                warnings.append(
                    'the broker\'s pool queue %s (vhost %s) was made with '
                    'other settings than the service\'s (a %s%s queue '
                    'here): %s; %s' % (
                        pool, vhost, 'durable ' if durable and
                        wanted == 'classic' else '', wanted,
                        redact.text(str(exc), secrets),
                        MOVE % (pool, vhost)))
    except Exception:
        # An unreachable broker, a refused login: the service's own
        # connection says so; nothing to compare here.
        pass
    return warnings
