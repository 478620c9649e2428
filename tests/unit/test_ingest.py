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
"""Grouping: records become incidents in the outbox (a real SQLite file)."""

import pytest

from nova_error_notifier import ingest as ingest_mod
from nova_error_notifier import outbox
from nova_error_notifier import record as rec
from tests.unit import outbox_fixtures as fx

world = fx.world
record = fx.record
rows = fx.rows
REQ = fx.REQ
UUID = fx.UUID


def test_twins_and_a_build_chain_make_one_alert_per_receiver(world):
    conf, store, ingest, router, pool, clock = world()
    chain = [
        record('compute.instance.create.error', 'm1', fmt='legacy'),
        record('instance.create.error', 'm2', message='Build failed'),
        record('build_and_run_instance', 'm3', fmt='legacy'),
        record('compute.exception', 'm4', instance=None, synthetic=()),
        record('compute_task.build_instances', 'm5', fmt='legacy',
               synthetic=(rec.CREATE_FAILED, rec.ERROR_STATE)),
        record('compute_task.build_instances.error', 'm6'),
        record('instance.update', 'm7', exception=None,
               synthetic=(rec.CREATE_FAILED, rec.ERROR_STATE)),
    ]
    ids = {ingest.add(r) for r in chain}
    assert len(ids) == 1
    assert router.route_due() == 0            # still within group_wait
    clock.now += 5
    assert router.route_due() == 2            # receivers a and b
    assert fx.drain(pool) == ['sent', 'sent']
    for receiver in ('a', 'b'):
        [(outcome, alert)] = fx.Recorder.calls[receiver]
        assert alert.count == 7
        assert alert.id == ids.pop() if ids else alert.id
        assert alert.message == 'Build failed'
        assert set(alert.event_types) == {r.event_type for r in chain}
        assert rec.ERROR_STATE in alert.synthetic_events
        assert alert.receiver == receiver
    # A late message for the same failure folds in, without a new alert.
    clock.now += 30
    ingest.add(record('instance.update', 'm8', exception=None))
    clock.now += 10
    assert router.route_due() == 0
    assert fx.drain(pool) == []


def test_duplicate_message_changes_nothing(world):
    conf, store, ingest, router, pool, clock = world()
    first = ingest.add(record(message_id='dup'))
    assert ingest.add(record(message_id='dup')) is None
    assert first
    [incident] = rows(store, 'incidents')
    assert incident['message_count'] == 1


def test_instance_less_record_first_is_adopted(world):
    conf, store, ingest, router, pool, clock = world()
    a = ingest.add(record('compute.exception', 'x1', instance=None,
                          synthetic=()))
    b = ingest.add(record('resize_instance', 'x2', fmt='legacy'))
    assert a == b


def test_store_down_asks_for_a_requeue(world, tmp_path):
    conf, store, ingest, router, pool, clock = world()
    (tmp_path / 'not-a-dir').write_text('a file where a directory should be')
    ingest.store = fx.BrokenStore(tmp_path / 'not-a-dir' / 'x.sqlite')
    with pytest.raises(rec.RetryLater):
        ingest.add(record())


def test_a_late_instance_less_twin_joins_the_routed_incident(world):
    conf, store, ingest, router, pool, clock = world(receivers=('a',))
    first = ingest.add(record('resize_instance', 'late1', fmt='legacy'))
    clock.now += 10
    assert router.route_due() == 1
    late = ingest.add(record('compute.exception', 'late2', instance=None,
                             synthetic=()))
    assert late == first
    clock.now += 10
    assert router.route_due() == 0


def test_message_and_incident_keys_fit_and_stay_apart():
    long_id = 'm' * 300
    first = record(message_id=long_id + '1')
    second = record(message_id=long_id + '2')
    assert ingest_mod.message_key(first) != ingest_mod.message_key(second)
    assert len(ingest_mod.message_key(first)) <= outbox.KEY_LENGTH
    # Without a message id: a stable stand-in from what the record says.
    bare = record(message_id=None)
    assert ingest_mod.message_key(bare) == ingest_mod.message_key(
        record(message_id=None))
    assert ingest_mod.message_key(bare).startswith('sha256:')
    assert ingest_mod.incident_key(REQ, UUID) == '%s|%s' % (REQ, UUID)
    assert ingest_mod.incident_key(REQ, None) == REQ + '|'


# -- one transaction per batch -----------------------------------------------

def build_chain():
    return [
        record('compute.exception', 'b0', instance=None, synthetic=()),
        record('compute.instance.create.error', 'b1', fmt='legacy'),
        record('instance.create.error', 'b2', message='Build failed'),
        record('compute.exception', 'b3', instance=None, synthetic=()),
        record('instance.create.error', 'b2'),          # redelivered
    ]


def test_a_batch_makes_the_incidents_one_by_one_would(world, tmp_path):
    conf, store, ingest, router, pool, clock = world()
    ids = ingest.add_many(build_chain())
    assert ids[:4] == [ids[0]] * 4 and ids[4] is None
    [incident] = rows(store, 'incidents')
    # The instance-less first record made the incident; the others joined
    # it, and it learnt its instance.
    assert incident['instance_uuid'] == UUID
    assert incident['message_count'] == 4
    assert len(rows(store, 'messages')) == 4
    assert {r['incident_id'] for r in rows(store, 'messages')} == {ids[0]}
    clock.now += 10
    assert router.route_due() == 2
    fx.drain(pool)
    [(_, alert)] = fx.Recorder.calls['a']
    assert alert.count == 4 and alert.message == 'Build failed'


def test_a_batch_sees_the_incidents_of_earlier_batches(world):
    conf, store, ingest, router, pool, clock = world()
    [first] = ingest.add_many([record('resize_instance', 'e1',
                                      fmt='legacy')])
    again = ingest.add_many([record('compute.exception', 'e2',
                                    instance=None, synthetic=()),
                             record('resize_instance', 'e1', fmt='legacy'),
                             record('resize_instance', 'e3', fmt='legacy',
                                    request_id='req-other')])
    assert again[0] == first and again[1] is None
    assert again[2] not in (None, first)
    assert sorted(r['message_count'] for r in rows(store, 'incidents')) == \
        [1, 2]


def test_an_empty_batch_writes_nothing(world):
    conf, store, ingest, router, pool, clock = world()
    assert ingest.add_many([]) == []
    assert rows(store, 'incidents') == []


def test_a_resolution_of_another_request_resolves_nothing(world):
    conf, store, ingest, router, pool, clock = world()
    ingest.add_many([record('compute.instance.create.error', 'r1')])
    ingest.add_many([rec.Resolution(event_type='instance.create.end',
                                    instance_uuid=UUID,
                                    request_id='req-another-build')])
    assert [r['resolved'] for r in rows(store, 'incidents')] == [0]
    ingest.add_many([rec.Resolution(event_type='instance.create.end',
                                    instance_uuid=UUID, request_id=REQ)])
    assert [r['resolved'] for r in rows(store, 'incidents')] == [1]
    clock.now += 10
    assert router.route_due() == 0


def test_a_failed_batch_leaves_nothing_behind(world, monkeypatch):
    conf, store, ingest, router, pool, clock = world()

    def broken(*args, **kwargs):
        raise outbox.sa_exc.OperationalError('INSERT', {},
                                             Exception('disk I/O error'))
    monkeypatch.setattr(ingest_mod._Batch, 'flush', broken)
    with pytest.raises(outbox.StoreUnavailable):
        ingest.add_many(build_chain())
    assert rows(store, 'incidents') == [] and rows(store, 'messages') == []
    monkeypatch.undo()
    # Redelivered, the batch is stored in full.
    assert ingest.add_many(build_chain())[0] is not None
    assert rows(store, 'incidents')[0]['message_count'] == 4


def test_a_conflict_that_does_not_pass_is_given_up(world, monkeypatch):
    conf, store, ingest, router, pool, clock = world()
    calls = []

    def conflicting(self, tx):
        calls.append(1)
        raise outbox.StoreError('changed meanwhile', retryable=True)
    monkeypatch.setattr(ingest_mod._Batch, 'flush', conflicting)
    with pytest.raises(outbox.StoreError):
        ingest.add(record())
    assert len(calls) == ingest_mod.Ingest.WRITE_ATTEMPTS


# -- the router's wake-up ----------------------------------------------------

class Notified:
    """A stand-in Wakeup that keeps the due times it is told."""

    def __init__(self):
        self.due = []

    def notify(self, due=None):
        self.due.append(due)


def test_the_router_is_told_when_a_batch_opened_an_incident(world):
    conf, store, ingest, router, pool, clock = world()
    ingest.wakeup = told = Notified()
    wait = conf.correlation.group_wait
    ingest.add_many([record('resize_instance', 'n1', fmt='legacy')])
    assert told.due == [clock.now + wait]
    # The earliest due time of a batch that opened several.
    clock.now += 1
    ingest.add_many([record('resize_instance', 'n2', fmt='legacy',
                            request_id='req-n2'),
                     record('resize_instance', 'n3', fmt='legacy',
                            request_id='req-n3')])
    assert told.due[1:] == [clock.now + wait]
    # A message joining an incident, a duplicate, a resolution: none.
    ingest.add_many([record('compute.exception', 'n4', instance=None,
                            synthetic=(), request_id='req-n2'),
                     record('resize_instance', 'n1', fmt='legacy'),
                     rec.Resolution('instance.create.end', UUID, REQ,
                                    'end-1')])
    assert len(told.due) == 2


def test_a_new_incident_wakes_the_router_only_if_due_earlier(world):
    conf, store, ingest, router, pool, clock = world()
    woken = ingest.wakeup
    wait = conf.correlation.group_wait
    # The router sleeps until an incident due before the new one.
    woken.plan(clock.now + wait / 2)
    ingest.add_many([record('resize_instance', 'w1', fmt='legacy')])
    assert not woken.is_set()
    # It sleeps longer than the new incident's window: woken.
    woken.plan(clock.now + wait * 2)
    ingest.add_many([record('resize_instance', 'w2', fmt='legacy',
                            request_id='req-w2')])
    assert woken.is_set()
    # While it plans (None), any new incident wakes it.
    woken.clear()
    woken.plan(None)
    ingest.add_many([record('resize_instance', 'w3', fmt='legacy',
                            request_id='req-w3')])
    assert woken.is_set()
    # A message joining an open incident opens nothing: no wake.
    woken.clear()
    ingest.add_many([record('compute.exception', 'w4', instance=None,
                            synthetic=(), request_id='req-w3')])
    assert not woken.is_set()
    clock.now += wait + 1
    assert router.route_due() == 6
    assert router.next_due_at is None
