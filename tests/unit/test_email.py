"""The e-mail driver's message, recipients, checks and failure mapping."""

import dataclasses
import email
import email.message
import email.policy
import logging
import random
import socket
import threading

from oslo_config import cfg
import pytest

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import config
from nova_error_notifier.drivers import base
from nova_error_notifier.drivers import email as email_driver
from nova_error_notifier import formatting
from nova_error_notifier import opts
from nova_error_notifier import record as rec
from nova_error_notifier import staff

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


def test_the_service_gives_the_staff_directory(tmp_path):
    plain = driver_of(load(tmp_path))
    assert not plain.wants_staff() and plain.staff is None
    staffed = driver_of(load(
        tmp_path, receiver='to = ops@example.com\nstaff_users = true',
        extra='[service_credentials]\nauth_type = password\n'
              'auth_url = http://127.0.0.1:1/v3\n'))
    assert staffed.wants_staff()
    assert isinstance(staffed.staff, staff.StaffDirectory)
    # Built outside the service, nobody gave it one: a configuration error.
    conf = load(tmp_path, receiver='to = a@b.c\nstaff_users = true')
    conf.register_opts(email_driver.EmailDriver.OPTS, group='receiver:mail')
    with pytest.raises(base.DriverConfigError) as info:
        email_driver.EmailDriver(conf, 'mail').check()
    assert 'no staff directory' in str(info.value)


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
                      'smtp_password = Secret-Mail-Pw-1\n'
                      'allow_plaintext_auth = true\n')
    assert [o for o in email_driver.EMAIL_OPTS
            if o.name == 'smtp_password'][0].secret
    driver = driver_of(conf)
    with pytest.raises(base.DriverError) as info:
        driver.notify(make_alert())
    assert 'Secret-Mail-Pw-1' not in str(info.value)


# -- hostile values in every field (issue: mail headers and bodies) ---------

#: What a forged line or header would say.
INJ = 'Bcc: forged@evil.example'

HOSTILE_VALUES = {
    'crlf': 'x\r\n' + INJ,
    'lf': 'x\n' + INJ,
    'cr': 'x\r' + INJ,
    'blank-line': 'x\r\n\r\n' + INJ,
    'lf-lf': 'x\n\n' + INJ,
    'ew-b': '=?utf-8?b?eA0KQmNjOiBmb3JnZWRAZXZpbC5leGFtcGxl?=',
    'ew-q': '=?utf-8?q?x=0D=0ABcc:_forged@evil.example?=',
    'ew-q-upper': '=?UTF-8?Q?x=0D=0A=0D=0ABcc:_forged@evil.example?=',
    'ew-split': '=?utf-8?q?x=0D?= =?utf-8?q?=0ABcc:_forged@evil.example?=',
    'ew-inside': 'web=?utf-8?q?=0D=0ABcc:_forged@evil.example?=01',
    'ew-latin1': '=?iso-8859-1?q?x=0ABcc:_forged@evil.example?=',
    'u2028': 'x\u2028' + INJ,
    'u2029': 'x\u2029' + INJ,
    'nel': 'x\x85' + INJ,
    'vt': 'x\x0b' + INJ,
    'ff': 'x\x0c' + INJ,
    'fs': 'x\x1c' + INJ,
    'esc': 'x\x1b[2K\r' + INJ,
    'nul': 'x\x00' + INJ,
    'bidi': 'x\u202e' + INJ + '\u202c',
    'lrm-rlm': '\u200ex\u200f' + INJ,
    'zwsp': 'x\u200b\n' + INJ,
    'soft-hyphen-tag': 'x\xad\U000e0041\n' + INJ,
    'surrogate': 'x\ud800\n' + INJ,
    'long': 'A' * 3000 + '\r\n' + INJ,
    'long-ew': 'B' * 990 + ' =?utf-8?q?=0D=0ABcc:_forged@evil.example?=',
    'non-ascii': '\u0441\u0435\u0440\u0432\u0435\u0440\r\n' + INJ,
}

TOP_HEADERS = sorted([
    'subject', 'from', 'to', 'date', 'message-id',
    'x-nova-error-notifier-alert-id', 'auto-submitted', 'mime-version',
    'content-type'])

# Every line of a text part begins with one of these (template text).
TEXT_LINE_STARTS = (
    '*** This is a test alert', 'Nova reported a failure', 'What failed: ',
    'Exception:   ', 'Message:     ', 'Reason:      ', 'Instance:    ',
    'State:       ', 'Project:     ', 'User:        ', 'Host:        ',
    'Request ID:  ', 'Global request ID: ', 'Events:      ',
    'Seen:        ', 'Region:      ', 'Rule:        ', 'Alert ID:    ',
    "Nova's API", 'Server:      ', 'Fault:       ', 'Action:      ',
    '  - ', formatting.BLOCK_PREFIX, 'What to run next:',
    '  openstack ', '  grep ', 'Details:', '-- ', 'nova-error-notifier ',
    # digests
    'Too many failures for one mail each: ', '- ', '  request ',
    '  message: ', '... and ', 'Seen:      ', 'Rule:      ',
    'Digest ID: ')


def enrichment(value='ok'):
    return {
        'server': {'status': value, 'name': value, 'flavor': value,
                   'host': value, 'updated': value},
        'fault': {'code': 500, 'message': value, 'details': value,
                  'created': value},
        'action': {'action': value, 'request_id': value,
                   'start_time': value, 'message': value,
                   'events': [{'event': value, 'result': value,
                               'start_time': value, 'finish_time': value,
                               'host': value, 'details': value,
                               'traceback': value}]},
    }


def base_alert():
    alert = make_alert(name='web-01', include_details=True,
                       user_name='alice', project_name='web-prod',
                       reason='no hosts', global_request_id='req-g-1')
    return dataclasses.replace(alert, enriched=True,
                               enrichment=enrichment('ok'))


ALERT_FIELDS = ('instance_name', 'host', 'exception', 'message', 'reason',
                'project_name', 'user_name', 'request_id',
                'global_request_id', 'instance_state', 'details',
                'enrichment_note', 'rule')
ENRICHMENT_FIELDS = (
    ('server', 'status'), ('server', 'flavor'), ('server', 'host'),
    ('fault', 'message'), ('fault', 'details'), ('fault', 'created'),
    ('fault', 'code'), ('action', 'action'), ('action', 'request_id'),
    ('action', 'start_time'), ('event', 'event'), ('event', 'result'),
    ('event', 'host'), ('event', 'finish_time'), ('event', 'details'),
    ('event', 'traceback'))
MEMBER_FIELDS = ('exception', 'instance_name', 'instance_uuid', 'host',
                 'request_id', 'message')


def hostile_alerts(value):
    """(where, alert) with ``value`` in one field each."""
    alert = base_alert()
    for field in ALERT_FIELDS:
        yield field, dataclasses.replace(alert, **{field: value})
    yield 'event_types', dataclasses.replace(
        alert, event_types=(value, 'compute.instance.create.error'))
    for section, key in ENRICHMENT_FIELDS:
        data = enrichment('ok')
        if section == 'event':
            data['action']['events'][0][key] = value
        else:
            data[section][key] = value
        yield 'enrichment.%s.%s' % (section, key), dataclasses.replace(
            alert, enrichment=data)
    yield 'enrichment (not available)', dataclasses.replace(
        alert, enriched=False, enrichment=None, enrichment_note=value)
    member = make_alert(name='web-02')
    for field in MEMBER_FIELDS:
        members = (member, dataclasses.replace(member, **{field: value}))
        yield 'digest member %s' % field, alert_mod.digest(
            'd-0001', 'mail', 'r', members, 5, '5 instances failed')
    yield 'digest member event_types', alert_mod.digest(
        'd-0001', 'mail', 'r', (dataclasses.replace(
            member, event_types=(value,)),), 1, '1 instance failed')
    yield 'digest summary', alert_mod.digest(
        'd-0001', 'mail', 'r', (member,), 1, value)


def assert_safe_mail(msg, where):
    """The checks of the issue on one built mail (``where`` names it)."""
    raw = msg.as_bytes()
    parsed = parse(msg)
    assert sorted(k.lower() for k in parsed.keys()) == TOP_HEADERS, (
        where, parsed.keys())
    for name, value in parsed.items():
        assert '\r' not in value and '\n' not in value, (where, name, value)
    assert parsed['Subject'].startswith('[nova-error-notifier]'), where
    assert 'forged@evil.example' not in (parsed['To'] + parsed['From'])
    # No line of the raw mail (header or body) starts with the injection.
    for line in raw.splitlines():
        assert not line.lstrip().startswith(b'Bcc'), (where, line)
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ['text/plain',
                                                     'text/html'], where
    for part in parts:
        assert sorted(k.lower() for k in part.keys() if
                      k.lower() != 'mime-version') == [
            'content-transfer-encoding', 'content-type'], (where, part.keys())
        for name, value in part.items():
            assert '\r' not in value and '\n' not in value, (where, name)
        assert part['Content-Transfer-Encoding'] in ('7bit', '8bit',
                                                     'base64'), where
    text = parts[0].get_content()
    html = parts[1].get_content()
    # Every line break Python knows of, not only CR and LF.
    for line in text.splitlines():
        assert not line.lstrip().startswith('Bcc'), (where, line)
        assert not line or line.startswith(TEXT_LINE_STARTS), (where, line)
    for line in html.splitlines():
        assert not line.lstrip().startswith('Bcc'), (where, line)
        assert not line or line.startswith('<'), (where, line)
    assert '<script' not in html
    return parsed, text, html


@pytest.mark.parametrize('value', list(HOSTILE_VALUES.values()),
                         ids=list(HOSTILE_VALUES))
def test_no_hostile_value_forges_a_header_or_a_line(tmp_path, value,
                                                    caplog):
    driver = driver_of(load(tmp_path))
    built = 0
    with caplog.at_level(logging.WARNING):
        for where, alert in hostile_alerts(value):
            assert_safe_mail(driver.build_message(alert, ['ops@example.com']),
                             where)
            built += 1
    assert built == len(ALERT_FIELDS) + len(ENRICHMENT_FIELDS) + \
        len(MEMBER_FIELDS) + 4
    # The sanitiser did it all: the fallback subject was never needed.
    assert not [r for r in caplog.records if 'read back' in r.getMessage()]


def test_hostile_subject_on_this_python_is_really_a_problem():
    """The interpreter bug the sanitiser works around, reproduced.

    Python 3.11.7 writes the CR LF decoded from an encoded word raw while it
    folds the subject; on a fixed Python the check below still holds, as the
    decoded subject then holds the line break.
    """
    msg = email.message.EmailMessage(policy=email_driver.POLICY)
    msg['Subject'] = HOSTILE_VALUES['ew-q']
    msg.set_content('body\n')
    parsed = email.message_from_bytes(msg.as_bytes(),
                                      policy=email.policy.default)
    assert parsed['Bcc'] is not None or '\n' in parsed['Subject']


def _raw_mail(subject_line, extra=b''):
    return (b'Subject: ' + subject_line + b'\r\n' + extra +
            b'From: a@example.org\r\nTo: b@example.org\r\n'
            b'Date: Thu, 01 Oct 2026 10:00:00 -0000\r\n'
            b'Message-ID: <1@example.org>\r\n'
            b'X-Nova-Error-Notifier-Alert-Id: 1\r\n'
            b'Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n'
            b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
            b'--b\r\nContent-Type: text/plain; charset="utf-8"\r\n'
            b'Content-Transfer-Encoding: 7bit\r\n\r\ntext\r\n'
            b'--b\r\nContent-Type: text/html; charset="utf-8"\r\n'
            b'Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>html'
            b'</p>\r\n--b--\r\n')


def test_check_message_finds_what_a_reader_would_see():
    good = _raw_mail(b'hello')
    problems = email_driver.check_message(good, 'hello', 'text\n',
                                          '<p>html</p>\n')
    # Only the transfer encoding of this hand-made mail is wrong.
    assert problems == ['text/html is sent quoted-printable']
    forged = email_driver.check_message(
        _raw_mail(b'x', b'Bcc: forged@evil.example\r\n'), 'x', 'text',
        '<p>html</p>')
    assert any('mail headers are' in p and 'Bcc' in p for p in forged)
    encoded = email_driver.check_message(
        _raw_mail(b'=?utf-8?q?x=0D=0ABcc:_y?='), '= ?utf-8?q?x', 'text',
        '<p>html</p>')
    assert 'mail header Subject holds a line break' in encoded
    assert 'the subject does not read back as written' in encoded
    body = email_driver.check_message(good, 'hello', 'other text',
                                      '<p>html</p>')
    assert 'text/plain does not read back as written' in body
    assert email_driver.check_message(b'\xff\xfe', 'x', 'y', 'z')


def test_mail_that_does_not_read_back_gets_the_plain_subject(
        tmp_path, monkeypatch, caplog):
    driver = driver_of(load(tmp_path))
    # A sanitiser with a gap (encoded words kept): the check catches it.
    monkeypatch.setattr(formatting, 'clean_header',
                        lambda value, limit=200: ' '.join(
                            str(value or '').split()))
    alert = make_alert(name=HOSTILE_VALUES['ew-q'])
    with caplog.at_level(logging.WARNING):
        msg = driver.build_message(alert, ['ops@example.com'])
    parsed = parse(msg)
    assert parsed['Subject'] == '[nova-error-notifier] alert %s' % alert.id
    assert parsed['Bcc'] is None
    assert sorted(k.lower() for k in parsed.keys()) == TOP_HEADERS
    [record] = [r for r in caplog.records if 'read back' in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert '\n' not in record.getMessage() and '\r' not in \
        record.getMessage()
    assert alert.id in record.getMessage()
    text, _ = parts(parsed)
    assert 'NoValidHost' in text


def test_mail_that_never_reads_back_is_not_sent(tmp_path, monkeypatch):
    driver = driver_of(load(tmp_path))
    monkeypatch.setattr(email_driver, 'check_message',
                        lambda raw, subject, text, html: ['broken'])
    with pytest.raises(base.DriverError) as info:
        driver.notify(make_alert())
    assert info.value.retryable is False
    assert 'cannot be built safely: broken' in str(info.value)


def test_fallback_subject_is_ascii_whatever_the_id():
    alert = dataclasses.replace(make_alert(), id='x\r\nBcc: y=?q?=')
    assert email_driver.fallback_subject(alert) == \
        '[nova-error-notifier] alert xBccyq'


@pytest.mark.parametrize('length', [10, 900, 990, 994, 995, 998, 999, 1000,
                                    2000, 5000])
def test_transfer_encoding_is_never_quoted_printable(tmp_path, length):
    driver = driver_of(load(tmp_path))
    for filler in ('a', '\xe9'):
        message = filler * length
        parsed = parse(driver.build_message(make_alert(message=message),
                                            []))
        for part in parsed.iter_parts():
            cte = part['Content-Transfer-Encoding']
            assert cte in ('7bit', '8bit', 'base64')
            longest = max(len(line) for line in
                          part.get_content().encode('utf-8').splitlines())
            if longest > 998:
                assert cte == 'base64'
            else:
                assert cte == ('7bit' if part.get_content().isascii()
                               else '8bit')
        text, html = parts(parsed)
        assert 'Message:     %s' % message in text
        assert message in html


def test_multi_line_values_keep_their_lines_behind_a_prefix(tmp_path):
    driver = driver_of(load(tmp_path))
    trace = 'Traceback (most recent call last):\r\n  File "x"\n' + INJ + \
        '\n\n'
    data = enrichment('ok')
    data['fault'].update(message='m\n' + INJ, details=trace, created='now')
    data['action']['events'][0]['traceback'] = trace
    alert = dataclasses.replace(base_alert(), details=trace,
                                enrichment=data)
    parsed, text, html = assert_safe_mail(
        driver.build_message(alert, []), 'details')
    lines = text.replace('\r\n', '\n').split('\n')
    for block in ('Details:',):
        start = lines.index(block)
        assert lines[start + 1:start + 4] == [
            '  | Traceback (most recent call last):', '  |   File "x"',
            '  | ' + INJ]
    assert lines.count('  | ' + INJ) == 3   # details, fault, event
    assert 'Fault:       500 m\\n%s (now)' % INJ in lines
    # HTML: one physical line per <pre>, the breaks as character references.
    assert ('<pre>Traceback (most recent call last):&#10;  File '
            '&#34;x&#34;&#10;%s</pre>' % INJ) in html
    assert '<pre>openstack server event show %s req-8e4f2a1c&#10;' % UUID \
        in html


def test_enrichment_values_are_escaped_in_both_parts(tmp_path):
    driver = driver_of(load(tmp_path))
    alert = dataclasses.replace(base_alert(), enrichment=enrichment(
        '<b>x</b>\x1b[31m\u202e'))
    _, text, html = assert_safe_mail(driver.build_message(alert, []),
                                     'enrichment')
    assert 'Server:      <b>x</b>\\x1b[31m\\u202e, flavor' in text
    assert '\x1b' not in text and '\u202e' not in text
    assert '&lt;b&gt;x&lt;/b&gt;\\x1b[31m\\u202e' in html
    assert '<b>x</b>' not in html and '\x1b' not in html


# -- SMTP credentials never in clear ----------------------------------------

def test_username_without_tls_is_a_configuration_error(tmp_path):
    conf = load(tmp_path, extra='[email]\nsmtp_username = alerts\n'
                                'smtp_password = Pw-Never-Shown-7\n')
    with pytest.raises(config.ConfigError) as info:
        config.load(conf)
    [problem] = [p for p in info.value.problems if 'smtp_username' in p]
    assert 'receiver:mail' in problem
    assert 'smtp_security = none' in problem
    assert 'allow_plaintext_auth' in problem
    assert 'Pw-Never-Shown-7' not in '\n'.join(info.value.problems)


@pytest.mark.parametrize('security', ['starttls', 'ssl'])
def test_username_with_tls_is_fine(tmp_path, security):
    conf = load(tmp_path, extra='[email]\nsmtp_username = alerts\n'
                                'smtp_security = %s\n' % security)
    assert driver_of(conf) is not None


def test_plaintext_opt_out_starts_with_one_warning(tmp_path, monkeypatch,
                                                   caplog):
    monkeypatch.setattr(email_driver, '_PLAINTEXT_WARNED', set())
    conf = load(tmp_path, receiver='to = a@example.com',
                extra='[email]\nsmtp_username = alerts\n'
                      'smtp_password = Pw-Never-Shown-8\n'
                      'allow_plaintext_auth = true\n'
                      '[rule:r]\nreceivers = mail, mail2\n'
                      '[receiver:mail2]\ndriver = email\n'
                      'to = b@example.com\n')
    with caplog.at_level(logging.WARNING):
        settings = config.load(conf)
        config.load(conf)          # a reload: no second warning
    assert set(settings.receivers) == {'mail', 'mail2'}
    warnings = [r for r in caplog.records
                if 'allow_plaintext_auth' in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert '127.0.0.1:2525' in warnings[0].getMessage()
    assert 'Pw-Never-Shown-8' not in caplog.text


def test_driver_refuses_to_log_in_without_tls_even_unchecked(tmp_path):
    conf = load(tmp_path, extra='[email]\nsmtp_username = alerts\n'
                                'allow_plaintext_auth = true\n')
    driver = driver_of(conf)
    conf.set_override('allow_plaintext_auth', False, group='email')
    with pytest.raises(base.DriverError) as info:
        driver.notify(make_alert())    # nothing listens: it never connects
    assert info.value.retryable is False
    assert 'refusing to send the password' in str(info.value)


def test_allow_plaintext_auth_is_documented():
    [opt] = [o for o in email_driver.EMAIL_OPTS
             if o.name == 'allow_plaintext_auth']
    assert opt.default is False
    assert 'in clear' in opt.help and 'trusted relay' in opt.help


def test_check_message_finds_invisible_characters_in_headers():
    problems = email_driver.check_message(
        _raw_mail('x\u202ey\u200b'.encode('utf-8')), 'x\u202ey\u200b',
        'text', '<p>html</p>')
    assert 'mail header Subject holds a control or format character' in \
        problems


def test_random_subjects_read_back_as_written(tmp_path):
    """No false alarm: cleaned subjects survive this Python's folding."""
    driver = driver_of(load(tmp_path))
    alert = make_alert()
    alphabet = list('aZ09 =?_-:;,.()<>"\'\\@[]/') + [
        '=?', '?=', '\t', '\r\n', '\xe9', '\u65e5', '\U0001f600', '\xa0',
        '\u200b', '\u2028', '=?utf-8?q?', '=?utf-8?b?', '=0D=0A']
    rng = random.Random(20261003)
    for _ in range(200):
        value = ''.join(rng.choice(alphabet)
                        for _ in range(rng.randint(0, 120)))
        subject = formatting.clean_header('[nova-error-notifier] ' + value)
        msg = driver._message(alert, ['ops@example.com'], subject, 'text\n',
                              '<p>html</p>\n')
        assert email_driver.check_message(msg.as_bytes(), subject, 'text\n',
                                          '<p>html</p>\n') == [], value
        assert parse(msg)['Subject'] == subject, value


def test_a_long_name_leaves_room_for_the_uuid_in_the_subject():
    alert = dataclasses.replace(alert_mod.sample('r'),
                                instance_name='n' * 3000)
    text = formatting.summary(alert)
    assert '(00000000\u2026)' in text
    assert len(text) < 120
    subject = email_driver.Templates().render(alert, 'RegionOne')[0]
    assert '00000000' in subject and len(subject) <= formatting.MAX_SUBJECT
