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
"""The outbox schema's versions: Alembic, run from the package.

``nova-error-notifier-manage db sync`` brings a database to the newest
revision (``head``); ``db version`` says where it is. The service brings
its default SQLite file to head itself at start-up; on a database shared by
several replicas (MySQL, PostgreSQL) it refuses to start unless the schema
is at head, so that an upgrade is one deliberate ``db sync`` rather than
several replicas racing to alter the same tables.

A database made by the releases before migrations (``create_all``, no
``alembic_version`` table) is recognised by its tables: it gets the index
the oldest of them lack, is stamped at the first revision, and upgraded
with every row kept.
"""

import logging
import os

from alembic import command
from alembic import config as alembic_config
from alembic import migration as alembic_migration
from alembic import script as alembic_script
import sqlalchemy as sa

#: The first revision: the schema the releases before migrations made.
BASE = '0001'
_LOCATION = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         'migrations')
_PRE_MIGRATION_TABLES = frozenset(('messages', 'incidents', 'deliveries',
                                   'dead_letters', 'digests'))
_STORM_INDEX = 'deliveries_receiver_created_at_idx'

# Alembic says "Context impl SQLiteImpl" and each step at INFO: the
# service and the commands say what changed themselves.
logging.getLogger('alembic').setLevel(logging.WARNING)


def _config(connection=None):
    config = alembic_config.Config()
    config.set_main_option('script_location', _LOCATION)
    config.attributes['connection'] = connection
    return config


def head():
    """The newest revision of the schema."""
    return alembic_script.ScriptDirectory.from_config(
        _config()).get_current_head()


def current(connection):
    """The revision the database is at, or None (empty or pre-migration)."""
    return alembic_migration.MigrationContext.configure(
        connection).get_current_revision()


def version(engine):
    """(revision or None, whether the database holds outbox tables)."""
    with engine.connect() as connection:
        tables = set(sa.inspect(connection).get_table_names())
        return current(connection), bool(tables & _PRE_MIGRATION_TABLES)


def upgrade(engine, revision='head'):
    """Bring the database to ``revision``; return (before, after)."""
    with engine.begin() as connection:
        before = current(connection)
        if before is None:
            inspector = sa.inspect(connection)
            tables = set(inspector.get_table_names())
            if _PRE_MIGRATION_TABLES <= tables:
                _adopt(connection, inspector)
                before = 'pre-migration'
        command.upgrade(_config(connection), revision)
        return before, current(connection)


def _adopt(connection, inspector):
    """Stamp a database made by create_all at the first revision."""
    names = {index['name'] for index in inspector.get_indexes('deliveries')}
    if _STORM_INDEX not in names:
        connection.execute(sa.text(
            'CREATE INDEX %s ON deliveries (receiver, created_at)'
            % _STORM_INDEX))
    command.stamp(_config(connection), BASE)


def problem(engine):
    """Why the service cannot use this database as it is, or None."""
    at, has_tables = version(engine)
    newest = head()
    if at == newest:
        return None
    if at is None:
        what = ('made before migrations' if has_tables else
                'empty (no outbox tables)')
    else:
        what = 'at revision %s' % at
    return ('the outbox database is %s, not at revision %s: run '
            '"nova-error-notifier-manage --config-file ... db sync" first'
            % (what, newest))
