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
"""The outbox, grouping and routing on SQLite, MariaDB and PostgreSQL.

Each test that asks for ``backend_url`` runs three times, each time on a
fresh, empty database: a SQLite file, and a new database on the real
MariaDB and PostgreSQL test servers (tools/ensure-mariadb.sh,
tools/ensure-postgresql.sh; tests/databases.py). The values are the ones
a tenant or a broken publisher can put in a notification: ids longer than
any column, NUL bytes (which PostgreSQL refuses in text), lone surrogates
(which no UTF-8 database stores), long messages.
"""

import socket
import threading

import pytest
import sqlalchemy as sa

from nova_error_notifier import outbox
from nova_error_notifier import record as rec
from tests import databases
from tests.unit import outbox_fixtures as tc

world = tc.world

SECRET = 'S3cret-never-shown'


@pytest.fixture
def backend(world, backend_url):
    """(conf, store, ingest, router, pool, clock) on the fresh database."""
    parts = world(extra='connection = %s' % backend_url)
    yield parts
    parts[1].engine.dispose()


@pytest.fixture
def server_store(server_backend_url):
    store = outbox.Store(server_backend_url)
    store.create_schema()
    yield store
    store.engine.dispose()


def rows(store, table):
    return store.read(lambda conn: [
        dict(row._mapping) for row in conn.execute(
            sa.select(table).order_by(*table.primary_key.columns))])


def all_text(store):
    """Every string stored in any outbox table, with its place."""
    for table in outbox.metadata.sorted_tables:
        for row in rows(store, table):
            for column, value in row.items():
                if isinstance(value, str):
                    yield '%s.%s' % (table.name, column), value


def delivered(pool):
    """The alerts the test receivers got, by receiver."""
    assert set(tc.drain(pool)) == {'sent'}
    return {receiver: [alert for outcome, alert in calls
                       if outcome == 'sent']
            for receiver, calls in tc.Recorder.calls.items()}


def assert_storable(store):
    """Nothing stored holds what PostgreSQL or UTF-8 cannot hold."""
    for place, value in all_text(store):
        assert '\x00' not in value, place
        value.encode('utf-8')


def test_schema_on_a_fresh_database(backend_url):
    store = outbox.Store(backend_url)
    try:
        assert sa.inspect(store.engine).get_table_names() == []
        store.create_schema()
        store.create_schema()                   # again: changes nothing
        tables = set(sa.inspect(store.engine).get_table_names())
        assert set(outbox.metadata.tables) <= tables
        assert not tables - set(outbox.metadata.tables) - {
            'alembic_version'}
        assert store.ping()
        assert store.counts() == {'dead_letters': 0, 'rejected_messages': 0}
    finally:
        store.engine.dispose()


def test_long_ids_sharing_a_prefix_stay_two_incidents(backend):
    conf, store, ingest, router, pool, clock = backend
    base = 'x' * 255
    first = tc.record(message_id='m' + base + 'a' * 44,
                      request_id='req-' + base + 'a' * 41,
                      instance=base + 'a' * 45)
    second = tc.record(message_id='m' + base + 'b' * 44,
                       request_id='req-' + base + 'b' * 41,
                       instance=base + 'b' * 45)
    for item in (first, second):
        assert len(item.message_id) == len(item.request_id) == 300
        assert len(item.instance_uuid) == 300
    ids = ingest.add_many([first, second])
    assert len(set(ids)) == 2 and None not in ids
    incidents = rows(store, outbox.incidents)
    assert len(incidents) == 2
    for row in incidents:
        for column in ('key', 'request_id', 'instance_uuid'):
            assert len(row[column]) <= outbox.KEY_LENGTH, column
    assert len({row['request_id'] for row in incidents}) == 2
    assert len(rows(store, outbox.messages)) == 2
    # A redelivery changes nothing.
    assert ingest.add_many([first, second]) == [None, None]
    assert len(rows(store, outbox.messages)) == 2
    clock.now += 10
    assert router.route_due() == 4
    alerts = delivered(pool)
    assert sorted(a.request_id for a in alerts['a']) == sorted(
        [first.request_id, second.request_id])      # the whole ids
    assert sorted(a.instance_uuid for a in alerts['b']) == sorted(
        [first.instance_uuid, second.instance_uuid])


def test_nul_bytes_in_ids_and_texts(backend):
    conf, store, ingest, router, pool, clock = backend
    odd = tc.record(message_id='m\x00', request_id='req-\x00',
                    instance='i\x00', exception='Bad\x00Error',
                    message='disk\x00full')
    other = tc.record(message_id='m\x00\x00', request_id='req-\x00\x00',
                      instance='i\x00')
    ids = ingest.add_many([odd, other])
    assert len(set(ids)) == 2 and None not in ids
    assert ingest.add_many([odd]) == [None]
    clock.now += 10
    assert router.route_due() == 4
    assert_storable(store)
    alerts = delivered(pool)
    [alert] = [a for a in alerts['a'] if a.exception == 'Bad\x00Error']
    assert alert.message == 'disk\x00full'      # JSON kept it intact
    assert alert.request_id == 'req-\x00' and alert.instance_uuid == 'i\x00'


def test_lone_surrogates(backend):
    conf, store, ingest, router, pool, clock = backend
    odd = tc.record(message_id='m-\ud800', request_id='req-\udfff',
                    instance='i-\udc80', message='bad \ud83d text')
    odd = rec.ErrorRecord(**dict(vars(odd), instance_name='web-\udcff'))
    [incident] = ingest.add_many([odd])
    assert incident is not None
    clock.now += 10
    assert router.route_due() == 2
    assert_storable(store)
    alerts = delivered(pool)
    [alert] = alerts['a']
    assert alert.message == 'bad \ud83d text'
    assert alert.instance_name == 'web-\udcff'
    assert alert.request_id == 'req-\udfff'


def test_a_long_message_is_kept_whole(backend):
    conf, store, ingest, router, pool, clock = backend
    text = ('\u00e9\U0001f4a5 NoValidHost: ' * 300)[:4096]
    assert len(text) == 4096
    ingest.add(tc.record(message=text))
    clock.now += 10
    assert router.route_due() == 2
    alerts = delivered(pool)
    assert [a.message for a in alerts['a'] + alerts['b']] == [text, text]


def test_rejected_messages_with_hostile_values(backend):
    conf, store, ingest, router, pool, clock = backend
    base = 'k' * 255
    hostile = dict(
        reason='DataError: \x00\ud800 ' + 'r' * 5000,
        event_type='compute.\x00' + 'e' * 300,
        priority='ERROR\x00' + 'P' * 40,
        publisher_id='compute.\udcff' + 'h' * 300,
        body='{"instance_name": "\x00\ud800\U0001f4a5"}' + ' ' * 70000)
    first = store.add_rejected(base + '1\x00', **hostile)
    second = store.add_rejected(base + '2\x00', **hostile)
    assert first != second
    assert store.add_rejected(base + '1\x00', 'again \x00') == first
    assert store.add_rejected(None, 'no id') not in (first, second)
    assert_storable(store)
    one = store.rejected_one(first)
    assert one['attempts'] == 2 and one['reason'] == 'again \\x00'
    assert one['message_key'].startswith('sha256:')
    assert len(one['event_type']) <= outbox.KEY_LENGTH
    assert len(one['publisher_id']) <= outbox.KEY_LENGTH
    assert len(one['priority']) <= 16
    assert one['body'].startswith('{"instance_name": "\\x00\ufffd')
    two = store.rejected_one(second)
    assert len(two['reason']) == 2000 and two['reason'].endswith('...')
    assert store.counts()['rejected_messages'] == 3
    assert store.purge_rejected() == 3


# -- errors, told apart, from the real servers ----------------------------

def causes(error):
    """Class names of the exceptions that led to ``error`` (and bases)."""
    seen = []
    for _ in range(10):
        if error is None:
            break
        seen.extend(cls.__name__ for cls in type(error).__mro__)
        error = (getattr(error, 'inner_exception', None) or
                 error.__cause__ or error.__context__)
    return seen


def _insert_twice(conn):
    for _ in range(2):
        conn.execute(outbox.messages.insert().values(
            message_id='m', received_at=1.0))


def test_a_real_integrity_error_may_pass_later(server_store):
    with pytest.raises(outbox.StoreError) as info:
        server_store.write(_insert_twice)
    assert info.value.retryable
    assert not isinstance(info.value, rec.RetryLater)
    assert 'duplicate' in str(info.value).lower()
    assert 'IntegrityError' in causes(info.value)     # PEP 249's
    assert rows(server_store, outbox.messages) == []   # rolled back
    assert server_store.ping()


def test_a_real_data_error_is_permanent(server_store):
    # What fit_key prevents: a value longer than its column, written raw.
    with pytest.raises(outbox.StoreError) as info:
        server_store.write(lambda conn: conn.execute(
            outbox.messages.insert().values(message_id='m' * 300,
                                            received_at=1.0)))
    assert not info.value.retryable
    assert not isinstance(info.value, rec.RetryLater)
    assert 'too long' in str(info.value)
    assert 'DataError' in causes(info.value)
    assert server_store.ping()


def test_a_raw_lone_surrogate_is_permanent(server_store):
    with pytest.raises(outbox.StoreError) as info:
        server_store.write(lambda conn: conn.execute(
            outbox.messages.insert().values(message_id='m\ud800',
                                            received_at=1.0)))
    assert not info.value.retryable
    assert server_store.ping()


def test_postgresql_refuses_a_raw_nul_byte(postgresql_url):
    store = outbox.Store(postgresql_url)
    store.create_schema()
    try:
        with pytest.raises(outbox.StoreError) as info:
            store.write(lambda conn: conn.execute(
                outbox.messages.insert().values(message_id='m\x00',
                                                received_at=1.0)))
        assert not info.value.retryable
        assert 'NUL' in str(info.value)
        # fit_key is what makes it storable.
        store.write(lambda conn: conn.execute(
            outbox.messages.insert().values(
                message_id=outbox.fit_key('m\x00'), received_at=1.0)))
        assert len(rows(store, outbox.messages)) == 1
    finally:
        store.engine.dispose()


@pytest.fixture
def closed_port():
    """A local TCP port on which nothing listens (kept bound)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize('scheme', ['mysql+pymysql', 'postgresql+psycopg2'])
def test_an_unreachable_server_is_unavailable(closed_port, scheme):
    url = '%s://nen:%s@127.0.0.1:%d/nen' % (scheme, SECRET, closed_port)
    # oslo.db tries to connect when the engine is made ([database]
    # max_retries times, 10 by default, retry_interval apart): once here.
    with pytest.raises(outbox.StoreUnavailable) as info:
        outbox.Store(url, engine_options={'max_retries': 1,
                                          'retry_interval': 0})
    assert 'OperationalError' in str(info.value)
    assert SECRET not in str(info.value)
    # Without that test, the first use fails the same way.
    store = outbox.Store(url, engine_options={'max_retries': 0})
    with pytest.raises(outbox.StoreUnavailable) as info:
        store.create_schema()
    assert SECRET not in str(info.value)
    with pytest.raises(outbox.StoreUnavailable) as info:
        store.write(_insert_twice)
    assert 'OperationalError' in str(info.value)
    assert SECRET not in str(info.value)
    assert store.ping() is False


def _own_session(conn, backend):
    query = ('SELECT CONNECTION_ID()' if backend == 'mariadb'
             else 'SELECT pg_backend_pid()')
    return conn.execute(sa.text(query)).scalar()


def _kill(backend, session):
    admin = databases.server(backend).engine
    with admin.connect() as conn:
        if backend == 'mariadb':
            conn.execute(sa.text('KILL CONNECTION %d' % session))
        else:
            assert conn.execute(sa.text(
                'SELECT pg_terminate_backend(:pid)'), {'pid': session}
            ).scalar()


def test_a_connection_lost_mid_transaction_is_unavailable(
        server_store, server_backend_url):
    backend = ('mariadb' if server_backend_url.startswith('mysql')
               else 'postgresql')

    def work(conn):
        conn.execute(outbox.messages.insert().values(message_id='lost',
                                                     received_at=1.0))
        _kill(backend, _own_session(conn, backend))
        conn.execute(outbox.messages.insert().values(message_id='next',
                                                     received_at=1.0))
    with pytest.raises(outbox.StoreUnavailable):
        server_store.write(work)
    # Nothing half-written, and the next transaction gets a new connection.
    assert server_store.ping()
    assert rows(server_store, outbox.messages) == []
    server_store.write(lambda conn: conn.execute(
        outbox.messages.insert().values(message_id='after',
                                        received_at=1.0)))
    assert [r['message_id'] for r in rows(server_store,
                                          outbox.messages)] == ['after']


def test_a_lock_wait_timeout_is_unavailable(server_store,
                                            server_backend_url):
    backend = ('mariadb' if server_backend_url.startswith('mysql')
               else 'postgresql')
    server_store.write(lambda conn: conn.execute(
        outbox.messages.insert().values(message_id='m', received_at=1.0)))
    locked, release = threading.Event(), threading.Event()

    def holder(conn):
        conn.execute(sa.select(outbox.messages).where(
            outbox.messages.c.message_id == 'm').with_for_update())
        locked.set()
        release.wait(30)
    thread = threading.Thread(target=server_store.write, args=(holder,))
    thread.start()
    try:
        assert locked.wait(30)

        def waiter(conn):
            conn.execute(sa.text(
                'SET SESSION innodb_lock_wait_timeout = 1'
                if backend == 'mariadb' else "SET lock_timeout = '1s'"))
            conn.execute(outbox.messages.update().where(
                outbox.messages.c.message_id == 'm').values(
                    received_at=2.0))
        with pytest.raises(outbox.StoreUnavailable) as info:
            server_store.write(waiter)
        assert 'OperationalError' in str(info.value) or \
            'LockNotAvailable' in str(info.value)
    finally:
        release.set()
        thread.join(30)
    [row] = rows(server_store, outbox.messages)
    assert row['received_at'] == 1.0


def test_fresh_databases_are_dropped(tmp_path):
    names = []
    for backend in databases.SERVERS:
        server = databases.server(backend)
        with databases.fresh_database(backend) as url:
            name = sa.engine.make_url(url).database
            names.append(name)
            assert name.startswith(databases.PREFIX)
            assert server.exists(name)
            store = outbox.Store(url)
            store.create_schema()
            store.ping()        # left connected: the drop closes it
        assert not server.exists(name)
    assert len(set(names)) == 2


@pytest.mark.parametrize('backend,scheme', [
    ('mariadb', 'mysql+pymysql'), ('postgresql', 'postgresql+psycopg2')])
def test_a_missing_server_says_what_to_run(closed_port, monkeypatch,
                                           backend, scheme):
    monkeypatch.setenv(databases.ENVIRONMENT[backend], '%s://u:%s@127.0.0.1:'
                       '%d/x' % (scheme, SECRET, closed_port))
    with pytest.raises(databases.Unreachable) as info:
        databases.Server(backend).create(databases.new_name())
    message = str(info.value)
    assert databases.ENSURE[backend] in message
    assert databases.ENVIRONMENT[backend] in message
    assert 'u:***@127.0.0.1:%d' % closed_port in message
    assert SECRET not in message
