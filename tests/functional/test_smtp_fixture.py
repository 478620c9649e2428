"""Proves the real-SMTP test infrastructure (tests/functional/smtp.py).

Every test talks to the server with the stdlib ``smtplib``, the client the
e-mail driver uses.
"""

from email.message import EmailMessage
import os
import smtplib
import ssl
import threading

import pytest

try:
    from tests.functional import procutil
    from tests.functional import smtp as smtp_helpers
except ModuleNotFoundError as exc:
    if exc.name not in ('tests', 'tests.functional'):
        raise  # aiosmtpd or cryptography missing: say so
    import procutil
    import smtp as smtp_helpers

SENDER = 'nova-errors@example.org'
RCPT = 'ops@example.org'
OTHER = 'oncall@example.org'
USERS = {'alice': 'correct horse', 'bob': 'b0b'}
RAW = (b'From: nova-errors@example.org\r\n'
       b'To: ops@example.org\r\n'
       b'Subject: instance.create.error\r\n'
       b'\r\n'
       b'PortBindingFailed on compute-1\r\n'
       b'.leading dot survives dot-stuffing\r\n')


def _client(server, host=None, context=None):
    """A connected smtplib client; for ssl mode over implicit TLS."""
    host = host or server.host
    if server.mode == 'ssl':
        return smtplib.SMTP_SSL(host, server.port, timeout=10,
                                context=context or server.client_context())
    return smtplib.SMTP(host, server.port, timeout=10)


def _secure(client, server):
    """STARTTLS in starttls mode (verified against the server's cafile)."""
    if server.mode == 'starttls':
        client.starttls(context=server.client_context())


_port_closed = procutil.port_refused


# -- plain, STARTTLS, implicit TLS -----------------------------------------

def test_plain_send(smtp_server):
    server = smtp_server()
    assert server.host == '127.0.0.1' and server.port > 0
    with _client(server) as client:
        assert not client.has_extn('starttls')
        assert not client.has_extn('auth')
        refused = client.sendmail(SENDER, [RCPT, OTHER], RAW)
    assert refused == {}
    [msg] = server.wait_for_messages(1)
    assert msg.mail_from == SENDER
    assert msg.rcpt_tos == [RCPT, OTHER]
    assert msg.data == RAW
    assert msg.message['Subject'] == 'instance.create.error'
    # Parsed from the wire bytes: a 7bit/8bit body keeps its CRLFs.
    assert msg.message.get_content() == (
        'PortBindingFailed on compute-1\r\n'
        '.leading dot survives dot-stuffing\r\n')
    assert msg.tls_version is None
    assert msg.auth_username is None


def test_starttls_verified_against_cafile(smtp_server):
    server = smtp_server(mode='starttls')
    assert os.path.isfile(server.cafile)
    context = ssl.create_default_context(cafile=server.cafile)
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo()
        assert client.has_extn('starttls')
        code, _ = client.starttls(context=context)
        assert code == 220
        assert isinstance(client.sock, ssl.SSLSocket)
        cert = client.sock.getpeercert()
        assert ('IP Address', '127.0.0.1') in cert['subjectAltName']
        assert ('DNS', 'localhost') in cert['subjectAltName']
        client.ehlo()
        assert not client.has_extn('starttls')
        client.sendmail(SENDER, [RCPT], RAW)
    [msg] = server.wait_for_messages(1)
    assert msg.tls_version in ('TLSv1.2', 'TLSv1.3')
    assert msg.data == RAW


def test_certificate_passes_strict_checks_by_hostname(smtp_server):
    # Python 3.13+ turns VERIFY_X509_STRICT on by default.
    server = smtp_server(mode='starttls')
    context = ssl.create_default_context(cafile=server.cafile)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    with smtplib.SMTP('localhost', server.port, timeout=10) as client:
        client.starttls(context=context)
        client.sendmail(SENDER, [RCPT], RAW)
    server.wait_for_messages(1)


def test_untrusted_certificate_is_refused_and_server_carries_on(smtp_server):
    server = smtp_server(mode='starttls')
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=ssl.create_default_context())
    # The failed handshake is the client's business: the server goes on and
    # its teardown reports no error.
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.starttls(context=server.client_context())
        client.sendmail(SENDER, [RCPT], RAW)
    server.wait_for_messages(1)


def test_require_starttls_refuses_mail_before_tls(smtp_server):
    server = smtp_server(mode='starttls', require_starttls=True)
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as exc_info:
            client.sendmail(SENDER, [RCPT], RAW)
        assert exc_info.value.smtp_code == 530
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.starttls(context=server.client_context())
        client.sendmail(SENDER, [RCPT], RAW)
    [msg] = server.wait_for_messages(1)
    assert msg.tls_version is not None


def test_implicit_tls(smtp_server):
    server = smtp_server(mode='ssl')
    context = ssl.create_default_context(cafile=server.cafile)
    with smtplib.SMTP_SSL(server.host, server.port, timeout=10,
                          context=context) as client:
        client.ehlo()
        assert not client.has_extn('starttls')
        client.sendmail(SENDER, [RCPT], RAW)
    [msg] = server.wait_for_messages(1)
    assert msg.tls_version in ('TLSv1.2', 'TLSv1.3')


def test_implicit_tls_untrusted_certificate(smtp_server):
    server = smtp_server(mode='ssl')
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL(server.host, server.port, timeout=10,
                         context=ssl.create_default_context())
    assert server.messages == []


# -- AUTH --------------------------------------------------------------------

@pytest.mark.parametrize('mechanism', ['LOGIN', 'PLAIN'])
@pytest.mark.parametrize('mode', ['plain', 'starttls', 'ssl'])
def test_auth_success(smtp_server, mode, mechanism):
    server = smtp_server(mode=mode, auth=USERS, auth_mechanisms=[mechanism])
    with _client(server) as client:
        _secure(client, server)
        client.ehlo()
        assert client.esmtp_features['auth'].split() == [mechanism]
        code, _ = client.login('alice', USERS['alice'])
        assert code == 235
        client.sendmail(SENDER, [RCPT], RAW)
    [msg] = server.wait_for_messages(1)
    assert msg.auth_username == 'alice'
    assert server.auth_attempts == [('alice', True)]


@pytest.mark.parametrize('mode', ['plain', 'starttls', 'ssl'])
def test_auth_failure(smtp_server, mode):
    server = smtp_server(mode=mode, auth=USERS)
    with _client(server) as client:
        _secure(client, server)
        with pytest.raises(smtplib.SMTPAuthenticationError) as exc_info:
            client.login('alice', 'wrong')
        assert exc_info.value.smtp_code == 535
        # Still unauthenticated: no mail.
        with pytest.raises(smtplib.SMTPSenderRefused) as exc_info:
            client.sendmail(SENDER, [RCPT], RAW)
        assert exc_info.value.smtp_code == 530
    # login() tries PLAIN, then LOGIN: one failed attempt each.
    assert server.auth_attempts == [('alice', False), ('alice', False)]
    assert server.messages == []


def test_auth_unknown_user(smtp_server):
    server = smtp_server(auth=USERS, auth_mechanisms=['PLAIN'])
    with _client(server) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as exc_info:
            client.login('mallory', USERS['alice'])
        assert exc_info.value.smtp_code == 535
    assert server.auth_attempts == [('mallory', False)]


@pytest.mark.parametrize('mode', ['plain', 'starttls', 'ssl'])
def test_unauthenticated_send_rejected(smtp_server, mode):
    server = smtp_server(mode=mode, auth=USERS)
    with _client(server) as client:
        _secure(client, server)
        with pytest.raises(smtplib.SMTPSenderRefused) as exc_info:
            client.sendmail(SENDER, [RCPT], RAW)
        assert exc_info.value.smtp_code == 530
    assert server.messages == []
    assert server.auth_attempts == []


def test_starttls_auth_only_after_tls(smtp_server):
    server = smtp_server(mode='starttls', auth=USERS)
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo()
        assert not client.has_extn('auth')
        with pytest.raises(smtplib.SMTPNotSupportedError):
            client.login('alice', USERS['alice'])
        code, _ = client.docmd('AUTH', 'PLAIN AGFsaWNlAGI=')
        assert code == 538
        client.starttls(context=server.client_context())
        client.ehlo()
        assert client.has_extn('auth')
        client.login('alice', USERS['alice'])
        client.sendmail(SENDER, [RCPT], RAW)
    server.wait_for_messages(1)
    assert server.auth_attempts == [('alice', True)]


def test_no_auth_offered_without_users(smtp_server):
    server = smtp_server(mode='starttls')
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.starttls(context=server.client_context())
        client.ehlo()
        assert not client.has_extn('auth')
        with pytest.raises(smtplib.SMTPNotSupportedError):
            client.login('alice', 'x')
        code, _ = client.docmd('AUTH', 'PLAIN AGFsaWNlAHg=')
        assert code == 502
    assert server.auth_attempts == []


# -- failure injection -------------------------------------------------------

@pytest.mark.parametrize('code', [451, 550])
def test_reply_next_at_data(smtp_server, code):
    server = smtp_server()
    server.reply_next(code, '4.3.0 try again later' if code == 451 else
                      '5.7.1 message rejected')
    with _client(server) as client:
        with pytest.raises(smtplib.SMTPDataError) as exc_info:
            client.sendmail(SENDER, [RCPT], RAW)
        assert exc_info.value.smtp_code == code
        assert server.messages == []
        # Only the next transaction: the same connection now delivers.
        client.sendmail(SENDER, [RCPT], RAW)
    server.wait_for_messages(1)
    assert server.pending_replies == []


@pytest.mark.parametrize('code', [451, 550])
def test_reply_next_at_rcpt(smtp_server, code):
    server = smtp_server()
    server.reply_next(code, 'recipient not now', stage='RCPT')
    with _client(server) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as exc_info:
            client.sendmail(SENDER, [RCPT, OTHER], RAW)
        assert exc_info.value.recipients == {
            RCPT: (code, b'recipient not now'),
            OTHER: (code, b'recipient not now')}
        client.sendmail(SENDER, [RCPT, OTHER], RAW)
    [msg] = server.wait_for_messages(1)
    assert msg.rcpt_tos == [RCPT, OTHER]


@pytest.mark.parametrize('code', [451, 550])
def test_reply_next_at_mail(smtp_server, code):
    server = smtp_server()
    server.reply_next(code, 'sender not now', stage='mail')
    with _client(server) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as exc_info:
            client.sendmail(SENDER, [RCPT], RAW)
        assert exc_info.value.smtp_code == code
        assert exc_info.value.sender == SENDER
        client.sendmail(SENDER, [RCPT], RAW)
    server.wait_for_messages(1)


def test_reply_next_count_spans_connections(smtp_server):
    server = smtp_server()
    server.reply_next(451, '4.3.2 busy', count=2)
    for _ in range(2):
        with _client(server) as client:
            with pytest.raises(smtplib.SMTPDataError) as exc_info:
                client.sendmail(SENDER, [RCPT], RAW)
            assert exc_info.value.smtp_code == 451
            assert exc_info.value.smtp_error == b'4.3.2 busy'
    with _client(server) as client:
        client.sendmail(SENDER, [RCPT], RAW)
    server.wait_for_messages(1)


def test_reply_421_closes_the_connection(smtp_server):
    server = smtp_server()
    server.reply_next(421, '4.3.2 shutting down', stage='MAIL')
    client = _client(server)
    try:
        with pytest.raises(smtplib.SMTPSenderRefused) as exc_info:
            client.sendmail(SENDER, [RCPT], RAW)
        assert exc_info.value.smtp_code == 421
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    finally:
        client.close()


def test_reply_next_rejects_nonsense(smtp_server):
    server = smtp_server()
    with pytest.raises(ValueError):
        server.reply_next(250, 'ok')
    with pytest.raises(ValueError):
        server.reply_next(451, 'x', stage='HELO')
    with pytest.raises(ValueError):
        server.reply_next(451, 'x', count=0)
    assert server.pending_replies == []


def test_refuse_recipient_refuses_only_that_address(smtp_server):
    server = smtp_server()
    server.refuse_recipient(OTHER, 550, '5.1.1 no such user')
    with _client(server) as client:
        refused = client.sendmail(SENDER, [RCPT, OTHER.upper()], RAW)
        assert refused == {OTHER.upper(): (550, b'5.1.1 no such user')}
        with pytest.raises(smtplib.SMTPRecipientsRefused) as exc_info:
            client.sendmail(SENDER, [OTHER], RAW)
        assert exc_info.value.recipients == {
            OTHER: (550, b'5.1.1 no such user')}
    [msg] = server.wait_for_messages(1)
    assert msg.rcpt_tos == [RCPT]


# -- message content -------------------------------------------------------

def test_multipart_alternative_arrives_parsed(smtp_server):
    server = smtp_server(mode='starttls', auth=USERS)
    sent = EmailMessage()
    sent['From'] = 'Nova Errors <%s>' % SENDER
    sent['To'] = RCPT
    sent['Subject'] = 'Échec: instance.create.error on compute-1'
    sent.set_content('Instance 42 failed: PortBindingFailed ✗\n')
    sent.add_alternative('<p>Instance <b>42</b> failed: '
                         'PortBindingFailed ✗</p>\n', subtype='html')
    with _client(server) as client:
        _secure(client, server)
        client.login('bob', USERS['bob'])
        client.send_message(sent)
    [msg] = server.wait_for_messages(1)
    assert msg.mail_from == SENDER
    assert msg.rcpt_tos == [RCPT]
    received = msg.message
    assert received['Subject'] == sent['Subject']
    assert received.get_content_type() == 'multipart/alternative'
    parts = list(received.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        'text/plain', 'text/html']
    assert received.get_body(('plain',)).get_content().splitlines() == [
        'Instance 42 failed: PortBindingFailed ✗']
    assert 'failed: PortBindingFailed ✗</p>' in received.get_body(
        ('html',)).get_content()
    assert msg.auth_username == 'bob'


# -- the helper's own contract -----------------------------------------------

def test_wait_for_messages_says_what_arrived(smtp_server):
    server = smtp_server()
    with pytest.raises(AssertionError, match=r'expected 1 .* 0 arrived'):
        server.wait_for_messages(1, timeout=0.2)
    with _client(server) as client:
        client.sendmail(SENDER, [RCPT], RAW)
        client.sendmail(SENDER, [OTHER], RAW)
    assert len(server.wait_for_messages(2)) == 2
    with pytest.raises(AssertionError, match=r'expected 1 .* 2 arrived'):
        server.wait_for_messages(1, timeout=0.2)


def test_constructor_rejects_bad_options():
    with pytest.raises(ValueError):
        smtp_helpers.SMTPServer(mode='tls')
    with pytest.raises(ValueError):
        smtp_helpers.SMTPServer(mode='plain', require_starttls=True)
    with pytest.raises(TypeError):
        smtp_helpers.SMTPServer(auth=[('alice', 'x')])
    with pytest.raises(ValueError):
        smtp_helpers.SMTPServer(auth=USERS, auth_mechanisms=['CRAM-MD5'])


def test_factory_servers_are_independent(smtp_server):
    plain = smtp_server()
    secure = smtp_server(mode='ssl', auth=USERS)
    assert plain.port != secure.port
    assert plain.cafile != secure.cafile
    assert plain.running and secure.running


@pytest.mark.parametrize('mode', ['plain', 'starttls', 'ssl'])
def test_stop_leaves_nothing_behind(mode):
    server = smtp_helpers.SMTPServer(mode=mode, auth=USERS)
    with server:
        thread = server._thread
        tmpdir = server.tmpdir
        assert thread.is_alive() and os.path.isdir(tmpdir)
        # A client still connected (after STARTTLS / AUTH) when the server
        # stops must not hold stop() up.
        client = _client(server)
        _secure(client, server)
        client.login('alice', USERS['alice'])
    try:
        assert not server.running
        assert not thread.is_alive()
        assert thread not in threading.enumerate()
        assert not os.path.exists(tmpdir)
        assert _port_closed(server.port)
        with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
            client.noop()
    finally:
        client.close()
    server.stop()  # idempotent
    with pytest.raises(smtp_helpers.SMTPServerError):
        server.start()


def test_server_errors_fail_stop(smtp_server, monkeypatch):
    server = smtp_server()

    def broken(message):
        raise RuntimeError('recording broke')

    monkeypatch.setattr(server, '_record', broken)
    with _client(server) as client:
        with pytest.raises(smtplib.SMTPDataError) as exc_info:
            client.sendmail(SENDER, [RCPT], RAW)
        assert exc_info.value.smtp_code == 451
    with pytest.raises(smtp_helpers.SMTPServerError,
                       match='recording broke'):
        server.stop()
    server.stop()  # reported once
