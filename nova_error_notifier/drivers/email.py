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
"""The ``email`` driver: one mail per alert, over SMTP.

::

    [email]
    smtp_host = smtp.example.org
    smtp_security = starttls
    from_address = nova-alerts@example.org

    [receiver:oncall]
    driver = email
    to = ops@example.org
    staff_users = true

Recipients are the receiver's ``to`` addresses and, with ``staff_users``,
the e-mail addresses of the staff users found in Keystone (see
:mod:`nova_error_notifier.staff`: the service gives the driver the
directory, see :meth:`EmailDriver.wants_staff`); each address gets the alert
once. Staff addresses go in the envelope only, so they are not disclosed to
each other.

The mail is ``multipart/alternative`` with a text and an HTML part, from
Jinja2 templates (``subject.txt``, ``body.txt``, ``body.html``) shipped in
``nova_error_notifier/templates/email`` and overridable from ``[email]
templates_dir``. Templates run in the sandboxed environment of
:mod:`nova_error_notifier.formatting`; the HTML part is autoescaped.

Every value in a mail may come from a tenant (an instance is named by its
owner), so, whatever the Python running the service:

* a header value built from data goes through
  :func:`formatting.clean_header`: every control, format, line or paragraph
  separator character and lone surrogate is removed, white space
  collapsed, RFC 2047 encoded-word syntax broken up (the standard library
  decodes encoded words while it folds a header, and interpreters without
  the fix write a decoded CR LF raw), the length bounded;
* in the text part every value is escaped (:func:`logsafe.escape`) and every
  line of a multi-line value (tracebacks, details) starts with the fixed
  prefix :data:`formatting.BLOCK_PREFIX`, so that no line of the body
  begins with a value; in the HTML part multi-line values keep their line
  breaks as ``&#10;``, so that no physical line of the source begins with
  a value;
* the parts are sent 7bit or 8bit when every line fits in 998 bytes, else
  base64, never quoted-printable (whose soft line breaks would let the
  length of a value decide what starts a physical line);
* the message is serialised and parsed back before it is sent: unless it
  reads back with exactly the headers the driver set, none holding a line
  break, and the parts as rendered, it goes out with a plain ASCII subject
  instead (:func:`check_message`).

SMTP credentials never travel in clear: ``smtp_username`` with
``smtp_security = none`` is a configuration error unless ``[email]
allow_plaintext_auth`` is set for a trusted relay.
"""

import email.message
import email.policy
import email.utils
import os
import re
import smtplib
import socket
import ssl

import jinja2
from oslo_config import cfg
from oslo_log import log

from nova_error_notifier import alert as alert_mod
from nova_error_notifier.drivers import base
from nova_error_notifier import formatting
from nova_error_notifier import logsafe

LOG = log.getLogger(__name__)

GROUP = 'email'
TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'templates', 'email')
DEFAULT_PORTS = {'none': 25, 'starttls': 587, 'ssl': 465}
# Headers on one line (RFC 5322 allows 998 characters): the standard
# library's folding at 78 puts a leading space into some subjects.
POLICY = email.policy.SMTP.clone(max_line_length=998)

EMAIL_OPTS = [
    cfg.HostAddressOpt('smtp_host',
                       help='SMTP server that sends the alerts. Required by '
                            'receivers with driver = email.'),
    cfg.PortOpt('smtp_port',
                help='SMTP port. Default: 25, 587 with STARTTLS, 465 with '
                     'implicit TLS.'),
    cfg.StrOpt('smtp_security',
               default='none',
               choices=[('none', 'plain SMTP'),
                        ('starttls', 'upgrade to TLS with STARTTLS'),
                        ('ssl', 'implicit TLS (SMTPS)')],
               help='Transport security of the SMTP connection.'),
    cfg.StrOpt('smtp_username',
               help='User name to log in to the SMTP server with; no login '
                    'when unset.'),
    cfg.StrOpt('smtp_password',
               secret=True,
               help='Password of smtp_username.'),
    cfg.BoolOpt('allow_plaintext_auth',
                default=False,
                help='Allow logging in (smtp_username) over a connection '
                     'without TLS (smtp_security = none): the password '
                     'then crosses the network in clear. Only for a '
                     'trusted relay on localhost or on a private link; '
                     'without it, smtp_username with smtp_security = none '
                     'is a configuration error.'),
    cfg.StrOpt('from_address',
               help='Sender address of the alerts, e.g. '
                    '"Nova alerts <nova-alerts@example.org>". Required by '
                    'receivers with driver = email.'),
    cfg.StrOpt('templates_dir',
               help='Directory with templates (subject.txt, body.txt, '
                    'body.html) that replace the shipped ones; a template '
                    'missing there is taken from the package.'),
    cfg.FloatOpt('timeout',
                 default=10.0,
                 min=0.1,
                 help='Seconds to wait for the SMTP server at each step.'),
    cfg.StrOpt('cafile',
               help='CA bundle to verify the SMTP server\'s certificate '
                    'with (STARTTLS and ssl). Default: the system\'s.'),
]

_ADDRESS_RE = re.compile(r'\A[^\s@<>()",;:\\\[\]]+@[^\s@<>()",;:\\\[\]]+\Z')
#: The headers of every mail, each exactly once, and those of its parts.
HEADERS = ('Subject', 'From', 'To', 'Date', 'Message-ID',
           'X-Nova-Error-Notifier-Alert-Id', 'Auto-Submitted',
           'MIME-Version', 'Content-Type')
PART_HEADERS = ('Content-Type', 'Content-Transfer-Encoding')
# The standard library also writes MIME-Version into the HTML part.
_PART_OPTIONAL = ('MIME-Version',)
_PART_TYPES = ('text/plain', 'text/html')
_CTES = ('7bit', '8bit', 'base64')
_LINE_BREAK_RE = re.compile(r'\r\n|\r|\n')
_PLAINTEXT_WARNED = set()


def valid_address(value):
    """True for a plain addr-spec such as ``ops@example.org``."""
    return (isinstance(value, str) and len(value) <= 254 and
            bool(_ADDRESS_RE.match(value)))


def fallback_subject(alert):
    """The plain ASCII subject of a mail that did not read back as built."""
    ident = re.sub('[^0-9A-Za-z-]', '', str(alert.id or ''))[:64]
    return '[nova-error-notifier] %s %s' % (
        'digest' if alert.is_digest else 'alert', ident or 'unknown')


class Templates:
    """The mail's templates, in sandboxed environments (text and HTML).

    :param templates_dir: a directory whose templates replace the shipped
        ones (a template missing there is taken from the package).
    """

    def __init__(self, templates_dir=None):
        directories = [templates_dir] if templates_dir else []
        directories.append(TEMPLATES)
        self.text = formatting.Environment(formatting.TEXT, directories)
        self.html = formatting.Environment(formatting.HTML, directories)

    @staticmethod
    def _body_context(alert, region, subject, block):
        context = formatting.template_context(formatting.display_copy(
            alert, logsafe.escape, block), region)
        context['subject'] = subject
        if alert.is_digest:
            context['members'] = [formatting.display_copy(
                m, logsafe.escape, block) for m in alert.members]
            context['unlisted'] = alert.digest_count - len(alert.members)
        return context

    def render(self, alert, region):
        """(subject, text body, HTML body) of the alert's mail."""
        prefix = 'digest_' if alert.is_digest else ''
        clean = formatting.clean_header
        # The subject is one header line: every value is cleaned, and the
        # whole line again (a template may put values side by side).
        subject = clean(self.text.get_template(
            prefix + 'subject.txt').render(formatting.template_context(
                formatting.display_copy(alert, clean, clean), region)))
        text = self.text.get_template(prefix + 'body.txt').render(
            self._body_context(alert, region, subject,
                               formatting.text_block))
        html = self.html.get_template(prefix + 'body.html').render(
            self._body_context(alert, region, subject,
                               formatting.html_block))
        return (subject, formatting.encodable(text),
                formatting.encodable(html))


def transfer_encoding(text):
    """7bit or 8bit when every line fits in a line of SMTP, else base64.

    Never quoted-printable: its soft line breaks fall where the length of
    the text before them says, which a tenant could choose.
    """
    data = text.encode('utf-8')
    longest = max((len(line) for line in data.splitlines()), default=0)
    if longest > POLICY.max_line_length:
        return 'base64'
    return '7bit' if data.isascii() else '8bit'


def _normalised(text):
    return _LINE_BREAK_RE.sub('\n', text).rstrip('\n')


def _header_problems(message, expected, where, optional=()):
    problems = []
    names = [name.lower() for name in message.keys()]
    for name in optional:
        if names.count(name.lower()) == 1:
            names.remove(name.lower())
    if sorted(names) != sorted(name.lower() for name in expected):
        problems.append('%s headers are %s' % (where, ', '.join(
            message.keys())))
    for name, value in message.items():
        if '\r' in str(value) or '\n' in str(value):
            problems.append('%s header %s holds a line break' % (where,
                                                                 name))
        elif not formatting.header_safe(value):
            problems.append('%s header %s holds a control or format '
                            'character' % (where, name))
    return problems


def check_message(raw, subject, text, html):
    """What is wrong with the serialised mail ``raw``, as a list.

    The mail is parsed back as a reader would (RFC 2047 encoded words
    decoded); it must have exactly :data:`HEADERS`, each once, none holding
    a line break, the subject ``subject``, and a text and an HTML part with
    :data:`PART_HEADERS`, a 7bit, 8bit or base64 transfer encoding and
    the content ``text`` and ``html``.
    """
    try:
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        problems = _header_problems(parsed, HEADERS, 'mail')
        if ' '.join(str(parsed['Subject'] or '').split()) != \
                ' '.join(subject.split()):
            problems.append('the subject does not read back as written')
        if parsed.get_content_type() != 'multipart/alternative':
            problems.append('the mail is %s' % parsed.get_content_type())
            return problems
        parts = list(parsed.iter_parts())
        types = [part.get_content_type() for part in parts]
        if types != list(_PART_TYPES):
            problems.append('the parts are %s' % ', '.join(types))
            return problems
        for part, content in zip(parts, (text, html)):
            kind = part.get_content_type()
            problems.extend(_header_problems(part, PART_HEADERS, kind,
                                             _PART_OPTIONAL))
            if str(part['Content-Transfer-Encoding']).lower() not in _CTES:
                problems.append('%s is sent %s' % (
                    kind, part['Content-Transfer-Encoding']))
            if _normalised(part.get_content()) != _normalised(content):
                problems.append('%s does not read back as written' % kind)
        return problems
    except Exception as exc:   # whatever the parser makes of it: not sent
        return ['the mail cannot be read back: %s: %s' % (
            type(exc).__name__, exc)]


class EmailDriver(base.Driver):
    """Sends each alert as an e-mail over SMTP."""

    OPTS = [
        cfg.ListOpt('to',
                    default=[],
                    help='E-mail addresses that get every alert of this '
                         'receiver (the "custom e-mails").'),
        cfg.BoolOpt('staff_users',
                    default=False,
                    help='Also send the alerts to the staff users found in '
                         'Keystone (see [staff] and [service_credentials]).'),
    ]

    def __init__(self, conf, receiver):
        super().__init__(conf, receiver)
        self.templates = None

    @classmethod
    def list_opts(cls):
        return list(cls.OPTS)

    def wants_staff(self):
        return bool(self.options.staff_users)

    def secrets(self):
        secrets = super().secrets()
        password = self.conf[GROUP].smtp_password
        if password:
            secrets.append(password)
        return sorted(set(secrets), key=len, reverse=True)

    def check(self):
        problems = []
        values = {opt.dest: base.option_value(self.conf, GROUP, opt.dest,
                                              problems)
                  for opt in EMAIL_OPTS}
        if problems:
            raise base.DriverConfigError('; '.join(problems))
        if not values['smtp_host']:
            problems.append('[email] smtp_host is not set')
        if values['smtp_username'] and values['smtp_security'] == 'none' \
                and not values['allow_plaintext_auth']:
            problems.append(
                '[email] smtp_username is set with smtp_security = none: '
                'the password would cross the network in clear; set '
                'smtp_security = starttls or ssl (or allow_plaintext_auth '
                '= true, only for a trusted relay on localhost or a private '
                'link)')
        from_address = values['from_address']
        if not from_address:
            problems.append('[email] from_address is not set')
        elif formatting.clean_header(from_address, 320) != \
                from_address.strip():
            problems.append('[email] from_address %r holds control '
                            'characters or RFC 2047 encoded words: write the '
                            'name as plain text' % from_address)
        elif not valid_address(email.utils.parseaddr(from_address)[1]):
            problems.append('[email] from_address %r is not an e-mail '
                            'address' % from_address)
        for address in self.options.to:
            if not valid_address(address.strip()):
                problems.append('to: %r is not an e-mail address' % address)
        if not self.options.to and not self.options.staff_users:
            problems.append('no recipients: set to, or staff_users = true')
        for key in ('templates_dir', 'cafile'):
            path = values[key]
            if path and not os.path.exists(path):
                problems.append('[email] %s %s does not exist' % (key, path))
        if self.options.staff_users:
            if self.staff is None:
                problems.append('staff_users = true, but the service gave '
                                'the driver no staff directory')
            else:
                problems.extend(self.staff.check())
        if not problems:
            try:
                self.templates = Templates(values['templates_dir'])
                # The whole mail of a sample alert, checked as a real one
                # (staff addresses stay out of headers: not asked here).
                self.build_message(alert_mod.sample(self.receiver),
                                   [a.strip() for a in self.options.to])
            except jinja2.TemplateError as exc:
                problems.append('templates: %s: %s'
                                % (type(exc).__name__, exc))
            except base.DriverError as exc:
                problems.append(str(exc))
        if problems:
            raise base.DriverConfigError('; '.join(problems))
        if values['smtp_username'] and values['smtp_security'] == 'none':
            self._warn_plaintext_auth(values)

    def _warn_plaintext_auth(self, values):
        server = '%s:%s' % (values['smtp_host'], values['smtp_port'] or
                            DEFAULT_PORTS['none'])
        if server in _PLAINTEXT_WARNED:
            return      # once per server, not per receiver or reload
        _PLAINTEXT_WARNED.add(server)
        LOG.warning('[email] allow_plaintext_auth = true: the SMTP password '
                    'of %s is sent to %s without TLS (smtp_security = '
                    'none); only do this with a trusted relay on localhost '
                    'or a private link',
                    logsafe.quote(values['smtp_username'], 100), server)

    # -- delivery -----------------------------------------------------------

    def recipients(self):
        """(header addresses, envelope addresses), each address once."""
        seen = set()
        header, envelope = [], []
        for address in self.options.to:
            address = address.strip()
            if address.lower() not in seen:
                seen.add(address.lower())
                header.append(address)
                envelope.append(address)
        if self.staff is not None:
            for address in self.staff.emails() or ():
                if not valid_address(address):
                    LOG.warning('Receiver %s: skipped staff address %s: not '
                                'an e-mail address', self.receiver,
                                logsafe.quote(address, 100))
                    continue
                if address.lower() not in seen:
                    seen.add(address.lower())
                    envelope.append(address)
        return header, envelope

    def build_message(self, alert, header_to):
        """The checked mail of ``alert`` (see :func:`check_message`).

        :raises base.DriverError: (not retryable) when even a plain subject
            does not make the mail read back as built.
        """
        options = self.conf[GROUP]
        if self.templates is None:
            self.templates = Templates(options.templates_dir)
        subject, text, html = self.templates.render(
            alert, formatting.alert_region(alert, self.conf.region_name))
        msg = self._message(alert, header_to, subject, text, html)
        problems = check_message(msg.as_bytes(), subject, text, html)
        if not problems:
            return msg
        LOG.warning('Receiver %s: the mail of alert %s does not read back '
                    'as built (%s): it goes out with a plain subject',
                    self.receiver, logsafe.escape(alert.id, 64),
                    logsafe.escape('; '.join(problems), 500))
        subject = fallback_subject(alert)
        msg = self._message(alert, header_to, subject, text, html)
        problems = check_message(msg.as_bytes(), subject, text, html)
        if problems:
            raise base.DriverError(
                'the mail of alert %s cannot be built safely: %s' % (
                    logsafe.escape(alert.id, 64),
                    logsafe.escape('; '.join(problems), 500)),
                retryable=False)
        return msg

    def _message(self, alert, header_to, subject, text, html):
        options = self.conf[GROUP]
        msg = email.message.EmailMessage(policy=POLICY)
        msg['Subject'] = subject
        msg['From'] = options.from_address
        msg['To'] = ', '.join(header_to) if header_to else \
            'undisclosed-recipients:;'
        msg['Date'] = email.utils.formatdate(localtime=False)
        domain = email.utils.parseaddr(options.from_address)[1].rpartition(
            '@')[2] or None
        msg['Message-ID'] = email.utils.make_msgid('nova-error-notifier',
                                                   domain=domain)
        msg['X-Nova-Error-Notifier-Alert-Id'] = alert.id
        msg['Auto-Submitted'] = 'auto-generated'
        msg.set_content(text, cte=transfer_encoding(text))
        msg.add_alternative(html, subtype='html',
                            cte=transfer_encoding(html))
        return msg

    def notify(self, alert):
        header_to, envelope = self.recipients()
        if not envelope:
            raise base.DriverError(
                'no recipient: the staff list is not known yet (Keystone '
                'unreachable) and the receiver has no "to" address',
                retryable=True)
        msg = self.build_message(alert, header_to)
        self._send(msg, envelope)

    def _ssl_context(self):
        options = self.conf[GROUP]
        return ssl.create_default_context(cafile=options.cafile or None)

    def _send(self, msg, envelope):
        options = self.conf[GROUP]
        security = options.smtp_security
        port = options.smtp_port or DEFAULT_PORTS[security]
        server = '%s:%s' % (options.smtp_host, port)
        sender = email.utils.parseaddr(options.from_address)[1]
        if options.smtp_username and security == 'none' and \
                not options.allow_plaintext_auth:
            raise base.DriverError(
                'SMTP server %s: refusing to send the password of '
                'smtp_username without TLS (smtp_security = none)' % server,
                retryable=False)
        try:
            if security == 'ssl':
                client = smtplib.SMTP_SSL(options.smtp_host, port,
                                          timeout=options.timeout,
                                          context=self._ssl_context())
            else:
                client = smtplib.SMTP(options.smtp_host, port,
                                      timeout=options.timeout)
            with client:
                client.ehlo()
                if security == 'starttls':
                    client.starttls(context=self._ssl_context())
                    client.ehlo()
                if options.smtp_username:
                    client.login(options.smtp_username,
                                 options.smtp_password or '')
                refused = client.send_message(msg, sender, envelope)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            raise base.DriverError(
                'SMTP server %s refused every recipient (%s)' % (
                    server, _refusals(exc.recipients)),
                retryable=all(400 <= code < 500 for code in codes))
        except smtplib.SMTPResponseException as exc:
            raise base.DriverError(
                'SMTP server %s answered %s %s' % (
                    server, exc.smtp_code, _text(exc.smtp_error)),
                retryable=400 <= exc.smtp_code < 500)
        except smtplib.SMTPNotSupportedError as exc:
            raise base.DriverError('SMTP server %s: %s' % (server, exc),
                                   retryable=False)
        except ssl.SSLCertVerificationError as exc:
            raise base.DriverError(
                'SMTP server %s: TLS certificate not trusted: %s' % (
                    server, exc.verify_message or exc), retryable=False)
        except (smtplib.SMTPException, socket.timeout, OSError) as exc:
            raise base.DriverError(
                'SMTP server %s: %s: %s' % (server, type(exc).__name__,
                                            exc or 'no answer'),
                retryable=True)
        if refused:
            LOG.warning('Receiver %s: SMTP server %s refused some '
                        'recipients of alert %s: %s', self.receiver, server,
                        msg['X-Nova-Error-Notifier-Alert-Id'],
                        _refusals(refused))


def _text(value):
    if isinstance(value, bytes):
        value = value.decode('utf-8', 'replace')
    return logsafe.escape(value, 300)


def _refusals(recipients):
    return ', '.join(
        '%s: %s %s' % (logsafe.escape(address, 100), code, _text(text))
        for address, (code, text) in sorted(recipients.items()))


def register_opts(conf):
    conf.register_opts(EMAIL_OPTS, group=GROUP)


def list_opts():
    return [(GROUP, EMAIL_OPTS)]
