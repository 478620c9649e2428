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
"""Wake-ups between stages, in one process and across a fork."""

import multiprocessing

import pytest

from nova_error_notifier import wakeup


@pytest.mark.parametrize('shared', [False, True])
def test_only_earlier_work_wakes_a_planned_sleeper(shared):
    call = wakeup.Wakeup(shared=shared)
    call.plan(100.0)
    call.notify(150.0)
    assert not call.is_set()
    call.notify(99.0)
    assert call.is_set()
    call.clear()
    call.notify()
    assert call.is_set()


@pytest.mark.parametrize('shared', [False, True])
def test_a_planning_sleeper_is_woken_by_anything(shared):
    call = wakeup.Wakeup(shared=shared)
    call.plan(None)
    call.notify(1e12)
    assert call.wait(0)


def _notify_from_child(call):
    call.notify(5.0)


def test_a_shared_wakeup_crosses_a_fork():
    call = wakeup.Wakeup(shared=True)
    call.plan(10.0)
    child = multiprocessing.get_context('fork').Process(
        target=_notify_from_child, args=(call,))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    assert call.wait(5)
