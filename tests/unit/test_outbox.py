"""The outbox: values that fit, errors told apart, private files."""

import os
import stat

import pytest
import sqlalchemy as sa

from nova_error_notifier import outbox
from nova_error_notifier import record as rec
from tests.unit import test_correlate as tc


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
    conf, store, corr, pool, clock = world()
    base = 'x' * 300
    first = tc.record(message_id=base + '1', request_id='req-' + base + '1',
                      instance=base + '1')
    second = tc.record(message_id=base + '2', request_id='req-' + base + '2',
                       instance=base + '2')
    ids = corr.add_many([first, second])
    assert len(set(ids)) == 2 and None not in ids
    for row in tc.rows(store, 'incidents'):
        assert len(row['key']) <= 255
        assert len(row['request_id']) <= 255
        assert len(row['instance_uuid']) <= 255
    # Each is a message of its own, and a redelivery changes nothing.
    assert corr.add_many([first, second]) == [None, None]
    clock.now += 10
    assert corr.route_due() == 4


def test_ids_with_nul_bytes_fit(world):
    conf, store, corr, pool, clock = world()
    odd = tc.record(message_id='m\x00', request_id='req-\x00',
                    instance='i\x00')
    [incident] = corr.add_many([odd])
    assert incident is not None
    [row] = tc.rows(store, 'incidents')
    assert '\x00' not in row['key'] and '\x00' not in row['request_id']


world = tc.world


def _one_delivery(world):
    conf, store, corr, pool, clock = world(receivers=('a',))
    corr.add(tc.record())
    clock.now += 10
    assert corr.route_due() == 1
    return conf, store, corr, pool, clock


def test_an_alert_that_cannot_be_read_is_dead_after_one_attempt(world):
    conf, store, corr, pool, clock = _one_delivery(world)
    store.write(lambda conn: conn.execute(outbox.deliveries.update().values(
        alert='{"not": "an alert"')))
    row = pool.claim()
    assert pool.deliver(row) == 'dead'
    [dead] = store.dead()
    assert 'cannot be read' in dead['reason']
    assert tc.rows(store, 'deliveries')[0]['state'] == 'dead'


def test_a_failing_enrichment_counts_as_an_attempt(world):
    conf, store, corr, pool, clock = _one_delivery(world)

    class Broken:
        def enrich(self, alert):
            raise RuntimeError('enricher bug')
    pool.enricher = Broken()
    row = pool.claim()
    assert pool.deliver(row) == 'retry'
    [delivery] = tc.rows(store, 'deliveries')
    assert delivery['state'] == 'pending' and delivery['attempts'] == 1
    assert 'enricher bug' in delivery['last_error']
    assert delivery['claimed_by'] is None


def test_an_unexpected_failure_hands_the_claim_back(world, monkeypatch):
    conf, store, corr, pool, clock = _one_delivery(world)
    row = pool.claim()
    pool._release(row)
    [delivery] = tc.rows(store, 'deliveries')
    assert delivery['state'] == 'pending' and delivery['attempts'] == 1
    assert delivery['claimed_by'] is None
