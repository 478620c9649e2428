"""Serve Keystone's or Nova's WSGI application for the functional tests.

Started by ``tests/functional/keystone.py`` and ``nova_api.py`` (through
``wsgi_service.py``) as a subprocess::

    python wsgi_serve.py keystone --config-file KEYSTONE_CONF \\
        --listen-fd FD --exit-on-stdin-eof
    python wsgi_serve.py nova-api --config-file NOVA_CONF \\
        --paste-file PASTE_INI --listen-fd FD --exit-on-stdin-eof

``--listen-fd`` is a listening TCP socket inherited from the parent, which
chose the port before it wrote the port into Keystone's catalog; there is no
window in which another process could take the port.  ``--host``/``--port``
bind a socket here instead, for running the script by hand.

The server is ``wsgiref`` with one thread per connection.  The process exits
on SIGTERM/SIGINT, and with ``--exit-on-stdin-eof`` (which the fixtures use:
the pipe closes when the test process goes away, however it goes) as soon as
its standard input reaches end of file.

``keystone``: ``keystone.server.wsgi.initialize_public_application()``,
handling one request at a time: on SQLite, Keystone answers parallel
requests that write (a password login does) with HTTP 500 "database is
locked".

``nova-api``: Nova's own WSGI entry point,
``nova.wsgi.osapi_compute:application`` (the one uwsgi/mod_wsgi serve in a
real deployment).  Nova runs in its native-threading mode
(``OS_NOVA_DISABLE_EVENTLET_PATCHING`` is set here, and eventlet must not be
imported before Nova is).

Only the standard library is imported before the application's own package.
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
# anything imports Keystone, Nova and their dependencies.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != _HERE]


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


# --------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# The applications
# --------------------------------------------------------------------------

def _serve_keystone(args, sock):
    # Keystone's oslo.config parses sys.argv when the application is built:
    # our own options would make it exit with a usage error.  The config
    # file reaches it the documented way, through the environment.
    sys.argv[:] = [sys.argv[0]]
    os.environ.pop('OS_KEYSTONE_CONFIG_DIR', None)
    os.environ['OS_KEYSTONE_CONFIG_FILES'] = os.path.abspath(
        args.config_file)

    from keystone.server import wsgi as keystone_wsgi

    application = keystone_wsgi.initialize_public_application()
    serve(sock, _one_at_a_time(application), 'keystone_wsgi')


def _serve_nova_api(args, sock):
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

    # hard_exit: Nova's thread pools would hold the exit for seconds;
    # nothing is left to flush (the databases are written by others).
    serve(sock, osapi_compute.application, 'nova_api_wsgi', hard_exit=True)


#: Application name: (serving function, name prefixing stderr lines, help
#: of --config-file, whether it takes --paste-file).
APPLICATIONS = {
    'keystone': (_serve_keystone, 'keystone_wsgi', 'keystone.conf to use',
                 False),
    'nova-api': (_serve_nova_api, 'nova_api_wsgi', 'nova.conf to use', True),
}


def _add_listen_arguments(parser):
    """--listen-fd or --port (with --host), and --exit-on-stdin-eof."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument('--listen-fd', type=int,
                       help='inherited listening socket')
    where.add_argument('--port', type=int, help='port to bind')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to bind with --port')
    parser.add_argument('--exit-on-stdin-eof', action='store_true',
                        help='exit when standard input reaches end of file')


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    apps = parser.add_subparsers(dest='application', required=True)
    for name, (_serve, _label, config_help, paste) in APPLICATIONS.items():
        app = apps.add_parser(name)
        app.add_argument('--config-file', required=True, help=config_help)
        if paste:
            app.add_argument('--paste-file', required=True,
                             help='api-paste.ini to use')
        _add_listen_arguments(app)
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    serve_application, label = APPLICATIONS[args.application][:2]
    sock = prepare(args, label)
    serve_application(args, sock)
    return 0


if __name__ == '__main__':
    sys.exit(main())
