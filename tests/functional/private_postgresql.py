"""A throw-away PostgreSQL server that a test may stop and start.

The shared test servers (tools/ensure-postgresql.sh) serve every test;
a test that stops its database needs one of its own: ``initdb`` in a
temporary directory, ``postgres`` on a free port on 127.0.0.1, run as the
``postgres`` user (the server refuses root), stopped at teardown.
"""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

USER = 'postgres'


def _bin(name):
    found = sorted(glob.glob('/usr/lib/postgresql/*/bin/%s' % name))
    if not found:
        raise RuntimeError('PostgreSQL is not installed: run '
                           'tools/ensure-postgresql.sh as root')
    return found[-1]


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class PrivatePostgreSQL:
    """``start()``, ``stop()``, ``url`` (database ``nen``)."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix='nen-pg-')
        self.data = os.path.join(self.root, 'data')
        self.port = _free_port()
        self.logfile = os.path.join(self.root, 'server.log')
        shutil.chown(self.root, USER, USER)
        os.chmod(self.root, 0o700)
        self._run(_bin('initdb'), '-D', self.data, '-U', USER,
                  '--auth=trust', '-E', 'UTF8')
        self.start()
        self._run(_bin('createdb'), '-h', '127.0.0.1', '-p', str(self.port),
                  '-U', USER, 'nen')

    @property
    def url(self):
        return 'postgresql+psycopg2://%s@127.0.0.1:%d/nen' % (USER,
                                                              self.port)

    def _run(self, *args):
        result = subprocess.run(
            ['runuser', '-u', USER, '--'] + list(args), cwd='/',
            capture_output=True, text=True, timeout=120)
        if result.returncode:
            raise RuntimeError('%s failed (%d): %s %s' % (
                os.path.basename(args[0]), result.returncode,
                result.stdout[-2000:], result.stderr[-2000:]))
        return result

    def start(self):
        self._run(_bin('pg_ctl'), '-D', self.data, '-l', self.logfile, '-w',
                  '-o', '-p %d -k %s -c listen_addresses=127.0.0.1'
                  % (self.port, self.root), 'start')

    def stop(self):
        self._run(_bin('pg_ctl'), '-D', self.data, '-m', 'fast', '-w',
                  'stop')

    def running(self):
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(('127.0.0.1', self.port)) == 0

    def destroy(self):
        if self.running():
            try:
                self.stop()
            except RuntimeError:
                pass
        deadline = time.monotonic() + 10
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)
