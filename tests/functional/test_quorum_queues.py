"""The pool queue as a RabbitMQ quorum queue, with Nova agreeing.

Real RabbitMQ, the real service, a Nova-side oslo.messaging notifier with
the same ``[oslo_messaging_rabbit]`` settings; check-config compares the
broker's existing pool queue with the configuration.
"""

import subprocess
import uuid

import oslo_messaging
import oslo_messaging.opts

from tests.functional import rabbitmq as rq
from tests.functional import service_process
from tests.functional import test_reliability as rel

services = rel.services
QUORUM = '[oslo_messaging_rabbit]\nrabbit_quorum_queue = true\n'


def nova_notifier(url, quorum):
    """A notifier set up as Nova's, with rabbit_quorum_queue as given."""
    conf = rq.make_conf()
    for group, opts in oslo_messaging.opts.list_opts():
        if group == 'oslo_messaging_rabbit':
            conf.register_opts(opts, group=group)
    conf.set_override('rabbit_quorum_queue', quorum,
                      group='oslo_messaging_rabbit')
    transport = oslo_messaging.get_notification_transport(conf, url=url)
    notifier = oslo_messaging.Notifier(
        transport, driver='messagingv2', topics=['notifications'],
        publisher_id='compute.compute-1')
    return transport, notifier


def send_failure(notifier):
    request_id = 'req-%s' % uuid.uuid4()
    notifier.error(rq._WireContext({'request_id': request_id}),
                   'compute.instance.create.error',
                   {'instance_id': str(uuid.uuid4()), 'state': 'building',
                    'display_name': 'web-q', 'host': 'compute-1',
                    'exception': rel.nova_exception('NoValidHost', 'x'),
                    'message': 'No valid host'})
    return request_id


def pool_queue(broker, vhost):
    [queue] = [q for q in broker.list_queues(vhost.name)
               if q['name'] == rel.POOL]
    return queue


def check_config(config_path):
    return subprocess.run(
        [service_process.console_script('nova-error-notifier-manage'),
         '--config-file', config_path, 'check-config'],
        capture_output=True, text=True, timeout=120)


def test_quorum_pool_queue_with_nova_agreeing(tmp_path, rabbitmq,
                                              rabbitmq_vhost, services):
    config = '[DEFAULT]\ntransport_url = %s\n%s' % (
        rabbitmq_vhost.url, QUORUM)
    proc = services(tmp_path, config)
    queue = pool_queue(rabbitmq, rabbitmq_vhost)
    assert 'quorum' in str(queue['arguments']), queue
    assert str(queue['durable']).lower() == 'true', queue
    transport, notifier = nova_notifier(rabbitmq_vhost.url, True)
    try:
        request_id = send_failure(notifier)
        [line] = proc.wait_for(request_id, timeout=30)
        assert 'NoValidHost' in line
    finally:
        transport.cleanup()
    # The configuration and the broker agree: no warning.
    result = check_config(proc.config_path)
    assert result.returncode == 0, result.stdout
    assert 'WARNING' not in result.stdout, result.stdout
    assert proc.stop() == 0


DURABLE = '[oslo_messaging_rabbit]\namqp_durable_queues = true\n'


def test_moving_the_pool_queue_from_classic_to_quorum(
        tmp_path, rabbitmq, rabbitmq_vhost, services):
    classic_dir = tmp_path / 'classic'
    classic_dir.mkdir()
    proc = services(classic_dir, '[DEFAULT]\ntransport_url = %s\n%s' % (
        rabbitmq_vhost.url, DURABLE))
    assert 'quorum' not in str(pool_queue(rabbitmq,
                                          rabbitmq_vhost)['arguments'])
    assert proc.stop() == 0
    # The same pool, now configured for a quorum queue: check-config says
    # the broker's queue is of the other type, and how to move.
    quorum_dir = tmp_path / 'quorum'
    quorum_dir.mkdir()
    quorum = service_process.ServiceProcess(
        quorum_dir, '[DEFAULT]\ntransport_url = %s\n%s' % (
            rabbitmq_vhost.url, QUORUM))
    result = check_config(quorum.config_path)
    assert result.returncode == 0, result.stdout
    [warning] = [line for line in result.stdout.splitlines()
                 if line.startswith('WARNING:')]
    assert 'pool queue %s' % rel.POOL in warning
    assert 'quorum queue here' in warning
    assert 'PRECONDITION_FAILED' in warning and 'x-queue-type' in warning
    assert 'delete_queue %s' % rel.POOL in warning
    assert 'guest:guest' not in warning
    # Moving as it says: the queue deleted, the service makes it anew as a
    # quorum queue, and check-config is content.
    rabbitmq.ctl('delete_queue', rel.POOL, '-p', rabbitmq_vhost.name)
    quorum.start()
    try:
        queue = pool_queue(rabbitmq, rabbitmq_vhost)
        assert 'quorum' in str(queue['arguments']), queue
        result = check_config(quorum.config_path)
        assert 'WARNING' not in result.stdout, result.stdout
    finally:
        assert quorum.stop() == 0


def test_check_config_says_when_nova_disagrees_on_the_exchange(
        tmp_path, rabbitmq, rabbitmq_vhost):
    # Nova with oslo.messaging's defaults made a non-durable exchange.
    transport, notifier = nova_notifier(rabbitmq_vhost.url, False)
    try:
        send_failure(notifier)
    finally:
        transport.cleanup()
    proc = service_process.ServiceProcess(
        tmp_path, '[DEFAULT]\ntransport_url = %s\n%s' % (
            rabbitmq_vhost.url, QUORUM))
    result = check_config(proc.config_path)
    [warning] = [line for line in result.stdout.splitlines()
                 if line.startswith('WARNING:')]
    assert 'exchange nova' in warning and 'not durable' in warning
    assert 'nova.conf' in warning
