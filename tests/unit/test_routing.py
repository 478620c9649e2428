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
"""Routing: due incidents become deliveries (a real SQLite outbox)."""

from nova_error_notifier import record as rec
from nova_error_notifier import routing
from tests.unit import outbox_fixtures as fx

world = fx.world
record = fx.record
rows = fx.rows
REQ = fx.REQ
UUID = fx.UUID


def test_rescheduled_build_is_not_alerted(world):
    conf, store, ingest, router, pool, clock = world()
    ingest.add(record('compute.instance.create.error', 'r1'))
    ingest.add(rec.Resolution(event_type='instance.create.end',
                              instance_uuid=UUID, request_id=REQ))
    clock.now += 10
    assert router.route_due() == 0
    [incident] = rows(store, 'incidents')
    assert incident['state'] == 'suppressed'
    assert 'rescheduled' in incident['note']


def test_rescheduled_build_alerted_when_asked(world):
    conf, store, ingest, router, pool, clock = world(
        '[correlation]\nalert_on_rescheduled = true')
    ingest.add(record('compute.instance.create.error', 'r1'))
    ingest.add(rec.Resolution(event_type='instance.create.end',
                              instance_uuid=UUID, request_id=REQ))
    clock.now += 10
    assert router.route_due() == 2


def test_a_build_that_ended_in_error_is_alerted_despite_a_resolution(world):
    conf, store, ingest, router, pool, clock = world()
    ingest.add(record('instance.update', 'e1', exception=None,
                      synthetic=(rec.CREATE_FAILED, rec.ERROR_STATE)))
    ingest.add(rec.Resolution(event_type='instance.update',
                              instance_uuid=UUID, request_id=REQ))
    clock.now += 10
    assert router.route_due() == 2


def test_rules_see_the_incident_exception(world):
    conf, store, ingest, router, pool, clock = world()
    ingest.add(record(exception='Ignored', message_id='i1'))
    clock.now += 10
    assert router.route_due() == 0
    assert rows(store, 'incidents')[0]['note'] == 'no rule matched'


def test_a_resolution_in_the_same_batch_suppresses_the_reschedule(world):
    conf, store, ingest, router, pool, clock = world()
    ingest.add_many([
        record('compute.instance.create.error', 'r1'),
        rec.Resolution(event_type='instance.create.end', instance_uuid=UUID,
                       request_id=REQ),
        record('instance.create.error', 'r2', instance='other-instance'),
    ])
    clock.now += 10
    assert router.route_due() == 2            # only the other instance
    states = sorted((r['instance_uuid'], r['state'])
                    for r in rows(store, 'incidents'))
    assert states == sorted([('other-instance', 'routed'),
                             (UUID, 'suppressed')])


def test_the_router_learns_when_the_next_incident_is_due(world):
    conf, store, ingest, router, pool, clock = world()
    assert router.next_due() is None
    assert not ingest.wakeup.is_set()
    ingest.add_many([record('resize_instance', 'd1', fmt='legacy')])
    assert ingest.wakeup.is_set()
    assert router.next_due() == clock.now + conf.correlation.group_wait
    clock.now += 10
    router.route_due()
    assert router.next_due() is None


def test_next_due_at_is_what_the_last_cycle_saw(world):
    conf, store, ingest, router, pool, clock = world(receivers=('a',))
    ingest.add(record(message_id='n1', request_id='req-n1'))
    clock.now += 1
    ingest.add(record(message_id='n2', request_id='req-n2'))
    due = router.next_due()
    assert router.route_due() == 0 and router.next_due_at == due
    clock.now += conf.correlation.group_wait - 0.5
    assert router.route_due() == 1 and router.next_due_at == due + 1
    clock.now += 1
    assert router.route_due() == 1 and router.next_due_at is None


def test_deliveries_written_wake_the_delivery_workers(world):
    conf, store, ingest, router, pool, clock = world(receivers=('a',))
    assert pool.wakeup is router.wakeup
    ingest.add(record())
    router.wakeup.plan(clock.now + 100)
    assert router.route_due() == 0
    assert not router.wakeup.is_set()         # nothing written
    clock.now += 10
    assert router.route_due() == 1
    assert router.wakeup.is_set()


def test_reloaded_settings_route_the_next_incidents(world):
    conf, store, ingest, router, pool, clock = world(receivers=('a',))
    other = world(receivers=('a', 'b'))
    router.settings = other.router.settings
    ingest.add(record())
    clock.now += 10
    assert router.route_due() == 2


def test_the_incident_the_rules_see():
    records = [record('compute.exception', 'm1', exception=None,
                      synthetic=()),
               record('instance.create.error', 'm2',
                      exception='NoValidHost'),
               record('compute.instance.create.error', 'm3', fmt='legacy')]
    incident = routing.Incident(records)
    assert incident.exception == 'NoValidHost'
    assert incident.events.count(rec.CREATE_FAILED) == 1
    assert {'compute.exception', 'instance.create.error',
            'compute.instance.create.error'} <= set(incident.events)
