"""Serve Keystone's public WSGI application for the functional tests.

Started by ``tests/functional/keystone.py`` as a subprocess::

    python keystone_wsgi.py --config-file KEYSTONE_CONF --listen-fd FD

``--listen-fd`` is a listening TCP socket inherited from the parent, which
chose the port before it wrote the port into Keystone's catalog; there is no
window in which another process could take the port.  ``--host``/``--port``
bind a socket here instead, for running the script by hand.

The application is ``keystone.server.wsgi.initialize_public_application()``,
served by ``wsgiref`` with one thread per connection, but the application
handles one request at a time: on SQLite, Keystone answers parallel requests
that write (a password login does) with HTTP 500 "database is locked".  The
process exits on
SIGTERM/SIGINT, and by itself as soon as its standard input reaches end of
file (when run with ``--exit-on-stdin-eof``, which the fixture does: the pipe
closes when the test process goes away, however it goes).
"""

import argparse
import os
import signal
import socket
import socketserver
import sys
import threading
from wsgiref import simple_server

# This directory holds the fixture module ``keystone.py``.  Python puts a
# script's directory first on sys.path, where that module would shadow the
# real ``keystone`` package, so take the directory off before any import of
# keystone.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != _HERE]


class _RequestHandler(simple_server.WSGIRequestHandler):

    def address_string(self):
        # No reverse DNS look-up per request.
        return self.client_address[0]


class _ThreadingWSGIServer(socketserver.ThreadingMixIn,
                           simple_server.WSGIServer):
    """wsgiref's server on an existing listening socket, a thread a request."""

    daemon_threads = True

    def __init__(self, sock):
        host, port = sock.getsockname()[:2]
        super().__init__((host, port), _RequestHandler,
                         bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = (host, port)
        # Set what server_bind() would, without its getfqdn() DNS look-up.
        self.server_name = host
        self.server_port = port
        self.setup_environ()


def _one_at_a_time(application):
    """Wrap a WSGI application so that it handles one request at a time.

    The whole answer is produced under the lock, since an application may
    do its work while the server iterates over the body.
    """
    lock = threading.Lock()

    def serialized(environ, start_response):
        with lock:
            result = application(environ, start_response)
            try:
                body = b''.join(result)
            finally:
                if hasattr(result, 'close'):
                    result.close()
        return [body]

    return serialized


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config-file', required=True,
                        help='keystone.conf to use')
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument('--listen-fd', type=int,
                       help='inherited listening socket')
    where.add_argument('--port', type=int, help='port to bind')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to bind with --port')
    parser.add_argument('--exit-on-stdin-eof', action='store_true',
                        help='exit when standard input reaches end of file')
    return parser.parse_args(argv)


def _exit_on_eof():
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        sys.stderr.write('keystone_wsgi: stdin closed, exiting\n')
        sys.stderr.flush()
        os._exit(0)


def _terminate(signum, frame):
    raise SystemExit(0)


def main(argv=None):
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if args.exit_on_stdin_eof:
        threading.Thread(target=_exit_on_eof, daemon=True).start()
    signal.signal(signal.SIGTERM, _terminate)
    if args.listen_fd is not None:
        sock = socket.socket(fileno=args.listen_fd)
    else:
        sock = socket.create_server((args.host, args.port), backlog=64)

    # Keystone's oslo.config parses sys.argv when the application is built:
    # our own options would make it exit with a usage error.  The config
    # file reaches it the documented way, through the environment.
    sys.argv[:] = [sys.argv[0]]
    os.environ.pop('OS_KEYSTONE_CONFIG_DIR', None)
    os.environ['OS_KEYSTONE_CONFIG_FILES'] = os.path.abspath(
        args.config_file)

    from keystone.server import wsgi as keystone_wsgi

    application = keystone_wsgi.initialize_public_application()
    server = _ThreadingWSGIServer(sock)
    server.set_app(_one_at_a_time(application))
    sys.stderr.write('keystone_wsgi: serving on http://%s:%d/\n' % (
        server.server_name, server.server_port))
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
