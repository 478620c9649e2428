"""A real SMTP server for functional tests of the e-mail driver.

``SMTPServer`` runs aiosmtpd's protocol in an asyncio loop on a background
thread, listening on 127.0.0.1 on a free port.  The stdlib ``smtplib`` (and so
the driver) talks to it as to any MTA:

* ``mode='plain'``: no TLS at all;
* ``mode='starttls'``: plain connection, STARTTLS offered (required before
  any mail command with ``require_starttls=True``);
* ``mode='ssl'``: implicit TLS from the first byte (SMTPS, port-465 style).

Every server makes its own self-signed certificate for 127.0.0.1/localhost in
a private temporary directory; ``cafile`` is its path, for the client to
verify against.  With ``auth={'user': 'password'}`` the server offers AUTH
LOGIN and PLAIN (``auth_mechanisms`` narrows that) and refuses MAIL FROM
until the session has authenticated; in starttls mode AUTH is only offered
after STARTTLS.  Without ``auth`` no AUTH extension is offered at all.

Failure injection: ``reply_next(code, text, count, stage)`` answers the next
*count* mail transactions with that reply at MAIL, RCPT (every recipient of
the transaction) or DATA (the end-of-data reply: the message is not kept);
``refuse_recipient(address, code, text)`` refuses one recipient for good.
A 421 reply also closes the connection, as real servers do.

Loud failures: an exception inside the server (our hooks or aiosmtpd) is
recorded in ``errors`` and ``stop()`` raises ``SMTPServerError`` for it;
start-up problems raise ``SMTPServerError`` at once.  ``stop()`` closes every
connection (without waiting for TLS close_notify), joins the thread and
removes the temporary directory.

Example::

    with SMTPServer(mode='starttls', auth={'nova': 's3cret'}) as server:
        ctx = ssl.create_default_context(cafile=server.cafile)
        with smtplib.SMTP(server.host, server.port, timeout=10) as client:
            client.starttls(context=ctx)
            client.login('nova', 's3cret')
            client.sendmail('a@example.org', ['b@example.org'], b'...')
        [msg] = server.wait_for_messages(1)
        msg.message['Subject']
"""

import asyncio
import collections
import datetime
import email
import email.policy
import functools
import ipaddress
import itertools
import logging
import os
import shutil
import ssl
import tempfile
import threading
import time

from aiosmtpd import smtp as aiosmtpd_smtp
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID

try:  # tests/ and tests/functional/ are packages, or the root is on sys.path
    from tests.functional import server_lifecycle
except ModuleNotFoundError as exc:
    if exc.name not in ('tests', 'tests.functional'):
        raise
    import server_lifecycle  # rootdir-less run

LOG = logging.getLogger(__name__)

HOST = '127.0.0.1'
SERVER_HOSTNAME = 'localhost'
MODES = ('plain', 'starttls', 'ssl')
STAGES = ('MAIL', 'RCPT', 'DATA')
AUTH_MECHANISMS = ('LOGIN', 'PLAIN')
DEFAULT_START_TIMEOUT = 10.0
DEFAULT_STOP_TIMEOUT = 10.0

_server_counter = itertools.count(1)


class SMTPServerError(RuntimeError):
    """The test SMTP server failed to start or stop, or broke while serving."""


Reply = collections.namedtuple('Reply', 'code text stage')


class ReceivedMessage:
    """One message the server accepted (end-of-data answered 250).

    ``mail_from`` and ``rcpt_tos`` are the envelope, ``data`` the raw bytes
    exactly as received (CRLF line ends, dot-stuffing undone), ``message``
    the parsed ``email.message.EmailMessage`` (parsed from those bytes, so
    the text of a 7bit/8bit/quoted-printable part keeps its CRLF line ends:
    compare with ``splitlines()``).  ``tls_version`` is the TLS
    protocol of the session ('TLSv1.3', ...) or None; ``auth_username`` the
    user the session authenticated as, or None.
    """

    def __init__(self, mail_from, rcpt_tos, data, mail_options=(),
                 tls_version=None, auth_username=None, peer=None):
        self.mail_from = mail_from
        self.rcpt_tos = list(rcpt_tos)
        self.data = bytes(data)
        self.mail_options = list(mail_options)
        self.tls_version = tls_version
        self.auth_username = auth_username
        self.peer = peer

    @functools.cached_property
    def message(self):
        return email.message_from_bytes(self.data,
                                        policy=email.policy.default)

    def __repr__(self):
        return ('<ReceivedMessage from=%r to=%r subject=%r %d bytes tls=%s '
                'auth=%r>' % (self.mail_from, self.rcpt_tos,
                              self.message['Subject'], len(self.data),
                              self.tls_version, self.auth_username))


# --------------------------------------------------------------------------
# Certificate
# --------------------------------------------------------------------------

def make_certificate(directory, dns_names=(SERVER_HOSTNAME,),
                     ip_addresses=(HOST,), days=2):
    """Write a self-signed server certificate and its key into *directory*.

    Returns ``(certfile, keyfile)`` (PEM).  The certificate is its own CA:
    ``certfile`` works as the client's ``cafile``, and it passes OpenSSL's
    strict checks (``ssl.VERIFY_X509_STRICT``, on by default from Python
    3.13): critical CA basic constraints, key usage, subject and authority
    key identifiers, subjectAltName for every name and address.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                           'nova-error-notifier tests'),
        x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0]),
    ])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names = [x509.DNSName(n) for n in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a))
                  for a in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                       critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public),
                       critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
            critical=False)
        .sign(key, hashes.SHA256())
    )
    certfile = os.path.join(directory, 'server-cert.pem')
    keyfile = os.path.join(directory, 'server-key.pem')
    with open(certfile, 'wb') as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'wb') as f:
        f.write(key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return certfile, keyfile


# --------------------------------------------------------------------------
# aiosmtpd glue
# --------------------------------------------------------------------------

class _Protocol(aiosmtpd_smtp.SMTP):
    """aiosmtpd's SMTP protocol, tracked so that stop() can close it."""

    def __init__(self, owner, *args, **kwargs):
        self._owner = owner
        super().__init__(*args, **kwargs)

    def connection_made(self, transport):
        # Called again, with the TLS transport, after STARTTLS.
        self._owner._connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, error):
        self._owner._connections.discard(self)
        super().connection_lost(error)


def _tls_version(smtp):
    transport = smtp.transport
    ssl_object = (transport.get_extra_info('ssl_object')
                  if transport is not None else None)
    return ssl_object.version() if ssl_object is not None else None


def _auth_username(session):
    if not session.authenticated or session.auth_data is None:
        return None
    return session.auth_data.login.decode('utf-8', 'replace')


class _Handler:
    """aiosmtpd handler hooks; they run on the server's loop thread.

    aiosmtpd takes every ``handle_*`` attribute of the handler as a hook and
    every ``auth_*`` attribute as an AUTH mechanism: name nothing else so.
    """

    def __init__(self, owner):
        self._owner = owner

    async def handle_EHLO(self, smtp, session, envelope, hostname, responses):
        # With an EHLO hook aiosmtpd leaves recording the client's name to
        # us; without it MAIL answers "503 send HELO first".
        session.host_name = hostname
        if self._owner.auth is None:
            responses = [r for r in responses
                         if not r[4:].upper().startswith('AUTH')]
        return responses

    async def handle_AUTH(self, smtp, session, envelope, args):
        if self._owner.auth is None:
            return '502 5.5.1 AUTH not enabled on this server'
        return aiosmtpd_smtp.MISSING  # go on with aiosmtpd's AUTH

    async def handle_MAIL(self, smtp, session, envelope, address,
                          mail_options):
        owner = self._owner
        if owner.auth is not None and not session.authenticated:
            return '530 5.7.0 Authentication required'
        reply = owner._take_reply()
        if reply is not None and reply.stage == 'MAIL':
            return owner._answer(smtp, reply)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.nen_injected_reply = reply
        return '250 2.1.0 OK'

    async def handle_RCPT(self, smtp, session, envelope, address,
                          rcpt_options):
        owner = self._owner
        reply = getattr(envelope, 'nen_injected_reply', None)
        if reply is not None and reply.stage == 'RCPT':
            return owner._answer(smtp, reply)
        refused = owner._refused_reply(address)
        if refused is not None:
            return owner._answer(smtp, refused)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return '250 2.1.5 OK'

    async def handle_DATA(self, smtp, session, envelope):
        owner = self._owner
        reply = getattr(envelope, 'nen_injected_reply', None)
        if reply is not None and reply.stage == 'DATA':
            return owner._answer(smtp, reply)
        owner._record(ReceivedMessage(
            envelope.mail_from, envelope.rcpt_tos, envelope.original_content,
            mail_options=envelope.mail_options,
            tls_version=_tls_version(smtp),
            auth_username=_auth_username(session),
            peer=session.peer))
        return '250 2.0.0 OK: queued'

    async def handle_exception(self, error):
        if isinstance(error, aiosmtpd_smtp.TLSSetupException):
            # A client that gave up the STARTTLS handshake (for instance on
            # an untrusted certificate): a client-side failure, not ours.
            LOG.info('STARTTLS handshake failed: %r', error.__cause__)
            return '421 4.7.0 TLS handshake failed'
        self._owner._add_error('exception while handling a command', error)
        return '451 4.3.0 test SMTP server error: %s: %s' % (
            type(error).__name__, error)


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------

class SMTPServer(server_lifecycle.ServerLifecycle):
    """A real SMTP server on 127.0.0.1 for one test (see the module doc).

    :param mode: 'plain', 'starttls' or 'ssl' (implicit TLS).
    :param auth: None (no AUTH offered) or {username: password}; when set,
        MAIL FROM is refused with 530 until the session authenticated.
    :param require_starttls: starttls mode only: answer 530 to every mail
        command until the client has done STARTTLS.
    :param auth_mechanisms: the AUTH mechanisms offered, out of
        ('LOGIN', 'PLAIN'); both by default.
    :param port: 0 (the default) for a free port.
    :param smtputf8: offer SMTPUTF8.
    """

    error_class = SMTPServerError
    runs_once_name = 'an SMTPServer'

    def __init__(self, mode='plain', auth=None, require_starttls=False,
                 auth_mechanisms=AUTH_MECHANISMS, port=0, smtputf8=True,
                 start_timeout=DEFAULT_START_TIMEOUT,
                 stop_timeout=DEFAULT_STOP_TIMEOUT):
        if mode not in MODES:
            raise ValueError('mode must be one of %s, not %r' % (
                ', '.join(MODES), mode))
        if require_starttls and mode != 'starttls':
            raise ValueError('require_starttls only applies to starttls '
                             'mode, not %r' % mode)
        if auth is not None:
            if not isinstance(auth, dict) or not auth or not all(
                    isinstance(k, str) and isinstance(v, str)
                    for k, v in auth.items()):
                raise TypeError('auth must be None or a non-empty dict of '
                                '{username: password} strings, not %r' % (
                                    auth,))
        mechanisms = tuple(m.upper() for m in auth_mechanisms)
        unknown = set(mechanisms) - set(AUTH_MECHANISMS)
        if not mechanisms or unknown:
            raise ValueError('auth_mechanisms must be a non-empty subset of '
                             '%s, not %r' % (AUTH_MECHANISMS,
                                             auth_mechanisms))
        self.mode = mode
        self.auth = dict(auth) if auth is not None else None
        self.require_starttls = require_starttls
        self.auth_mechanisms = mechanisms
        self.smtputf8 = smtputf8
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.host = HOST
        self.port = port
        self.tmpdir = None
        self.cafile = None
        self.keyfile = None
        self.errors = []
        self._messages = []
        self._auth_attempts = []
        self._pending = collections.deque()
        self._refused = {}
        self._cond = threading.Condition()
        self._connections = set()
        self._loop = None
        self._thread = None
        self._server = None
        self._server_tls = None
        self._started = False
        self._stopped = False
        self._errors_reported = 0

    def __repr__(self):
        return '<SMTPServer %s %s:%s auth=%s>' % (
            self.mode, self.host, self.port,
            sorted(self.auth) if self.auth else None)

    # -- observed traffic ----------------------------------------------------

    @property
    def messages(self):
        """The messages received so far, oldest first (a copy)."""
        with self._cond:
            return list(self._messages)

    @property
    def auth_attempts(self):
        """Every AUTH exchange so far as (username, ok), oldest first.

        smtplib's ``login()`` tries each offered mechanism in turn until one
        succeeds, so one failed login() is one attempt per mechanism.
        """
        with self._cond:
            return list(self._auth_attempts)

    def wait_for_messages(self, n, timeout=10.0):
        """Wait until *n* messages in all have arrived; return them.

        Raises AssertionError, listing what did arrive, when fewer than *n*
        arrived within *timeout* seconds, or when more than *n* did.
        """
        return self._wait_for_exactly(self._messages, n, timeout, 'message')

    # -- failure injection ---------------------------------------------------

    def reply_next(self, code, text, count=1, stage='DATA'):
        """Answer the next *count* transactions with ``code text`` at *stage*.

        stage 'MAIL': MAIL FROM is refused; 'RCPT': every RCPT TO of the
        transaction is refused; 'DATA': the end-of-data reply (the message
        is not kept).  A transaction consumes one injected reply when its
        MAIL FROM is answered.  Code 421 also closes the connection.
        """
        stage = str(stage).upper()
        if stage not in STAGES:
            raise ValueError('stage must be one of %s, not %r' % (
                ', '.join(STAGES), stage))
        self._check_code(code)
        if not isinstance(count, int) or count < 1:
            raise ValueError('count must be a positive integer, not %r' % (
                count,))
        with self._cond:
            self._pending.extend([Reply(code, text, stage)] * count)

    def refuse_recipient(self, address, code=550,
                         text='5.1.1 Recipient address rejected'):
        """Refuse RCPT TO *address* (compared case-insensitively) for good."""
        self._check_code(code)
        with self._cond:
            self._refused[address.casefold()] = Reply(code, text, 'RCPT')

    @property
    def pending_replies(self):
        """Injected replies not used yet."""
        with self._cond:
            return list(self._pending)

    def reset_failures(self):
        """Drop pending injected replies and refused recipients."""
        with self._cond:
            self._pending.clear()
            self._refused.clear()

    @staticmethod
    def _check_code(code):
        if not isinstance(code, int) or not 400 <= code <= 599:
            raise ValueError('an injected reply needs a 4xx or 5xx code, '
                             'not %r' % (code,))

    # -- called on the loop thread -------------------------------------------

    def _take_reply(self):
        with self._cond:
            return self._pending.popleft() if self._pending else None

    def _refused_reply(self, address):
        with self._cond:
            return self._refused.get(address.casefold())

    def _answer(self, smtp, reply):
        if reply.code == 421:
            # After the reply is written: close() flushes it first.
            transport = smtp.transport
            if transport is not None:
                self._loop.call_soon(transport.close)
        return '%d %s' % (reply.code, reply.text)

    def _record(self, message):
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()

    def _record_auth(self, username, ok):
        with self._cond:
            self._auth_attempts.append((username, ok))

    def _authenticate(self, smtp, session, envelope, mechanism, auth_data):
        username = auth_data.login.decode('utf-8', 'replace')
        password = auth_data.password.decode('utf-8', 'replace')
        ok = self.auth is not None and self.auth.get(username) == password
        self._record_auth(username, ok)
        # handled=False: aiosmtpd answers 535 5.7.8 on failure.
        return aiosmtpd_smtp.AuthResult(success=ok, handled=False,
                                        auth_data=auth_data)

    def _make_protocol(self):
        try:
            return _Protocol(self, _Handler(self), **self._smtp_kwargs)
        except Exception as exc:
            self._add_error('cannot create the SMTP protocol', exc)
            raise

    def _loop_exception(self, loop, context):
        exc = context.get('exception')
        if isinstance(exc, OSError):
            # Peers that vanish, TLS handshakes a client gave up: theirs.
            LOG.info('%r: %s: %r', self, context.get('message'), exc)
            return
        self._add_error('asyncio: %s' % context.get('message'),
                        exc if exc is not None else RuntimeError(
                            repr(context)))

    # -- start / stop ---------------------------------------------------------

    def _start(self):
        self.tmpdir = tempfile.mkdtemp(prefix='nen-smtp-')
        self.cafile, self.keyfile = make_certificate(self.tmpdir)
        tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_context.load_cert_chain(self.cafile, self.keyfile)
        self._server_tls = tls_context

        excluded = [m for m in AUTH_MECHANISMS
                    if m not in self.auth_mechanisms]
        starttls = self.mode == 'starttls'
        self._smtp_kwargs = dict(
            hostname=SERVER_HOSTNAME,  # else socket.getfqdn() per connection
            ident='nova-error-notifier test SMTP',
            # In ssl mode the context goes to the listener instead: given to
            # the protocol too, aiosmtpd would offer STARTTLS inside TLS.
            tls_context=tls_context if starttls else None,
            require_starttls=self.require_starttls,
            # aiosmtpd only counts a STARTTLS session as TLS: with implicit
            # TLS, auth_require_tls=True would hide AUTH.  In plain and ssl
            # mode the MAIL hook enforces AUTH (aiosmtpd's auth_required
            # without auth_require_tls emits a UserWarning per connection).
            auth_require_tls=starttls,
            auth_required=self.auth is not None and starttls,
            auth_exclude_mechanism=excluded,
            authenticator=self._authenticate,
            enable_SMTPUTF8=self.smtputf8,
        )
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_exception)
        self._smtp_kwargs['loop'] = self._loop
        ready = threading.Event()
        outcome = {}
        self._thread = threading.Thread(
            target=self._run, args=(ready, outcome),
            name='smtp-test-server-%d' % next(_server_counter), daemon=True)
        self._thread.start()
        if not ready.wait(self.start_timeout):
            raise SMTPServerError('%r did not start listening within %ss' % (
                self, self.start_timeout))
        if 'error' in outcome:
            raise SMTPServerError('%r could not listen on %s:%s: %s' % (
                self, self.host, self.port, outcome['error'])) from (
                    outcome['error'])

    def _run(self, ready, outcome):
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            try:
                self._server = loop.run_until_complete(loop.create_server(
                    self._make_protocol, host=self.host, port=self.port,
                    ssl=self._server_tls if self.mode == 'ssl' else None))
            except Exception as exc:
                outcome['error'] = exc
                return
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            self._close_all()
        finally:
            ready.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def _close_all(self):
        """On the loop thread, after run_forever(): close everything."""
        loop = self._loop
        self._server.close()
        for protocol in list(self._connections):
            # abort(), not close(): a TLS close would wait for the client's
            # close_notify (up to 30 s) when the client is still connected.
            transport = protocol._original_transport or protocol.transport
            if transport is not None:
                transport.abort()
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(
            asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(self._server.wait_closed())
        # Let the aborted transports run their connection_lost callbacks
        # (a TLS transport takes a few loop iterations).
        deadline = time.monotonic() + 2.0
        while self._connections and time.monotonic() < deadline:
            loop.run_until_complete(asyncio.sleep(0.001))
        if self._connections:
            self._add_error('connections left open at stop',
                            RuntimeError(repr(self._connections)))

    def _stop(self):
        thread, loop = self._thread, self._loop
        if thread is not None:
            if thread.is_alive() and not loop.is_closed():
                loop.call_soon_threadsafe(loop.stop)
            thread.join(self.stop_timeout)
            if thread.is_alive():
                raise SMTPServerError('%r: server thread still running '
                                      '%ss after stop' % (
                                          self, self.stop_timeout))
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def client_context(self):
        """An ssl context for a client that trusts only this server."""
        return ssl.create_default_context(cafile=self.cafile)
