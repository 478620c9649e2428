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
"""The store process of a listener: a real spawned process, a real outbox.

Batches cross the pipe as oslo.messaging hands them to the endpoint; the
store process parses and stores them in a SQLite outbox the test reads.
"""

import logging
import os
import signal
import time

from oslo_config import cfg
import pytest

from nova_error_notifier.cmd import service as cmd_service
from nova_error_notifier import handoff
from nova_error_notifier import listener as listener_mod
from nova_error_notifier import opts
from nova_error_notifier import outbox
from nova_error_notifier import service
from tests.unit import nova_messages as nm
from tests.unit import outbox_fixtures as fx


def _conf_file(tmp_path, extra=''):
    path = tmp_path / 'handoff.conf'
    path.write_text('\n'.join([
        '[DEFAULT]', 'transport_url = fake://', 'rules = all',
        '[rule:all]', 'events = *', 'receivers = ops',
        '[receiver:ops]', 'driver = log',
        '[listener]', 'watch_state_changes = true',
        '[delivery]', 'state_dir = %s' % tmp_path, extra, '']))
    return path


def _conf(path):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(['--config-file', str(path)], project=service.PROJECT,
         default_config_files=[])
    return conf


class _Wakeup:
    def __init__(self):
        self.notified = []

    def notify(self, due=None):
        self.notified.append(due)


def _error(message_id, request_id, instance=nm.INSTANCE):
    return {'ctxt': nm.context(request_id=request_id),
            'publisher_id': 'compute.hv-12',
            'event_type': 'compute.instance.create.error',
            'payload': nm.legacy_usage(instance_id=instance,
                                       exception="NoValidHost('none')"),
            'metadata': nm.metadata(message_id=message_id)}


def _update(message_id, old_state, state):
    return {'ctxt': nm.context(), 'publisher_id': 'nova-compute:hv-12',
            'event_type': 'instance.update',
            'payload': nm.versioned_update(old_state, state),
            'metadata': nm.metadata(message_id=message_id)}


@pytest.fixture
def world(tmp_path):
    path = _conf_file(tmp_path)
    conf = _conf(path)
    wakeup = _Wakeup()
    naps = []
    process = handoff.StoreProcess(
        cmd_service.build_conf, ['--config-file', str(path)], 3,
        wakeup=wakeup, sleep=naps.append)
    process.start()
    store = outbox.Store.from_conf(conf)
    yield process, store, wakeup, naps
    process.stop()


def _requests(store):
    return sorted(r['request_id'] for r in fx.rows(store, 'incidents'))


def test_a_batch_is_stored_before_the_answer(world):
    process, store, wakeup, _ = world
    before = time.time()
    answer = process.handle(0, 'error', [_error('m1', 'req-a'),
                                         _error('m2', 'req-b')])
    assert answer is None
    # Committed when the answer came: oslo.messaging acknowledges next.
    assert _requests(store) == ['req-a', 'req-b']
    assert len(fx.rows(store, 'messages')) == 2
    # The router is woken with the due time of the incidents opened.
    [due] = wakeup.notified
    assert due >= before
    # The same messages again (a redelivery) change nothing.
    assert process.handle(0, 'error', [_error('m1', 'req-a')]) is None
    assert len(fx.rows(store, 'messages')) == 2


def test_its_title_names_it(world):
    process = world[0]
    with open('/proc/%d/cmdline' % process.pid, 'rb') as handle:
        title = handle.read().replace(b'\0', b' ').decode()
    assert 'nova-error-notifier: store worker(3)' in title


def test_a_killed_store_process_hands_the_batch_back_and_is_replaced(
        world, caplog):
    process, store, _, naps = world
    old = process.pid
    os.kill(old, signal.SIGKILL)
    time.sleep(0.2)
    with caplog.at_level(logging.ERROR, logger='nova_error_notifier'):
        answer = process.handle(0, 'error', [_error('m1', 'req-a')])
    assert answer == listener_mod.REQUEUE
    assert 'was killed by signal 9' in caplog.text
    assert 'goes back to the queue' in caplog.text
    assert naps, 'a pause before oslo.messaging redelivers'
    assert _requests(store) == []
    # The redelivery starts a new store process and is stored.
    assert process.handle(0, 'error', [_error('m1', 'req-a')]) is None
    assert process.pid not in (None, old)
    assert _requests(store) == ['req-a']


def test_a_message_nested_too_deep_to_hand_over_is_dropped_alone(
        world, caplog):
    process, store, _, _ = world
    deep = {}
    node = deep
    for _ in range(100000):
        node['x'] = {}
        node = node['x']
    hostile = _error('m-deep', 'req-deep')
    hostile['payload']['metadata'] = deep
    with caplog.at_level(logging.WARNING, logger='nova_error_notifier'):
        answer = process.handle(0, 'error', [hostile, _error('m2', 'req-b')])
    assert answer is None
    assert 'Dropped unreadable notification message_id=m-deep' in \
        caplog.text
    assert _requests(store) == ['req-b']


def test_a_broken_outbox_fails_the_start_with_its_reason(tmp_path):
    blocked = tmp_path / 'not-a-dir'
    blocked.write_text('a file where the outbox directory should be')
    path = _conf_file(tmp_path, '[database]\nconnection = sqlite:///%s'
                      % (blocked / 'outbox.sqlite'))
    process = handoff.StoreProcess(cmd_service.build_conf,
                                   ['--config-file', str(path)], 0,
                                   sleep=lambda seconds: None)
    with pytest.raises(handoff.StoreProcessError) as caught:
        process.start(timeout=60)
    assert 'outbox' in str(caught.value).lower() or \
        'not-a-dir' in str(caught.value)
    assert process.pid is None


def test_it_exits_when_the_listener_is_gone(world):
    process = world[0]
    child = process._process
    # What a listener killed with SIGKILL leaves: the end of the pipe.
    process._conn.close()
    child.join(20)
    assert child.exitcode == 0


def test_signals_for_the_group_are_not_for_it(world):
    process = world[0]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(process.pid, sig)
    time.sleep(0.3)
    assert process.handle(0, 'error', [_error('m1', 'req-a')]) is None


def test_stop_ends_it_and_later_batches_go_back(world):
    process, store, _, _ = world
    child = process._process
    process.stop()
    assert child.exitcode == 0
    assert process.handle(0, 'error', [_error('m1', 'req-a')]) == \
        listener_mod.REQUEUE
    assert _requests(store) == []


class _Screened:
    """A store process that records what reaches it."""

    def __init__(self):
        self.calls = []

    def handle(self, bus_index, priority, messages):
        self.calls.append((bus_index, priority,
                           [m['metadata']['message_id'] for m in messages]))
        return None


def _screen(tmp_path):
    conf = _conf(_conf_file(tmp_path))
    plugins = service.load_endpoints(conf, listener_mod.screen_only)
    return listener_mod.BatchEndpoint(plugins, None)


def test_the_listener_hands_over_only_what_a_plugin_reads(tmp_path):
    screened = _Screened()
    endpoint = listener_mod.Handoff(_screen(tmp_path), screened, 1)
    assert endpoint.priorities == ['critical', 'error', 'info']
    routine = [_update('u1', 'building', 'building'),
               _update('u2', 'active', 'active'),
               dict(_update('u3', 'active', 'active'),
                    event_type='instance.power_off.end')]
    assert endpoint.info(routine) is None
    assert screened.calls == []
    wanted = [_update('e1', 'active', 'error'),
              _update('b1', 'building', 'active'),
              dict(_update('c1', 'building', 'active'),
                   event_type='instance.create.end'),
              # Not shaped as Nova sends it: for the parser to refuse.
              dict(_update('x1', 'active', 'active'), payload=['odd'])]
    assert endpoint.info(routine + wanted) is None
    assert screened.calls == [(1, 'info', ['e1', 'b1', 'c1', 'x1'])]
    # Every ERROR message goes, whatever it is.
    endpoint.error([_error('m1', 'req-a')])
    assert screened.calls[-1] == (1, 'error', ['m1'])


def test_screening_loses_no_error_of_the_in_process_path(tmp_path):
    """What the screen leaves out, the plugins would have dropped anyway."""
    conf = _conf(_conf_file(tmp_path))
    collected = []
    plugins = service.load_endpoints(conf, collected.append)
    endpoint = listener_mod.BatchEndpoint(
        plugins, lambda items: collected.extend(items))
    states = ('building', 'active', 'error', 'stopped', 'deleted', None, 7)
    messages = [_update('%s-%s' % (old, new), old, new)
                for old in states for new in states]
    left_out = [m for m in messages
                if m not in endpoint.wanted('info', messages)]
    assert left_out
    collected.clear()
    endpoint.info(left_out)
    assert collected == []
    endpoint.info(messages)
    assert {r.event_type for r in collected} == {'instance.update'}
    assert len(collected) >= 2
