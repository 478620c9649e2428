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
"""Alembic environment of the outbox: run on the connection it is given."""

from alembic import context
import sqlalchemy as sa

from nova_error_notifier import outbox


def run_migrations():
    config = context.config
    connection = config.attributes.get('connection')
    if connection is None:          # the alembic command line
        engine = sa.create_engine(config.get_main_option('sqlalchemy.url'))
        with engine.begin() as connection:
            _run(connection)
        return
    _run(connection)


def _run(connection):
    context.configure(connection=connection,
                      target_metadata=outbox.metadata,
                      render_as_batch=connection.dialect.name == 'sqlite',
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
