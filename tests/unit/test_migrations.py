"""The outbox schema's migrations, on SQLite (other backends: functional).

A database made by the releases before migrations is upgraded in place,
every row kept; a fresh one reaches exactly the models' schema.
"""

import os
import sqlite3
import tempfile
import unittest

from oslo_db.sqlalchemy import test_migrations
import pytest
import sqlalchemy as sa

from nova_error_notifier import migration
from nova_error_notifier import outbox
from tests.unit import outbox_fixtures as tc

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures',
                       'outbox-before-migrations.sql')


def old_database(path, with_index=True):
    """An outbox file as the release before migrations left it."""
    with open(FIXTURE, encoding='utf-8') as handle:
        script = handle.read()
    with sqlite3.connect(path) as conn:
        conn.executescript(script)
        if not with_index:
            conn.execute('DROP INDEX deliveries_receiver_created_at_idx')
    return 'sqlite:///%s' % path


class TestModelsMigrationsSync(test_migrations.ModelsMigrationsSync,
                               unittest.TestCase):
    """oslo.db's check: migrations at head == the models, on SQLite."""

    def setUp(self):
        super().setUp()
        self.directory = tempfile.TemporaryDirectory()
        self.engine = sa.create_engine('sqlite:///%s' % os.path.join(
            self.directory.name, 'outbox.sqlite'))
        self.addCleanup(self.directory.cleanup)
        self.addCleanup(self.engine.dispose)

    def get_engine(self):
        return self.engine

    def get_metadata(self):
        return outbox.metadata

    def db_sync(self, engine):
        migration.upgrade(engine)


@pytest.mark.parametrize('with_index', [True, False],
                         ids=['made-by-37c599b', 'older-without-index'])
def test_a_database_made_before_migrations_is_upgraded_in_place(
        tmp_path, with_index):
    url = old_database(str(tmp_path / 'nova_error_notifier.sqlite'),
                       with_index)
    store = outbox.Store(url)
    assert store.schema_version() == (None, migration.head())
    assert 'made before migrations' in store.schema_problem()
    before, after = store.upgrade()
    assert (before, after) == ('pre-migration', migration.head())
    assert store.schema_problem() is None
    # Every row is kept, the pending delivery still pending.
    [pending] = store.pending()
    assert pending['receiver'] == 'oncall' and pending['attempts'] == 2
    [dead] = store.dead()
    assert dead['receiver'] == 'hook'
    counts = store.counts()
    assert counts['incidents.routed'] == 1 and counts['incidents.open'] == 1
    assert counts['rejected_messages'] == 0
    indexes = {i['name'] for i in sa.inspect(store.engine).get_indexes(
        'deliveries')}
    assert 'deliveries_receiver_created_at_idx' in indexes
    # A second sync changes nothing.
    assert store.upgrade() == (migration.head(), migration.head())


def test_a_development_build_with_rejected_messages_is_upgraded(tmp_path):
    # create_all of a build between the two (rejected_messages, no
    # migrations, no leases), as left on a developer's machine.
    url = old_database(str(tmp_path / 'o.sqlite'))
    with sqlite3.connect(str(tmp_path / 'o.sqlite')) as conn:
        conn.execute('CREATE TABLE rejected_messages (id INTEGER PRIMARY '
                     'KEY, message_key VARCHAR(255) NOT NULL UNIQUE, '
                     'event_type VARCHAR(255), priority VARCHAR(16), '
                     'publisher_id VARCHAR(255), reason TEXT, attempts '
                     'INTEGER NOT NULL, first_seen FLOAT NOT NULL, '
                     'last_seen FLOAT NOT NULL, body TEXT)')
        conn.execute("INSERT INTO rejected_messages VALUES (1, 'k', NULL, "
                     "NULL, NULL, 'kept', 1, 1.0, 1.0, NULL)")
    store = outbox.Store(url)
    assert store.upgrade()[1] == migration.head()
    assert [r['reason'] for r in store.rejected()] == ['kept']
    assert store.schema_problem() is None


def test_the_upgraded_database_delivers_what_was_pending(tmp_path, world):
    old_database(str(tmp_path / 'nova_error_notifier.sqlite'))
    conf, store, ingest, router, pool, clock = world(receivers=('oncall',))
    clock.now = 1790000000.0 + 60
    assert tc.drain(pool) == ['sent']
    [(outcome, alert)] = tc.Recorder.calls['oncall']
    assert alert.instance_name == 'web-42' and alert.exception == \
        'NoValidHost'
    # And it takes new work: the incident that was open before the upgrade
    # and a new one are routed.
    ingest.add(tc.record())
    clock.now += 10
    assert router.route_due() == 2
    assert {a.request_id for _, a in tc.Recorder.calls['oncall']} == {
        'req-6a0c5f2e-0000-4000-8000-000000000001'}
    assert len(tc.drain(pool)) == 2


def test_an_empty_database_is_told_to_run_db_sync(tmp_path):
    engine = sa.create_engine('sqlite:///%s' % (tmp_path / 'empty.sqlite'))
    problem = migration.problem(engine)
    assert 'empty' in problem and 'db sync' in problem
    migration.upgrade(engine, migration.BASE)
    problem = migration.problem(engine)
    assert 'at revision %s' % migration.BASE in problem
    migration.upgrade(engine)
    assert migration.problem(engine) is None


def test_db_sync_and_version_commands(tmp_path, capsys):
    from nova_error_notifier.cmd import manage
    path = tmp_path / 'c.conf'
    path.write_text('[database]\nconnection = %s\n' % old_database(
        str(tmp_path / 'o.sqlite')))
    args = ['--config-file', str(path)]
    assert manage.main(args + ['db', 'version']) == 0
    assert 'revision none' in capsys.readouterr().out
    assert manage.main(args + ['db', 'sync']) == 0
    out = capsys.readouterr().out
    assert 'upgraded from pre-migration to revision %s' % migration.head() \
        in out
    assert manage.main(args + ['db', 'sync']) == 0
    assert 'already at revision' in capsys.readouterr().out
    assert manage.main(args + ['db', 'version']) == 0
    out = capsys.readouterr().out
    newest = migration.head()
    assert 'revision %s (newest: %s)' % (newest, newest) in out


def test_delivery_connection_is_a_deprecated_alias(tmp_path):
    from oslo_config import cfg
    conf = cfg.ConfigOpts()
    outbox.register_opts(conf)
    conf([], default_config_files=[])
    conf.set_override('connection', 'sqlite:///old.sqlite', group='delivery')
    assert outbox.connection_url(conf) == 'sqlite:///old.sqlite'
    conf.set_override('connection', 'sqlite:///new.sqlite', group='database')
    assert outbox.connection_url(conf) == 'sqlite:///new.sqlite'


world = tc.world
