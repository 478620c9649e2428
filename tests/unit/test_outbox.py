"""The outbox: values that fit, errors told apart, private files."""

import os
import stat

import pytest
import sqlalchemy as sa

from nova_error_notifier.drivers import base as driver_base
from nova_error_notifier import outbox
from nova_error_notifier import record as rec
from tests.unit import outbox_fixtures as fx

world = fx.world


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class TestFit:

    def test_short_clean_keys_are_kept(self):
        assert outbox.fit_key('req-1') == 'req-1'
        assert outbox.fit_key(None) is None

    @pytest.mark.parametrize('value', [
        'x' * 256, 'a\x00b', 'a\nb', 'sha256:' + 'f' * 64, 'bad \ud800'])
    def test_long_odd_or_hash_like_keys_are_hashed(self, value):
        key = outbox.fit_key(value)
        assert key.startswith('sha256:') and len(key) == 71
        assert key == outbox.fit_key(value)            # stable

    def test_two_keys_sharing_a_long_prefix_stay_apart(self):
        first, second = 'm' * 300 + '1', 'm' * 300 + '2'
        assert outbox.fit_key(first) != outbox.fit_key(second)

    def test_text_is_cut_and_nul_escaped(self):
        assert outbox.fit_text('a\x00b') == 'a\\x00b'
        assert outbox.fit_text('x' * 50, 10) == 'x' * 7 + '...'
        assert outbox.fit_text('lone \ud800').encode('utf-8')

    def test_dumps_is_always_utf8(self):
        text = outbox.dumps({'name': 'bad \ud800', 'nul': '\x00'})
        text.encode('utf-8')
        assert outbox.loads(text) == {'name': 'bad \ud800', 'nul': '\x00'}
        assert outbox.dumps({'n': '\u00e9'}) == '{"n": "\u00e9"}'


class TestErrors:

    @pytest.fixture
    def store(self, tmp_path):
        store = outbox.Store('sqlite:///%s' % (tmp_path / 'o.sqlite'))
        store.create_schema()
        return store

    def _raise(self, store, error):
        def work(conn):
            raise error
        return store.write(work)

    @pytest.mark.parametrize('error', [
        sa.exc.OperationalError('INSERT', {}, Exception('database is '
                                                        'locked')),
        sa.exc.TimeoutError('QueuePool limit reached'),
        sa.exc.DisconnectionError('gone'),
        OSError('disk'),
    ], ids=['locked', 'pool-timeout', 'disconnect', 'oserror'])
    def test_transient_errors_ask_for_a_requeue(self, store, error):
        with pytest.raises(outbox.StoreUnavailable):
            self._raise(store, error)

    def test_a_unique_key_taken_first_may_pass(self, store):
        with pytest.raises(outbox.StoreError) as info:
            self._raise(store, sa.exc.IntegrityError('INSERT', {},
                                                     Exception('UNIQUE')))
        assert info.value.retryable
        assert not isinstance(info.value, rec.RetryLater)

    @pytest.mark.parametrize('error', [
        sa.exc.DataError('INSERT', {}, Exception('value too long')),
        ValueError('A string literal cannot contain NUL (0x00)'),
        KeyError('bug'),
    ], ids=['data', 'nul', 'bug'])
    def test_permanent_errors_are_not_retried(self, store, error):
        with pytest.raises(outbox.StoreError) as info:
            self._raise(store, error)
        assert not info.value.retryable

    def test_a_real_integrity_error(self, store):
        def twice(conn):
            for _ in range(2):
                conn.execute(outbox.messages.insert().values(
                    message_id='m', received_at=1.0))
        with pytest.raises(outbox.StoreError) as info:
            store.write(twice)
        assert 'IntegrityError' in str(info.value)
        assert store.ping()

    def test_ping_says_when_the_store_is_gone(self, tmp_path):
        (tmp_path / 'file').write_text('not a directory')
        store = outbox.Store.__new__(outbox.Store)
        store.url = 'sqlite:///%s' % (tmp_path / 'file' / 'x.sqlite')
        store.engine = sa.create_engine(store.url)
        store._lock = None
        store._secrets = []
        assert store.ping() is False


class TestRejected:

    def test_kept_counted_listed_and_purged(self, tmp_path):
        store = outbox.Store('sqlite:///%s' % (tmp_path / 'o.sqlite'))
        store.create_schema()
        first = store.add_rejected('m' * 300, 'DataError: \x00 too long',
                                   event_type='compute.instance.create.'
                                   'error', priority='ERROR',
                                   publisher_id='compute.h1',
                                   body='{"instance_name": "x"}')
        again = store.add_rejected('m' * 300, 'DataError again')
        assert again == first
        other = store.add_rejected('other', 'bug')
        [one, two] = store.rejected()
        assert one['id'] == first and one['attempts'] == 2
        assert one['message_key'].startswith('sha256:')
        assert one['reason'] == 'DataError again'
        assert one['event_type'] == 'compute.instance.create.error'
        assert store.rejected_one(other)['reason'] == 'bug'
        assert store.rejected_one(12345) is None
        assert store.counts()['rejected_messages'] == 2
        assert store.purge_rejected([other]) == 1
        assert store.purge_rejected() == 1
        assert store.rejected() == []


class TestPrivateFiles:

    @pytest.fixture(autouse=True)
    def umask(self):
        old = os.umask(0o022)
        yield
        os.umask(old)

    def test_new_directory_and_files_are_private(self, tmp_path):
        state = tmp_path / 'state' / 'nested'
        store = outbox.Store('sqlite:///%s' % (state / 'o.sqlite'))
        store.create_schema()
        store.write(lambda conn: conn.execute(outbox.messages.insert()
                                              .values(message_id='m',
                                                      received_at=1.0)))
        assert mode(state) == 0o700
        files = [p for p in os.listdir(state)]
        assert 'o.sqlite' in files and 'o.sqlite-wal' in files
        for name in files:
            assert mode(state / name) == 0o600, name

    def test_wider_modes_are_tightened(self, tmp_path, caplog):
        state = tmp_path / 'wide'
        state.mkdir(mode=0o755)
        os.chmod(state, 0o755)
        db = state / 'o.sqlite'
        db.write_bytes(b'')
        os.chmod(db, 0o644)
        outbox.Store('sqlite:///%s' % db).create_schema()
        assert mode(state) == 0o700 and mode(db) == 0o600
        assert 'tightened to 0700' in caplog.text
        assert 'tightened to 0600' in caplog.text

    def test_a_shared_directory_is_refused(self, tmp_path):
        shared = tmp_path / 'shared'
        shared.mkdir()
        os.chmod(shared, 0o1777)
        with pytest.raises(outbox.StoreConfigError) as info:
            outbox.Store('sqlite:///%s' % (shared / 'o.sqlite'))
        assert 'can be read or written by other users' in str(info.value)
        assert 'state_dir' in str(info.value)
        assert mode(shared) == 0o1777          # left as it was


class TestDescribe:

    @pytest.mark.parametrize('url,shown', [
        ('mysql+pymysql://nen:S3cret-pw@db/nen?charset=utf8',
         'mysql+pymysql://nen:***@db/nen?charset=utf8'),
        ('postgresql://nen:S3cret-pw@db/nen?sslpassword=S3cret-key',
         'postgresql://nen:***@db/nen?sslpassword=***'),
        ('sqlite:////var/lib/x/o.sqlite', 'sqlite:////var/lib/x/o.sqlite'),
    ])
    def test_the_url_never_shows_a_secret(self, url, shown):
        store = outbox.Store.__new__(outbox.Store)
        store.url = url
        assert store.describe() == shown


def test_long_ids_make_distinct_incidents(world):
    conf, store, ingest, router, pool, clock = world()
    base = 'x' * 300
    first = fx.record(message_id=base + '1', request_id='req-' + base + '1',
                      instance=base + '1')
    second = fx.record(message_id=base + '2', request_id='req-' + base + '2',
                       instance=base + '2')
    ids = ingest.add_many([first, second])
    assert len(set(ids)) == 2 and None not in ids
    for row in fx.rows(store, 'incidents'):
        assert len(row['key']) <= 255
        assert len(row['request_id']) <= 255
        assert len(row['instance_uuid']) <= 255
    # Each is a message of its own, and a redelivery changes nothing.
    assert ingest.add_many([first, second]) == [None, None]
    clock.now += 10
    assert router.route_due() == 4


def test_ids_with_nul_bytes_fit(world):
    conf, store, ingest, router, pool, clock = world()
    odd = fx.record(message_id='m\x00', request_id='req-\x00',
                    instance='i\x00')
    [incident] = ingest.add_many([odd])
    assert incident is not None
    [row] = fx.rows(store, 'incidents')
    assert '\x00' not in row['key'] and '\x00' not in row['request_id']


def test_purge_keeps_open_and_dead_work(world):
    conf, store, ingest, router, pool, clock = world(receivers=('a',))
    fx.Recorder.failures['a'] = [None, driver_base.DriverError(
        'no', retryable=False)]
    ingest.add(fx.record(message_id='p1', request_id='req-p1'))
    ingest.add(fx.record(message_id='p2', request_id='req-p2'))
    clock.now += 10
    router.route_due()
    fx.drain(pool)
    clock.now += 100
    ingest.add(fx.record(message_id='p3', request_id='req-p3'))  # open
    counts = store.purge(50)
    assert counts['messages'] == 2
    assert counts['deliveries'] == 1            # the done one
    assert counts['incidents'] == 1             # its incident
    states = sorted(r['state'] for r in fx.rows(store, 'incidents'))
    assert states == ['open', 'routed']         # the dead one stays
    assert len(fx.rows(store, 'dead_letters')) == 1


# -- the named statements of the stages -------------------------------------

def incident(incident_id='i1', key='k1', request_id='req-1', instance='u1',
             count=1, due_at=10.0, records='[]'):
    return {'id': incident_id, 'key': key, 'request_id': request_id,
            'instance_uuid': instance, 'state': 'open', 'records': records,
            'message_count': count, 'resolved': False, 'opened_at': 1.0,
            'updated_at': 1.0, 'due_at': due_at}


class TestTransaction:

    @pytest.fixture
    def store(self, tmp_path):
        store = outbox.Store('sqlite:///%s' % (tmp_path / 'o.sqlite'))
        store.create_schema()
        yield store
        store.engine.dispose()

    def test_write_and_read_hand_a_transaction(self, store):
        assert isinstance(store.write(lambda tx: tx), outbox.Transaction)
        assert store.read(lambda tx: tx.store) is store
        assert store.read(lambda tx: tx.execute(sa.text('SELECT 1'))
                          .scalar()) == 1

    def test_seen_message_ids_over_several_chunks(self, store):
        keys = ['m%d' % n for n in range(1203)]
        store.write(lambda tx: tx.insert_messages([
            {'message_id': k, 'incident_id': 'i1', 'received_at': 1.0}
            for k in keys[::2]]))
        store.write(lambda tx: tx.insert_messages([]))     # nothing
        assert store.read(lambda tx: tx.seen_message_ids(keys)) == set(
            keys[::2])
        assert store.read(lambda tx: tx.seen_message_ids([])) == set()

    def test_incidents_by_key_and_by_request(self, store):
        store.write(lambda tx: tx.insert_incidents([
            incident('i1', 'k1'), incident('i2', 'k2', instance=None),
            incident('i3', 'k3'), incident('i4', 'k4', request_id='req-2')]))
        store.write(lambda tx: tx.insert_incidents([]))    # nothing
        assert store.read(lambda tx: tx.incident_by_key('k2')).id == 'i2'
        assert store.read(lambda tx: tx.incident_by_key('none')) is None
        assert len(store.read(lambda tx: tx.incidents_of_request(
            'req-1'))) == 2                                 # two at most
        others = store.read(lambda tx: tx.other_incidents_of_request(
            'req-1', 'i1'))
        assert sorted(r.id for r in others) == ['i2', 'i3']

    def test_update_incident_is_a_compare_and_swap(self, store):
        store.write(lambda tx: tx.insert_incidents([incident(count=2)]))

        def update(old_count):
            return store.write(lambda tx: tx.update_incident(
                'i1', old_count, 'k1b', 'u2', '[{"a": 1}]', old_count + 1,
                True, 5.0))
        assert update(1) is False                  # changed meanwhile
        assert update(2) is True
        row = store.read(lambda tx: tx.incident_by_key('k1b'))
        assert (row.instance_uuid, row.message_count, row.resolved,
                row.updated_at) == ('u2', 3, True, 5.0)
        assert outbox.loads(row.records) == [{'a': 1}]

    def test_open_incidents_of_instances_are_resolved(self, store):
        rows = [incident('i%d' % n, 'k%d' % n, instance='u%d' % n)
                for n in range(1100)]
        store.write(lambda tx: tx.insert_incidents(rows))
        store.write(lambda tx: tx.finish_incident('i1', 'routed', None, 2.0))
        found = store.read(lambda tx: tx.open_incidents_of_instances(
            ['u%d' % n for n in range(0, 1100, 2)] + ['u1', 'none']))
        assert len(found) == 550
        assert {tuple(r) for r in found} >= {('i0', 'u0', 'req-1')}
        store.write(lambda tx: tx.resolve_open_incidents(['i0', 'i1']))
        resolved = {r['id'] for r in fx.rows(store, 'incidents')
                    if r['resolved']}
        assert resolved == {'i0'}                  # i1 is not open

    def test_due_incidents_finish_merge_and_next_due(self, store):
        store.write(lambda tx: tx.insert_incidents([
            incident('i1', 'k1', due_at=30.0), incident('i2', 'k2',
                                                        due_at=20.0),
            incident('i3', 'k3', due_at=50.0)]))
        due = store.read(lambda tx: tx.due_incidents(30.0, 10))
        assert [r.id for r in due] == ['i2', 'i1']
        assert [r.id for r in store.read(
            lambda tx: tx.due_incidents(30.0, 1))] == ['i2']
        assert store.read(lambda tx: tx.next_due_times()) == (20.0, None)
        assert store.write(lambda tx: tx.finish_incident(
            'i2', 'merged', 'into i1', 3.0))
        assert not store.write(lambda tx: tx.finish_incident(
            'i2', 'routed', None, 4.0))            # not open any more
        assert not store.write(lambda tx: tx.merge_into_incident(
            'i1', 5, '[1, 2]', 6, 4.0))
        assert store.write(lambda tx: tx.merge_into_incident(
            'i1', 1, '[1, 2]', 2, 4.0))
        row = store.read(lambda tx: tx.incident_by_key('k1'))
        assert (row.message_count, row.records, row.updated_at) == (
            2, '[1, 2]', 4.0)
        [merged] = [r for r in fx.rows(store, 'incidents')
                    if r['id'] == 'i2']
        assert (merged['state'], merged['note']) == ('merged', 'into i1')
        assert store.read(lambda tx: tx.next_due_times()) == (30.0, None)

    def test_digests(self, store):
        assert store.read(lambda tx: tx.collecting_digest('a')) is None
        store.write(lambda tx: tx.open_digest('d1', 'a', 'r', '[1]', 10.0,
                                              70.0))
        row = store.read(lambda tx: tx.collecting_digest('a'))
        assert (row.id, row.count) == ('d1', 1)
        assert store.read(lambda tx: tx.collecting_digest('b')) is None
        store.write(lambda tx: tx.add_to_digest('d1', '[1, 2]'))
        store.write(lambda tx: tx.count_in_digest('d1'))
        assert store.read(lambda tx: tx.digest_members('d1')) == '[1, 2]'
        assert store.read(lambda tx: tx.collecting_digest('a')).count == 3
        assert store.read(lambda tx: tx.next_due_times()) == (None, 70.0)
        assert store.read(lambda tx: tx.due_digests(69.0)) == []
        [due] = store.read(lambda tx: tx.due_digests(70.0))
        assert (due.id, due.receiver, due.rule, due.count) == (
            'd1', 'a', 'r', 3)
        store.write(lambda tx: tx.close_digest('d1'))
        assert store.read(lambda tx: tx.due_digests(70.0)) == []
        assert store.read(lambda tx: tx.collecting_digest('a')) is None

    def test_deliveries_once_per_receiver(self, store):
        def work(tx):
            first = tx.insert_delivery_once('i1', 'a', 'r', 'single', '{}',
                                            5.0)
            again = tx.insert_delivery_once('i1', 'a', 'r', 'single', '{}',
                                            6.0)
            other = tx.insert_delivery_once('i1', 'b', 'r', 'single', '{}',
                                            6.0)
            return first, again, other
        # The refused one leaves the transaction going on.
        assert store.write(work) == (True, False, True)
        assert store.read(lambda tx: tx.delivery_exists('i1', 'a'))
        assert not store.read(lambda tx: tx.delivery_exists('i1', 'c'))
        assert store.read(lambda tx: tx.singles_sent_since('a', 5.0)) == 1
        assert store.read(lambda tx: tx.singles_sent_since('a', 5.5)) == 0
        store.write(lambda tx: tx.insert_delivery('d1', 'a', None, 'digest',
                                                  '{}', 7.0))
        assert store.read(lambda tx: tx.singles_sent_since('a', 0.0)) == 1
        with pytest.raises(outbox.StoreError) as info:
            store.write(lambda tx: tx.insert_delivery(
                'i1', 'a', 'r', 'single', '{}', 8.0))
        assert info.value.retryable
        [row] = [r for r in fx.rows(store, 'deliveries')
                 if r['receiver'] == 'b']
        assert (row['state'], row['attempts'], row['created_at'],
                row['next_attempt_at']) == ('pending', 0, 6.0, 6.0)

    def test_claims_outcomes_and_hand_backs(self, store, tmp_path):
        other = outbox.Store(store.url)
        for incident_id, due in (('i1', 5.0), ('i2', 5.0), ('i3', 50.0)):
            store.write(lambda tx: tx.insert_delivery(
                incident_id, 'a', 'r', 'single', '{}', due))
        first = store.write(lambda tx: tx.claim_delivery(10.0, 130.0))
        assert (first.incident_id, first.state) == ('i1', 'pending')
        second = other.write(lambda tx: tx.claim_delivery(10.0, 20.0))
        assert second.incident_id == 'i2'
        assert store.write(lambda tx: tx.claim_delivery(10.0, 130.0)) is None
        # Only the owner of a claim records its outcome.
        assert not other.write(lambda tx: tx.update_claimed_delivery(
            first.id, state='done'))
        assert store.write(lambda tx: tx.update_claimed_delivery(
            first.id, state='dead', attempts=1, claimed_by=None,
            claimed_until=None, finished_at=11.0, last_error='no'))
        assert not store.write(lambda tx: tx.update_claimed_delivery(
            first.id, state='done'))           # not in flight any more
        store.write(lambda tx: tx.add_dead_letter(first.id, 'i1', 'a', 'no',
                                                  11.0))
        [dead] = store.dead()
        assert (dead['delivery_id'], dead['reason']) == (first.id, 'no')
        # Claims that ran out go back; all of them when asked.
        assert store.write(lambda tx: tx.hand_back_claims(15.0)) == 0
        assert store.write(lambda tx: tx.hand_back_claims(25.0)) == 1
        [back] = [r for r in fx.rows(store, 'deliveries')
                  if r['incident_id'] == 'i2']
        assert (back['state'], back['claimed_by'], back['claimed_until'],
                back['next_attempt_at']) == ('pending', None, None, 25.0)
        assert store.write(lambda tx: tx.claim_delivery(25.0, 99.0))
        assert store.write(lambda tx: tx.hand_back_claims(
            26.0, all_owners=True)) == 1
        other.engine.dispose()

    def test_a_lease_through_the_transaction(self, store):
        other = outbox.Store(store.url)
        store.clock = other.clock = lambda: 100.0
        assert store.write(lambda tx: tx.take_lease('router', 10))
        assert not other.write(lambda tx: tx.take_lease('router', 10))
        other.engine.dispose()
