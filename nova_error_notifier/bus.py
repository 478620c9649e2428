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
"""What the broker already has, compared with what the service will ask.

oslo.messaging declares the listener pool's queue with the arguments of
``[oslo_messaging_rabbit]``: a classic queue by default (durable with
``amqp_durable_queues``), a quorum queue with ``rabbit_quorum_queue``
(always durable). RabbitMQ refuses to declare an existing queue with other
arguments (``PRECONDITION_FAILED``), so a queue made by an earlier
configuration stops the listener. :func:`pool_queue_warnings` declares the
existing queue as oslo.messaging would, and says what differs and how to
move from one type to the other.
"""

import kombu
from kombu import exceptions as kombu_exc
import oslo_messaging
import oslo_messaging.opts

from nova_error_notifier import redact

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
    """Warnings about the broker's existing pool queue (a list)."""
    for group, opts in oslo_messaging.opts.list_opts():
        if group in (None, 'oslo_messaging_notifications',
                     'oslo_messaging_rabbit'):
            conf.register_opts(opts, group=group)
    pool = conf.listener.pool
    url_text = (conf.oslo_messaging_notifications.transport_url or
                conf.transport_url)
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
    exchange = conf.listener.exchange
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
