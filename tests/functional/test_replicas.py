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
"""Three real replicas on one pool and one database (MariaDB, PostgreSQL).

Each test makes a fresh database on the real MariaDB or PostgreSQL test
server (``server_backend_url``), runs ``nova-error-notifier-manage db
sync`` once on it, and starts three real ``nova-error-notifier`` processes
with the same ``[database] connection`` and the same ``[listener] pool``
on one RabbitMQ vhost, delivering to one real webhook receiver. Replica 1
subscribes to ``notifications``, replica 2 to ``versioned_notifications``,
replica 3 to both; as oslo.messaging consumes every topic of a pool from
one queue named after the pool, RabbitMQ hands the messages round-robin
to the consumers of all three. The firehose tracer
(:class:`replicas.DeliveryTrace`) shows which process got each message.
"""

import collections
import signal
import time

import pytest

from tests.functional import rabbitmq as rq
from tests.functional import replicas as rp
from tests.functional import test_reliability as rel

GROUP_WAIT = 2


@pytest.fixture
def replica_set(tmp_path, rabbitmq_vhost, server_backend_url):
    """make(receivers, delivery=(), correlation=()) -> started ReplicaSet."""
    made = []

    def make(receivers, delivery=(), correlation=None):
        correlation = correlation or ['group_wait = %s' % GROUP_WAIT]

        def config(workdir, topics):
            return rp.replica_config(
                rel.service_config(rabbitmq_vhost.url, workdir, receivers,
                                   delivery=delivery,
                                   correlation=correlation),
                server_backend_url, topics)
        replicas = rp.ReplicaSet(tmp_path, config)
        made.append(replicas)
        replicas.db_sync()
        return replicas.start()

    yield make
    for replicas in made:
        replicas.kill_all()


def alerts_by_request(requests):
    by_request = collections.defaultdict(list)
    for request in requests:
        for alert in request.json['alerts']:
            by_request[alert['request_id']].append(alert)
    return by_request


def split_failures(deliveries, request_ids):
    """Request ids whose messages went to more than one replica."""
    pids = collections.defaultdict(set)
    for entry in deliveries:
        pids[entry['request_id']].add(entry['pid'])
    return {r for r in request_ids if len(pids[r]) > 1}, pids


def stop_all(replicas):
    statuses = [proc.stop() for proc in replicas]
    assert statuses == [0] * len(statuses), (statuses, replicas.logs())


# --------------------------------------------------------------------------
# 1. Twins and build chains split across replicas: one alert per failure
# --------------------------------------------------------------------------

def test_twins_split_across_replicas_give_one_alert_each(
        rabbitmq, rabbitmq_vhost, server_backend_url, webhook_server,
        replica_set):
    hook = webhook_server()
    replicas = replica_set({'hook': rel.webhook_receiver(hook)},
                           delivery=['max_alerts_per_interval = 0'])
    pairs = [rel.failure('twin', n, host='compute-%d' % (n % 4))
             for n in range(31)]
    chains = [rel.failure('chain', n) for n in range(4)]
    pair_messages = [rel.build_failure_pair(f) for f in pairs]
    chain_messages = [rel.build_chain(f) for f in chains]
    # RabbitMQ hands the queue's messages to the three consumers in turn.
    # First every legacy twin, then every versioned one (31 later: another
    # replica), then the four chains step by step (each step 4 later).
    order = ([m[0] for m in pair_messages] + [m[1] for m in pair_messages] +
             [chain[i] for i in range(7) for chain in chain_messages])
    with rp.DeliveryTrace(rabbitmq, rabbitmq_vhost) as trace:
        with rq.Publisher(rabbitmq_vhost.url) as pub:
            rel.publish(pub, order)
        everyone = {f.request_id for f in pairs + chains}
        rel.wait_until(
            lambda: set(alerts_by_request(hook.requests)) >= everyone, 60,
            lambda: '%d of %d failures alerted; outbox %r\n%s' % (
                len(set(alerts_by_request(hook.requests)) & everyone),
                len(everyone), rp.outbox_summary(server_backend_url),
                replicas.logs()))
        time.sleep(GROUP_WAIT + 3)          # a second alert would come now
        deliveries = trace.snapshot()
    assert trace.errors == []
    split, pids = split_failures(deliveries, everyone)
    assert len(deliveries) >= len(order), len(deliveries)
    assert set(pids) >= everyone
    assert set().union(*pids.values()) <= set(replicas.by_pid()), (
        deliveries[:2])
    # The point of the test: failures whose messages were taken by two or
    # three different processes at once.
    assert len(split) >= len(everyone) // 2, (
        'only %d of %d failures were split across replicas: %r' % (
            len(split), len(everyone), dict(pids)))

    by_request = alerts_by_request(hook.requests)
    assert set(by_request) == everyone, set(by_request) ^ everyone
    twice = {r: len(a) for r, a in by_request.items() if len(a) != 1}
    assert twice == {}, 'alerted more than once (%d, %d split): %r' % (
        len(twice), len(twice.keys() & split), twice)
    missing = {}
    for f, messages in zip(pairs + chains, pair_messages + chain_messages):
        [alert] = by_request[f.request_id]
        expected = {m.event_type for m in messages}
        if set(alert['event_types']) != expected:
            missing[f.request_id] = sorted(expected -
                                           set(alert['event_types']))
        assert alert['instance']['uuid'] == f.uuid
    assert missing == {}, (
        '%d alerts miss event types of their failure (%d of them split): '
        '%r' % (len(missing), len(missing.keys() & split), missing))
    for f in chains:
        assert by_request[f.request_id][0]['count'] == 7
    assert len(hook.requests) == len(everyone)
    assert len({r.idempotency_key for r in hook.requests}) == len(everyone)
    assert all(r.schema_errors == [] for r in hook.requests)
    counts = rp.outbox_summary(server_backend_url)
    # A chain's instance-less compute.exception, taken by another replica,
    # may open an incident of its own: it is folded ("merged") into its
    # request's incident, never alerted on its own.
    merged = rp.query(server_backend_url, "SELECT request_id FROM incidents "
                      "WHERE state = 'merged'")
    assert {r for (r,) in merged} <= {f.request_id for f in chains}, merged
    assert len(merged) <= len(chains), merged
    assert counts == dict({'deliveries.done': len(everyone),
                           'incidents.routed': len(everyone),
                           'dead_letters': 0},
                          **({'incidents.merged': len(merged)}
                             if merged else {})), counts
    assert replicas.problems() == []
    stop_all(replicas)
    print('\ntwins: %d failures, %d split across replicas, %d incidents '
          'merged; messages per replica %r' % (
              len(everyone), len(split), len(merged),
              sorted(collections.Counter(
                  e['pid'] for e in deliveries).values())))


# --------------------------------------------------------------------------
# 2. 1,000 errors across the replicas: 1,000 incidents, each sent once
# --------------------------------------------------------------------------

def test_thousand_errors_across_replicas_each_delivered_once(
        rabbitmq, rabbitmq_vhost, server_backend_url, webhook_server,
        replica_set):
    total = 1000
    hook = webhook_server(validate=False)
    replicas = replica_set({'hook': rel.webhook_receiver(hook)},
                           delivery=['max_alerts_per_interval = 0'])
    failures = [rel.failure('many', n, host='compute-%d' % (n % 8))
                for n in range(total)]
    started = time.monotonic()
    with rp.DeliveryTrace(rabbitmq, rabbitmq_vhost) as trace:
        with rq.Publisher(rabbitmq_vhost.url) as pub:
            for number, f in enumerate(failures):
                rel.publish(pub, [rel.single_error(f, number)])
        published = time.monotonic() - started
        everyone = {f.request_id for f in failures}
        rel.wait_until(
            lambda: set(alerts_by_request(hook.requests)) >= everyone, 150,
            lambda: '%d of %d failures delivered; outbox %r\n%s' % (
                len(set(alerts_by_request(hook.requests)) & everyone),
                total, rp.outbox_summary(server_backend_url),
                replicas.logs(pattern=r' ERROR |Traceback')))
        done = time.monotonic() - started
        time.sleep(GROUP_WAIT + 3)          # anything twice would come now
        deliveries = trace.snapshot()
    assert trace.errors == []
    # By replica: the pid of each message's consumer is the replica's
    # listener process.
    owners = replicas.by_pid()
    per_replica = collections.Counter(owners[e['pid']].number
                                      for e in deliveries)
    assert set(per_replica) == {r.number for r in replicas}, per_replica
    assert all(n >= total // 10 for n in per_replica.values()), per_replica

    requests = hook.requests
    by_key = collections.Counter(r.idempotency_key for r in requests)
    by_alert = collections.Counter(r.json['alerts'][0]['id']
                                   for r in requests)
    repeated = {k: n for k, n in by_key.items() if n > 1}
    assert repeated == {}, '%d keys sent more than once: %r' % (
        len(repeated), repeated)
    assert len(by_alert) == total and max(by_alert.values()) == 1
    assert all('digest' not in r.json for r in requests)
    assert all(r.status == 200 for r in requests)
    by_request = alerts_by_request(requests)
    assert set(by_request) == everyone
    assert all(len(a) == 1 for a in by_request.values())
    [(incidents,)] = rp.query(server_backend_url,
                              'SELECT count(*) FROM incidents')
    assert incidents == total
    counts = rp.outbox_summary(server_backend_url)
    assert counts == {'deliveries.done': total, 'incidents.routed': total,
                      'dead_letters': 0}, counts
    assert replicas.problems() == []
    stop_all(replicas)
    print('\n1,000 errors: published in %.1f s, all delivered at %.1f s; '
          'messages per replica %r' % (published, done,
                                       sorted(per_replica.values())))


# --------------------------------------------------------------------------
# 3. kill -9 of one replica in the middle of a burst
# --------------------------------------------------------------------------

def test_kill_9_of_one_replica_loses_nothing(
        rabbitmq_vhost, server_backend_url, webhook_server, replica_set):
    total = 600
    workers = 4
    lease = 10
    hold = 6.0                  # shorter than the webhook timeout (10 s)
    hook = webhook_server(validate=False)
    replicas = replica_set(
        {'hook': rel.webhook_receiver(hook)},
        delivery=['workers = %d' % workers, 'lease = %d' % lease,
                  'max_alerts_per_interval = 0',
                  'retry_initial_delay = 0.5', 'retry_max_delay = 2'])
    victim, survivors = replicas[0], list(replicas)[1:]
    burst = rel.BurstPublisher(rabbitmq_vhost.url,
                               [rel.failure('burst', n) for n in range(total)],
                               pause=0.01)
    started = time.monotonic()
    burst.start()
    rel.wait_until(lambda: len(hook.requests) >= 100, 60,
                   lambda: '%d webhook requests; outbox %r' % (
                       len(hook.requests),
                       rp.outbox_summary(server_backend_url)))
    # Hold the next answer of every worker of every replica: the victim's
    # four deliveries are then in flight, received but never answered.
    held_count = workers * len(replicas.replicas)
    hook.delay_next(hold, count=held_count)
    rel.wait_until(
        lambda: sum(1 for r in hook.requests if r.delay) >= held_count,
        hold - 1, lambda: 'held requests: %d' % sum(
            1 for r in hook.requests if r.delay))
    victim_pids = victim.pids()
    assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
    killed_at = time.time()
    killed_mono = time.monotonic() - started
    assert burst.is_alive(), 'the burst was over before the kill'
    held = {r.json['alerts'][0]['id']: r for r in hook.requests if r.delay}
    # Claims are named "<pid of the delivery process>-...".
    in_flight = {incident for (incident, owner) in rp.query(
        server_backend_url, "SELECT incident_id, claimed_by FROM deliveries "
        "WHERE state = 'in_flight'")
        if int(owner.split('-', 1)[0]) in victim_pids}
    victim_held = in_flight & set(held)
    assert 1 <= len(in_flight) <= workers, in_flight
    assert victim_held, (in_flight, sorted(held))
    burst.join(90)
    assert burst.error is None, burst.error
    assert len(burst.published) == total
    everyone = set(burst.published)

    def delivered():
        return set(alerts_by_request(hook.requests))

    rel.wait_until(
        lambda: delivered() >= everyone, lease + 120,
        lambda: '%d of %d failures delivered; outbox %r\n%s' % (
            len(delivered() & everyone), total,
            rp.outbox_summary(server_backend_url),
            '\n'.join(p.log()[-3000:] for p in survivors)))
    # The victim's claims: taken over once their lease is over (the
    # housekeeping of a survivor hands them back), then delivered.
    finished = {'deliveries.done': total, 'incidents.routed': total,
                'dead_letters': 0}
    rel.wait_until(
        lambda: rp.outbox_summary(server_backend_url) == finished,
        lease + 90, lambda: 'outbox %r; in flight at the kill %s\n%s' % (
            rp.outbox_summary(server_backend_url), sorted(in_flight),
            '\n'.join(p.log()[-3000:] for p in survivors)))
    done_at = time.monotonic() - started
    time.sleep(3)                       # anything twice would come now
    requests = hook.requests
    by_key = collections.defaultdict(list)
    for request in requests:
        by_key[request.idempotency_key].append(request)
    assert len(by_key) == total, len(by_key)
    twice = {rs[0].json['alerts'][0]['id']: rs for rs in by_key.values()
             if len(rs) > 1}
    # Repeats: only what the killed replica had in flight, same key, and
    # no more than its workers.
    assert set(twice) <= in_flight, (
        'sent twice: %s; in flight at the victim at the kill: %s' % (
            sorted(twice), sorted(in_flight)))
    assert len(twice) <= workers
    assert set(twice) >= victim_held, (sorted(twice), sorted(victim_held))
    for incident, rs in twice.items():
        assert len(rs) == 2, rs
        assert len({r.json['alerts'][0]['id'] for r in rs}) == 1
        # Taken over after the lease, not before.
        assert rs[1].received_at >= killed_at + lease - 1, (
            'retaken %.1f s after the kill, lease %d s' % (
                rs[1].received_at - killed_at, lease))
    assert len({r.json['alerts'][0]['id'] for r in requests}) == total
    assert len(requests) == total + len(twice)
    counts = rp.outbox_summary(server_backend_url)
    assert counts == {'deliveries.done': total, 'incidents.routed': total,
                      'dead_letters': 0}, counts
    assert [p.process.poll() for p in survivors] == [None, None]
    tracebacks = [ln for ln in replicas.problems() if 'Traceback' in ln]
    assert tracebacks == []
    statuses = [p.stop() for p in survivors]
    assert statuses == [0, 0], statuses
    retaken = [rs[1].received_at - killed_at for rs in twice.values()]
    print('\nkill -9: victim killed at %.1f s with %d in flight (%d held '
          'at the receiver); %d repeats, retaken %s s after the kill; every '
          'failure delivered at %.1f s' % (
              killed_mono, len(in_flight), len(victim_held), len(twice),
              ['%.1f' % t for t in retaken], done_at))


# --------------------------------------------------------------------------
# 4. Storm limit across the replicas, not per replica
# --------------------------------------------------------------------------

def test_storm_limit_holds_across_replicas(
        rabbitmq, rabbitmq_vhost, server_backend_url, webhook_server,
        replica_set):
    total = 40
    limit = 5
    interval = 20
    hook = webhook_server()
    replicas = replica_set(
        {'hook': rel.webhook_receiver(hook)},
        delivery=['max_alerts_per_interval = %d' % limit,
                  'group_interval = %d' % interval])
    failures = [rel.failure('storm', n, host='compute-%d' % (n % 4))
                for n in range(total)]
    everyone = {f.request_id for f in failures}
    started = time.monotonic()
    with rp.DeliveryTrace(rabbitmq, rabbitmq_vhost) as trace:
        with rq.Publisher(rabbitmq_vhost.url) as pub:
            for number, f in enumerate(failures):
                rel.publish(pub, [rel.single_error(f, number)])

        def accounted():
            return set(alerts_by_request(rel.answered(hook)))

        rel.wait_until(
            lambda: accounted() >= everyone, interval + 60,
            lambda: '%d of %d incidents accounted for; outbox %r\n%s' % (
                len(accounted() & everyone), total,
                rp.outbox_summary(server_backend_url),
                replicas.logs(pattern=r'digest| ERROR |Traceback')))
        accounted_at = time.monotonic() - started
        time.sleep(5)                   # a stray alert or digest now
        deliveries = trace.snapshot()
    per_replica = collections.Counter(e['pid'] for e in deliveries)
    assert len(per_replica) == 3, per_replica
    requests = hook.requests
    singles = [r for r in requests if 'digest' not in r.json]
    digests = [r for r in requests if 'digest' in r.json]
    assert all(r.status == 200 for r in requests)
    assert all(r.schema_errors == [] for r in requests), [
        r.schema_errors for r in requests if r.schema_errors]
    assert len(singles) == limit, (
        '%d single alerts in total (limit %d per interval across the '
        'replicas); %d digests of %s' % (
            len(singles), limit, len(digests),
            [r.json['digest']['count'] for r in digests]))
    assert len(digests) == 1, [r.json['digest'] for r in digests]
    [digest] = digests
    assert digest.json['digest']['count'] == total - limit
    assert digest.json['digest']['listed'] == total - limit
    digested = {a['request_id'] for a in digest.json['alerts']}
    alerted = {r.json['alerts'][0]['request_id'] for r in singles}
    assert alerted | digested == everyone
    assert not alerted & digested
    # Within the interval: the digest comes when the interval is over.
    assert digest.received_at - min(r.received_at for r in singles) <= \
        interval + GROUP_WAIT + 5
    assert len({r.idempotency_key for r in requests}) == len(requests)
    counts = rp.outbox_summary(server_backend_url)
    assert counts.get('dead_letters') == 0, counts
    assert counts.get('deliveries.done') == limit + 1, counts
    assert replicas.problems() == []
    stop_all(replicas)
    print('\nstorm: %d errors on %r; %d singles and a digest of %d, all '
          'accounted for at %.1f s' % (
              total, sorted(per_replica.values()), len(singles),
              digest.json['digest']['count'], accounted_at))
