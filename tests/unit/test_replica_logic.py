"""What must hold with several replicas on one outbox, shown with two
Stores (two connections, two owners) on one SQLite file; the functional
tests run real replicas on MariaDB and PostgreSQL."""

import pytest

from nova_error_notifier import ingest as ingest_mod
from nova_error_notifier import outbox
from nova_error_notifier import record as rec
from nova_error_notifier import routing
from tests.unit import outbox_fixtures as tc

world = tc.world
REQ = tc.REQ
UUID = tc.UUID


@pytest.fixture
def replicas(world):
    """(conf, ingests, routers, stores, pools, clock): two replicas."""
    conf, store, ingest, router, pool, clock = world()
    other = outbox.Store(store.url)
    other.clock = clock
    ingest2, router2, pool2 = tc.stages(conf, other, router.settings, clock)
    return (conf, (ingest, ingest2), (router, router2), (store, other),
            (pool, pool2), clock)


def test_a_concurrent_change_is_never_overwritten(replicas):
    conf, (a, b), _, (store, other), _, clock = replicas
    [incident] = {a.add(tc.record(message_id='m1', fmt='legacy'))}
    # Replica A read the incident (one message) ...
    batch = ingest_mod._Batch(clock())
    state = store.read(lambda tx: batch.track(tx.incident_by_key(
        ingest_mod.incident_key(REQ, UUID))))
    state.add(tc.record(message_id='m3', event_type='compute_task.'
                        'build_instances'))
    # ... replica B added to it meanwhile ...
    assert b.add(tc.record(message_id='m2')) == incident
    # ... so A's write is refused rather than losing B's record.
    with pytest.raises(outbox.StoreError) as info:
        store.write(batch.flush)
    assert info.value.retryable
    # Stored again (as add_many does), every record is there.
    assert a.add(tc.record(message_id='m3', event_type='compute_task.'
                           'build_instances')) == incident
    [row] = tc.rows(store, 'incidents')
    assert row['message_count'] == 3
    assert {r['message_id'] for r in outbox.loads(row['records'])} == {
        'm1', 'm2', 'm3'}


def test_add_many_stores_again_after_a_conflict(replicas, monkeypatch):
    conf, (a, b), _, (store, other), _, clock = replicas
    a.add(tc.record(message_id='m1'))
    real = ingest_mod._Batch.flush
    calls = []

    def racing(self, tx):
        calls.append(1)
        if len(calls) == 1:
            # Another writer changed the incident after this one read it.
            tx.execute(outbox.incidents.update().values(
                message_count=outbox.incidents.c.message_count + 1))
        return real(self, tx)
    monkeypatch.setattr(ingest_mod._Batch, 'flush', racing)
    assert a.add(tc.record(message_id='m3', event_type='instance.update'))
    assert len(calls) == 2                    # refused once, stored again
    # (The stand-in's change was in the refused transaction: rolled back.)
    [row] = tc.rows(store, 'incidents')
    assert row['message_count'] == 2
    assert {r['message_id'] for r in outbox.loads(row['records'])} == {
        'm1', 'm3'}


def test_twins_opened_apart_make_one_alert(replicas):
    conf, _, (a, b), (store, other), (pool, _), clock = replicas
    # What two replicas write when each gets one twin at the same instant:
    # neither sees the other's new incident.
    bare = tc.record('compute.exception', 'v1', instance=None, synthetic=())
    full = tc.record('compute.instance.create.error', 'l1', fmt='legacy')

    def open_apart(record):
        def work(tx):
            batch = ingest_mod._Batch(clock())
            request_id, instance = ingest_mod._ids(record)
            batch.open(ingest_mod.incident_key(request_id, instance), record,
                       conf.correlation.group_wait)
            batch.flush(tx)
        return work
    store.write(open_apart(full))
    other.write(open_apart(bare))
    assert len(tc.rows(store, 'incidents')) == 2
    clock.now += 10
    assert a.route_due() == 2                 # receivers a and b, once
    assert sorted(tc.drain(pool)) == ['sent', 'sent']
    for receiver in ('a', 'b'):
        [(_, alert)] = tc.Recorder.calls[receiver]
        assert set(alert.event_types) == {'compute.exception',
                                          'compute.instance.create.error'}
        assert alert.count == 2
    states = sorted(r['state'] for r in tc.rows(store, 'incidents'))
    assert states == ['merged', 'routed']


def test_a_late_bare_twin_joins_the_routed_incident(replicas):
    conf, (a, b), (router, _), (store, other), (pool, _), clock = replicas
    a.add(tc.record('compute.instance.create.error', 'l1', fmt='legacy'))
    clock.now += 10
    assert router.route_due() == 2
    bare = tc.record('compute.exception', 'v1', instance=None, synthetic=())

    def open_apart(tx):
        batch = ingest_mod._Batch(clock())
        batch.open(ingest_mod.incident_key(REQ, None), bare, 1)
        batch.flush(tx)
    other.write(open_apart)
    clock.now += 10
    assert router.route_due() == 0            # no second alert
    assert sorted(r['state'] for r in tc.rows(store, 'incidents')) == [
        'merged', 'routed']


def test_one_router_at_a_time(replicas):
    conf, (ingest, _), (a, b), (store, other), _, clock = replicas
    ingest.add(tc.record(message_id='m1', request_id='req-1'))
    clock.now += 10
    assert b.route_due() == 2                 # b takes the lease first
    ingest.add(tc.record(message_id='m2', request_id='req-2'))
    clock.now += 6
    assert a.route_due() == 0                 # b holds it
    assert b.route_due() == 2
    ingest.add(tc.record(message_id='m3', request_id='req-3'))
    # b stops routing: a takes over once the lease ran out.
    clock.now += routing.Router.ROUTER_LEASE + 1
    assert a.route_due() == 2
    [lease] = tc.rows(store, 'leases')
    assert lease['owner'] == store.owner


def test_storm_limits_hold_across_replicas(replicas):
    conf, (a, b), (router_a, router_b), (store, other), _, clock = replicas
    conf.set_override('max_alerts_per_interval', 3, group='delivery')
    for n in range(5):
        a.add(tc.record(message_id='a%d' % n, request_id='req-a%d' % n))
        b.add(tc.record(message_id='b%d' % n, request_id='req-b%d' % n))
    clock.now += 10
    router_a.route_due()
    router_b.route_due()
    singles = [r for r in tc.rows(store, 'deliveries')
               if r['kind'] == 'single' and r['receiver'] == 'a']
    assert len(singles) == 3                  # not 3 per replica
    [digest] = [r for r in tc.rows(store, 'digests') if r['receiver'] == 'a']
    assert digest['count'] == 7


def test_an_unroutable_incident_holds_back_no_other(replicas, monkeypatch,
                                                    caplog):
    conf, (a, b), (router, _), (store, other), _, clock = replicas
    a.add(tc.record(message_id='m1', request_id='req-bad'))
    a.add(tc.record(message_id='m2', request_id='req-good'))
    real = routing.Router._route_one

    def broken(self, tx, row, now, limits):
        if row.request_id == 'req-bad':
            raise ValueError('a bug on this incident')
        return real(self, tx, row, now, limits)
    monkeypatch.setattr(routing.Router, '_route_one', broken)
    clock.now += 10
    assert router.route_due() == 2
    states = {r['request_id']: (r['state'], r['note'])
              for r in tc.rows(store, 'incidents')}
    assert states['req-good'][0] == 'routed'
    assert states['req-bad'] == ('unroutable',
                                 'ValueError: a bug on this incident')
    assert 'could not be routed' in caplog.text


def test_a_lock_on_one_incident_is_no_reason_to_set_it_aside(
        replicas, monkeypatch, caplog):
    """A transient database error is the cycle's, not the incident's."""
    import sqlalchemy as sa
    conf, (a, b), (router, _), (store, other), _, clock = replicas
    a.add(tc.record(message_id='m1', request_id='req-locked'))
    real = routing.Router._route_one
    locked = []

    def busy(self, tx, row, now, limits):
        if not locked:
            locked.append(row.id)
            raise sa.exc.OperationalError('UPDATE', {}, Exception(
                'database is locked'))
        return real(self, tx, row, now, limits)
    monkeypatch.setattr(routing.Router, '_route_one', busy)
    clock.now += 10
    with pytest.raises(outbox.StoreUnavailable):
        router.route_due()
    [row] = tc.rows(store, 'incidents')
    assert row['state'] == 'open'
    assert 'could not be routed' not in caplog.text
    assert router.route_due() == 2            # the next cycle routes it
    assert tc.rows(store, 'incidents')[0]['state'] == 'routed'


def test_an_outcome_after_a_lost_claim_is_not_recorded(replicas, caplog):
    conf, (a, b), (router, _), (store, other), (pool, pool2), clock = \
        replicas
    a.add(tc.record())
    clock.now += 10
    router.route_due()
    row = pool.claim()
    # The lease ran out; the other replica takes the delivery over.
    clock.now += conf.delivery.lease + 1
    assert pool2.reclaim() == 1
    # The first worker's late outcome changes nothing: the delivery is the
    # other replica's to make now.
    pool._update(row, state='done')
    assert 'taken over by another worker' in caplog.text
    delivered = {r['id']: r for r in tc.rows(store, 'deliveries')}
    assert delivered[row.id]['state'] == 'pending'
    assert delivered[row.id]['claimed_by'] is None


def test_times_keep_their_microseconds(replicas):
    conf, (a, b), _, (store, other), _, clock = replicas
    clock.now = 1790000000.123456
    a.add(tc.record())
    [row] = tc.rows(store, 'incidents')
    assert row['opened_at'] == 1790000000.123456


def test_a_store_outage_backs_off(monkeypatch):
    from nova_error_notifier import listener
    waits = []
    endpoint = listener.BatchEndpoint([], lambda items: None)
    for _ in range(7):
        waits.append(endpoint._outage_delay())
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_resolutions_only_touch_their_instance(world):
    conf, store, ingest, router, pool, clock = world()
    ingest.add(tc.record())
    ingest.add(rec.Resolution('instance.create.end', UUID, REQ, 'end-1'))
    [row] = tc.rows(store, 'incidents')
    assert row['resolved'] == 1


def test_a_held_lease_is_renewed_only_past_half_its_time(replicas):
    conf, _, _, (store, other), _, clock = replicas
    assert store.write(lambda conn: store.take_lease(conn, 'router', 10))
    [first] = tc.rows(store, 'leases')
    clock.now += 4
    assert store.write(lambda conn: store.take_lease(conn, 'router', 10))
    assert tc.rows(store, 'leases') == [first]      # no write
    clock.now += 2
    assert store.write(lambda conn: store.take_lease(conn, 'router', 10))
    [renewed] = tc.rows(store, 'leases')
    assert renewed['expires_at'] == first['expires_at'] + 6
    # After a failed cycle, the lease is read again from the database.
    store.forget_leases()
    assert not other.write(lambda conn: other.take_lease(conn, 'router',
                                                         10))
