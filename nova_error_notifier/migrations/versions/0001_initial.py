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
"""The outbox as the first releases made it (``create_all``).

A database made by those releases, without an ``alembic_version`` table,
is stamped at this revision by ``db sync`` (after the storm-control index,
which the oldest of them lack, is added), then upgraded.

Revision ID: 0001
Revises: -
"""

from alembic import op
import sqlalchemy as sa

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'messages',
        sa.Column('message_id', sa.String(255), primary_key=True),
        sa.Column('incident_id', sa.String(36), nullable=True),
        sa.Column('received_at', sa.Float, nullable=False, index=True))
    op.create_table(
        'incidents',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('key', sa.String(255), nullable=False, unique=True),
        sa.Column('request_id', sa.String(255), nullable=True, index=True),
        sa.Column('instance_uuid', sa.String(255), nullable=True,
                  index=True),
        sa.Column('state', sa.String(16), nullable=False, index=True),
        sa.Column('records', sa.Text, nullable=False),
        sa.Column('message_count', sa.Integer, nullable=False),
        sa.Column('resolved', sa.Boolean, nullable=False),
        sa.Column('opened_at', sa.Float, nullable=False),
        sa.Column('updated_at', sa.Float, nullable=False),
        sa.Column('due_at', sa.Float, nullable=False, index=True),
        sa.Column('note', sa.String(255), nullable=True))
    op.create_table(
        'deliveries',
        sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
        sa.Column('incident_id', sa.String(36), nullable=False),
        sa.Column('receiver', sa.String(255), nullable=False),
        sa.Column('rule', sa.String(255), nullable=True),
        sa.Column('kind', sa.String(16), nullable=False),
        sa.Column('alert', sa.Text, nullable=False),
        sa.Column('state', sa.String(16), nullable=False, index=True),
        sa.Column('attempts', sa.Integer, nullable=False),
        sa.Column('created_at', sa.Float, nullable=False),
        sa.Column('next_attempt_at', sa.Float, nullable=False, index=True),
        sa.Column('claimed_by', sa.String(64), nullable=True),
        sa.Column('claimed_until', sa.Float, nullable=True),
        sa.Column('finished_at', sa.Float, nullable=True),
        sa.Column('last_error', sa.Text, nullable=True),
        sa.UniqueConstraint('incident_id', 'receiver',
                            name='uniq_deliveries0incident_id0receiver'))
    op.create_index('deliveries_receiver_created_at_idx', 'deliveries',
                    ['receiver', 'created_at'])
    op.create_table(
        'dead_letters',
        sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
        sa.Column('delivery_id', sa.Integer, nullable=False, unique=True),
        sa.Column('incident_id', sa.String(36), nullable=False),
        sa.Column('receiver', sa.String(255), nullable=False),
        sa.Column('reason', sa.Text, nullable=True),
        sa.Column('created_at', sa.Float, nullable=False))
    op.create_table(
        'digests',
        sa.Column('id', sa.String(36), primary_key=True),
        sa.Column('receiver', sa.String(255), nullable=False),
        sa.Column('rule', sa.String(255), nullable=True),
        sa.Column('state', sa.String(16), nullable=False, index=True),
        sa.Column('members', sa.Text, nullable=False),
        sa.Column('count', sa.Integer, nullable=False),
        sa.Column('opened_at', sa.Float, nullable=False),
        sa.Column('due_at', sa.Float, nullable=False))
