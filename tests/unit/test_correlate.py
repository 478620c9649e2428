"""Correlation, the outbox and delivery, on a real SQLite file."""

import logging
import sqlite3

from oslo_config import cfg
import pytest

from nova_error_notifier.cmd import manage
from nova_error_notifier import config
from nova_error_notifier import correlate
from nova_error_notifier import delivery
from nova_error_notifier.drivers import base
from nova_error_notifier import opts
from nova_error_notifier import outbox
from nova_error_notifier import record as rec

REQ = 'req-11111111-2222-4333-8444-555555555555'
UUID = '7f6e5d4c-3b2a-4918-8776-655443322110'


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


class Recorder(base.Driver):
    """A test driver that keeps what it is asked to deliver."""

    calls = {}
    failures = {}

    def notify(self, alert):
        plan = Recorder.failures.get(self.receiver) or []
        if plan:
            error = plan.pop(0)
            if error is not None:
                Recorder.calls.setdefault(self.receiver, []).append(
                    ('failed', alert))
                raise error
        Recorder.calls.setdefault(self.receiver, []).append(('sent', alert))


@pytest.fixture
def world(tmp_path, monkeypatch):
    Recorder.calls = {}
    Recorder.failures = {}

    def build(extra='', receivers=('a', 'b')):
        path = tmp_path / 'c.conf'
        lines = ['[DEFAULT]', 'rules = r', '[rule:r]', 'events = *',
                 'exclude_exceptions = Ignored',
                 'receivers = %s' % ', '.join(receivers)]
        for name in set(receivers) | {'fb'}:
            lines += ['[receiver:%s]' % name, 'driver = log']
        lines += ['[delivery]', 'state_dir = %s' % tmp_path,
                  'retry_initial_delay = 1', 'retry_max_delay = 8',
                  'retry_deadline = 60', extra, '']
        path.write_text('\n'.join(lines))
        conf = cfg.ConfigOpts()
        opts.register_opts(conf)
        conf(['--config-file', str(path)], project='nova_error_notifier',
             default_config_files=[])
        settings = config.load(conf)
        for receiver in settings.receivers.values():
            receiver.driver = Recorder(conf, receiver.name)
        clock = Clock()
        store = outbox.Store.from_conf(conf)
        store.clock = clock
        store.create_schema()
        corr = correlate.Correlator(conf, store, settings, clock=clock)
        pool = delivery.DeliveryPool(conf, store, settings, clock=clock)
        return conf, store, corr, pool, clock
    return build


def record(event_type='instance.create.error', message_id='m1',
           request_id=REQ, instance=UUID, exception='NoValidHost',
           synthetic=(rec.CREATE_FAILED,), fmt='versioned', message=None):
    return rec.ErrorRecord(
        event_type=event_type, priority='ERROR', format=fmt,
        synthetic_events=synthetic, message_id=message_id,
        request_id=request_id, instance_uuid=instance, exception=exception,
        message=message)


def drain(pool):
    """Deliver everything due now; return the outcomes."""
    outcomes = []
    while True:
        row = pool.claim()
        if row is None:
            return outcomes
        outcomes.append(pool.deliver(row))


def rows(store, table):
    with sqlite3.connect(store.url.split(':///', 1)[1]) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute('SELECT * FROM %s' % table)]


def test_twins_and_a_build_chain_make_one_alert_per_receiver(world):
    conf, store, corr, pool, clock = world()
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
    ids = {corr.add(r) for r in chain}
    assert len(ids) == 1
    assert corr.route_due() == 0              # still within group_wait
    clock.now += 5
    assert corr.route_due() == 2              # receivers a and b
    assert drain(pool) == ['sent', 'sent']
    for receiver in ('a', 'b'):
        [(outcome, alert)] = Recorder.calls[receiver]
        assert alert.count == 7
        assert alert.id == ids.pop() if ids else alert.id
        assert alert.message == 'Build failed'
        assert set(alert.event_types) == {r.event_type for r in chain}
        assert rec.ERROR_STATE in alert.synthetic_events
        assert alert.receiver == receiver
    # A late message for the same failure folds in, without a new alert.
    clock.now += 30
    corr.add(record('instance.update', 'm8', exception=None))
    clock.now += 10
    assert corr.route_due() == 0
    assert drain(pool) == []


def test_duplicate_message_changes_nothing(world):
    conf, store, corr, pool, clock = world()
    first = corr.add(record(message_id='dup'))
    assert corr.add(record(message_id='dup')) is None
    assert first
    [incident] = rows(store, 'incidents')
    assert incident['message_count'] == 1


def test_instance_less_record_first_is_adopted(world):
    conf, store, corr, pool, clock = world()
    a = corr.add(record('compute.exception', 'x1', instance=None,
                        synthetic=()))
    b = corr.add(record('resize_instance', 'x2', fmt='legacy'))
    assert a == b


def test_rescheduled_build_is_not_alerted(world):
    conf, store, corr, pool, clock = world()
    corr.add(record('compute.instance.create.error', 'r1'))
    corr.add(rec.Resolution(event_type='instance.create.end',
                            instance_uuid=UUID, request_id=REQ))
    clock.now += 10
    assert corr.route_due() == 0
    [incident] = rows(store, 'incidents')
    assert incident['state'] == 'suppressed'
    assert 'rescheduled' in incident['note']


def test_rescheduled_build_alerted_when_asked(world):
    conf, store, corr, pool, clock = world(
        '[correlation]\nalert_on_rescheduled = true')
    corr.add(record('compute.instance.create.error', 'r1'))
    corr.add(rec.Resolution(event_type='instance.create.end',
                            instance_uuid=UUID, request_id=REQ))
    clock.now += 10
    assert corr.route_due() == 2


def test_a_build_that_ended_in_error_is_alerted_despite_a_resolution(world):
    conf, store, corr, pool, clock = world()
    corr.add(record('instance.update', 'e1', exception=None,
                    synthetic=(rec.CREATE_FAILED, rec.ERROR_STATE)))
    corr.add(rec.Resolution(event_type='instance.update',
                            instance_uuid=UUID, request_id=REQ))
    clock.now += 10
    assert corr.route_due() == 2


def test_rules_see_the_incident_exception(world):
    conf, store, corr, pool, clock = world()
    corr.add(record(exception='Ignored', message_id='i1'))
    clock.now += 10
    assert corr.route_due() == 0
    assert rows(store, 'incidents')[0]['note'] == 'no rule matched'


def test_retry_with_backoff_then_success_once(world):
    conf, store, corr, pool, clock = world(receivers=('a',))
    Recorder.failures['a'] = [base.DriverError('down', retryable=True),
                              base.DriverError('down', retryable=True,
                                               retry_after=30), None]
    corr.add(record())
    clock.now += 10
    corr.route_due()
    assert drain(pool) == ['retry']
    assert drain(pool) == []                  # not due yet
    clock.now += 1.01
    assert drain(pool) == ['retry']
    clock.now += 20
    assert drain(pool) == []                  # Retry-After: 30 s
    clock.now += 11
    assert drain(pool) == ['sent']
    assert [c[0] for c in Recorder.calls['a']] == ['failed', 'failed',
                                                   'sent']
    [row] = rows(store, 'deliveries')
    assert row['state'] == 'done' and row['attempts'] == 3


def test_non_retryable_goes_to_dead_letters_and_fallback(world):
    conf, store, corr, pool, clock = world(
        'fallback_receiver = fb', receivers=('a', 'b'))
    Recorder.failures['a'] = [base.DriverError('HTTP 400', retryable=False)]
    corr.add(record())
    clock.now += 10
    corr.route_due()
    outcomes = drain(pool)
    assert sorted(outcomes) == ['dead', 'sent', 'sent']   # a, b, fallback
    assert [c[0] for c in Recorder.calls['b']] == ['sent']
    [(_, alert)] = Recorder.calls['fb']
    assert alert.receiver == 'fb'
    [dead] = rows(store, 'dead_letters')
    assert dead['receiver'] == 'a' and 'HTTP 400' in dead['reason']


def test_deadline_sends_to_dead_letters(world):
    conf, store, corr, pool, clock = world(receivers=('a',))
    Recorder.failures['a'] = [base.DriverError('timeout', retryable=True)
                              for _ in range(100)]
    corr.add(record())
    clock.now += 10
    corr.route_due()
    outcomes = []
    for _ in range(60):
        outcomes += drain(pool)
        clock.now += 8
    assert outcomes[-1] == 'dead'
    assert set(outcomes[:-1]) == {'retry'}
    [dead] = rows(store, 'dead_letters')
    assert 'retry deadline passed' in dead['reason']


def test_in_flight_delivery_is_resumed_after_a_crash(world):
    conf, store, corr, pool, clock = world(receivers=('a',))
    corr.add(record())
    clock.now += 10
    corr.route_due()
    claimed = pool.claim()
    assert claimed is not None                 # then the process dies
    conf2, store2, corr2, pool2, _ = world(receivers=('a',))
    assert pool2.reclaim(all_owners=True) == 1
    assert drain(pool2) == ['sent']


def test_storm_folds_into_one_digest_per_interval(world):
    conf, store, corr, pool, clock = world(
        'max_alerts_per_interval = 3\ngroup_interval = 60\n'
        'digest_max_items = 10', receivers=('a',))
    for number in range(40):
        corr.add(record(message_id='s%d' % number,
                        request_id='req-storm-%d' % number,
                        instance='inst-%d' % number))
    clock.now += 10
    assert corr.route_due() == 3
    assert drain(pool) == ['sent'] * 3
    clock.now += 61
    assert corr.route_due() == 1
    assert drain(pool) == ['sent']
    digest = Recorder.calls['a'][-1][1]
    assert digest.is_digest and digest.digest_count == 37
    assert len(digest.members) == 10
    assert digest.summary == ('37 instances failed with NoValidHost in '
                              'the last 1 minute')


def test_store_down_asks_for_a_requeue(world, tmp_path):
    conf, store, corr, pool, clock = world()
    (tmp_path / 'not-a-dir').write_text('a file where a directory should be')
    corr.store = BrokenStore(tmp_path / 'not-a-dir' / 'x.sqlite')
    with pytest.raises(rec.RetryLater):
        corr.add(record())


class BrokenStore(outbox.Store):
    """A real Store whose database file cannot be opened."""

    def __init__(self, path):
        import sqlalchemy as sa
        self.url = 'sqlite:///%s' % path
        self.clock = Clock()
        self.owner = 'test'
        self.is_sqlite = True
        self.engine = sa.create_engine(self.url)
        self._lock = None
        self._secrets = []
        self.path = None


def test_manage_commands(world, tmp_path, capsys):
    conf, store, corr, pool, clock = world(receivers=('a',))
    Recorder.failures['a'] = [base.DriverError('HTTP 400', retryable=False)]
    corr.add(record())
    clock.now += 10
    corr.route_due()
    drain(pool)
    args = ['--config-file', str(tmp_path / 'c.conf')]
    assert manage.main(args + ['dead-letters', 'list']) == 0
    out = capsys.readouterr().out
    assert '1 dead letters' in out and 'HTTP 400' in out
    assert manage.main(args + ['dead-letters', 'retry']) == 0
    assert manage.main(args + ['pending']) == 0
    out = capsys.readouterr().out
    assert '1 dead letter(s) queued' in out
    assert '1 pending deliveries' in out
    assert drain(pool) == ['sent']
    assert manage.main(args + ['stats']) == 0
    assert 'deliveries.done' in capsys.readouterr().out


def test_audit_line_per_attempt(world, caplog):
    conf, store, corr, pool, clock = world(receivers=('a',))
    corr.add(record())
    clock.now += 10
    corr.route_due()
    with caplog.at_level(logging.INFO, logger='nova_error_notifier.audit'):
        drain(pool)
    [line] = [r.getMessage() for r in caplog.records
              if r.name == 'nova_error_notifier.audit']
    assert 'receiver=a' in line and 'outcome=sent' in line


def test_purge_keeps_open_and_dead_work(world):
    conf, store, corr, pool, clock = world(receivers=('a',))
    Recorder.failures['a'] = [None, base.DriverError('no', retryable=False)]
    corr.add(record(message_id='p1', request_id='req-p1'))
    corr.add(record(message_id='p2', request_id='req-p2'))
    clock.now += 10
    corr.route_due()
    drain(pool)
    clock.now += 100
    corr.add(record(message_id='p3', request_id='req-p3'))   # still open
    counts = store.purge(50)
    assert counts['messages'] == 2
    assert counts['deliveries'] == 1            # the done one
    assert counts['incidents'] == 1             # its incident
    states = sorted(r['state'] for r in rows(store, 'incidents'))
    assert states == ['open', 'routed']         # the dead one stays
    assert len(rows(store, 'dead_letters')) == 1


def test_a_late_instance_less_twin_joins_the_routed_incident(world):
    conf, store, corr, pool, clock = world(receivers=('a',))
    first = corr.add(record('resize_instance', 'late1', fmt='legacy'))
    clock.now += 10
    assert corr.route_due() == 1
    late = corr.add(record('compute.exception', 'late2', instance=None,
                           synthetic=()))
    assert late == first
    clock.now += 10
    assert corr.route_due() == 0


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
    conf, store, corr, pool, clock = world()
    ids = corr.add_many(build_chain())
    assert ids[:4] == [ids[0]] * 4 and ids[4] is None
    [incident] = rows(store, 'incidents')
    # The instance-less first record made the incident; the others joined
    # it, and it learnt its instance.
    assert incident['instance_uuid'] == UUID
    assert incident['message_count'] == 4
    assert len(rows(store, 'messages')) == 4
    assert {r['incident_id'] for r in rows(store, 'messages')} == {ids[0]}
    clock.now += 10
    assert corr.route_due() == 2
    drain(pool)
    [(_, alert)] = Recorder.calls['a']
    assert alert.count == 4 and alert.message == 'Build failed'


def test_a_batch_sees_the_incidents_of_earlier_batches(world):
    conf, store, corr, pool, clock = world()
    [first] = corr.add_many([record('resize_instance', 'e1', fmt='legacy')])
    again = corr.add_many([record('compute.exception', 'e2', instance=None,
                                  synthetic=()),
                           record('resize_instance', 'e1', fmt='legacy'),
                           record('resize_instance', 'e3', fmt='legacy',
                                  request_id='req-other')])
    assert again[0] == first and again[1] is None
    assert again[2] not in (None, first)
    assert sorted(r['message_count'] for r in rows(store, 'incidents')) == \
        [1, 2]


def test_a_resolution_in_the_same_batch_suppresses_the_reschedule(world):
    conf, store, corr, pool, clock = world()
    corr.add_many([
        record('compute.instance.create.error', 'r1'),
        rec.Resolution(event_type='instance.create.end', instance_uuid=UUID,
                       request_id=REQ),
        record('instance.create.error', 'r2', instance='other-instance'),
    ])
    clock.now += 10
    assert corr.route_due() == 2              # only the other instance
    states = sorted((r['instance_uuid'], r['state'])
                    for r in rows(store, 'incidents'))
    assert states == sorted([('other-instance', 'routed'),
                             (UUID, 'suppressed')])


def test_a_resolution_of_another_request_resolves_nothing(world):
    conf, store, corr, pool, clock = world()
    corr.add_many([record('compute.instance.create.error', 'r1')])
    corr.add_many([rec.Resolution(event_type='instance.create.end',
                                  instance_uuid=UUID,
                                  request_id='req-another-build')])
    assert [r['resolved'] for r in rows(store, 'incidents')] == [0]
    corr.add_many([rec.Resolution(event_type='instance.create.end',
                                  instance_uuid=UUID, request_id=REQ)])
    assert [r['resolved'] for r in rows(store, 'incidents')] == [1]
    clock.now += 10
    assert corr.route_due() == 0


def test_a_failed_batch_leaves_nothing_behind(world, monkeypatch):
    conf, store, corr, pool, clock = world()

    def broken(*args, **kwargs):
        raise outbox.sa_exc.OperationalError('INSERT', {},
                                             Exception('disk I/O error'))
    monkeypatch.setattr(correlate._Batch, 'flush', broken)
    with pytest.raises(outbox.StoreUnavailable):
        corr.add_many(build_chain())
    assert rows(store, 'incidents') == [] and rows(store, 'messages') == []
    monkeypatch.undo()
    # Redelivered, the batch is stored in full.
    assert corr.add_many(build_chain())[0] is not None
    assert rows(store, 'incidents')[0]['message_count'] == 4


def test_the_router_learns_when_the_next_incident_is_due(world):
    conf, store, corr, pool, clock = world()
    assert corr.next_due() is None
    assert not corr.incident_opened.is_set()
    corr.add_many([record('resize_instance', 'd1', fmt='legacy')])
    assert corr.incident_opened.is_set()
    assert corr.next_due() == clock.now + conf.correlation.group_wait
    clock.now += 10
    corr.route_due()
    assert corr.next_due() is None


def test_a_new_incident_wakes_the_router_only_if_due_earlier(world):
    conf, store, corr, pool, clock = world()
    wait = conf.correlation.group_wait
    # The router sleeps until an incident due before the new one.
    corr.router_wakes_at = clock.now + wait / 2
    corr.add_many([record('resize_instance', 'w1', fmt='legacy')])
    assert not corr.incident_opened.is_set()
    # It sleeps longer than the new incident's window: woken.
    corr.router_wakes_at = clock.now + wait * 2
    corr.add_many([record('resize_instance', 'w2', fmt='legacy',
                          request_id='req-w2')])
    assert corr.incident_opened.is_set()
    # While it plans (None), any new incident wakes it.
    corr.incident_opened.clear()
    corr.router_wakes_at = None
    corr.add_many([record('resize_instance', 'w3', fmt='legacy',
                          request_id='req-w3')])
    assert corr.incident_opened.is_set()
    # A message joining an open incident opens nothing: no wake.
    corr.incident_opened.clear()
    corr.add_many([record('compute.exception', 'w4', instance=None,
                          synthetic=(), request_id='req-w3')])
    assert not corr.incident_opened.is_set()
    clock.now += wait + 1
    assert corr.route_due() == 6
    assert corr.next_due_at is None
