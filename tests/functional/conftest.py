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


def _started_for_session(server, what):
    """Start *server*, yield it, stop it; pytest.fail if it cannot start."""
    error = None
    try:
        server.start()
    except Exception as exc:  # the fixture's StartError, or anything else
        error = exc
    if error is not None:
        server.stop()
        pytest.fail('could not start the %s:\n%s' % (what, error),
                    pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def _server_factory(build, what):
    """Yield make(...) -> build(...).start(); stop them all at teardown.

    A server whose stop() raises (it recorded errors) fails the test.
    """
    servers = []

    def make(*args, **kwargs):
        server = build(*args, **kwargs)
        servers.append(server)
        return server.start()

    yield make
    failures = []
    for server in reversed(servers):
        try:
            server.stop()
        except Exception as exc:
            failures.append('%s' % exc)
    if failures:
        pytest.fail('%s test server teardown:\n%s' % (
            what, '\n'.join(failures)), pytrace=False)


@pytest.fixture(scope='session')
def rabbitmq():
    yield from _started_for_session(rabbitmq_helpers.RabbitMQBroker(),
                                    'RabbitMQ test broker')


@pytest.fixture
def rabbitmq_vhost(rabbitmq, request):
    base = re.sub(r'[^A-Za-z0-9_.-]+', '-', request.node.name)[:60]
    name = 'test-%d-%s' % (next(_vhost_counter), base.strip('-'))
    url = rabbitmq.add_vhost(name)
    try:
        yield VirtualHost(name, url)
    finally:
        rabbitmq.delete_vhost(name)


@pytest.fixture
def smtp_server():
    """Factory of real SMTP servers (tests/functional/smtp.py).

    ``smtp_server(mode='plain', auth=None, **options)`` returns a started
    ``SMTPServer``; every server it made is stopped at teardown, and a
    server that recorded errors fails the test there.
    """
    try:
        from tests.functional import smtp as smtp_helpers
    except ModuleNotFoundError as exc:
        if exc.name not in ('tests', 'tests.functional'):
            raise  # aiosmtpd or cryptography missing: say so
        import smtp as smtp_helpers

    def build(mode='plain', auth=None, **options):
        return smtp_helpers.SMTPServer(mode=mode, auth=auth, **options)

    yield from _server_factory(build, 'SMTP')


@pytest.fixture(scope='session')
def keystone():
    """A started ``KeystoneServer`` (tests/functional/keystone.py).

    Private Keystone on 127.0.0.1 with an SQLite database; ``auth_url``,
    ``admin_session()`` and the seeding helpers (``create_user`` ...) work
    on it.  When it cannot start, every test using it fails with the logs'
    tails; it is never skipped.
    """
    try:
        from tests.functional import keystone as keystone_helpers
    except ModuleNotFoundError as exc:
        if exc.name not in ('tests', 'tests.functional'):
            raise
        import keystone as keystone_helpers

    yield from _started_for_session(keystone_helpers.KeystoneServer(),
                                    'Keystone test server')


@pytest.fixture
def webhook_server():
    """Factory of real webhook receivers (tests/functional/webhook_server.py).

    ``webhook_server(mode='http', secret=None, **options)`` returns a started
    ``WebhookServer`` (mode 'http' or 'https'; options: schema_path,
    validate, max_skew, path, ...); every server it made is stopped at
    teardown, and a server that recorded errors fails the test there.
    """
    try:
        from tests.functional import webhook_server as webhook_helpers
    except ModuleNotFoundError as exc:
        if exc.name not in ('tests', 'tests.functional'):
            raise  # jsonschema, aiosmtpd or cryptography missing: say so
        import webhook_server as webhook_helpers

    def build(mode='http', secret=None, **options):
        return webhook_helpers.WebhookServer(mode=mode, secret=secret,
                                             **options)

    yield from _server_factory(build, 'webhook')


@pytest.fixture(scope='session')
def nova_api(keystone):
    """A started ``NovaAPIServer`` (tests/functional/nova_api.py).

    Nova's own read-only compute API on 127.0.0.1 (SQLite databases, no
    message bus), authenticating against the ``keystone`` fixture, with
    ``compute`` and ``network`` (a stub) in its catalog.  ``url``, and the
    seeding helpers (``create_server``, ``add_fault``, ``add_action``) and
    ``stop_api()``/``start_api()`` work on it.  When it cannot start, every
    test using it fails with the logs' tails; it is never skipped.
    """
    try:
        from tests.functional import nova_api as nova_helpers
    except ModuleNotFoundError as exc:
        if exc.name not in ('tests', 'tests.functional'):
            raise
        import nova_api as nova_helpers

    yield from _started_for_session(nova_helpers.NovaAPIServer(keystone),
                                    'nova-api test server')
