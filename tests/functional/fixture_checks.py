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
"""Checks the fixture tests share: a fixture that stops, fails to start or
loses its test process leaves nothing behind.

Used by ``test_keystone_fixture.py``, ``test_nova_api_fixture.py`` and
``test_rabbitmq_fixture.py``; the marker functions are the fixture
module's ``_marked_pids`` and ``_sweep`` (procutil.py).
"""

import json
import os
import subprocess
import sys
import time

import pytest

try:  # tests/ and tests/functional/ are packages, or the root is on sys.path
    from tests.functional import procutil
except ModuleNotFoundError as exc:
    if exc.name not in ('tests', 'tests.functional'):
        raise
    import procutil  # rootdir-less run: this directory is on sys.path

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__),
                                         os.pardir, os.pardir))

port_open = procutil.port_open


def assert_stopped_clean(server, marked_pids, tmpdir, port):
    """After ``server.stop()``: no process, no directory, the port closed."""
    assert server.processes() == []
    assert marked_pids(os.path.basename(tmpdir)) == []
    assert not os.path.exists(tmpdir)
    assert not port_open(port)


def assert_start_fails_clean(server, error_class, base_dir, *expected):
    """``server.start()`` raises *error_class*, leaving nothing behind.

    The report says it failed to start and holds each *expected* text (the
    server's own explanation); no process is left, and *base_dir* (the
    server's ``base_dir``) is empty again.  Returns the report.
    """
    with pytest.raises(error_class) as info:
        server.start()
    report = str(info.value)
    assert 'failed to start' in report
    for text in expected:
        assert text in report
    assert server.processes() == []
    assert os.listdir(base_dir) == []
    return report


def _wait_gone(marked_pids, marker, tmpdir, timeout=30):
    deadline = time.monotonic() + timeout
    while marked_pids(marker) or os.path.exists(tmpdir):
        assert time.monotonic() < deadline, (
            'left over: %s, dir exists: %s' % (
                marked_pids(marker), os.path.exists(tmpdir)))
        time.sleep(0.2)


def assert_watchdog_cleans_up(child_code, args, marked_pids, sweep,
                              after=None):
    """A process that starts a fixture dies by SIGKILL: the watchdog tidies.

    *child_code* runs as ``python -c child_code REPO_ROOT *args``; it
    starts the fixture, prints one JSON line with at least ``tmpdir``,
    ``port`` and ``pids`` (``server.processes()``), then sleeps.  It is
    killed outright (no stop(), no atexit); then every marked process and
    the temporary directory must be gone within 30 s, and the port closed
    within 10 s more.  *after(info)* (the JSON line, decoded) runs at the
    end whatever happened, for what the dead process could not tidy.
    """
    child = subprocess.Popen(
        [sys.executable, '-c', child_code, REPO_ROOT] + list(args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    info = None
    try:
        line = child.stdout.readline()
        assert line, child.stderr.read().decode('utf-8', 'replace')
        info = json.loads(line)
        assert info['pids'] and port_open(info['port'])
        child.kill()  # SIGKILL: no stop(), no atexit, nothing
        child.wait()
        _wait_gone(marked_pids, os.path.basename(info['tmpdir']),
                   info['tmpdir'])
        # The socket may take a moment to close after its process died.
        port_deadline = time.monotonic() + 10
        while port_open(info['port']) and time.monotonic() < port_deadline:
            time.sleep(0.2)
        assert not port_open(info['port'])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
        if info:
            sweep(os.path.basename(info['tmpdir']), grace=1)
            if after is not None:
                after(info)
