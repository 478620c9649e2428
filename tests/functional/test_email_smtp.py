"""The e-mail driver against a real SMTP server (aiosmtpd)."""

import logging

from oslo_config import cfg
import pytest

from nova_error_notifier import config
from nova_error_notifier.drivers import base
from nova_error_notifier import opts
from tests.unit import test_email as helpers

PASSWORD = 'Smtp-Pw-Never-Logged-3'


def load(tmp_path, server, receiver='to = ops@example.com', email_extra=''):
    path = tmp_path / 'mail.conf'
    path.write_text('\n'.join([
        '[DEFAULT]', 'region_name = RegionOne', 'rules = r',
        '[rule:r]', 'events = *', 'receivers = mail',
        '[receiver:mail]', 'driver = email', receiver,
        '[email]', 'smtp_host = 127.0.0.1', 'smtp_port = %d' % server.port,
        'from_address = Nova alerts <nova@example.org>', 'timeout = 5',
        email_extra, '']))
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(['--config-file', str(path)], project='nova_error_notifier',
         default_config_files=[])
    return config.load(conf).receivers['mail'].driver


def _lines(part):
    return part.get_content().replace('\r\n', '\n')


def test_plain_delivery_with_both_parts(tmp_path, smtp_server):
    server = smtp_server()
    driver = load(tmp_path, server,
                  'to = ops@example.com, noc@example.com, OPS@example.com')
    driver.notify(helpers.make_alert())
    [received] = server.wait_for_messages(1)
    assert received.mail_from == 'nova@example.org'
    assert received.rcpt_tos == ['ops@example.com', 'noc@example.com']
    msg = received.message
    assert msg['To'] == 'ops@example.com, noc@example.com'
    assert msg['Bcc'] is None
    assert msg.get_content_type() == 'multipart/alternative'
    assert msg['Subject'].startswith('[nova-error-notifier][RegionOne] '
                                     'NoValidHost: build of web-01')
    text = _lines(msg.get_body(preferencelist=('plain',)))
    html = _lines(msg.get_body(preferencelist=('html',)))
    assert helpers.UUID in text and helpers.UUID in html
    assert '<script>' not in html and '&lt;script&gt;' in html
    assert 'openstack server event show %s req-8e4f2a1c' % helpers.UUID \
        in text


def test_starttls_with_auth_verifies_the_certificate(tmp_path, smtp_server):
    server = smtp_server(mode='starttls', auth={'alerts': PASSWORD},
                         require_starttls=True)
    driver = load(tmp_path, server, email_extra='\n'.join([
        'smtp_security = starttls', 'smtp_username = alerts',
        'smtp_password = %s' % PASSWORD, 'cafile = %s' % server.cafile]))
    driver.notify(helpers.make_alert(name='db-1'))
    [received] = server.wait_for_messages(1)
    assert received.tls_version and received.tls_version.startswith('TLS')
    assert received.auth_username == 'alerts'
    assert ('alerts', True) in server.auth_attempts


def test_implicit_tls(tmp_path, smtp_server):
    server = smtp_server(mode='ssl')
    driver = load(tmp_path, server, email_extra='\n'.join([
        'smtp_security = ssl', 'cafile = %s' % server.cafile]))
    driver.notify(helpers.make_alert(name='db-2'))
    [received] = server.wait_for_messages(1)
    assert received.tls_version


def test_untrusted_certificate_is_not_retryable(tmp_path, smtp_server):
    server = smtp_server(mode='starttls')
    driver = load(tmp_path, server, email_extra='smtp_security = starttls')
    with pytest.raises(base.DriverError) as info:
        driver.notify(helpers.make_alert())
    assert info.value.retryable is False
    assert 'certificate' in str(info.value)
    assert server.messages == []


def test_wrong_password_is_not_retryable_and_not_shown(tmp_path,
                                                       smtp_server):
    server = smtp_server(mode='starttls', auth={'alerts': 'right'})
    driver = load(tmp_path, server, email_extra='\n'.join([
        'smtp_security = starttls', 'smtp_username = alerts',
        'smtp_password = %s' % PASSWORD, 'cafile = %s' % server.cafile]))
    with pytest.raises(base.DriverError) as info:
        driver.notify(helpers.make_alert())
    assert info.value.retryable is False
    assert '535' in str(info.value)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize('code,stage,retryable', [
    (451, 'DATA', True), (421, 'MAIL', True), (452, 'RCPT', True),
    (550, 'DATA', False), (554, 'MAIL', False), (550, 'RCPT', False),
])
def test_reply_codes_map_to_retryable(tmp_path, smtp_server, code, stage,
                                      retryable):
    server = smtp_server()
    driver = load(tmp_path, server)
    server.reply_next(code, '4.3.0 injected by the test'
                      if code < 500 else '5.7.1 injected by the test',
                      stage=stage)
    with pytest.raises(base.DriverError) as info:
        driver.notify(helpers.make_alert())
    assert info.value.retryable is retryable
    message = str(info.value)
    assert str(code) in message and 'injected by the test' in message
    assert '127.0.0.1:%d' % server.port in message
    # The next attempt goes through.
    driver.notify(helpers.make_alert())
    server.wait_for_messages(1)


def test_one_refused_recipient_does_not_stop_the_others(tmp_path,
                                                        smtp_server,
                                                        caplog):
    server = smtp_server()
    server.refuse_recipient('gone@example.com', 550, '5.1.1 no such user')
    driver = load(tmp_path, server,
                  'to = gone@example.com, ops@example.com')
    with caplog.at_level(logging.WARNING):
        driver.notify(helpers.make_alert())
    [received] = server.wait_for_messages(1)
    assert received.rcpt_tos == ['ops@example.com']
    assert any('gone@example.com' in r.getMessage() and '550' in
               r.getMessage() for r in caplog.records)


def test_manage_send_test_reaches_a_real_smtp_server(tmp_path, smtp_server):
    import subprocess
    from tests.functional import service_process
    server = smtp_server()
    path = tmp_path / 'send.conf'
    path.write_text('\n'.join([
        '[DEFAULT]', 'rules = r', '[rule:r]', 'events = *',
        'receivers = mail', '[receiver:mail]', 'driver = email',
        'to = ops@example.com', '[email]', 'smtp_host = 127.0.0.1',
        'smtp_port = %d' % server.port,
        'from_address = nova-alerts@example.org',
        '[delivery]', 'state_dir = %s' % tmp_path, '']))
    result = subprocess.run(
        [service_process.console_script('nova-error-notifier-manage'),
         '--config-file', str(path), 'send-test', '--receiver', 'mail'],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Sent test alert' in result.stdout
    [received] = server.wait_for_messages(1)
    assert received.rcpt_tos == ['ops@example.com']
    assert '[TEST]' in received.message['Subject']
    text = received.message.get_body(preferencelist=('plain',)).get_content()
    assert 'This is a test alert sent by an operator' in text
    server.stop()
    failed = subprocess.run(
        [service_process.console_script('nova-error-notifier-manage'),
         '--config-file', str(path), 'send-test', '--receiver', 'mail'],
        capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1
    assert 'FAILED: receiver mail (driver email), retryable=True' in \
        failed.stdout
