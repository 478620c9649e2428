"""The e-mail driver's message, recipients, checks and failure mapping."""

import email
import email.policy
import socket
import threading

from oslo_config import cfg
import pytest

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import config
from nova_error_notifier.drivers import base
from nova_error_notifier.drivers import email as email_driver
from nova_error_notifier import opts
from nova_error_notifier import record as rec

HOSTILE = 'web-01\r\nBcc: victim@example.com\r\n\r\n<script>x()</script>'
UUID = 'b5e2c3f4-1a2b-4c3d-9e8f-7a6b5c4d3e2f'

BASE_CONF = '''
[DEFAULT]
region_name = RegionOne
rules = r
[rule:r]
events = *
receivers = mail
[email]
smtp_host = 127.0.0.1
smtp_port = %(port)d
from_address = Nova alerts <nova@example.org>
timeout = %(timeout)s
[receiver:mail]
driver = email
%(receiver)s
'''


def load(tmp_path, receiver='to = ops@example.com', port=2525, timeout=2,
         extra=''):
    path = tmp_path / 'email.conf'
    path.write_text(BASE_CONF % {'port': port, 'timeout': timeout,
                                 'receiver': receiver} + extra)
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(['--config-file', str(path)], project='nova_error_notifier',
         default_config_files=[])
    return conf


def make_alert(name=HOSTILE, include_details=False, **fields):
    """An alert from one record; ``fields`` override the record's."""
    values = dict(
        event_type='compute_task.build_instances', priority='ERROR',
        format='legacy', synthetic_events=(rec.CREATE_FAILED,),
        instance_uuid=UUID, instance_name=name, exception='NoValidHost',
        message='No valid host was found. <b>bold</b> & more',
        request_id='req-8e4f2a1c', instance_host='ctl-01',
        project_id='p-1', user_id='u-1', code=500,
        details='Traceback (most recent call last):\n  <frame>\n',
        message_id='m-default')
    values.update(fields)
    return alert_mod.from_records([rec.ErrorRecord(**values)],
                                  receiver='mail', rule='r',
                                  include_details=include_details)


def driver_of(conf):
    return config.load(conf).receivers['mail'].driver


def parse(msg):
    return email.message_from_bytes(msg.as_bytes(),
                                    policy=email.policy.default)


def parts(parsed):
    """Text and HTML parts, with the wire's CRLF line ends made LF."""
    text = parsed.get_body(preferencelist=('plain',)).get_content()
    html = parsed.get_body(preferencelist=('html',)).get_content()
    return text.replace('\r\n', '\n'), html.replace('\r\n', '\n')


def test_hostile_instance_name_adds_no_header_and_no_html(tmp_path):
    driver = driver_of(load(tmp_path))
    msg = driver.build_message(make_alert(), ['ops@example.com'])
    raw = msg.as_bytes()
    parsed = parse(msg)
    assert sorted(parsed.keys()) == sorted([
        'Subject', 'From', 'To', 'Date', 'Message-ID',
        'X-Nova-Error-Notifier-Alert-Id', 'Auto-Submitted', 'MIME-Version',
        'Content-Type'])
    assert parsed['Bcc'] is None
    assert b'\nBcc:' not in raw and b'\rBcc:' not in raw
    subject = parsed['Subject']
    assert '\r' not in subject and '\n' not in subject
    assert subject.startswith('[nova-error-notifier][RegionOne] '
                              'NoValidHost: build of web-01 Bcc: ')
    assert subject.endswith('(b5e2c3f4\u2026) failed')
    text, html = parts(parsed)
    assert '<script>' not in html and '&lt;script&gt;' in html
    assert '<b>bold</b>' not in html and '&lt;b&gt;bold&lt;/b&gt;' in html
    assert '\r' not in text
    assert not any(line.startswith('Bcc:') for line in text.splitlines())
    assert 'web-01\\r\\nBcc: victim@example.com' in text


def test_subject_is_rfc2047_encoded_and_header_lines_are_ascii(tmp_path):
    driver = driver_of(load(tmp_path))
    msg = driver.build_message(make_alert(name='сервер-1'), [])
    raw = msg.as_bytes()
    header_block = raw.split(b'\r\n\r\n', 1)[0] if b'\r\n\r\n' in raw \
        else raw.split(b'\n\n', 1)[0]
    header_block.decode('ascii')          # raises if not ASCII
    assert b'=?utf-8?' in header_block
    assert parse(msg)['Subject'] == ('[nova-error-notifier][RegionOne] '
                                     'NoValidHost: build of сервер-1 '
                                     '(b5e2c3f4\u2026) failed')
    assert parse(msg)['To'] == 'undisclosed-recipients:;'


def test_body_names_everything_an_operator_needs(tmp_path):
    driver = driver_of(load(tmp_path))
    alert = make_alert(name='web-01', global_request_id='req-global-1',
                       user_name='alice', project_name='web-prod',
                       state='error')
    text, html = parts(parse(driver.build_message(alert, ['a@b.c'])))
    for needle in (UUID, 'web-01', 'p-1', 'web-prod', 'u-1', 'alice',
                   'ctl-01', 'req-8e4f2a1c', 'req-global-1',
                   'compute_task.build_instances',
                   'notifier.instance.create_failed', 'NoValidHost',
                   'code 500', 'error', 'RegionOne',
                   'openstack server event show %s req-8e4f2a1c' % UUID):
        assert needle in text, needle
        assert needle in html, needle
    assert 'Traceback' not in text and 'Traceback' not in html


def test_details_only_for_receivers_that_opt_in(tmp_path):
    driver = driver_of(load(tmp_path))
    text, html = parts(parse(driver.build_message(
        make_alert(include_details=True), [])))
    assert 'Traceback (most recent call last):' in text
    assert '&lt;frame&gt;' in html and '<frame>' not in html


def test_recipients_are_unique_and_staff_stay_in_the_envelope(tmp_path):
    conf = load(tmp_path, receiver='to = ops@example.com, OPS@example.com, '
                                   'noc@example.com\nstaff_users = true',
                extra='[service_credentials]\nauth_type = password\n'
                      'auth_url = http://127.0.0.1:1/v3\n')
    driver = driver_of(conf)

    class Directory:
        def emails(self):
            return ['root@example.com', 'noc@example.com',
                    'evil@example.com\r\nBcc: x@y.z', 'Root@Example.com']
    driver.staff = Directory()
    header, envelope = driver.recipients()
    assert header == ['ops@example.com', 'noc@example.com']
    assert envelope == ['ops@example.com', 'noc@example.com',
                        'root@example.com']


@pytest.mark.parametrize('receiver,extra,expected', [
    ('to = not-an-address', '', "to: 'not-an-address' is not an e-mail"),
    ('to =', '', 'no recipients'),
    ('staff_users = true', '', '[service_credentials] auth_type is not set'),
    ('to = a@b.c', '[email]\nsmtp_security = tls\n', 'smtp_security'),
    ('to = a@b.c', '[email]\ntemplates_dir = /nonexistent\n',
     'templates_dir /nonexistent does not exist'),
])
def test_bad_config_stops_start_up(tmp_path, receiver, extra, expected):
    conf = load(tmp_path, receiver=receiver, extra=extra)
    with pytest.raises(config.ConfigError) as info:
        config.load(conf)
    assert any(expected in p and 'receiver:mail' in p
               for p in info.value.problems), info.value.problems


def test_missing_server_settings(tmp_path):
    path = tmp_path / 'c.conf'
    path.write_text('[DEFAULT]\nrules = r\n[rule:r]\nevents = *\n'
                    'receivers = mail\n[receiver:mail]\ndriver = email\n'
                    'to = a@b.c\n')
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(['--config-file', str(path)], project='x', default_config_files=[])
    with pytest.raises(config.ConfigError) as info:
        config.load(conf)
    text = '\n'.join(info.value.problems)
    assert '[email] smtp_host is not set' in text
    assert '[email] from_address is not set' in text


def test_broken_template_override_stops_start_up(tmp_path):
    templates = tmp_path / 'templates'
    templates.mkdir()
    (templates / 'subject.txt').write_text('{{ alert.nope.deeper }}')
    conf = load(tmp_path, extra='[email]\ntemplates_dir = %s\n' % templates)
    with pytest.raises(config.ConfigError) as info:
        config.load(conf)
    assert any('templates: UndefinedError' in p
               for p in info.value.problems), info.value.problems


def test_template_override_is_used_and_sandboxed(tmp_path):
    templates = tmp_path / 'templates'
    templates.mkdir()
    (templates / 'subject.txt').write_text('ALERT {{ alert.exception }}')
    conf = load(tmp_path, extra='[email]\ntemplates_dir = %s\n' % templates)
    driver = driver_of(conf)
    assert parse(driver.build_message(make_alert(), []))['Subject'] == \
        'ALERT NoValidHost'
    (templates / 'subject.txt').write_text(
        "{{ alert.__class__.__init__.__globals__ }}")
    with pytest.raises(config.ConfigError) as info:
        config.load(load(tmp_path, extra='[email]\ntemplates_dir = %s\n'
                         % templates))
    assert any('SecurityError' in p for p in info.value.problems)


def test_refused_connection_is_retryable(tmp_path):
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    driver = driver_of(load(tmp_path, port=port))
    with pytest.raises(base.DriverError) as info:
        driver.notify(make_alert())
    assert info.value.retryable is True
    assert '127.0.0.1:%d' % port in str(info.value)


def test_silent_server_times_out_and_is_retryable(tmp_path):
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(1)
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(
        server.accept()), daemon=True)
    thread.start()
    try:
        driver = driver_of(load(tmp_path, port=server.getsockname()[1],
                                timeout=0.5))
        with pytest.raises(base.DriverError) as info:
            driver.notify(make_alert())
        assert info.value.retryable is True
        assert 'timed out' in str(info.value).lower()
    finally:
        server.close()
        for conn, _ in accepted:
            conn.close()


def test_password_is_secret_and_not_in_errors(tmp_path):
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    conf = load(tmp_path, port=port,
                extra='[email]\nsmtp_username = u\n'
                      'smtp_password = Secret-Mail-Pw-1\n')
    assert [o for o in email_driver.EMAIL_OPTS
            if o.name == 'smtp_password'][0].secret
    driver = driver_of(conf)
    with pytest.raises(base.DriverError) as info:
        driver.notify(make_alert())
    assert 'Secret-Mail-Pw-1' not in str(info.value)


@pytest.mark.parametrize('event_types,synthetic,name,expected', [
    (('instance.resize.error',), (), 'db', 'resize of db (b5e2c3f4\u2026) '
     'failed'),
    (('compute.instance.update',), (rec.ERROR_STATE,), 'db',
     'db (b5e2c3f4\u2026) entered ERROR'),
    (('compute.libvirt.error',), (), None, None),
])
def test_summaries(event_types, synthetic, name, expected):
    alert = make_alert(name=name, event_type=event_types[0],
                       synthetic_events=synthetic,
                       instance_uuid=UUID if expected else None)
    if expected is None:
        assert email_driver.summary(alert) == 'libvirt failed on ctl-01'
    else:
        assert email_driver.summary(alert) == expected
