"""Serving a WSGI application for the functional tests' server scripts.

Shared by ``keystone_wsgi.py`` and ``nova_api_wsgi.py``.  Those run as
scripts with this directory taken off ``sys.path`` (the fixture module
``keystone.py`` here would shadow the real ``keystone`` package), so they
load this file by its path (``load()`` below, copied into each script) and
it must import nothing but the standard library.

The server is ``wsgiref`` with one thread per connection, on a listening
socket inherited from the parent (``--listen-fd``) or bound here
(``--host``/``--port``).  The process exits on SIGTERM/SIGINT, and with
``--exit-on-stdin-eof`` as soon as its standard input reaches end of file.
"""

import os
import signal
import socket
import socketserver
import sys
import threading
from wsgiref import simple_server


class _RequestHandler(simple_server.WSGIRequestHandler):

    def address_string(self):
        # No reverse DNS look-up per request.
        return self.client_address[0]


class ThreadingWSGIServer(socketserver.ThreadingMixIn,
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


def add_listen_arguments(parser):
    """--listen-fd or --port (with --host), and --exit-on-stdin-eof."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument('--listen-fd', type=int,
                       help='inherited listening socket')
    where.add_argument('--port', type=int, help='port to bind')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to bind with --port')
    parser.add_argument('--exit-on-stdin-eof', action='store_true',
                        help='exit when standard input reaches end of file')


def _exit_on_eof(name):
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        sys.stderr.write('%s: stdin closed, exiting\n' % name)
        sys.stderr.flush()
        os._exit(0)


def _terminate(signum, frame):
    raise SystemExit(0)


def prepare(args, name):
    """Exit handling as *args* ask; return the listening socket.

    *name* prefixes the messages on stderr.
    """
    if args.exit_on_stdin_eof:
        threading.Thread(target=_exit_on_eof, args=(name,),
                         daemon=True).start()
    signal.signal(signal.SIGTERM, _terminate)
    if args.listen_fd is not None:
        return socket.socket(fileno=args.listen_fd)
    return socket.create_server((args.host, args.port), backlog=64)


def serve(sock, application, name, hard_exit=False):
    """Serve *application* on *sock* until SIGTERM/SIGINT.

    With *hard_exit*, say so on stderr and ``os._exit(0)`` when the server
    stops, instead of returning.
    """
    server = ThreadingWSGIServer(sock)
    server.set_app(application)
    sys.stderr.write('%s: serving on http://%s:%d/\n' % (
        name, server.server_name, server.server_port))
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if hard_exit:
            sys.stderr.write('%s: stopped\n' % name)
            sys.stderr.flush()
            os._exit(0)
