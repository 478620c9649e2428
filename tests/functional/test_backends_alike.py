"""Storm digests and retries behave on MariaDB and PostgreSQL as on SQLite.

What broke on MariaDB before its column types were fixed: a digest of a
few dozen incidents overflowed TEXT (and every routing cycle rolled back),
and single-precision times sent a first retryable failure straight to the
dead letters ("retry deadline passed"). The same scenario on each backend,
with a real Store, Ingest, Router and DeliveryPool on a fresh database.
"""

import pytest

from nova_error_notifier.drivers import base
from nova_error_notifier import outbox
from tests.unit import outbox_fixtures as tc


@pytest.fixture
def backend_world(tmp_path, backend_url):
    tc.Recorder.calls = {}
    tc.Recorder.failures = {}
    made = []

    def build(extra=''):
        built = _build(tmp_path, backend_url, extra)
        made.append(built[1])
        return built
    yield build
    for store in made:
        store.engine.dispose()


def _build(tmp_path, url, extra):
    from nova_error_notifier import config
    from nova_error_notifier import opts
    from oslo_config import cfg
    path = tmp_path / 'c.conf'
    lines = ['[DEFAULT]', 'rules = r', '[rule:r]', 'events = *',
             'receivers = a', '[receiver:a]', 'driver = log',
             '[delivery]', 'retry_initial_delay = 2', 'retry_max_delay = 60',
             'retry_deadline = 600', extra, '[database]',
             'connection = %s' % url, '']
    path.write_text('\n'.join(lines))
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(['--config-file', str(path)], project='nova_error_notifier',
         default_config_files=[])
    settings = config.load(conf)
    for receiver in settings.receivers.values():
        receiver.driver = tc.Recorder(conf, receiver.name)
    clock = tc.Clock()
    clock.now = 1790000000.123456
    store = outbox.Store.from_conf(conf)
    store.clock = clock
    store.create_schema()
    return tc.World(conf, store, *tc.stages(conf, store, settings, clock),
                    clock)


def test_a_digest_of_500_incidents(backend_world):
    conf, store, ingest, router, pool, clock = backend_world(
        'max_alerts_per_interval = 1\ngroup_interval = 60\n'
        'digest_max_items = 500')
    ingest.add_many([tc.record(message_id='m%d' % n,
                               request_id='req-%04d' % n,
                               message='No valid host was found. ' * 20)
                     for n in range(501)])
    clock.now += 10
    # Routed 200 a cycle: one single alert, the rest into the digest.
    assert [router.route_due() for _ in range(3)] == [1, 0, 0]
    clock.now += 61
    assert router.route_due() == 1              # then the digest
    assert tc.drain(pool) == ['sent', 'sent']
    [single, digest] = [a for _, a in tc.Recorder.calls['a']]
    assert digest.is_digest and digest.digest_count == 500
    assert len(digest.members) == 500
    assert store.counts().get('incidents.routed') == 501


def test_a_receiver_down_is_retried_until_the_deadline(backend_world):
    conf, store, ingest, router, pool, clock = backend_world()
    down = base.DriverError('POST http://h/hook: ConnectTimeout',
                            retryable=True)
    tc.Recorder.failures['a'] = [down] * 1000
    ingest.add(tc.record())
    clock.now += 10
    assert router.route_due() == 1
    outcomes = []
    started = clock.now
    while clock.now - started < 700:
        row = pool.claim()
        if row is not None:
            before = clock.now
            outcomes.append(pool.deliver(row))
            [delivery] = store.pending() or [None]
            if delivery is not None:
                # Times keep their precision: the next attempt is the
                # backoff away, not rounded to a minute.
                wait = delivery['next_attempt_at'] - before
                assert 0.9 <= wait <= 61, wait
        clock.now += 1.5
    assert outcomes[0] == 'retry'             # not dead at the first try
    assert outcomes[-1] == 'dead'
    assert outcomes.count('dead') == 1
    assert len(outcomes) > 5
    [dead] = store.dead()
    assert 'retry deadline passed' in dead['reason']
