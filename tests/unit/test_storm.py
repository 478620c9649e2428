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
"""Storm control: receiver limits and digests (a real SQLite outbox)."""

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import outbox
from nova_error_notifier import storm
from tests.unit import outbox_fixtures as fx

world = fx.world
record = fx.record
rows = fx.rows

STORM = ('max_alerts_per_interval = 3\ngroup_interval = 60\n'
         'digest_max_items = 10')


def storm_of(ingest, count, prefix='s'):
    for number in range(count):
        ingest.add(record(message_id='%s%d' % (prefix, number),
                          request_id='req-%s-%d' % (prefix, number),
                          instance='inst-%s-%d' % (prefix, number)))


def test_storm_folds_into_one_digest_per_interval(world):
    conf, store, ingest, router, pool, clock = world(STORM,
                                                     receivers=('a',))
    for number in range(40):
        ingest.add(record(message_id='s%d' % number,
                          request_id='req-storm-%d' % number,
                          instance='inst-%d' % number))
    clock.now += 10
    assert router.route_due() == 3
    assert fx.drain(pool) == ['sent'] * 3
    clock.now += 61
    assert router.route_due() == 1
    assert fx.drain(pool) == ['sent']
    digest = fx.Recorder.calls['a'][-1][1]
    assert digest.is_digest and digest.digest_count == 37
    assert len(digest.members) == 10
    assert digest.summary == ('37 instances failed with NoValidHost in '
                              'the last 1 minute')


def test_a_digest_counts_beyond_its_listed_members(world):
    conf, store, ingest, router, pool, clock = world(STORM,
                                                     receivers=('a',))
    storm_of(ingest, 20)
    clock.now += 10
    assert router.route_due() == 3
    [digest] = rows(store, 'digests')
    assert digest['state'] == 'collecting' and digest['count'] == 17
    assert len(outbox.loads(digest['members'])) == 10
    assert digest['due_at'] == clock.now + 60
    # The digest is delivered when its interval is over.
    clock.now += 59
    assert router.route_due() == 0
    clock.now += 1
    assert router.route_due() == 1
    assert [r['state'] for r in rows(store, 'digests')] == ['closed']
    digests = [r for r in rows(store, 'deliveries') if r['kind'] == 'digest']
    assert [d['incident_id'] for d in digests] == [digest['id']]


def test_the_next_interval_starts_with_single_alerts_again(world):
    conf, store, ingest, router, pool, clock = world(STORM,
                                                     receivers=('a',))
    storm_of(ingest, 5, 'first')
    clock.now += 10
    assert router.route_due() == 3             # 2 in the digest
    clock.now += 61
    assert router.route_due() == 1             # the digest
    storm_of(ingest, 2, 'second')
    clock.now += 10
    assert router.route_due() == 2             # the limit starts over
    assert len(rows(store, 'digests')) == 1


def test_no_limit_means_no_digest(world):
    conf, store, ingest, router, pool, clock = world(
        'max_alerts_per_interval = 0', receivers=('a',))
    storm_of(ingest, 30)
    clock.now += 10
    assert router.route_due() == 30
    assert rows(store, 'digests') == []


def test_limits_read_the_outbox_once_per_receiver():
    class Tx:
        asked = []

        def singles_sent_since(self, receiver, since):
            self.asked.append((receiver, since))
            return 2

    tx = Tx()
    limits = storm.Limits(tx, 1000.0, 3, 60)
    assert not limits.over('a')
    limits.count('a', 1)
    assert limits.over('a')
    assert not limits.over('b')
    assert tx.asked == [('a', 940.0), ('b', 940.0)]
    unlimited = storm.Limits(tx, 1000.0, 0, 60)
    assert not unlimited.over('c')
    assert len(tx.asked) == 2


def alert(uuid=None, exception='NoValidHost', host='compute-1'):
    return alert_mod.Alert(id='i', receiver='a', rule='r',
                           event_types=('instance.create.error',),
                           instance_uuid=uuid, exception=exception,
                           host=host)


class TestSummarise:

    def test_instances_one_exception_one_host(self):
        alerts = [alert('u1'), alert('u2')]
        assert storm.summarise(alerts, 2, 120) == (
            '2 instances failed with NoValidHost on 1 host in the last 2 '
            'minutes')

    def test_failures_several_exceptions_hosts_and_seconds(self):
        alerts = [alert('u1', host='h1'), alert(None, 'Boom', 'h2'),
                  alert(None, None, None)]
        assert storm.summarise(alerts, 7, 90) == (
            '7 failures (NoValidHost: 1, Boom: 1, an error: 1) on 2 hosts '
            'in the last 90 seconds')

    def test_one_minute(self):
        assert storm.summarise([alert('u1', host=None)], 1, 60) == (
            '1 instances failed with NoValidHost in the last 1 minute')
