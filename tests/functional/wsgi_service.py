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
"""What the Keystone and nova-api fixtures share: an OpenStack WSGI service.

``WSGIServiceFixture`` is the base of ``KeystoneServer`` (keystone.py) and
``NovaAPIServer`` (nova_api.py).  Each runs a real OpenStack API in its own
temporary directory, served by ``wsgi_serve.py`` (next to this file) on
127.0.0.1, with every child process carrying the fixture's marker
(procutil.py).  ``start()`` goes:

1. the temporary directory (its name is the marker), the child processes'
   environment, the watchdog;
2. a listening socket on a free port, bound here and handed to the server
   later (``--listen-fd``): the port the service writes into Keystone's
   catalog cannot be taken by anyone meanwhile;
3. the subclass's own preparation, ``_prepare(deadline)``: configuration,
   databases, catalog;
4. the WSGI server, then ``_wait_until_ready()``: ``GET ready_url``
   answers 200, then the subclass's proof, ``_prove_ready()`` (a token, a
   listing);

and on any failure stops everything and raises the subclass's
``start_error`` with the tails of the logs.  The seconds each step took are
in ``step_seconds``.

Standard library only (besides procutil.py).
"""

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time

try:  # tests/ and tests/functional/ are packages, or the root is on sys.path
    from tests.functional import procutil
except ModuleNotFoundError as exc:
    if exc.name not in ('tests', 'tests.functional'):
        raise
    import procutil  # rootdir-less run: this directory is on sys.path

HOST = procutil.HOST
DEFAULT_START_TIMEOUT = 180.0
STOP_TIMEOUT = 10

WSGI_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'wsgi_serve.py')


class WSGIServiceFixture(procutil.MarkedFixture):
    """A private OpenStack WSGI service for tests (see the module's doc).

    The subclass sets:

    * ``MARKER_ENV``: the marker variable of its processes;
    * ``NAME``: the service's name in messages (``Keystone``);
    * ``APPLICATION``: what wsgi_serve.py serves (``keystone``);
    * ``TMPDIR_PREFIX``, ``CONFIG_FILE``, ``LOG_FILE``: the temporary
      directory's prefix and, in it, the configuration and the service's
      own log;
    * ``start_error``: the exception start() raises;
    * ``READY_TIMEOUT``: seconds each GET of ready_url may take;

    and implements ``_prepare(deadline)``, ``_prove_ready()`` and the
    property ``ready_url``.
    """

    NAME = None
    APPLICATION = None
    TMPDIR_PREFIX = None
    CONFIG_FILE = None
    LOG_FILE = None
    READY_TIMEOUT = 2
    start_error = RuntimeError
    #: The name under which step_seconds records _prove_ready().
    PROOF_STEP = 'proof'

    def __init__(self, start_timeout=DEFAULT_START_TIMEOUT,
                 keep_tmpdir=False, base_dir=None, extra_config=''):
        """*extra_config*: text appended to the configuration file."""
        self.start_timeout = start_timeout
        self.keep_tmpdir = keep_tmpdir
        self.base_dir = base_dir
        self.extra_config = extra_config
        self.tmpdir = None
        self.port = None
        self.startup_seconds = None
        self.step_seconds = {}
        self._server = None
        self._watchdog = None
        self._marker = None
        self._env = None
        self._log = logging.getLogger(type(self).__module__)

    # -- paths ------------------------------------------------------------

    @property
    def config_path(self):
        return os.path.join(self.tmpdir, self.CONFIG_FILE)

    @property
    def log_path(self):
        """The service's own log (oslo.log)."""
        return os.path.join(self.tmpdir, self.LOG_FILE)

    @property
    def server_log_path(self):
        """The WSGI server's stdout/stderr: one line per request."""
        return os.path.join(self.tmpdir, 'server.log')

    # -- start / stop -------------------------------------------------------

    def _started(self):
        """True when start() has nothing to do."""
        return self.running

    def start(self):
        """Start the service; raise start_error (with logs) on failure."""
        if self._started():
            return
        started = time.monotonic()
        deadline = started + self.start_timeout
        self.tmpdir = tempfile.mkdtemp(prefix=self.TMPDIR_PREFIX,
                                       dir=self.base_dir)
        self._marker = os.path.basename(self.tmpdir)
        self._env = self._make_env()
        self.step_seconds = {}
        sock = None
        try:
            self._start_watchdog()
            # Bound here and handed to the server: the port written into
            # the catalog cannot be taken by anyone meanwhile.
            sock = socket.create_server((HOST, 0), backlog=64)
            self.port = sock.getsockname()[1]
            self._prepare(deadline)
            self._start_server(sock)
            sock.close()
            sock = None
            self._wait_until_ready(deadline)
        except BaseException as exc:
            if sock is not None:
                sock.close()
            reason = self._failure_report(exc)
            self.stop()
            if isinstance(exc, Exception):
                raise self.start_error(reason) from exc
            raise
        self.startup_seconds = time.monotonic() - started
        self._log.info('%s up on port %d after %.1fs', self.NAME, self.port,
                       self.startup_seconds)

    def _child_env(self):
        """Variables the subclass adds to its children's environment."""
        return {}

    def _make_env(self):
        # HOME keeps ~/.config and the service's own dot-files out of the
        # picture.
        return procutil.python_child_env(self.MARKER_ENV, self._marker,
                                         self.tmpdir, **self._child_env())

    @contextlib.contextmanager
    def _step(self, name):
        """Record in step_seconds how long the block took (if it ends)."""
        t0 = time.monotonic()
        yield
        self.step_seconds[name] = round(time.monotonic() - t0, 2)

    def _write_config(self, text):
        """Write the configuration file: *text*, then extra_config."""
        if self.extra_config:
            text += '\n' + self.extra_config.rstrip('\n') + '\n'
        with open(self.config_path, 'w') as f:
            f.write(text)

    def _server_args(self):
        """wsgi_serve.py's arguments besides --config-file and the socket."""
        return []

    def _start_server(self, sock):
        with open(self.server_log_path, 'ab') as out:
            self._server = subprocess.Popen(
                [sys.executable, WSGI_SCRIPT, self.APPLICATION,
                 '--config-file', self.config_path] + self._server_args() +
                ['--listen-fd', str(sock.fileno()), '--exit-on-stdin-eof'],
                env=self._env, cwd=self.tmpdir, stdin=subprocess.PIPE,
                stdout=out, stderr=subprocess.STDOUT,
                pass_fds=(sock.fileno(),), start_new_session=True)

    def _wait_until_ready(self, deadline):
        with self._step('server'):
            procutil.wait_for_http_200(
                self.ready_url, self._server, deadline, self.NAME,
                self.start_error, self.start_timeout,
                request_timeout=self.READY_TIMEOUT)
        # The real proof: a request that goes through the authentication.
        with self._step(self.PROOF_STEP):
            self._prove_ready()

    def _report_logs(self):
        """(title, path) of the logs whose tails a failure report shows."""
        return [('server output', self.server_log_path),
                (self.LOG_FILE, self.log_path)]

    def _failure_report(self, exc):
        lines = ['%s test server failed to start: %s' % (self.NAME, exc),
                 'port %s, dir %s' % (self.port, self.tmpdir)]
        for title, path in self._report_logs():
            if self.tmpdir and os.path.exists(path):
                lines += ['--- %s (tail) ---' % title, procutil.excerpt(path)]
        return '\n'.join(lines)

    def _stop_process(self, proc, name):
        procutil.terminate(proc, name, STOP_TIMEOUT, self._log)

    def _stop_others(self):
        """Stop what the subclass started besides the server."""

    def stop(self):
        """Stop the service and remove everything it started.  Idempotent."""
        server, self._server = self._server, None
        self._stop_process(server, self.NAME)
        self._stop_others()
        watchdog, self._watchdog = self._watchdog, None
        procutil.clean_up(self.MARKER_ENV, self._marker, watchdog,
                          self.tmpdir, self.keep_tmpdir)
