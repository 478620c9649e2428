"""The shared database stopped for 20 s under three real replicas.

A private PostgreSQL server (the test stops it), three real service
processes on one pool, a real webhook receiver: messages published while
the database is down go back to the queue, nothing is lost, everything is
delivered once after it comes back, and the replicas and ``manage`` say
so in a few clear lines, not a traceback per message.
"""

import collections
import re
import time

import pytest

from tests.functional import private_postgresql
from tests.functional import rabbitmq as rq
from tests.functional import replicas as rp
from tests.functional import test_reliability as rel

OUTAGE = 20


@pytest.fixture
def database():
    server = private_postgresql.PrivatePostgreSQL()
    try:
        yield server
    finally:
        server.destroy()


def test_the_database_stopped_for_20_seconds(tmp_path, rabbitmq_vhost,
                                             webhook_server, database):
    hook = webhook_server()

    def config(workdir, topics):
        return rp.replica_config(
            rel.service_config(rabbitmq_vhost.url, workdir,
                               {'hook': rel.webhook_receiver(hook)},
                               delivery=['max_alerts_per_interval = 0']),
            database.url, topics)

    def delivered():
        return {a['request_id'] for a in rel.single_alerts(
            rel.answered(hook))}
    replicas = rp.ReplicaSet(tmp_path, config)
    replicas.db_sync()
    replicas.start()
    try:
        before = [rel.failure('before', n) for n in range(30)]
        during = [rel.failure('during', n) for n in range(30)]
        with rq.Publisher(rabbitmq_vhost.url) as pub:
            for number, f in enumerate(before):
                rel.publish(pub, [rel.single_error(f, number)])
            rel.wait_until(lambda: len(delivered()) >= len(before), 60,
                           lambda: replicas.logs(1500))
            database.stop()
            stopped = time.monotonic()
            for number, f in enumerate(during):
                rel.publish(pub, [rel.single_error(f, number)])
            # manage says so in one line while the database is down.
            result = rp.manage(replicas[0].config_path, 'pending')
            assert result.returncode == 1
            err = result.stderr.strip().splitlines()
            assert len(err) == 1 and 'not usable' in err[0], result.stderr
            assert 'Traceback' not in result.stderr + result.stdout
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))
            database.start()
        everyone = {f.request_id for f in before + during}
        rel.wait_until(lambda: delivered() >= everyone, 120,
                       lambda: '%d of %d delivered\n%s' % (
                           len(delivered() & everyone), len(everyone),
                           replicas.logs(2500)))
        time.sleep(3)
        per_request = collections.Counter(
            alert['request_id'] for r in rel.answered(hook)
            for alert in r.json['alerts'])
        assert {k: v for k, v in per_request.items() if v > 1} == {}
        assert set(per_request) == everyone
        summary = rp.outbox_summary(database.url)
        assert summary.get('deliveries.pending', 0) == 0, summary
        assert summary.get('dead_letters', 0) == 0, summary
        # A few clear lines per replica, not one per message, and no
        # traceback.
        for proc in replicas:
            log = proc.log()
            assert 'Traceback' not in log, log[-3000:]
            store_lines = [line for line in log.splitlines()
                           if re.search(r'Could not store|Outbox '
                                        r'unavailable', line)]
            assert len(store_lines) <= 8, '\n'.join(store_lines)
            assert proc.process.poll() is None
    finally:
        statuses = [proc.stop() for proc in replicas]
        replicas.kill_all()
    assert statuses == [0, 0, 0]
