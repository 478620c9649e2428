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
"""Wake-up calls from one stage to the next one, across processes.

A stage that sleeps until its next piece of work is due (the router, the
delivery workers) says when it means to wake up (:meth:`Wakeup.plan`); the
stage upstream of it calls :meth:`Wakeup.notify` with the time new work is
due, and the sleeper is woken only when that is earlier than planned.

Made with ``shared=True`` before the service forks its worker processes,
a wake-up works between the processes of one ``nova-error-notifier``
command (a ``multiprocessing`` event and value). Stages started apart
(``--role``), or on other hosts, do not share one: the sleeper then wakes
up at its idle period and finds the work in the database.
"""

import math
import multiprocessing
import threading

#: ``plan()`` value while the sleeper is planning: wake it at any notify.
_PLANNING = -math.inf


class Wakeup:
    """An event with the time its sleeper means to wake up."""

    def __init__(self, shared=False):
        self.shared = shared
        if shared:
            self._event = multiprocessing.Event()
            self._at = multiprocessing.Value('d', _PLANNING, lock=False)
        else:
            self._event = threading.Event()
            self._at = _Box(_PLANNING)

    # -- the sleeper ---------------------------------------------------------

    def plan(self, at=None):
        """The sleeper means to wake up at ``at`` (None: it is planning).

        While it plans (before it read what is due), any notify wakes it.
        """
        self._at.value = _PLANNING if at is None else float(at)

    def clear(self):
        self._event.clear()

    def wait(self, timeout):
        """Sleep until notified or ``timeout`` seconds; True if notified."""
        return self._event.wait(timeout)

    def is_set(self):
        return self._event.is_set()

    # -- the stage upstream ----------------------------------------------

    def notify(self, due=None):
        """New work is due at ``due`` (None: now). Wake up if it is earlier."""
        planned = self._at.value
        if due is None or planned == _PLANNING or due < planned:
            self._event.set()

    def set(self):
        """Wake the sleeper now (threading.Event compatible)."""
        self._event.set()


class _Box:
    __slots__ = ('value',)

    def __init__(self, value):
        self.value = value
