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
"""The region of an incident: several buses, one outbox.

``incidents.region`` is the region of the bus the incident's messages came
from (``[bus:NAME] region_name``); NULL, as in every row written before,
is the default bus without a region. An identifier column, byte-exact on
MySQL as the others are.

Revision ID: 0003
Revises: 0002
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def _key_type():
    return sa.String(255).with_variant(
        mysql.VARCHAR(255, charset='utf8mb4', collation='utf8mb4_bin'),
        'mysql')


def upgrade():
    # A nullable column without a default: no table rewrite on MySQL or
    # PostgreSQL, a plain ALTER TABLE ADD COLUMN on SQLite.
    op.add_column('incidents', sa.Column('region', _key_type(),
                                         nullable=True))
