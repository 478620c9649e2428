"""A real HTTP(S) webhook receiver for functional tests of the webhook driver.

``WebhookServer`` is a ``http.server.ThreadingHTTPServer`` on a background
thread, listening on 127.0.0.1 on a free port, one thread per connection
(HTTP/1.1, keep-alive):

* ``mode='http'``: plain HTTP;
* ``mode='https'``: TLS with a self-signed certificate for
  127.0.0.1/localhost made at start (``smtp.make_certificate``) in a private
  temporary directory; ``cafile`` is its path, for the client to verify
  against.

Any method on any path is taken (``url`` is ``<base_url>/hook``).  Every
request is recorded as a ``ReceivedRequest`` (``requests``,
``wait_for_requests(n)``), with two checks done on it:

* signature: with a ``secret``, ``X-Nova-Error-Notifier-Signature`` must be
  ``sha256=<lower-case hex HMAC-SHA256 of b"<timestamp>.<body>">`` where
  ``<timestamp>`` is the ``X-Nova-Error-Notifier-Timestamp`` header (unix
  seconds, at most ``max_skew`` seconds away from the server's clock).  The
  verdict is ``signature_ok`` (None without a secret) and
  ``signature_error``.  The server answers as usual either way: tests assert
  on the record.
* schema: the body must be UTF-8 JSON that validates against
  ``schema_path`` (the package's webhook-v1.json by default) with
  ``jsonschema.Draft202012Validator`` (formats checked too); the messages
  are in ``schema_errors``.  ``validate=False`` (constructor or attribute)
  turns it off: ``schema_errors`` is then [] and ``schema_checked`` False.

The default answer is ``200 {"ok": true}``.  Failure injection:
``respond_next(status, headers, body, count)`` answers the next *count*
requests so (500, 429 with Retry-After, 400, 408, 302 with Location...),
``delay_next(seconds, count)`` holds the next *count* answers back.  Both
are taken, in arrival order, when a request has been read; the request is
recorded then, with the ``status`` it gets, before any delay.

Loud failures: an exception in the server's own code is answered 500,
recorded in ``errors``, and ``stop()`` raises ``WebhookServerError`` for it;
start-up problems raise ``WebhookServerError`` at once.  Clients that go
away (timeouts, refused certificates) are not errors; failed TLS handshakes
are listed in ``tls_errors``.  ``stop()`` closes every connection (also
those kept alive by a client's pool, and requests held by ``delay_next``),
joins every thread, removes the temporary directory.

Example::

    with WebhookServer(mode='https', secret='s3cret') as server:
        server.respond_next(429, headers={'Retry-After': '2'})
        ...  # the driver posts to server.url, verifying server.cafile
        first, second = server.wait_for_requests(2)
        assert first.status == 429 and second.status == 200
        assert second.signature_ok, second.signature_error
        assert second.schema_errors == []
"""

import collections
import collections.abc
import hashlib
import hmac
import http.server
import itertools
import json
import logging
import os
import re
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from urllib import parse

import jsonschema

import nova_error_notifier

try:  # tests/ and tests/functional/ are packages, or the root is on sys.path
    from tests.functional import smtp as smtp_helpers
except ModuleNotFoundError as exc:
    if exc.name not in ('tests', 'tests.functional'):
        raise  # aiosmtpd or cryptography missing: say so
    import smtp as smtp_helpers  # rootdir-less run

try:  # tests/ and tests/functional/ are packages, or the root is on sys.path
    from tests.functional import server_lifecycle
except ModuleNotFoundError as exc:
    if exc.name not in ('tests', 'tests.functional'):
        raise
    import server_lifecycle  # rootdir-less run

LOG = logging.getLogger(__name__)

HOST = '127.0.0.1'
MODES = ('http', 'https')
DEFAULT_PATH = '/hook'
DEFAULT_SCHEMA_PATH = os.path.join(
    os.path.dirname(os.path.abspath(nova_error_notifier.__file__)),
    'schemas', 'webhook-v1.json')
TIMESTAMP_HEADER = 'X-Nova-Error-Notifier-Timestamp'
SIGNATURE_HEADER = 'X-Nova-Error-Notifier-Signature'
IDEMPOTENCY_HEADER = 'Idempotency-Key'
DEFAULT_MAX_SKEW = 300.0
DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 10.0
DEFAULT_BODY = b'{"ok": true}'
# Framing is the server's business: an injected answer cannot set these.
_RESERVED_HEADERS = ('content-length', 'transfer-encoding')
_SIGNATURE_RE = re.compile(r'sha256=[0-9a-f]{64}\Z')
_TIMESTAMP_RE = re.compile(r'[0-9]{1,12}\Z')
_MAX_LINE = 65536

_server_counter = itertools.count(1)


class WebhookServerError(RuntimeError):
    """The test webhook server failed to start or stop, or broke serving."""


Response = collections.namedtuple('Response', 'status headers body')


# --------------------------------------------------------------------------
# Signing and validation (usable without a server)
# --------------------------------------------------------------------------

def _secret_bytes(secret):
    return secret.encode('utf-8') if isinstance(secret, str) else secret


def compute_signature(secret, timestamp, body):
    """``sha256=<hex>``: HMAC-SHA256 of ``b"<timestamp>.<body>"``."""
    mac = hmac.new(_secret_bytes(secret),
                   str(timestamp).encode('ascii') + b'.' + body,
                   hashlib.sha256)
    return 'sha256=' + mac.hexdigest()


def signature_headers(secret, body, timestamp=None):
    """The two signature headers for *body*, for clients in tests."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: compute_signature(secret, timestamp, body)}


def load_validator(schema_path=DEFAULT_SCHEMA_PATH):
    """A Draft202012Validator (format checks on) for the schema file."""
    with open(schema_path, 'rb') as f:
        schema = json.loads(f.read().decode('utf-8'))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def validation_errors(validator, instance):
    """``["<json path>: <message>", ...]`` for *instance*, [] when valid."""
    errors = sorted(validator.iter_errors(instance),
                    key=lambda e: (list(map(str, e.absolute_path)),
                                   e.message))
    return ['%s: %s' % (e.json_path, e.message) for e in errors]


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------

class Headers(collections.abc.Mapping):
    """Request headers: a read-only mapping, case-insensitive lookups.

    Iterates over the names as sent (first spelling).  A header sent more
    than once reads as its values joined with ', '; ``get_all(name)`` gives
    them apart, ``items_as_sent`` is every (name, value) in order.
    """

    def __init__(self, items):
        self.items_as_sent = [(str(n), str(v)) for n, v in items]
        self._by_key = {}
        for name, value in self.items_as_sent:
            key = name.lower()
            if key in self._by_key:
                self._by_key[key][1].append(value)
            else:
                self._by_key[key] = (name, [value])

    def __getitem__(self, name):
        if not isinstance(name, str) or name.lower() not in self._by_key:
            raise KeyError(name)
        return ', '.join(self._by_key[name.lower()][1])

    def __iter__(self):
        return (name for name, _ in self._by_key.values())

    def __len__(self):
        return len(self._by_key)

    def get_all(self, name):
        entry = self._by_key.get(name.lower())
        return list(entry[1]) if entry else []

    def __repr__(self):
        return 'Headers(%r)' % (dict(self.items()),)


class ReceivedRequest:
    """One request the server read; built once, never changed afterwards.

    ``method``, ``path`` (without the query), ``query`` (the raw query
    string, '' when none), ``query_params`` ({name: [values]}), ``headers``
    (``Headers``), ``body`` (bytes, de-chunked), ``json`` (the parsed body or
    None; ``json_error`` says why not), ``signature_ok`` (None without a
    secret), ``signature_error``, ``schema_checked``, ``schema_errors``,
    ``idempotency_key`` and ``timestamp`` (int; None when missing or not
    unix seconds) from their headers, ``status`` (the answer's status, also
    when the client gave up before a delayed answer), ``delay``,
    ``tls_version`` ('TLSv1.3'... or None), ``http_version``, ``peer``,
    ``received_at`` (time.time()).
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)

    @property
    def text(self):
        return self.body.decode('utf-8', 'replace')

    def __repr__(self):
        return ('<ReceivedRequest %s %s%s status=%s %d bytes signature_ok=%s '
                'schema_errors=%d idempotency_key=%r>' % (
                    self.method, self.path,
                    '?' + self.query if self.query else '', self.status,
                    len(self.body), self.signature_ok,
                    len(self.schema_errors), self.idempotency_key))


# --------------------------------------------------------------------------
# http.server glue
# --------------------------------------------------------------------------

class _BadRequest(ValueError):
    pass


def _read_chunked(rfile):
    body = bytearray()
    while True:
        line = rfile.readline(_MAX_LINE + 1)
        if not line.endswith(b'\n'):
            raise _BadRequest('truncated or overlong chunk-size line')
        try:
            size = int(line.split(b';', 1)[0].strip(), 16)
        except ValueError:
            raise _BadRequest('bad chunk-size line %r' % line) from None
        if size < 0:
            raise _BadRequest('negative chunk size')
        if size == 0:
            while True:  # trailer section, up to the empty line
                line = rfile.readline(_MAX_LINE + 1)
                if not line.endswith(b'\n'):
                    raise _BadRequest('truncated trailer section')
                if line in (b'\r\n', b'\n'):
                    return bytes(body)
        chunk = rfile.read(size)
        if len(chunk) != size or rfile.readline(3) not in (b'\r\n', b'\n'):
            raise _BadRequest('truncated chunk')
        body += chunk


def _read_body(handler):
    headers = handler.headers
    encoding = (headers.get('Transfer-Encoding') or '').strip().lower()
    if encoding:
        if encoding != 'chunked':
            raise _BadRequest('unsupported Transfer-Encoding %r' % encoding)
        return _read_chunked(handler.rfile)
    lengths = headers.get_all('Content-Length') or []
    if not lengths:
        return b''
    if len(set(lengths)) != 1 or not lengths[0].strip().isdigit():
        raise _BadRequest('bad Content-Length %r' % lengths)
    length = int(lengths[0])
    body = handler.rfile.read(length)
    if len(body) != length:
        raise ConnectionResetError('client closed the connection after %d of '
                                   '%d body bytes' % (len(body), length))
    return body


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'nova-error-notifier-test-webhook/1'
    sys_version = ''

    def log_message(self, format, *args):
        LOG.debug('%s: %s', self.address_string(), format % args)

    def _dispatch(self):
        self.server.owner._handle(self)

    do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _dispatch


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, owner, address, handler_class):
        self.owner = owner
        super().__init__(address, handler_class)

    def server_bind(self):
        # HTTPServer.server_bind() calls socket.getfqdn(), which can hang on
        # a host with broken DNS; the name is never used here.
        http.server.socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = host, port

    def process_request(self, request, client_address):
        self.owner._spawn_connection(request, client_address)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            LOG.info('%r: connection from %s: %r', self.owner,
                     client_address, exc)
        else:
            self.owner._add_error('serving %s' % (client_address,), exc)


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------

class WebhookServer(server_lifecycle.ServerLifecycle):
    """A real webhook receiver on 127.0.0.1 for one test (see module doc).

    :param mode: 'http' or 'https'.
    :param secret: None (signatures not checked: ``signature_ok`` None) or
        the shared secret, str (UTF-8) or bytes.
    :param schema_path: JSON Schema (draft 2020-12) every body is validated
        against; the package's webhook-v1.json by default.
    :param validate: validate bodies at all (also settable later as the
        ``validate`` attribute).
    :param max_skew: seconds the signed timestamp may be away from the
        server's clock; None for no limit.
    :param path: the path part of ``url`` (any path is served anyway).
    :param port: 0 (the default) for a free port.
    :param request_timeout: seconds an idle keep-alive connection (or a TLS
        handshake) may take before the server drops it.
    """

    error_class = WebhookServerError
    runs_once_name = 'a WebhookServer'

    def __init__(self, mode='http', secret=None,
                 schema_path=DEFAULT_SCHEMA_PATH, validate=True,
                 max_skew=DEFAULT_MAX_SKEW, path=DEFAULT_PATH, port=0,
                 request_timeout=DEFAULT_REQUEST_TIMEOUT,
                 stop_timeout=DEFAULT_STOP_TIMEOUT):
        if mode not in MODES:
            raise ValueError('mode must be one of %s, not %r' % (
                ', '.join(MODES), mode))
        if secret is not None and (
                not isinstance(secret, (str, bytes)) or not secret):
            raise TypeError('secret must be None or a non-empty str or '
                            'bytes, not %r' % (secret,))
        if not isinstance(path, str) or not path.startswith('/'):
            raise ValueError('path must start with "/", not %r' % (path,))
        if max_skew is not None and not max_skew > 0:
            raise ValueError('max_skew must be None or positive, not %r' % (
                max_skew,))
        self.mode = mode
        self.secret = secret
        self.schema_path = schema_path
        self.validate = validate
        self.max_skew = max_skew
        self.path = path
        self.host = HOST
        self.port = port
        self.request_timeout = request_timeout
        self.stop_timeout = stop_timeout
        self.tmpdir = None
        self.cafile = None
        self.keyfile = None
        self.validator = None
        self.errors = []
        self.tls_errors = []
        self._number = next(_server_counter)
        self._requests = []
        self._responses = collections.deque()
        self._delays = collections.deque()
        self._cond = threading.Condition()
        self._connections = {}  # connection thread -> socket
        self._connection_counter = itertools.count(1)
        self._stopping = threading.Event()
        self._httpd = None
        self._thread = None
        self._started = False
        self._stopped = False
        self._errors_reported = 0

    def __repr__(self):
        return '<WebhookServer #%d %s>' % (
            self._number, self.url if self.port else self.mode)

    # -- addresses ------------------------------------------------------------

    @property
    def scheme(self):
        return 'https' if self.mode == 'https' else 'http'

    @property
    def base_url(self):
        return '%s://%s:%s' % (self.scheme, self.host, self.port)

    @property
    def url(self):
        return self.base_url + self.path

    def client_context(self):
        """An ssl context for a client that trusts only this server."""
        return ssl.create_default_context(cafile=self.cafile)

    # -- what arrived ---------------------------------------------------------

    @property
    def requests(self):
        """The requests received so far, oldest first (a copy)."""
        with self._cond:
            return list(self._requests)

    def wait_for_requests(self, n, timeout=10.0):
        """Wait until *n* requests in all have arrived; return them.

        Raises AssertionError, listing what did arrive, when fewer than *n*
        arrived within *timeout* seconds, or when more than *n* did.
        """
        return self._wait_for_exactly(
            self._requests, n, timeout, 'request',
            lambda got: ''.join('\n  %r' % r for r in got) or '[]')

    # -- failure injection ----------------------------------------------------

    def respond_next(self, status, headers=None, body=b'', count=1):
        """Answer the next *count* requests with *status*, *headers*, *body*.

        *headers*: a dict or (name, value) pairs (e.g. ``{'Retry-After':
        '2'}``, ``{'Location': url}``); Content-Length is computed.  A
        ``Connection: close`` header also closes the connection.  *body*:
        bytes or str (UTF-8); a non-empty body without Content-Type is sent
        as text/plain.
        """
        if (not isinstance(status, int) or isinstance(status, bool)
                or not 200 <= status <= 599):
            raise ValueError('status must be an int in 200..599, not %r' % (
                status,))
        if isinstance(body, str):
            body = body.encode('utf-8')
        if not isinstance(body, bytes):
            raise TypeError('body must be bytes or str, not %r' % (body,))
        if status in (204, 304) and body:
            raise ValueError('a %d answer has no body' % status)
        pairs = list((headers or {}).items() if isinstance(headers, dict)
                     else headers or ())
        for pair in pairs:
            if (len(pair) != 2 or not all(isinstance(x, str) for x in pair)
                    or any(c in ''.join(pair) for c in '\r\n')):
                raise ValueError('bad header %r' % (pair,))
            if pair[0].lower() in _RESERVED_HEADERS:
                raise ValueError('%s is set by the server' % pair[0])
        if body and not any(n.lower() == 'content-type' for n, _ in pairs):
            pairs.append(('Content-Type', 'text/plain; charset=utf-8'))
        self._check_count(count)
        with self._cond:
            self._responses.extend([Response(status, pairs, body)] * count)

    def delay_next(self, seconds, count=1):
        """Hold the answer to the next *count* requests back *seconds*.

        The request is recorded on arrival, before the delay.  stop() cuts
        a delay short (the request then gets no answer).
        """
        if (not isinstance(seconds, (int, float)) or isinstance(seconds, bool)
                or not seconds > 0):
            raise ValueError('seconds must be a positive number, not %r' % (
                seconds,))
        self._check_count(count)
        with self._cond:
            self._delays.extend([float(seconds)] * count)

    @property
    def pending_responses(self):
        with self._cond:
            return list(self._responses)

    @property
    def pending_delays(self):
        with self._cond:
            return list(self._delays)

    def reset_failures(self):
        """Drop pending injected answers and delays."""
        with self._cond:
            self._responses.clear()
            self._delays.clear()

    @staticmethod
    def _check_count(count):
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError('count must be a positive integer, not %r' % (
                count,))

    # -- checks ---------------------------------------------------------------

    def _check_signature(self, headers, body, now):
        if self.secret is None:
            return None, None
        timestamp = headers.get(TIMESTAMP_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if timestamp is None:
            return False, 'no %s header' % TIMESTAMP_HEADER
        if signature is None:
            return False, 'no %s header' % SIGNATURE_HEADER
        if not _TIMESTAMP_RE.match(timestamp):
            return False, '%s is not unix seconds: %r' % (TIMESTAMP_HEADER,
                                                          timestamp)
        if not _SIGNATURE_RE.match(signature):
            return False, ('%s is not "sha256=<64 lower-case hex digits>": '
                           '%r' % (SIGNATURE_HEADER, signature))
        expected = compute_signature(self.secret, timestamp, body)
        if not hmac.compare_digest(expected, signature):
            return False, ('signature mismatch: got %s, the HMAC-SHA256 of '
                           '"<timestamp>.<body>" is %s' % (signature,
                                                           expected))
        skew = now - int(timestamp)
        if self.max_skew is not None and abs(skew) > self.max_skew:
            return False, ('timestamp %s is %+.0fs away from the server '
                           'clock (max_skew %ss)' % (timestamp, -skew,
                                                     self.max_skew))
        return True, None

    def _parse_json(self, body):
        try:
            return json.loads(body.decode('utf-8')), None
        except (UnicodeDecodeError, ValueError) as exc:
            return None, 'body is not UTF-8 JSON: %s' % exc

    def _inspect(self, handler, body):
        now = time.time()
        split = parse.urlsplit(handler.path)
        headers = Headers(handler.headers.items())
        document, json_error = self._parse_json(body)
        validate = bool(self.validate)
        schema_errors = []
        if validate:
            if json_error is not None:
                schema_errors = [json_error]
            else:
                schema_errors = validation_errors(self.validator, document)
        signature_ok, signature_error = self._check_signature(headers, body,
                                                              now)
        timestamp = headers.get(TIMESTAMP_HEADER)
        ssl_object = (handler.connection
                      if isinstance(handler.connection, ssl.SSLSocket)
                      else None)
        return ReceivedRequest(
            method=handler.command, path=split.path, query=split.query,
            query_params=parse.parse_qs(split.query, keep_blank_values=True),
            headers=headers, body=body, json=document, json_error=json_error,
            signature_ok=signature_ok, signature_error=signature_error,
            schema_checked=validate, schema_errors=schema_errors,
            idempotency_key=headers.get(IDEMPOTENCY_HEADER),
            timestamp=(int(timestamp) if timestamp is not None
                       and _TIMESTAMP_RE.match(timestamp) else None),
            status=None, delay=0.0,
            tls_version=ssl_object.version() if ssl_object else None,
            http_version=handler.request_version,
            peer=handler.client_address, received_at=now)

    # -- called on connection threads -----------------------------------------

    def _record(self, record):
        """Take the injected answer and delay, record; return both."""
        with self._cond:
            response = (self._responses.popleft() if self._responses
                        else Response(200, [('Content-Type',
                                             'application/json')],
                                      DEFAULT_BODY))
            delay = self._delays.popleft() if self._delays else 0.0
            record.status, record.delay = response.status, delay
            self._requests.append(record)
            self._cond.notify_all()
        return response, delay

    def _handle(self, handler):
        try:
            body = _read_body(handler)
        except _BadRequest as exc:
            self._add_error('malformed request %s %s from %s' % (
                handler.command, handler.path, handler.client_address), exc)
            handler.close_connection = True
            self._answer(handler, Response(
                400, [('Content-Type', 'text/plain; charset=utf-8'),
                      ('Connection', 'close')], str(exc).encode('utf-8')))
            return
        except OSError as exc:
            LOG.info('%r: client went away while sending the body: %r',
                     self, exc)
            handler.close_connection = True
            return
        try:
            response, delay = self._record(self._inspect(handler, body))
        except Exception as exc:
            self._add_error('handling %s %s' % (handler.command,
                                                handler.path), exc)
            self._answer(handler, Response(
                500, [('Content-Type', 'text/plain; charset=utf-8')],
                ('test webhook server error: %s: %s' % (
                    type(exc).__name__, exc)).encode('utf-8')))
            return
        if delay and self._stopping.wait(delay):
            handler.close_connection = True  # stopping: no answer at all
            return
        self._answer(handler, response)

    def _answer(self, handler, response):
        try:
            handler.send_response(response.status)
            for name, value in response.headers:
                handler.send_header(name, value)
            if response.status not in (204, 304):
                handler.send_header('Content-Length', str(len(response.body)))
            handler.end_headers()
            handler.wfile.write(response.body)
            handler.wfile.flush()
        except OSError as exc:  # the client gave up (timeout...)
            LOG.info('%r: could not answer %s %s: %r', self, handler.command,
                     handler.path, exc)
            handler.close_connection = True

    def _spawn_connection(self, request, client_address):
        """On the serving thread: one thread per accepted connection."""
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address),
            name='webhook-test-server-%d-conn-%d' % (
                self._number, next(self._connection_counter)),
            daemon=True)
        with self._cond:
            self._connections[thread] = request
        try:
            thread.start()
        except BaseException:
            with self._cond:
                self._connections.pop(thread, None)
            raise

    def _serve_connection(self, request, client_address):
        httpd = self._httpd
        try:
            if isinstance(request, ssl.SSLSocket):
                request.settimeout(self.request_timeout)
                try:
                    request.do_handshake()
                except (OSError, ValueError) as exc:
                    LOG.info('%r: TLS handshake with %s failed: %r', self,
                             client_address, exc)
                    with self._cond:
                        self.tls_errors.append('%s: %s' % (
                            type(exc).__name__, exc))
                    return
            httpd.finish_request(request, client_address)
        except OSError as exc:  # reset, closed at stop, timed out: theirs
            LOG.info('%r: connection from %s: %r', self, client_address, exc)
        except Exception as exc:
            self._add_error('serving %s' % (client_address,), exc)
        finally:
            try:
                httpd.shutdown_request(request)
            finally:
                with self._cond:
                    self._connections.pop(threading.current_thread(), None)
                    self._cond.notify_all()

    # -- start / stop ---------------------------------------------------------

    def _start(self):
        try:
            self.validator = load_validator(self.schema_path)
        except Exception as exc:
            raise WebhookServerError('%r: cannot load the JSON schema %s: '
                                     '%s' % (self, self.schema_path, exc)
                                     ) from exc
        tls_context = None
        if self.mode == 'https':
            self.tmpdir = tempfile.mkdtemp(prefix='nen-webhook-')
            self.cafile, self.keyfile = smtp_helpers.make_certificate(
                self.tmpdir)
            tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls_context.load_cert_chain(self.cafile, self.keyfile)
        # StreamRequestHandler.setup() puts its ``timeout`` on the socket.
        handler_class = type('_Handler%d' % self._number, (_Handler,),
                             {'timeout': self.request_timeout})
        try:
            self._httpd = _HTTPServer(self, (self.host, self.port),
                                      handler_class)
        except OSError as exc:
            raise WebhookServerError('%r could not listen on %s:%s: %s' % (
                self, self.host, self.port, exc)) from exc
        if tls_context is not None:
            # The handshake runs on the connection's thread: done in
            # accept(), one stalled or refusing client would block the
            # serving thread for everybody.
            self._httpd.socket = tls_context.wrap_socket(
                self._httpd.socket, server_side=True,
                do_handshake_on_connect=False)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._serve, name='webhook-test-server-%d' % self._number,
            daemon=True)
        self._thread.start()

    def _serve(self):
        try:
            self._httpd.serve_forever(poll_interval=0.05)
        except BaseException as exc:
            self._add_error('the serving thread died', exc)

    def _stop(self):
        self._stopping.set()  # cuts delay_next() short
        httpd, thread = self._httpd, self._thread
        stuck = []
        try:
            if thread is not None and thread.is_alive():
                httpd.shutdown()  # serve_forever() returns: no more accepts
            if httpd is not None:
                httpd.server_close()
            with self._cond:
                connections = dict(self._connections)
            for sock in connections.values():
                try:
                    # socket.socket's own shutdown() even for an SSLSocket:
                    # wakes a thread blocked reading a kept-alive connection
                    # without touching the TLS state it is using.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed
            deadline = time.monotonic() + self.stop_timeout
            for conn_thread in list(connections) + [thread]:
                if conn_thread is not None:
                    conn_thread.join(max(0.0, deadline - time.monotonic()))
                    if conn_thread.is_alive():
                        stuck.append(conn_thread.name)
        finally:
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
        if stuck:
            raise WebhookServerError('%r: threads still running %ss after '
                                     'stop: %s' % (self, self.stop_timeout,
                                                   ', '.join(stuck)))
