"""A throw-away RabbitMQ broker for functional tests, and publishing helpers.

``RabbitMQBroker`` runs a private ``rabbitmq-server`` node: its own temporary
directory (data, logs, config, Erlang cookie), free random ports for AMQP and
Erlang distribution, and its own ``epmd`` on a random port, so it never talks
to or clashes with a system broker (port 5672/25672, epmd 4369).

Every process it starts carries a marker environment variable.  ``stop()``
kills whatever still carries the marker, and a small watchdog process does the
same if the test process dies without calling ``stop()``.

The publishing helpers send notifications the way Nova does (oslo.messaging
``Notifier``, ``messagingv2`` driver, control exchange ``nova``) or, for
malformed-message tests, raw AMQP messages through kombu.
"""

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import string
import subprocess
import tempfile
import time
from urllib import parse

import kombu
from oslo_config import cfg
import oslo_messaging
from oslo_messaging import opts as oslo_messaging_opts

try:  # tests/ and tests/functional/ are packages, or the root is on sys.path
    from tests.functional import procutil
except ModuleNotFoundError as exc:
    if exc.name not in ('tests', 'tests.functional'):
        raise
    import procutil  # rootdir-less run: this directory is on sys.path

LOG = logging.getLogger(__name__)

MARKER_ENV = 'NOVA_ERROR_NOTIFIER_TEST_RABBITMQ'
DEFAULT_START_TIMEOUT = 90.0
GUEST = ('guest', 'guest')
HOST = '127.0.0.1'

# Where the real start scripts live.  Debian's /usr/sbin/rabbitmq-server is a
# wrapper that, when run as root, re-executes the script as the "rabbitmq"
# user with cwd /var/lib/rabbitmq, which cannot use our private directories.
_SCRIPT_DIRS = (
    '/usr/lib/rabbitmq/bin',
    '/usr/local/lib/rabbitmq/bin',
)
_EXTRA_PATH = ('/usr/sbin', '/usr/local/sbin', '/sbin', '/usr/lib/erlang/bin')

# oslo.messaging's rabbit driver declares the control exchange like this
# (amqp_durable_queues=False, amqp_auto_delete=False by default).  A declare
# with other flags fails with PRECONDITION_FAILED, so keep these in step.
OSLO_EXCHANGE_TYPE = 'topic'
OSLO_EXCHANGE_DURABLE = False
OSLO_EXCHANGE_AUTO_DELETE = False

_VHOST_NAME_RE = re.compile(r'^[A-Za-z0-9_.-]+$')


class RabbitMQStartError(RuntimeError):
    """The broker did not come up; the message carries its log tail."""

    def __init__(self, message, port_clash=False):
        super().__init__(message)
        self.port_clash = port_clash


class RabbitMQCtlError(RuntimeError):
    """A rabbitmqctl command failed."""


class NotificationPublishError(RuntimeError):
    """oslo.messaging could not deliver a notification to the broker.

    The Notifier only logs delivery failures; the helpers turn them into this
    exception so that a test never silently publishes nothing.
    """


# --------------------------------------------------------------------------
# Locating binaries and ports
# --------------------------------------------------------------------------

def _search_path():
    parts = os.environ.get('PATH', '').split(os.pathsep)
    return os.pathsep.join(parts + [p for p in _EXTRA_PATH if p not in parts])


def _is_debian_su_wrapper(path):
    try:
        with open(path, 'rb') as f:
            head = f.read(4096)
    except OSError:
        return False
    return b'su rabbitmq' in head


def find_rabbitmq_script(name):
    """Return the path of a RabbitMQ script (rabbitmq-server, rabbitmqctl).

    Prefers the real scripts over Debian's ``su rabbitmq`` wrapper.  The
    environment variable NEN_RABBITMQ_SCRIPTS_DIR (a directory holding the
    scripts) replaces the search.
    """
    override = os.environ.get('NEN_RABBITMQ_SCRIPTS_DIR')
    if override:
        candidate = os.path.join(override, name)
        return candidate if os.access(candidate, os.X_OK) else None
    for d in _SCRIPT_DIRS:
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name, path=_search_path())
    if found and not _is_debian_su_wrapper(found):
        return found
    return None


def _find_epmd():
    return shutil.which('epmd', path=_search_path())


def _free_ports(count):
    """Return *count* distinct free TCP ports on the loopback address."""
    return procutil.free_ports(count, HOST)


def _port_open(port, host=HOST):
    return procutil.port_open(port, host)


_excerpt = procutil.excerpt


# --------------------------------------------------------------------------
# Process clean-up: marker sweep and a watchdog for hard crashes
# (tests/functional/procutil.py)
# --------------------------------------------------------------------------

_marked_pids, _sweep = procutil.marker_functions(MARKER_ENV)


# --------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------

class RabbitMQBroker(procutil.MarkedFixture):
    """A private RabbitMQ node for tests.

    Example::

        broker = RabbitMQBroker()
        broker.start()        # blocks until the node accepts AMQP logins
        broker.url            # 'rabbit://guest:guest@127.0.0.1:PORT/'
        url = broker.add_vhost('t1')
        broker.queue_message_counts('t1')   # {'notifications.error': 1}
        broker.stop()
    """

    MARKER_ENV = MARKER_ENV

    def __init__(self, start_timeout=DEFAULT_START_TIMEOUT, keep_tmpdir=False,
                 base_dir=None, extra_config=''):
        """*extra_config*: lines appended to the node's rabbitmq.conf."""
        self.start_timeout = start_timeout
        self.extra_config = extra_config
        self.keep_tmpdir = keep_tmpdir
        self.base_dir = base_dir
        self.tmpdir = None
        self.port = None
        self.dist_port = None
        self.epmd_port = None
        self.node_name = None
        self.startup_seconds = None
        self._server = None
        self._epmd = None
        self._watchdog = None
        self._env = None
        self._marker = None
        self._server_out = None

    # -- public properties --------------------------------------------------

    @property
    def url(self):
        """oslo.messaging transport URL of the default vhost '/'."""
        return self.vhost_url('/')

    def vhost_url(self, vhost):
        self._require_started()
        path = '' if vhost == '/' else parse.quote(vhost, safe='')
        return 'rabbit://%s:%s@%s:%d/%s' % (GUEST + (HOST, self.port, path))

    @property
    def log_path(self):
        return os.path.join(self.tmpdir, 'log', '%s.log' % self.node_name)

    # -- start / stop --------------------------------------------------------

    def start(self, attempts=3):
        """Start the node; raise RabbitMQStartError (with logs) on failure."""
        if self.running:
            return
        last = None
        for _ in range(attempts):
            try:
                self._start_once()
                return
            except RabbitMQStartError as exc:
                last = exc
                if not exc.port_clash:
                    raise
                LOG.warning('RabbitMQ port clash, retrying with new ports')
        raise last

    def _start_once(self):
        server_script = find_rabbitmq_script('rabbitmq-server')
        ctl_script = find_rabbitmq_script('rabbitmqctl')
        epmd = _find_epmd()
        missing = [n for n, p in (('rabbitmq-server', server_script),
                                  ('rabbitmqctl', ctl_script),
                                  ('epmd', epmd)) if not p]
        if missing:
            raise RabbitMQStartError(
                'cannot start RabbitMQ: %s not found (searched '
                '$NEN_RABBITMQ_SCRIPTS_DIR or %s, then PATH plus %s); run '
                'tools/ensure-rabbitmq.sh' % (
                    ', '.join(missing), ', '.join(_SCRIPT_DIRS),
                    ', '.join(_EXTRA_PATH)))
        self._server_script = server_script
        self._ctl_script = ctl_script

        started = time.monotonic()
        self._server_out = None
        self.tmpdir = tempfile.mkdtemp(prefix='nen-rabbitmq-',
                                       dir=self.base_dir)
        self._marker = os.path.basename(self.tmpdir)
        self.port, self.dist_port, self.epmd_port = _free_ports(3)
        self.node_name = 'nen-%s@localhost' % secrets.token_hex(4)
        self._env = self._make_env()
        self._write_files()
        try:
            self._start_watchdog()
            self._start_epmd(epmd)
            self._start_server()
            self._wait_until_ready(started + self.start_timeout)
        except BaseException as exc:
            reason = self._failure_report(exc)
            clash = (getattr(exc, 'port_clash', False) or
                     self._output_mentions('eaddrinuse'))
            self.stop()
            if isinstance(exc, RabbitMQStartError):
                raise RabbitMQStartError(reason, port_clash=clash) from None
            if isinstance(exc, Exception):
                raise RabbitMQStartError(reason, port_clash=clash) from exc
            raise
        self.startup_seconds = time.monotonic() - started
        LOG.info('RabbitMQ %s up on port %d after %.1fs', self.node_name,
                 self.port, self.startup_seconds)

    def _make_env(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(('RABBITMQ_', 'ERL_'))}
        d = self.tmpdir
        env.update({
            MARKER_ENV: self._marker,
            'PATH': _search_path(),
            'HOME': d,  # the Erlang cookie lives in $HOME/.erlang.cookie
            'LC_ALL': env.get('LC_ALL') or 'C.UTF-8',
            'ERL_EPMD_ADDRESS': HOST,
            'ERL_EPMD_PORT': str(self.epmd_port),
            'RABBITMQ_NODENAME': self.node_name,
            'RABBITMQ_USE_LONGNAME': 'false',
            'RABBITMQ_NODE_IP_ADDRESS': HOST,
            'RABBITMQ_NODE_PORT': str(self.port),
            'RABBITMQ_DIST_PORT': str(self.dist_port),
            'RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS':
                '-kernel inet_dist_use_interface {127,0,0,1}',
            'RABBITMQ_MNESIA_BASE': os.path.join(d, 'mnesia'),
            'RABBITMQ_LOG_BASE': os.path.join(d, 'log'),
            'RABBITMQ_PLUGINS_EXPAND_DIR': os.path.join(d, 'plugins-expand'),
            'RABBITMQ_ENABLED_PLUGINS_FILE': os.path.join(d,
                                                          'enabled_plugins'),
            'RABBITMQ_CONFIG_FILE': os.path.join(d, 'rabbitmq.conf'),
            'RABBITMQ_ADVANCED_CONFIG_FILE': os.path.join(d,
                                                          'advanced.config'),
            # Keeps /etc/rabbitmq/rabbitmq-env.conf out of the picture.
            'RABBITMQ_CONF_ENV_FILE': os.path.join(d, 'rabbitmq-env.conf'),
            'RABBITMQ_PID_FILE': os.path.join(d, 'rabbitmq.pid'),
        })
        return env

    def _write_files(self):
        d = self.tmpdir
        for sub in ('mnesia', 'log', 'plugins-expand'):
            os.mkdir(os.path.join(d, sub))
        files = {
            'enabled_plugins': '[].\n',
            'rabbitmq-env.conf': '',
            'advanced.config': '[].\n',
            'rabbitmq.conf': (
                'loopback_users.guest = true\n'
                # Small test disks must not trigger the disk alarm, which
                # blocks every publisher.
                'disk_free_limit.absolute = 10MB\n'
                'log.file.level = info\n'
                'log.console = false\n' +
                (self.extra_config.rstrip('\n') + '\n'
                 if self.extra_config else '')),
        }
        for name, content in files.items():
            with open(os.path.join(d, name), 'w') as f:
                f.write(content)
        cookie = os.path.join(d, '.erlang.cookie')
        fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, 'w') as f:
            f.write(''.join(secrets.choice(string.ascii_uppercase)
                            for _ in range(32)))

    def _start_epmd(self, epmd):
        # A private epmd: the node and every rabbitmqctl call find each
        # other through ERL_EPMD_PORT and never touch the system one (4369).
        self._epmd = subprocess.Popen(
            [epmd, '-port', str(self.epmd_port), '-address', HOST],
            env=self._env, cwd=self.tmpdir, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 10
        while not _port_open(self.epmd_port):
            if self._epmd.poll() is not None:
                raise RabbitMQStartError(
                    'epmd exited with code %s (port %d)' % (
                        self._epmd.returncode, self.epmd_port),
                    port_clash=True)
            if time.monotonic() > deadline:
                raise RabbitMQStartError('epmd did not open port %d' %
                                         self.epmd_port)
            time.sleep(0.05)

    def _start_server(self):
        self._server_out = os.path.join(self.tmpdir, 'server.out')
        with open(self._server_out, 'wb') as out:
            # Foreground mode: the script stays as the parent of beam.smp and
            # turns SIGTERM into a clean broker shutdown.
            self._server = subprocess.Popen(
                [self._server_script], env=self._env, cwd=self.tmpdir,
                stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_until_ready(self, deadline):
        while not _port_open(self.port):
            if self._server.poll() is not None:
                # (The script's own exit status is always 0.)
                raise RabbitMQStartError(
                    'rabbitmq-server stopped before opening AMQP port %d'
                    % self.port)
            if time.monotonic() > deadline:
                raise RabbitMQStartError(
                    'RabbitMQ did not open AMQP port %d within %.0fs' % (
                        self.port, self.start_timeout))
            time.sleep(0.2)
        remaining = max(5, int(deadline - time.monotonic()))
        self.ctl('await_startup', '--timeout', str(remaining),
                 timeout=remaining + 15)
        # Finally, a real AMQP login as guest.
        conn = kombu.Connection(kombu_url(self.url), connect_timeout=10)
        try:
            conn.connect()
        finally:
            conn.release()

    def _failure_report(self, exc):
        lines = [
            'RabbitMQ test broker failed to start: %s' % exc,
            'node %s, amqp port %s, dist port %s, epmd port %s, dir %s' % (
                self.node_name, self.port, self.dist_port, self.epmd_port,
                self.tmpdir),
        ]
        if self._server_out:
            # Boot errors (bad config, port in use) come first; crash
            # reports fill the end.
            lines += ['--- rabbitmq-server output ---',
                      _excerpt(self._server_out, head=30, tail=15)]
        if self.node_name and self.tmpdir:
            lines += ['--- %s (tail) ---' % self.log_path,
                      _excerpt(self.log_path)]
        return '\n'.join(lines)

    def _output_mentions(self, word):
        for path in (self._server_out, self.node_name and self.log_path):
            try:
                with open(path, 'rb') as f:
                    if word.encode() in f.read().lower():
                        return True
            except (OSError, TypeError):
                pass
        return False

    def stop(self):
        """Stop the node and remove everything it started.  Idempotent."""
        server, self._server = self._server, None
        procutil.terminate(server, 'RabbitMQ', 30, LOG)
        if self._marker:
            # erl_child_setup, port programs, stray rabbitmqctl nodes, epmd.
            _sweep(self._marker)
        epmd, self._epmd = self._epmd, None
        if epmd is not None:
            if epmd.poll() is None:
                epmd.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                epmd.wait(timeout=5)
        watchdog, self._watchdog = self._watchdog, None
        # (Swept above already, before epmd.)
        procutil.clean_up(MARKER_ENV, None, watchdog, self.tmpdir,
                          self.keep_tmpdir)

    # -- administration ------------------------------------------------------

    def ctl(self, *args, timeout=60):
        """Run ``rabbitmqctl -n NODE ARGS`` on this node; return stdout."""
        self._require_started()
        cmd = [self._ctl_script, '-n', self.node_name]
        cmd += [str(a) for a in args]
        try:
            res = subprocess.run(cmd, env=self._env, cwd=self.tmpdir,
                                 stdin=subprocess.DEVNULL,
                                 capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise RabbitMQCtlError('%s timed out after %ss' % (
                ' '.join(cmd), timeout)) from exc
        out = res.stdout.decode('utf-8', 'replace')
        if res.returncode != 0:
            raise RabbitMQCtlError('%s failed with code %d:\n%s\n%s' % (
                ' '.join(cmd), res.returncode, out,
                res.stderr.decode('utf-8', 'replace')))
        return out

    def _ctl_json(self, *args):
        out = self.ctl(*args, '--formatter', 'json', '--quiet')
        out = out.strip()
        return json.loads(out) if out else []

    def add_vhost(self, name):
        """Create vhost *name*, grant guest full rights; return its URL."""
        if not _VHOST_NAME_RE.match(name):
            # oslo.messaging puts the vhost unquoted into kombu's URL, so
            # keep names to characters that need no quoting.
            raise ValueError('vhost names must match %s: %r' % (
                _VHOST_NAME_RE.pattern, name))
        self.ctl('add_vhost', name)
        self.ctl('set_permissions', '-p', name, GUEST[0], '.*', '.*', '.*')
        return self.vhost_url(name)

    def delete_vhost(self, name):
        self.ctl('delete_vhost', name)

    def list_vhosts(self):
        return sorted(v['name'] for v in self._ctl_json('list_vhosts', 'name'))

    def list_queues(self, vhost='/'):
        """Queue details of *vhost*, one dict per queue.

        Keys: name, messages_ready, messages_unacknowledged, consumers,
        durable, auto_delete, arguments.
        """
        return self._ctl_json(
            'list_queues', '-p', vhost, 'name', 'messages_ready',
            'messages_unacknowledged', 'consumers', 'durable', 'auto_delete',
            'arguments')

    def queue_message_counts(self, vhost='/'):
        """{queue name: ready + unacknowledged messages} for *vhost*."""
        return {q['name']: int(q['messages_ready']) +
                int(q['messages_unacknowledged'])
                for q in self.list_queues(vhost)}

    def wait_for_message_count(self, queue, expected, vhost='/',
                               timeout=10.0):
        """Poll until *queue* holds *expected* messages; return the counts.

        Publishing without confirms (as the oslo Notifier does) returns before
        the broker has enqueued the message, so assert through this.
        """
        deadline = time.monotonic() + timeout
        while True:
            counts = self.queue_message_counts(vhost)
            if counts.get(queue) == expected:
                return counts
            if time.monotonic() > deadline:
                raise AssertionError(
                    'queue %r in vhost %r: expected %d messages, broker has '
                    '%r' % (queue, vhost, expected, counts))
            time.sleep(0.2)

    def queue_bindings(self, vhost='/'):
        """Bindings of *vhost*, one dict per binding.

        Keys: source_name, source_kind, destination_name, destination_kind,
        routing_key.  The default exchange's implicit bindings are included
        (source_name '').
        """
        return self._ctl_json(
            'list_bindings', '-p', vhost, 'source_name', 'source_kind',
            'destination_name', 'destination_kind', 'routing_key')

    def list_exchanges(self, vhost='/'):
        return self._ctl_json('list_exchanges', '-p', vhost, 'name', 'type',
                              'durable', 'auto_delete')


# --------------------------------------------------------------------------
# Publishing the way Nova does
# --------------------------------------------------------------------------

def kombu_url(url):
    """kombu URL for an oslo.messaging ``rabbit://`` URL (single host)."""
    parsed = parse.urlsplit(url)
    scheme = parsed.scheme.replace('kombu+', '')
    if scheme == 'rabbit':
        scheme = 'amqp'
    return parse.urlunsplit((scheme, parsed.netloc, parsed.path or '/', '',
                             ''))


def make_conf(exchange='nova'):
    """A private ConfigOpts set up like Nova's for notifications.

    Nova calls ``oslo_messaging.set_transport_defaults(control_exchange=
    'nova')``, which changes the default on the module-global option objects.
    Here the same default is set on this ConfigOpts only.
    """
    conf = cfg.ConfigOpts()
    conf(args=[], project='nova-error-notifier-tests',
         default_config_files=[], default_config_dirs=[])
    for group, opts in oslo_messaging_opts.list_opts():
        if group is None:
            conf.register_opts(opts)
    conf.set_default('control_exchange', exchange)
    return conf


class _WireContext(dict):
    """A context that reaches the wire unchanged as ``_context_<key>``.

    oslo.messaging's Notifier throws away a context that is exactly a
    ``dict`` and otherwise sends ``ctxt.redacted_copy()``; Nova passes a
    RequestContext whose redacted copy serialises to a dict.  This class
    stands in for it: the caller's dict is sent as given (no redaction).
    """

    def redacted_copy(self):
        return dict(self)

    def to_dict(self):
        return dict(self)


class _SendFailureCatcher(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)


_NOTIFY_LOGGERS = ('oslo_messaging.notify.messaging',
                   'oslo_messaging.notify.notifier')


@contextlib.contextmanager
def _raise_on_send_failure():
    catcher = _SendFailureCatcher()
    loggers = [logging.getLogger(n) for n in _NOTIFY_LOGGERS]
    saved = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = False
        lg.addHandler(catcher)
    try:
        yield
    finally:
        for lg, disabled in zip(loggers, saved):
            lg.removeHandler(catcher)
            lg.disabled = disabled
    if catcher.records:
        rec = catcher.records[0]
        detail = rec.getMessage()
        if rec.exc_info and rec.exc_info[1] is not None:
            detail += ': %r' % (rec.exc_info[1],)
        raise NotificationPublishError(detail)


class Publisher:
    """One oslo.messaging transport, reused for many notifications.

    Example::

        with Publisher(url) as pub:
            pub.publish({'request_id': 'req-1'}, 'compute.host1',
                        'compute.instance.create.error', 'ERROR', payload)
    """

    def __init__(self, url, exchange='nova', retry=3):
        self.url = url
        self.exchange = exchange
        self.retry = retry
        self.conf = make_conf(exchange)
        self.transport = oslo_messaging.get_notification_transport(
            self.conf, url=url)
        self._notifiers = {}

    def _notifier(self, topics):
        topics = tuple(topics)
        if topics not in self._notifiers:
            self._notifiers[topics] = oslo_messaging.Notifier(
                self.transport, driver='messagingv2', topics=list(topics),
                retry=self.retry)
        return self._notifiers[topics]

    def publish(self, ctxt, publisher_id, event_type, priority, payload,
                topics=('notifications',)):
        """Send one notification, as ``notifier.<priority>(ctxt, ...)``.

        Goes to exchange ``self.exchange`` with routing key
        ``<topic>.<priority lower>`` for each topic.  oslo.messaging also
        declares (non-durable) and binds a queue of that same name on the
        first send of each routing key, as Nova's notifier does.
        """
        if isinstance(topics, str):
            topics = (topics,)
        notifier = self._notifier(topics).prepare(publisher_id=publisher_id)
        method = getattr(notifier, priority.lower(), None)
        if method is None:
            raise ValueError('unknown notification priority %r' % priority)
        with _raise_on_send_failure():
            method(_WireContext(ctxt or {}), event_type, payload)

    def publish_wire_file(self, path, topic=None):
        """Republish a recorded wire message; return its inner dict."""
        message = load_wire_file(path)
        self.publish(wire_context(message), message['publisher_id'],
                     message['event_type'], message['priority'],
                     message['payload'],
                     topics=(topic or wire_topic(message),))
        return message

    def close(self):
        transport, self.transport = self.transport, None
        self._notifiers.clear()
        if transport is not None:
            transport.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def publish_notification(url, ctxt, publisher_id, event_type, priority,
                         payload, topics=('notifications',), exchange='nova'):
    """Publish one notification exactly as Nova's notifier would."""
    with Publisher(url, exchange=exchange) as pub:
        pub.publish(ctxt, publisher_id, event_type, priority, payload,
                    topics=topics)


def load_wire_file(path):
    """The inner message dict of a recorded AMQP body (v2 envelope or v1)."""
    with open(path, 'rb') as f:
        body = json.loads(f.read().decode('utf-8'))
    if isinstance(body, dict) and 'oslo.message' in body:
        return json.loads(body['oslo.message'])
    return body


def wire_context(message):
    """{key: value} for each ``_context_<key>`` of a wire message."""
    prefix = '_context_'
    return {k[len(prefix):]: v for k, v in message.items()
            if k.startswith(prefix)}


def wire_topic(message):
    payload = message.get('payload')
    if isinstance(payload, dict) and 'nova_object.data' in payload:
        return 'versioned_notifications'
    return 'notifications'


def publish_wire_file(url, path, topic=None):
    """Republish a recorded wire-format sample through Nova's Notifier path.

    Context, publisher_id, event_type, priority and payload come from the
    file; message_id, timestamp and _unique_id are new (the Notifier makes
    them).  Returns the file's inner message dict.
    """
    with Publisher(url) as pub:
        return pub.publish_wire_file(path, topic=topic)


# --------------------------------------------------------------------------
# Raw kombu access, for malformed messages and for reading queues back
# --------------------------------------------------------------------------

def oslo_exchange(name='nova'):
    """The exchange exactly as oslo.messaging's rabbit driver declares it."""
    return kombu.Exchange(name, type=OSLO_EXCHANGE_TYPE,
                          durable=OSLO_EXCHANGE_DURABLE,
                          auto_delete=OSLO_EXCHANGE_AUTO_DELETE)


def declare_queue(url, queue, routing_key=None, exchange='nova'):
    """Declare *queue* and bind it to *exchange*, as oslo would.

    Same flags as oslo's default notification queues: non-durable, not
    auto-delete, no arguments.  The routing key defaults to the queue name.
    """
    ex = oslo_exchange(exchange)
    q = kombu.Queue(queue, exchange=ex, routing_key=routing_key or queue,
                    durable=OSLO_EXCHANGE_DURABLE,
                    auto_delete=OSLO_EXCHANGE_AUTO_DELETE)
    with kombu.Connection(kombu_url(url), connect_timeout=10) as conn:
        q(conn.default_channel).declare()


def publish_raw(url, exchange, routing_key, body,
                content_type='application/json', content_encoding='utf-8',
                headers=None):
    """Publish *body* (bytes) as-is, with publisher confirms.

    Declares *exchange* like oslo.messaging does (topic, non-durable, not
    auto-delete) so the declare never conflicts with the Notifier's.  When
    this returns the broker has routed the message (confirm received).
    """
    if isinstance(body, str):
        raise TypeError('publish_raw wants bytes, got str')
    ex = oslo_exchange(exchange)
    with kombu.Connection(kombu_url(url), connect_timeout=10,
                          transport_options={'confirm_publish': True}) as conn:
        producer = conn.Producer(serializer=None)
        producer.publish(body, exchange=ex, routing_key=routing_key,
                         declare=[ex], content_type=content_type,
                         content_encoding=content_encoding,
                         headers=headers or {}, retry=False)


def fetch_messages(url, queue, limit=None, ack=True):
    """Take up to *limit* messages off *queue* with basic.get.

    Returns a list of dicts: body (bytes), content_type, content_encoding,
    headers, routing_key, exchange.  With ack=False the messages stay in the
    queue (they are requeued when the connection closes).
    """
    result = []
    with kombu.Connection(kombu_url(url), connect_timeout=10) as conn:
        q = kombu.Queue(queue, no_declare=True)(conn.default_channel)
        while limit is None or len(result) < limit:
            message = q.get(no_ack=False)
            if message is None:
                break
            body = message.body
            if isinstance(body, str):
                # py-amqp decodes bodies that carry a content_encoding;
                # encoding again gives back the exact bytes sent.
                body = body.encode(message.content_encoding or 'utf-8')
            result.append({
                'body': body,
                'content_type': message.content_type,
                'content_encoding': message.content_encoding,
                'headers': message.headers,
                'routing_key': message.delivery_info.get('routing_key'),
                'exchange': message.delivery_info.get('exchange'),
            })
            if ack:
                message.ack()
    return result
