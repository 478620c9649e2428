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
import importlib.util
import os
import sys

# This directory holds the fixture modules (keystone.py, rabbitmq.py ...).
# Python puts a script's directory first on sys.path, where ``keystone.py``
# would shadow the real package of that name: take the directory off before
# anything imports Nova and its dependencies.
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


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config-file', required=True,
                        help='nova.conf to use')
    parser.add_argument('--paste-file', required=True,
                        help='api-paste.ini to use')
    wsgi_serve.add_listen_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    sock = wsgi_serve.prepare(args, 'nova_api_wsgi')

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
    wsgi_serve.serve(sock, osapi_compute.application, 'nova_api_wsgi',
                     hard_exit=True)


if __name__ == '__main__':
    sys.exit(main())
