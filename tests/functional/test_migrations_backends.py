"""The outbox migrations on SQLite, MariaDB and PostgreSQL (real servers).

oslo.db's ``ModelsMigrationsSync`` compares the schema the migrations make
with the models on each backend; the ids that MySQL's default collations
would merge stay apart.
"""

import unittest

from oslo_db.sqlalchemy import test_migrations
import pytest
import sqlalchemy as sa

from nova_error_notifier import migration
from nova_error_notifier import opts
from nova_error_notifier import outbox
from nova_error_notifier import record as rec
from tests import databases


class _Sync(test_migrations.ModelsMigrationsSync):

    backend = None

    def setUp(self):
        super().setUp()
        self._database = databases.fresh_database(self.backend,
                                                  self._tmp())
        url = self._database.__enter__()
        self.addCleanup(self._database.__exit__, None, None, None)
        self.engine = sa.create_engine(url)
        self.addCleanup(self.engine.dispose)

    def _tmp(self):
        import tempfile
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        return directory.name

    def get_engine(self):
        return self.engine

    def get_metadata(self):
        return outbox.metadata

    def db_sync(self, engine):
        migration.upgrade(engine)


class TestSyncSQLite(_Sync, unittest.TestCase):
    backend = 'sqlite'


class TestSyncMariaDB(_Sync, unittest.TestCase):
    backend = 'mariadb'


class TestSyncPostgreSQL(_Sync, unittest.TestCase):
    backend = 'postgresql'


def test_upgrade_step_by_step_and_version(backend_url):
    engine = sa.create_engine(backend_url)
    try:
        assert migration.version(engine) == (None, False)
        assert 'empty' in migration.problem(engine)
        migration.upgrade(engine, migration.BASE)
        assert migration.version(engine) == (migration.BASE, True)
        assert 'db sync' in migration.problem(engine)
        migration.upgrade(engine)
        assert migration.problem(engine) is None
    finally:
        engine.dispose()


@pytest.mark.parametrize('first,second', [
    ('msg-abc', 'msg-ABC'), ('msg-abc', 'msg-abc '), ('msg-abc', ' msg-abc'),
    ('r\u00e9q', 'req')])
def test_ids_that_a_collation_would_merge_stay_apart(backend_url, first,
                                                     second):
    store = outbox.Store(backend_url)
    store.create_schema()
    from nova_error_notifier import ingest
    from oslo_config import cfg
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    grouping = ingest.Ingest(conf, store)
    conf([], default_config_files=[])

    def record(message_id):
        return rec.ErrorRecord(
            event_type='compute.instance.create.error', priority='ERROR',
            format='legacy', message_id=message_id,
            request_id='req-' + message_id, instance_uuid=message_id,
            exception='NoValidHost')
    ids = grouping.add_many([record(first), record(second)])
    assert len(set(ids)) == 2 and None not in ids
    assert store.counts()['incidents.open'] == 2
    store.engine.dispose()


def test_a_shared_database_not_at_head_is_refused(server_backend_url,
                                                  tmp_path):
    from nova_error_notifier import service
    from oslo_config import cfg
    conf = cfg.ConfigOpts()
    outbox.register_opts(conf)
    conf([], default_config_files=[])
    conf.set_override('connection', server_backend_url, group='database')
    with pytest.raises(service.StartupError) as info:
        service.open_store(conf)
    assert 'db sync' in str(info.value)
    store = outbox.Store(server_backend_url)
    store.upgrade()
    store.engine.dispose()
    opened = service.open_store(conf)
    assert opened.schema_problem() is None
    opened.engine.dispose()
