"""Process management shared by the functional-test fixtures.

``rabbitmq.py``, ``keystone.py`` and ``nova_api.py`` start real servers as
child processes.  Each fixture tags every process it starts with a marker
environment variable (``<MARKER_ENV>=<marker>``, the marker being the name of
the fixture's temporary directory), so that:

* ``marked_pids()`` finds them through ``/proc/<pid>/environ``;
* ``sweep()`` SIGTERMs, then SIGKILLs, whatever still carries the marker;
* ``start_watchdog()`` starts a small process that does the same, and
  removes the temporary directory, when the test process dies without
  stopping the fixture (its standard input, a pipe from the test process,
  reaches end of file however the test process goes away).

``MarkedFixture`` is the base class of those fixtures: what they do alike
with the marker, the watchdog and their temporary directory.

Also here: log excerpts for failure reports, free ports, stopping a child
process group, polling an HTTP endpoint until it answers 200, and writing
values and sections into oslo.config INI files.

Standard library only.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from urllib import error as urllib_error
from urllib import request as urllib_request

HOST = '127.0.0.1'
LOG_TAIL_LINES = 60

# Loopback requests never go through an http_proxy from the environment.
NO_PROXY_OPENER = urllib_request.build_opener(urllib_request.ProxyHandler({}))


# --------------------------------------------------------------------------
# Logs, ports, configuration files
# --------------------------------------------------------------------------

def excerpt(path, head=0, tail=LOG_TAIL_LINES):
    """The first *head* and last *tail* lines of a text file."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as exc:
        return '<%s unreadable: %s>' % (path, exc)
    lines = data.decode('utf-8', 'replace').splitlines()
    if not lines:
        return '<empty>'
    if len(lines) <= head + tail:
        return '\n'.join(lines)
    return '\n'.join(lines[:head] + ['[... %d lines ...]' % (
        len(lines) - head - tail)] + lines[len(lines) - tail:])


def free_ports(count, host=HOST):
    """Return *count* distinct free TCP ports on *host*."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port, host=HOST):
    """True when something accepts TCP connections on *host*:*port*."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def port_refused(port, host=HOST):
    """True when *host* refuses TCP connections to *port*.

    False when a connection is accepted; a time-out (2 s) or another error
    raises, since it proves neither.
    """
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def ini_value(name, value):
    """*value* as it must be written for oslo.config to read it back."""
    value = str(value)
    if '\n' in value or '\r' in value or value != value.strip():
        raise ValueError('%s cannot be written to an INI file: %r' % (
            name, value))
    # oslo.config expands $name references; $$ is a literal $.
    return value.replace('$', '$$')


def ini_section(name, pairs):
    """The text of an INI section: ``[name]``, then ``key = value`` lines.

    Each value goes through ini_value(); the text ends with a newline.
    """
    return ''.join(['[%s]\n' % name] + [
        '%s = %s\n' % (key, ini_value(key, value)) for key, value in pairs])


# --------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------

def python_child_env(marker_env, marker, home, **extra):
    """The environment of a fixture's Python child processes.

    The test process's environment without OS_* and PYTHONSTARTUP, plus the
    marker, HOME=*home* (keeps ~/.config and the like out of the picture),
    a UTF-8 locale, unbuffered output, and *extra*.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('OS_', 'PYTHONSTARTUP'))}
    env.update({
        marker_env: marker,
        'HOME': home,
        'LC_ALL': env.get('LC_ALL') or 'C.UTF-8',
        'PYTHONUNBUFFERED': '1',
    })
    env.update(extra)
    return env


def terminate(proc, name, timeout, log):
    """Stop a child started with start_new_session=True.  None is fine.

    SIGTERM, up to *timeout* seconds for it to exit (*log* warns when it
    does not), then SIGKILL to its whole process group; closes its pipes.
    """
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning('%s did not stop within %.0fs, killing', name,
                        timeout)
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def wait_for_http_200(url, proc, deadline, what, error_class,
                      start_timeout, request_timeout):
    """Poll GET *url* until it answers 200.

    Raises *error_class* when *proc* (the server, named *what*) exits
    first, or when *deadline* (time.monotonic()) passes.
    """
    last = None
    while True:
        if proc.poll() is not None:
            raise error_class(
                'the %s server exited with code %s before answering' % (
                    what, proc.returncode))
        try:
            with NO_PROXY_OPENER.open(url, timeout=request_timeout) as resp:
                if resp.status == 200:
                    return
                last = 'HTTP %s' % resp.status
        except urllib_error.HTTPError as exc:
            last = 'HTTP %s' % exc.code
        except (OSError, ValueError) as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            raise error_class(
                'GET %s did not answer 200 within %.0fs (last: %s)' % (
                    url, start_timeout, last))
        time.sleep(0.1)


# --------------------------------------------------------------------------
# Marker sweep and a watchdog for hard crashes
# --------------------------------------------------------------------------

def marked_pids(marker_env, marker_value):
    """PIDs of live processes whose environment holds the marker."""
    needle = ('%s=%s' % (marker_env, marker_value)).encode()
    pids = []
    me = os.getpid()
    try:
        entries = os.listdir('/proc')
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open('/proc/%s/environ' % entry, 'rb') as f:
                env = f.read().split(b'\0')
        except OSError:
            continue
        if needle in env:
            pids.append(int(entry))
    return pids


def sweep(marker_env, marker_value, grace=5.0):
    """SIGTERM, then SIGKILL, every process carrying the marker."""
    pids = marked_pids(marker_env, marker_value)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = marked_pids(marker_env, marker_value)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def marker_functions(marker_env):
    """``(marked_pids(marker_value), sweep(marker_value, grace=5.0))``.

    The two functions above, bound to one fixture's marker variable.
    """
    def bound_marked_pids(marker_value):
        """PIDs of live processes whose environment holds our marker."""
        return marked_pids(marker_env, marker_value)

    def bound_sweep(marker_value, grace=5.0):
        """SIGTERM, then SIGKILL, every process carrying the marker."""
        sweep(marker_env, marker_value, grace)

    return bound_marked_pids, bound_sweep


# Run by the watchdog: waits for EOF on stdin (our pipe closes when the test
# process exits, however it exits), then sweeps and removes the directory.
_WATCHDOG_CODE = '''
import os, shutil, signal, sys, time
needle, tmpdir = sys.argv[1].encode(), sys.argv[2]
try:
    sys.stdin.buffer.read()
except BaseException:
    pass
def marked():
    found = []
    for e in os.listdir('/proc'):
        if not e.isdigit() or int(e) == os.getpid():
            continue
        try:
            with open('/proc/%s/environ' % e, 'rb') as f:
                if needle in f.read().split(b'\\0'):
                    found.append(int(e))
        except OSError:
            pass
    return found
for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 2.0)):
    pids = marked()
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    end = time.monotonic() + wait
    while pids and time.monotonic() < end:
        time.sleep(0.1)
        pids = marked()
if tmpdir:
    shutil.rmtree(tmpdir, ignore_errors=True)
'''


def start_watchdog(marker_env, marker_value, tmpdir):
    """Start the watchdog; return its Popen (give it to stop_watchdog()).

    *tmpdir*: the directory it removes after its sweep ('' for none).
    """
    needle = '%s=%s' % (marker_env, marker_value)
    return subprocess.Popen(
        [sys.executable, '-c', _WATCHDOG_CODE, needle, tmpdir or ''],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def stop_watchdog(watchdog):
    """Let the watchdog do its sweep now and wait for it.  None is fine."""
    if watchdog is None:
        return
    with contextlib.suppress(OSError):
        watchdog.stdin.close()
    try:
        watchdog.wait(timeout=20)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()


def clean_up(marker_env, marker, watchdog, tmpdir, keep_tmpdir):
    """The end of a fixture's stop(), after its own processes are stopped.

    Sweeps what still carries the marker (when *marker*), lets the watchdog
    finish, removes *tmpdir* unless *keep_tmpdir*.
    """
    if marker:
        sweep(marker_env, marker)
    stop_watchdog(watchdog)
    if tmpdir and not keep_tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)


# --------------------------------------------------------------------------
# The fixtures' common base
# --------------------------------------------------------------------------

class MarkedFixture:
    """Base of the fixtures whose child processes carry a marker.

    The subclass sets ``MARKER_ENV`` and, from its ``__init__``, the
    attributes ``tmpdir``, ``port`` (None until started), ``keep_tmpdir``,
    ``_server`` (the main child process), ``_watchdog`` and ``_marker``
    (the name of ``tmpdir``, once made); it provides ``start()`` and
    ``stop()``.
    """

    MARKER_ENV = None

    @property
    def running(self):
        """True while the main child process runs."""
        return self._server is not None and self._server.poll() is None

    def processes(self):
        """PIDs of live processes this fixture started (none once stopped)."""
        if not self._marker:
            return []
        return marked_pids(self.MARKER_ENV, self._marker)

    def _start_watchdog(self):
        self._watchdog = start_watchdog(
            self.MARKER_ENV, self._marker,
            '' if self.keep_tmpdir else self.tmpdir)

    def _require_started(self):
        if self.port is None:
            raise RuntimeError('%s is not started' % type(self).__name__)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()
