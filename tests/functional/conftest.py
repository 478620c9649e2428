"""Fixtures for functional tests against a real RabbitMQ broker.

``rabbitmq`` (session): a started ``RabbitMQBroker`` on private ports.  When
the broker cannot start, every test using it fails with the broker's log
tail; it is never skipped.

``rabbitmq_vhost`` (function): a fresh vhost on that broker, deleted after the
test, as a ``VirtualHost(name, url)``.  Tests that use their own vhost never
see each other's queues or messages.
"""

import collections
import itertools
import re

import pytest

try:  # tests/ and tests/functional/ are packages, or the root is on sys.path
    from tests.functional import rabbitmq as rabbitmq_helpers
except ImportError:  # rootdir-less run: pytest put this directory on sys.path
    import rabbitmq as rabbitmq_helpers

VirtualHost = collections.namedtuple('VirtualHost', 'name url')

_vhost_counter = itertools.count(1)


@pytest.fixture(scope='session')
def rabbitmq():
    broker = rabbitmq_helpers.RabbitMQBroker()
    error = None
    try:
        broker.start()
    except Exception as exc:  # RabbitMQStartError, or anything unexpected
        error = exc
    if error is not None:
        broker.stop()
        pytest.fail('could not start the RabbitMQ test broker:\n%s' % error,
                    pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def rabbitmq_vhost(rabbitmq, request):
    base = re.sub(r'[^A-Za-z0-9_.-]+', '-', request.node.name)[:60]
    name = 'test-%d-%s' % (next(_vhost_counter), base.strip('-'))
    url = rabbitmq.add_vhost(name)
    try:
        yield VirtualHost(name, url)
    finally:
        rabbitmq.delete_vhost(name)
