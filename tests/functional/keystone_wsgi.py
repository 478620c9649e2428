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
import importlib.util
import os
import sys
import threading

# This directory holds the fixture module ``keystone.py``.  Python puts a
# script's directory first on sys.path, where that module would shadow the
# real ``keystone`` package, so take the directory off before any import of
# keystone.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != _HERE]


def _load_wsgi_serve():
    """wsgi_serve.py from this directory, by path: it is off sys.path."""
    spec = importlib.util.spec_from_file_location(
        '_nen_wsgi_serve', os.path.join(_HERE, 'wsgi_serve.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wsgi_serve = _load_wsgi_serve()


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
    wsgi_serve.add_listen_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    sock = wsgi_serve.prepare(args, 'keystone_wsgi')

    # Keystone's oslo.config parses sys.argv when the application is built:
    # our own options would make it exit with a usage error.  The config
    # file reaches it the documented way, through the environment.
    sys.argv[:] = [sys.argv[0]]
    os.environ.pop('OS_KEYSTONE_CONFIG_DIR', None)
    os.environ['OS_KEYSTONE_CONFIG_FILES'] = os.path.abspath(
        args.config_file)

    from keystone.server import wsgi as keystone_wsgi

    application = keystone_wsgi.initialize_public_application()
    wsgi_serve.serve(sock, _one_at_a_time(application), 'keystone_wsgi')
    return 0


if __name__ == '__main__':
    sys.exit(main())
