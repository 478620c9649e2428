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
"""Fixtures for every test: fresh databases on each outbox backend.

``backend_url`` (function, parametrised ``sqlite``, ``mariadb``,
``postgresql``): the SQLAlchemy URL of a new, empty database, dropped
after the test (tests/databases.py); a test asking for it runs once per
backend. ``server_backend_url``: the same on MariaDB and PostgreSQL only,
for what SQLite does not do (column lengths, NUL bytes); ``mariadb_url``
and ``postgresql_url``: one of them. When a server
cannot be reached, the test fails saying what to run; it never skips.
"""

import pytest

from tests import databases


def _fresh(backend, directory):
    if backend in databases.SERVERS:
        try:
            databases.server(backend).check()
        except databases.Unreachable as exc:
            pytest.fail(str(exc), pytrace=False)
    with databases.fresh_database(backend, directory) as url:
        yield url


@pytest.fixture(params=databases.BACKENDS)
def backend_url(request, tmp_path):
    yield from _fresh(request.param, tmp_path)


@pytest.fixture(params=databases.SERVERS)
def server_backend_url(request, tmp_path):
    yield from _fresh(request.param, tmp_path)


@pytest.fixture
def mariadb_url(tmp_path):
    yield from _fresh('mariadb', tmp_path)


@pytest.fixture
def postgresql_url(tmp_path):
    yield from _fresh('postgresql', tmp_path)
