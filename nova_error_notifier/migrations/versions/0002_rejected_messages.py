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
"""Rejected messages and leases; MySQL column types that mean the same.

On MySQL: DOUBLE times, MEDIUMTEXT JSON documents, byte-exact id keys.

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

JSON_COLUMNS = (('incidents', 'records'), ('deliveries', 'alert'),
                ('digests', 'members'))
#: Times (seconds since the epoch): (table, column, nullable).
TIME_COLUMNS = (('messages', 'received_at', False),
                ('incidents', 'opened_at', False),
                ('incidents', 'updated_at', False),
                ('incidents', 'due_at', False),
                ('deliveries', 'created_at', False),
                ('deliveries', 'next_attempt_at', False),
                ('deliveries', 'claimed_until', True),
                ('deliveries', 'finished_at', True),
                ('dead_letters', 'created_at', False),
                ('digests', 'opened_at', False),
                ('digests', 'due_at', False))
#: Identifier columns: (table, column, nullable).
KEY_COLUMNS = (('messages', 'message_id', False), ('incidents', 'key', False),
               ('incidents', 'request_id', True),
               ('incidents', 'instance_uuid', True))


def _time_type():
    return sa.Float().with_variant(mysql.DOUBLE(asdecimal=False), 'mysql')


def _key_type():
    return sa.String(255).with_variant(
        mysql.VARCHAR(255, charset='utf8mb4', collation='utf8mb4_bin'),
        'mysql')


def upgrade():
    json_text = sa.Text().with_variant(mysql.MEDIUMTEXT(), 'mysql')
    # A development build made rejected_messages with create_all, before
    # this revision existed: keep the table it has.
    tables = set(sa.inspect(op.get_bind()).get_table_names())
    if 'rejected_messages' not in tables:
        _create_rejected_messages(json_text)
    if 'leases' not in tables:
        op.create_table(
            'leases',
            sa.Column('name', sa.String(64), primary_key=True),
            sa.Column('owner', sa.String(64), nullable=False),
            sa.Column('expires_at', _time_type(), nullable=False))
    if op.get_bind().dialect.name == 'mysql':
        _mysql_types()


def _create_rejected_messages(json_text):
    op.create_table(
        'rejected_messages',
        sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
        sa.Column('message_key', _key_type(), nullable=False,
                  unique=True),
        sa.Column('event_type', sa.String(255), nullable=True),
        sa.Column('priority', sa.String(16), nullable=True),
        sa.Column('publisher_id', sa.String(255), nullable=True),
        sa.Column('reason', sa.Text, nullable=True),
        sa.Column('attempts', sa.Integer, nullable=False),
        sa.Column('first_seen', _time_type(), nullable=False, index=True),
        sa.Column('last_seen', _time_type(), nullable=False),
        sa.Column('body', json_text, nullable=True))


def _mysql_types():
    # TEXT stops at 64 KiB: a digest or an incident's records need more.
    for table, column in JSON_COLUMNS:
        op.alter_column(table, column, type_=mysql.MEDIUMTEXT(),
                        existing_type=sa.Text(), existing_nullable=False)
    # FLOAT is single precision: at today's epoch, whole minutes.
    for table, column, nullable in TIME_COLUMNS:
        op.alter_column(table, column,
                        type_=mysql.DOUBLE(asdecimal=False),
                        existing_type=sa.Float(),
                        existing_nullable=nullable)
    # Its default collations take "ABC" and "abc " for "abc": two
    # different message ids must not be one.
    for table, column, nullable in KEY_COLUMNS:
        op.alter_column(table, column, type_=mysql.VARCHAR(
            255, charset='utf8mb4', collation='utf8mb4_bin'),
            existing_type=sa.String(255), existing_nullable=nullable)
