# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.
"""The mail-forgery attack, end to end.

A tenant names its instance; Nova puts the name (and the instance's host
and node fields, the exception message, the project and user names of the
request) into its notifications; Nova's own ``CONF.host``, the publisher,
is checked by oslo.config as a host name, so it stays plain here.  The
notifications are made by Nova's own code (``nova_emit``), published to a
real RabbitMQ, turned into alerts by the real service process and mailed
over STARTTLS with AUTH to a real SMTP server.  Every mail received is
parsed from the bytes the server got: no Nova-controlled string may add a
header, end the header block, or start a line of its own in any part of
it.
"""

import base64
import email
import email.header
import email.policy
import re
import time
import unicodedata
import uuid

from tests.functional import keystone as keystone_helpers
from tests.functional import nova_emit
from tests.functional import service_process

SMTP_USER = 'alerts'
SMTP_PASSWORD = 'Hostile-Mail-Smtp-Pw-7'
FROM = 'nova-alerts@example.org'
TO = ('ops@example.com', 'noc@example.com')

# Exactly what the e-mail driver sets, each once (MIME-Version and
# Content-Type come with the multipart/alternative body).
HEADERS = {'subject', 'from', 'to', 'date', 'message-id',
           'x-nova-error-notifier-alert-id', 'auto-submitted',
           'mime-version', 'content-type'}


def _b64_word(text):
    return '=?utf-8?b?%s?=' % base64.b64encode(
        text.encode('utf-8')).decode('ascii')


#: (label, hostile value) pairs; the label is only for messages.
HOSTILE = [
    ('crlf-bcc', 'x\r\nBcc: evil@example.com'),
    ('lf-header', 'x\nX-Injected: 1'),
    ('blank-line', 'x\r\n\r\nforged body'),
    ('bare-cr', 'x\rY'),
    ('q-word', '=?utf-8?q?x=0D=0ABcc:_evil@example.com?='),
    ('b-word', _b64_word('x\r\nBcc: evil@example.com')),
    ('split-words', ' =?utf-8?q?a?= =?utf-8?q?=0D=0AX-Injected:_1?='),
    ('b-word-body', _b64_word('x\r\n\r\nforged body')),
    ('u2028', 'x\u2028X-Injected: 1'),
    ('u2029', 'x\u2029X-Injected: 1'),
    ('nel', 'x\x85X-Injected: 1'),
    ('vt', 'x\x0bX-Injected: 1'),
    ('ff', 'x\x0cX-Injected: 1'),
    ('ansi', 'x\x1b[31mred\x1b[0m'),
    ('bidi', 'x\u202egpj.exe'),
    ('lrm-rlm', 'x\u200e\u200fy'),
    ('zwsp', 'x\u200bBcc: evil@example.com'),
    ('long', 'L' * 2992 + '\r\nBcc: x'),           # 3000 characters
    ('only-crlf', '\r\n'),
    ('nul-tab', 'x\x00\tBcc: evil@example.com'),
]

#: What follows a line break in the values (once decoded): it must never
#: begin a line of a mail (after leading blanks).  The values themselves
#: may begin a line of a body (a digest lists the names), and a raw header
#: line that begins with an encoded word is caught as no field.
INJECTED = ('Bcc:', 'X-Injected', 'forged body', 'Y', 'gpj.exe',
            'evil@example.com')

# Lines as a mail reader could see them: every break Python knows
# (CR, LF, VT, FF, FS, GS, RS, NEL, U+2028, U+2029).
_LINE_BREAKS = re.compile('\r\n|[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]')
# Nothing a header may show: C0/C1 controls, line and paragraph separators,
# bidi embeddings, overrides and isolates.
_BIDI = set('\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069')


def _collect(data, key, found):
    """Add every value of *key* anywhere in *data* to the set *found*."""
    if isinstance(data, dict):
        for k, v in data.items():
            if k == key and isinstance(v, str):
                found.add(v)
            _collect(v, key, found)
    elif isinstance(data, list):
        for item in data:
            _collect(item, key, found)


def _scenario(value, kind='build_failure'):
    return {
        'kind': kind,
        'request_id': 'req-%s' % uuid.uuid4(),
        'instance': {'display_name': value, 'hostname': value,
                     'host': value, 'node': value,
                     'vm_state': 'building', 'task_state': 'spawning'},
        'exception': {'class': 'NoValidHost', 'message': value},
        'context': {'project_name': value, 'user_name': value},
    }


def _scenarios():
    scenarios = [_scenario(value) for _, value in HOSTILE]
    # The encoded words and the bare line breaks through Nova's other
    # failure paths too.
    for kind in ('schedule_failure', 'update_to_error', 'wrap_exception'):
        for label in ('q-word', 'b-word', 'split-words', 'crlf-bcc'):
            value = dict(HOSTILE)[label]
            scenarios.append(_scenario(value, kind))
    return scenarios


def _config(url, server, extra=''):
    return '\n'.join([
        '[DEFAULT]',
        'transport_url = %s' % url,
        'region_name = RegionOne',
        'rules = everything',
        '[rule:everything]', 'events = *', 'receivers = oncall',
        '[receiver:oncall]', 'driver = email', 'to = %s' % ', '.join(TO),
        '[email]', 'smtp_host = 127.0.0.1', 'smtp_port = %d' % server.port,
        'smtp_security = starttls', 'cafile = %s' % server.cafile,
        'smtp_username = %s' % SMTP_USER,
        'smtp_password = %s' % SMTP_PASSWORD,
        'from_address = %s' % FROM,
        extra,
    ]) + '\n'


def _lines(text):
    return _LINE_BREAKS.split(text)


def _injected_lines(text):
    return [line for line in _lines(text)
            if line.lstrip(' \t\u200b\u200e\u200f').startswith(INJECTED)]


def _parse(mail):
    """The mail as a reader sees it, from the bytes the server got."""
    return email.message_from_bytes(mail.data, policy=email.policy.default)


def _text(mail):
    return _parse(mail).get_body(('plain',)).get_content()


def _header_problems(mail):
    """Everything wrong with the header block of one received mail."""
    problems = []
    raw = mail.data
    head, sep, _ = raw.partition(b'\r\n\r\n')
    if not sep:
        return ['no end of the header block']
    # The raw header block: only the driver's fields, folded lines only as
    # continuations.
    names = []
    for line in head.split(b'\r\n'):
        if line[:1] in (b' ', b'\t'):
            continue
        name, colon, _ = line.partition(b':')
        if not colon or not re.match(rb'\A[!-9;-~]+\Z', name):
            problems.append('raw header line is no field: %r' % line[:120])
            continue
        names.append(name.decode('ascii').lower())
    if sorted(names) != sorted(HEADERS):
        problems.append('raw header names %r' % sorted(names))
    message = _parse(mail)
    parsed = [k.lower() for k in message.keys()]
    if sorted(parsed) != sorted(HEADERS):
        problems.append('parsed header names %r' % sorted(parsed))
    if message.defects:
        problems.append('defects %r' % message.defects)
    for key in message.keys():
        for value in message.get_all(key):
            decoded = str(value)
            # Decode any encoded words by hand too: what a reader shows.
            shown = str(email.header.make_header(
                email.header.decode_header(decoded)))
            for text in (decoded, shown):
                bad = sorted({c for c in text if c in _BIDI or
                              unicodedata.category(c) == 'Cc' or
                              c in '\u2028\u2029'})
                if bad:
                    problems.append('%s holds %r: %r' % (key, bad,
                                                         text[:200]))
    if message['Bcc'] is not None or message['X-Injected'] is not None:
        problems.append('Bcc or X-Injected present')
    if message['From'] != FROM:
        problems.append('From is %r' % message['From'])
    if message['To'] != ', '.join(TO):
        problems.append('To is %r' % message['To'])
    subject = message['Subject'] or ''
    if not subject.startswith('[nova-error-notifier][RegionOne] '):
        problems.append('Subject %r' % subject)
    return problems


def _body_problems(mail):
    problems = []
    message = _parse(mail)
    if message.get_content_type() != 'multipart/alternative':
        problems.append('content type %s' % message.get_content_type())
    parts = [p for p in message.walk() if not p.is_multipart()]
    types = sorted(p.get_content_type() for p in parts)
    if types != ['text/html', 'text/plain']:
        problems.append('parts %r' % types)
    for part in parts:
        for key in part.keys():
            if key.lower() not in ('content-type',
                                   'content-transfer-encoding',
                                   'mime-version'):
                problems.append('part header %s' % key)
        if part.defects:
            problems.append('%s defects %r' % (part.get_content_type(),
                                               part.defects))
        text = part.get_content()
        bad = _injected_lines(text)
        if bad:
            problems.append('%s line(s) %r' % (part.get_content_type(),
                                               [b[:80] for b in bad]))
    # The raw text as sent: the header block and every part not in base64
    # (base64 text is checked decoded above; its alphabet may start a line
    # with anything).
    raw = [mail.data.partition(b'\r\n\r\n')[0].decode('utf-8', 'replace')]
    raw += [p.get_payload(decode=False) for p in parts
            if p.get('Content-Transfer-Encoding', '7bit').lower() !=
            'base64']
    bad = [line for text in raw for line in _injected_lines(text)]
    if bad:
        problems.append('raw line(s) %r' % [b[:80] for b in bad])
    too_long = [len(line) for line in mail.data.split(b'\r\n')
                if len(line) > 998]
    if too_long:
        problems.append('raw lines over 998 octets: %r' % too_long)
    return problems


def _check_mails(mails):
    problems = []
    for mail in mails:
        found = []
        if set(mail.rcpt_tos) != set(TO) or len(mail.rcpt_tos) != len(TO):
            found.append('envelope recipients %r' % mail.rcpt_tos)
        if mail.mail_from != FROM:
            found.append('envelope sender %r' % mail.mail_from)
        if mail.tls_version is None or mail.auth_username != SMTP_USER:
            found.append('not over TLS with AUTH')
        found += _header_problems(mail)
        found += _body_problems(mail)
        raw = mail.data.decode('utf-8', 'replace')
        if SMTP_PASSWORD in raw:
            found.append('the SMTP password is in the mail')
        if found:
            subject = _parse(mail)['Subject'] or ''
            problems.append('%r: %s' % (subject[:100], '; '.join(found)))
    return problems


def _start(tmp_path, rabbitmq_vhost, server, extra=''):
    proc = service_process.ServiceProcess(
        tmp_path, _config(rabbitmq_vhost.url, server, extra))
    return proc.start()


def _check_log(proc, status):
    """The service stopped cleanly and wrote no secret, no forged line."""
    log = proc.log()
    assert status == 0
    assert SMTP_PASSWORD not in log
    assert 'Traceback' not in log
    assert not [ln for ln in log.splitlines()
                if ln.lstrip().startswith(INJECTED)]


def test_hostile_names_cannot_forge_mail(tmp_path, rabbitmq_vhost,
                                         smtp_server):
    server = smtp_server(mode='starttls', auth={SMTP_USER: SMTP_PASSWORD},
                         require_starttls=True)
    proc = _start(tmp_path, rabbitmq_vhost, server,
                  # One mail per failure: no digest for this many.
                  '[delivery]\nstate_dir = %s\nmax_alerts_per_interval = 0\n'
                  '[correlation]\ngroup_wait = %s\n' % (
                      tmp_path, service_process.GROUP_WAIT))
    try:
        scenarios = _scenarios()
        results = nova_emit.emit(rabbitmq_vhost.url, scenarios)
        # Nova sent what it was given, byte for byte.
        for scenario, result in zip(scenarios, results):
            value = scenario['instance']['display_name']
            names = set()
            for sent in result['sent']:
                _collect(sent['payload'], 'display_name', names)
                assert sent['context']['project_name'] == value
                assert sent['context']['user_name'] == value
            assert value in names, (scenario['kind'], names)
        mails = server.wait_for_messages(len(scenarios), timeout=120)
        # Nothing more: the legacy and versioned twins of a failure made
        # one alert.
        time.sleep(service_process.GROUP_WAIT + 2)
        assert len(server.messages) == len(scenarios)
        problems = _check_mails(mails)
        # One mail per failure, found by its request id, naming the
        # instance.
        for result in results:
            found = [m for m in mails if result['request_id'] in
                     _text(m)]
            if len(found) != 1:
                problems.append('%s %s: %d mails' % (
                    result['kind'], result['request_id'], len(found)))
            elif result['instance_uuid'] not in _text(found[0]):
                problems.append('%s: the mail does not name %s' % (
                    result['request_id'], result['instance_uuid']))
        assert not problems, '\n'.join(problems)
    finally:
        status = proc.stop()
    _check_log(proc, status)


def test_hostile_names_cannot_forge_a_digest(tmp_path, rabbitmq_vhost,
                                             smtp_server):
    """A storm folded into a digest lists the names: same guarantees."""
    server = smtp_server(mode='starttls', auth={SMTP_USER: SMTP_PASSWORD},
                         require_starttls=True)
    proc = _start(tmp_path, rabbitmq_vhost, server,
                  '[delivery]\nstate_dir = %s\nmax_alerts_per_interval = 1\n'
                  'group_interval = 5\n'
                  '[correlation]\ngroup_wait = %s\n' % (
                      tmp_path, service_process.GROUP_WAIT))
    try:
        scenarios = [_scenario(value) for _, value in HOSTILE]
        results = nova_emit.emit(rabbitmq_vhost.url, scenarios)
        # One single alert, then one digest with the others.
        mails = server.wait_for_messages(2, timeout=90)
        time.sleep(service_process.GROUP_WAIT + 2)
        assert len(server.messages) == 2
        problems = _check_mails(mails)
        texts = [_text(m) for m in mails]
        listed = [{r['request_id'] for r in results if r['request_id'] in t}
                  for t in texts]
        # Every failure is in one of the two mails, the digest lists all
        # but the first.
        assert sorted(len(ids) for ids in listed) == [1, len(scenarios) - 1]
        assert set.union(*listed) == {r['request_id'] for r in results}
        [digest] = [m for m, ids in zip(mails, listed) if len(ids) > 1]
        assert '%d instances failed' % (len(scenarios) - 1) in \
            _parse(digest)['Subject']
        assert not problems, '\n'.join(problems)
    finally:
        status = proc.stop()
    _check_log(proc, status)


#: Through Nova's API: the server's name and host, the fault's message and
#: details, the action event's details and traceback.
ENRICHED = ('crlf-bcc', 'q-word', 'b-word', 'split-words', 'b-word-body',
            'u2028', 'only-crlf')


def test_hostile_enrichment_cannot_forge_mail(tmp_path, rabbitmq_vhost,
                                              smtp_server, keystone,
                                              nova_api):
    """Fault, action and Keystone names from the APIs: same guarantees."""
    ks = keystone
    hostile = dict(HOSTILE)
    # Keystone's names are the tenant's too (a domain admin names them).
    project = ks.create_project('hm-%s =?utf-8?q?=0D=0ABcc:_evil@example.com'
                                '?=' % uuid.uuid4().hex[:8])
    user = ks.create_user('hm-%s %s' % (uuid.uuid4().hex[:8],
                                        _b64_word('x\r\nX-Injected: 1')),
                          'Hm-User-Pw-4', project=project)
    ks.grant_project('member', project, user_id=user)
    scenarios = []
    for label in ENRICHED:
        value = hostile[label]
        server = nova_api.create_server(project, user, value,
                                        vm_state='error', host='compute-07')
        request_id = 'req-%s' % uuid.uuid4()
        nova_api.add_fault(server, code=500, message=value,
                           details='Traceback\n%s\nmore' % value)
        nova_api.add_action(server, request_id, action='create', events=[
            {'event': 'compute_build_and_run_instance', 'result': 'Error',
             'host': 'compute-07', 'details': value,
             'traceback': 'Traceback\n%s\n' % value}])
        scenario = _scenario(value)
        scenario['request_id'] = request_id
        scenario['instance'].update(uuid=server, project_id=project,
                                    user_id=user)
        # The names come from Keystone, through the enrichment.
        del scenario['context']
        scenarios.append(scenario)

    server = smtp_server(mode='starttls', auth={SMTP_USER: SMTP_PASSWORD},
                         require_starttls=True)
    proc = _start(tmp_path, rabbitmq_vhost, server, '\n'.join([
        '[receiver:oncall]', 'include_details = true',
        '[delivery]', 'state_dir = %s' % tmp_path,
        'max_alerts_per_interval = 0',
        '[correlation]', 'group_wait = %s' % service_process.GROUP_WAIT,
        # A generous budget: the first alert also logs in to Keystone, on
        # a machine busy with Nova, Keystone, RabbitMQ and the service.
        '[enrichment]', 'enabled = true', 'timeout = 30', 'cache_ttl = 0',
        ks.service_credentials_conf(keystone_helpers.ADMIN_USER,
                                    ks.admin_password,
                                    keystone_helpers.ADMIN_PROJECT)]))
    try:
        results = nova_emit.emit(rabbitmq_vhost.url, scenarios)
        mails = server.wait_for_messages(len(scenarios), timeout=120)
        time.sleep(service_process.GROUP_WAIT + 2)
        assert len(server.messages) == len(scenarios)
        problems = _check_mails(mails)
        for result in results:
            found = [m for m in mails if result['request_id'] in
                     _text(m)]
            if len(found) != 1:
                problems.append('%s: %d mails' % (result['request_id'],
                                                  len(found)))
                continue
            text = _text(found[0])
            # The enrichment did reach the mail: the action's event, the
            # fault, the names from Keystone (and no line of the text part
            # starts with "From ", which SMTP would turn into ">From").
            for expected in ('compute_build_and_run_instance', 'Fault:',
                             "Nova's API says:", 'hm-'):
                if expected not in text:
                    problems.append('%s: no %r in the text part:\n%s' % (
                        result['request_id'], expected, text[-1500:]))
        assert not problems, '\n'.join(problems)
    finally:
        status = proc.stop()
    _check_log(proc, status)
