"""Serve Nova's compute API (nova-api) for the functional tests.

Started by ``tests/functional/nova_api.py`` as a subprocess::

    python nova_api_wsgi.py --config-file NOVA_CONF --paste-file PASTE_INI \\
        --listen-fd FD --exit-on-stdin-eof

``--listen-fd`` is a listening TCP socket inherited from the parent, which
wrote its port into Keystone's catalog; ``--host``/``--port`` bind a socket
here instead, for running the script by hand.

The application is Nova's own WSGI entry point,
``nova.wsgi.osapi_compute:application`` (the one uwsgi/mod_wsgi serve in a
real deployment), served by ``wsgiref`` with one thread per connection.
Nova runs in its native-threading mode (``OS_NOVA_DISABLE_EVENTLET_PATCHING``
is set here, and eventlet must not be imported before Nova is).

The process exits on SIGTERM/SIGINT, and by itself as soon as its standard
input reaches end of file (with ``--exit-on-stdin-eof``, which the fixture
uses: the pipe closes when the test process goes away, however it goes).
"""

import argparse
import os
import signal
import socket
import socketserver
import sys
import threading
from wsgiref import simple_server

# This directory holds the fixture modules (keystone.py, rabbitmq.py ...).
# Python puts a script's directory first on sys.path, where ``keystone.py``
# would shadow the real package of that name: take the directory off before
# anything imports Nova and its dependencies.
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


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config-file', required=True,
                        help='nova.conf to use')
    parser.add_argument('--paste-file', required=True,
                        help='api-paste.ini to use')
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
        sys.stderr.write('nova_api_wsgi: stdin closed, exiting\n')
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

    # Nova's oslo.config parses sys.argv when the application is built
    # (nova.api.openstack.wsgi_app.init_global_data): our own options would
    # make it exit with a usage error.  The files reach it the way uwsgi
    # deployments give them, through the environment: OS_NOVA_CONFIG_FILES is
    # a ';'-separated list joined to OS_NOVA_CONFIG_DIR (absolute paths stay
    # as they are), and its first file is the paste configuration.
    sys.argv[:] = [sys.argv[0]]
    os.environ['OS_NOVA_CONFIG_DIR'] = os.path.dirname(
        os.path.abspath(args.config_file))
    os.environ['OS_NOVA_CONFIG_FILES'] = ';'.join([
        os.path.abspath(args.paste_file), os.path.abspath(args.config_file)])
    os.environ['OS_NOVA_DISABLE_EVENTLET_PATCHING'] = '1'

    from nova.wsgi import osapi_compute

    server = _ThreadingWSGIServer(sock)
    server.set_app(osapi_compute.application)
    sys.stderr.write('nova_api_wsgi: serving on http://%s:%d/\n' % (
        server.server_name, server.server_port))
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        sys.stderr.write('nova_api_wsgi: stopped\n')
        sys.stderr.flush()
        # Nova's thread pools would hold the exit for seconds; nothing is
        # left to flush (the databases are written by others).
        os._exit(0)


if __name__ == '__main__':
    sys.exit(main())
