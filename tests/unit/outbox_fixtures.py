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
"""Shared test helpers: the stages on a real SQLite outbox.

``world`` (a fixture factory, imported as ``world = outbox_fixtures.world``
by the modules that use it) builds the configuration, the store, grouping
(:class:`~nova_error_notifier.ingest.Ingest`), routing
(:class:`~nova_error_notifier.routing.Router`) and the delivery workers
on one SQLite file, with receivers whose driver records what it is asked
to deliver (:class:`Recorder`) and a clock the test moves (:class:`Clock`).
"""

import collections
import sqlite3

from oslo_config import cfg
import pytest

from nova_error_notifier import config
from nova_error_notifier import delivery
from nova_error_notifier.drivers import base
from nova_error_notifier import ingest
from nova_error_notifier import opts
from nova_error_notifier import outbox
from nova_error_notifier import record as rec
from nova_error_notifier import routing

REQ = 'req-11111111-2222-4333-8444-555555555555'
UUID = '7f6e5d4c-3b2a-4918-8776-655443322110'

#: What ``world()`` returns.
World = collections.namedtuple('World',
                               'conf store ingest router pool clock')


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


class Recorder(base.Driver):
    """A test driver that keeps what it is asked to deliver."""

    calls = {}
    failures = {}

    def notify(self, alert):
        plan = Recorder.failures.get(self.receiver) or []
        if plan:
            error = plan.pop(0)
            if error is not None:
                Recorder.calls.setdefault(self.receiver, []).append(
                    ('failed', alert))
                raise error
        Recorder.calls.setdefault(self.receiver, []).append(('sent', alert))


@pytest.fixture
def world(tmp_path, monkeypatch):
    """build(extra='', receivers=('a', 'b')) -> World."""
    Recorder.calls = {}
    Recorder.failures = {}

    def build(extra='', receivers=('a', 'b')):
        path = tmp_path / 'c.conf'
        lines = ['[DEFAULT]', 'rules = r', '[rule:r]', 'events = *',
                 'exclude_exceptions = Ignored',
                 'receivers = %s' % ', '.join(receivers)]
        for name in set(receivers) | {'fb'}:
            lines += ['[receiver:%s]' % name, 'driver = log']
        lines += ['[delivery]', 'state_dir = %s' % tmp_path,
                  'retry_initial_delay = 1', 'retry_max_delay = 8',
                  'retry_deadline = 60', extra, '']
        path.write_text('\n'.join(lines))
        conf = cfg.ConfigOpts()
        opts.register_opts(conf)
        conf(['--config-file', str(path)], project='nova_error_notifier',
             default_config_files=[])
        settings = config.load(conf)
        for receiver in settings.receivers.values():
            receiver.driver = Recorder(conf, receiver.name)
        clock = Clock()
        store = outbox.Store.from_conf(conf)
        store.clock = clock
        store.create_schema()
        return World(conf, store, *stages(conf, store, settings, clock),
                     clock)
    return build


def stages(conf, store, settings, clock):
    """(ingest, router, delivery pool) on ``store``."""
    router = routing.Router(conf, store, settings, clock=clock)
    return (ingest.Ingest(conf, store, clock=clock), router,
            delivery.DeliveryPool(conf, store, settings,
                                  wakeup=router.wakeup, clock=clock))


def record(event_type='instance.create.error', message_id='m1',
           request_id=REQ, instance=UUID, exception='NoValidHost',
           synthetic=(rec.CREATE_FAILED,), fmt='versioned', message=None):
    return rec.ErrorRecord(
        event_type=event_type, priority='ERROR', format=fmt,
        synthetic_events=synthetic, message_id=message_id,
        request_id=request_id, instance_uuid=instance, exception=exception,
        message=message)


def drain(pool):
    """Deliver everything due now; return the outcomes."""
    outcomes = []
    while True:
        row = pool.claim()
        if row is None:
            return outcomes
        outcomes.append(pool.deliver(row))


def rows(store, table):
    """Every row of ``table`` (a name) of a SQLite store, as dicts."""
    with sqlite3.connect(store.url.split(':///', 1)[1]) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute('SELECT * FROM %s' % table)]


class BrokenStore(outbox.Store):
    """A real Store whose database file cannot be opened."""

    def __init__(self, path):
        import sqlalchemy as sa
        self.url = 'sqlite:///%s' % path
        self.clock = Clock()
        self.owner = 'test'
        self.is_sqlite = True
        self.engine = sa.create_engine(self.url)
        self._lock = None
        self._secrets = []
        self.path = None
