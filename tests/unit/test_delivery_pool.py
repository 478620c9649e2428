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
"""The delivery workers on a real SQLite outbox: claims, retries, dead
letters, hand-backs, and the operator commands that read them."""

import logging

from nova_error_notifier.cmd import manage
from nova_error_notifier.drivers import base
from nova_error_notifier import outbox
from tests.unit import outbox_fixtures as fx

world = fx.world
record = fx.record
rows = fx.rows


def test_retry_with_backoff_then_success_once(world):
    conf, store, ingest, router, pool, clock = world(receivers=('a',))
    fx.Recorder.failures['a'] = [base.DriverError('down', retryable=True),
                                 base.DriverError('down', retryable=True,
                                                  retry_after=30), None]
    ingest.add(record())
    clock.now += 10
    router.route_due()
    assert fx.drain(pool) == ['retry']
    assert fx.drain(pool) == []               # not due yet
    clock.now += 1.01
    assert fx.drain(pool) == ['retry']
    clock.now += 20
    assert fx.drain(pool) == []               # Retry-After: 30 s
    clock.now += 11
    assert fx.drain(pool) == ['sent']
    assert [c[0] for c in fx.Recorder.calls['a']] == ['failed', 'failed',
                                                      'sent']
    [row] = rows(store, 'deliveries')
    assert row['state'] == 'done' and row['attempts'] == 3


def test_non_retryable_goes_to_dead_letters_and_fallback(world):
    conf, store, ingest, router, pool, clock = world(
        'fallback_receiver = fb', receivers=('a', 'b'))
    fx.Recorder.failures['a'] = [base.DriverError('HTTP 400',
                                                  retryable=False)]
    ingest.add(record())
    clock.now += 10
    router.route_due()
    outcomes = fx.drain(pool)
    assert sorted(outcomes) == ['dead', 'sent', 'sent']   # a, b, fallback
    assert [c[0] for c in fx.Recorder.calls['b']] == ['sent']
    [(_, alert)] = fx.Recorder.calls['fb']
    assert alert.receiver == 'fb'
    [dead] = rows(store, 'dead_letters')
    assert dead['receiver'] == 'a' and 'HTTP 400' in dead['reason']


def test_the_fallback_gets_an_alert_once(world):
    conf, store, ingest, router, pool, clock = world(
        'fallback_receiver = fb', receivers=('a', 'b'))
    fx.Recorder.failures['a'] = [base.DriverError('no', retryable=False)]
    fx.Recorder.failures['b'] = [base.DriverError('no', retryable=False)]
    ingest.add(record())
    clock.now += 10
    router.route_due()
    assert sorted(fx.drain(pool)) == ['dead', 'dead', 'sent']
    assert len(fx.Recorder.calls['fb']) == 1
    assert len(rows(store, 'dead_letters')) == 2


def test_deadline_sends_to_dead_letters(world):
    conf, store, ingest, router, pool, clock = world(receivers=('a',))
    fx.Recorder.failures['a'] = [base.DriverError('timeout', retryable=True)
                                 for _ in range(100)]
    ingest.add(record())
    clock.now += 10
    router.route_due()
    outcomes = []
    for _ in range(60):
        outcomes += fx.drain(pool)
        clock.now += 8
    assert outcomes[-1] == 'dead'
    assert set(outcomes[:-1]) == {'retry'}
    [dead] = rows(store, 'dead_letters')
    assert 'retry deadline passed' in dead['reason']


def test_in_flight_delivery_is_resumed_after_a_crash(world):
    conf, store, ingest, router, pool, clock = world(receivers=('a',))
    ingest.add(record())
    clock.now += 10
    router.route_due()
    claimed = pool.claim()
    assert claimed is not None                 # then the process dies
    pool2 = world(receivers=('a',)).pool
    assert pool2.reclaim(all_owners=True) == 1
    assert fx.drain(pool2) == ['sent']


def test_a_live_claim_is_not_handed_back_before_its_lease_ends(world):
    conf, store, ingest, router, pool, clock = world(receivers=('a',))
    ingest.add(record())
    clock.now += 10
    router.route_due()
    assert pool.claim() is not None
    assert pool.claim() is None                # claimed: not twice
    assert pool.reclaim() == 0
    clock.now += conf.delivery.lease + 1
    assert pool.reclaim() == 1
    [row] = rows(store, 'deliveries')
    assert row['state'] == 'pending' and row['claimed_by'] is None
    assert row['next_attempt_at'] == clock.now


def test_manage_commands(world, tmp_path, capsys):
    conf, store, ingest, router, pool, clock = world(receivers=('a',))
    fx.Recorder.failures['a'] = [base.DriverError('HTTP 400',
                                                  retryable=False)]
    ingest.add(record())
    clock.now += 10
    router.route_due()
    fx.drain(pool)
    args = ['--config-file', str(tmp_path / 'c.conf')]
    assert manage.main(args + ['dead-letters', 'list']) == 0
    out = capsys.readouterr().out
    assert '1 dead letters' in out and 'HTTP 400' in out
    assert manage.main(args + ['dead-letters', 'retry']) == 0
    assert manage.main(args + ['pending']) == 0
    out = capsys.readouterr().out
    assert '1 dead letter(s) queued' in out
    assert '1 pending deliveries' in out
    assert fx.drain(pool) == ['sent']
    assert manage.main(args + ['stats']) == 0
    assert 'deliveries.done' in capsys.readouterr().out


def test_audit_line_per_attempt(world, caplog):
    conf, store, ingest, router, pool, clock = world(receivers=('a',))
    ingest.add(record())
    clock.now += 10
    router.route_due()
    with caplog.at_level(logging.INFO, logger='nova_error_notifier.audit'):
        fx.drain(pool)
    [line] = [r.getMessage() for r in caplog.records
              if r.name == 'nova_error_notifier.audit']
    assert 'receiver=a' in line and 'outcome=sent' in line


def _one_delivery(world):
    conf, store, ingest, router, pool, clock = world(receivers=('a',))
    ingest.add(record())
    clock.now += 10
    assert router.route_due() == 1
    return conf, store, pool, clock


def test_an_alert_that_cannot_be_read_is_dead_after_one_attempt(world):
    conf, store, pool, clock = _one_delivery(world)
    store.write(lambda conn: conn.execute(outbox.deliveries.update().values(
        alert='{"not": "an alert"')))
    row = pool.claim()
    assert pool.deliver(row) == 'dead'
    [dead] = store.dead()
    assert 'cannot be read' in dead['reason']
    assert rows(store, 'deliveries')[0]['state'] == 'dead'


def test_a_failing_enrichment_counts_as_an_attempt(world):
    conf, store, pool, clock = _one_delivery(world)

    class Broken:
        def enrich(self, alert):
            raise RuntimeError('enricher bug')
    pool.enricher = Broken()
    row = pool.claim()
    assert pool.deliver(row) == 'retry'
    [delivery] = rows(store, 'deliveries')
    assert delivery['state'] == 'pending' and delivery['attempts'] == 1
    assert 'enricher bug' in delivery['last_error']
    assert delivery['claimed_by'] is None


def test_an_unexpected_failure_hands_the_claim_back(world, monkeypatch):
    conf, store, pool, clock = _one_delivery(world)
    row = pool.claim()
    pool._release(row)
    [delivery] = rows(store, 'deliveries')
    assert delivery['state'] == 'pending' and delivery['attempts'] == 1
    assert delivery['claimed_by'] is None
