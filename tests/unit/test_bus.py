"""The pool queue's arguments, as oslo.messaging would declare them."""

from oslo_config import cfg
import oslo_messaging.opts

from nova_error_notifier import bus


def rabbit(**overrides):
    conf = cfg.ConfigOpts()
    for group, opts in oslo_messaging.opts.list_opts():
        if group == 'oslo_messaging_rabbit':
            conf.register_opts(opts, group=group)
    conf([], default_config_files=[])
    for name, value in overrides.items():
        conf.set_override(name, value, group='oslo_messaging_rabbit')
    return conf.oslo_messaging_rabbit


def test_classic_by_default():
    assert bus._queue_arguments(rabbit()) == (False, False, {})


def test_durable_classic():
    assert bus._queue_arguments(rabbit(amqp_durable_queues=True)) == (
        True, False, {})


def test_quorum_is_durable_with_its_limits():
    durable, auto_delete, arguments = bus._queue_arguments(rabbit(
        rabbit_quorum_queue=True, rabbit_quorum_delivery_limit=5))
    assert durable and not auto_delete
    assert arguments == {'x-queue-type': 'quorum', 'x-delivery-limit': 5}


def test_no_broker_to_ask_no_warning():
    from nova_error_notifier import opts
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    assert bus.pool_queue_warnings(conf) == []          # no transport_url
    conf.set_override('transport_url', 'rabbit://u:p@127.0.0.1:1/')
    assert bus.pool_queue_warnings(conf) == []          # nobody answers
