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
:mod:`nova_error_notifier.staff`); each address gets the alert once. Staff
addresses go in the envelope only, so they are not disclosed to each other.

The mail is ``multipart/alternative`` with a text and an HTML part, from
Jinja2 templates (``subject.txt``, ``body.txt``, ``body.html``) shipped in
``nova_error_notifier/templates/email`` and overridable from ``[email]
templates_dir``. Templates run in Jinja2's sandbox; the HTML part is
autoescaped; control characters are removed from the subject, so that no
instance name can add a header.
"""

import dataclasses
import email.message
import email.policy
import email.utils
import os
import re
import smtplib
import socket
import ssl

import jinja2
from jinja2 import sandbox
from oslo_config import cfg
from oslo_log import log

from nova_error_notifier import alert as alert_mod
from nova_error_notifier.drivers import base
from nova_error_notifier import logsafe
from nova_error_notifier import record as rec
from nova_error_notifier import rules
from nova_error_notifier import staff as staff_mod
from nova_error_notifier import version

LOG = log.getLogger(__name__)

GROUP = 'email'
TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'templates', 'email')
DEFAULT_PORTS = {'none': 25, 'starttls': 587, 'ssl': 465}
MAX_SUBJECT = 200
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
_SUBJECT_UNSAFE_RE = re.compile('[\x00-\x1f\x7f-\x9f\u2028-\u202e'
                                '\u2060-\u2069\ufeff]+')


def valid_address(value):
    """True for a plain addr-spec such as ``ops@example.org``."""
    return (isinstance(value, str) and len(value) <= 254 and
            bool(_ADDRESS_RE.match(value)))


def clean_header(value, limit=MAX_SUBJECT):
    """One line of text: control characters removed, spaces collapsed."""
    value = _SUBJECT_UNSAFE_RE.sub(' ', value or '')
    value = ' '.join(value.split())
    if len(value) > limit:
        value = value[:limit - 1] + '\u2026'
    return value


def _short(uuid):
    return (uuid[:8] + '\u2026') if uuid and len(uuid) > 8 else uuid


def _action(event_type):
    """``resize`` of ``compute.instance.resize.error`` and the like."""
    if event_type == 'compute.exception':
        return 'request'          # the failed method is not named
    name = event_type
    for prefix in ('compute.instance.', 'instance.', 'compute_task.',
                   'compute.'):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if name.endswith('.error'):
        name = name[:-len('.error')]
    return name.replace('_', ' ') or event_type


def summary(alert):
    """``build of web-01 (b5e2c3f4…) failed`` and the like."""
    if alert.instance_uuid:
        target = ('%s (%s)' % (alert.instance_name, _short(
            alert.instance_uuid)) if alert.instance_name
            else 'instance %s' % _short(alert.instance_uuid))
    else:
        target = None
    events = alert.events
    if rec.CREATE_FAILED in events:
        return 'build of %s failed' % (target or 'an instance')
    if target and alert.event_types == ('instance.update',) or \
            alert.event_types == ('compute.instance.update',):
        return '%s entered ERROR' % (target or 'an instance')
    action = _action(alert.event_types[0]) if alert.event_types else 'error'
    if target:
        return '%s of %s failed' % (action, target)
    return '%s failed on %s' % (action, alert.host or 'an unknown host')


def _apply(value, transform):
    if isinstance(value, str):
        return transform(value)
    if isinstance(value, tuple):
        return tuple(_apply(v, transform) for v in value)
    return value


def display_copy(alert, transform=logsafe.escape):
    """The alert with ``transform`` applied to every text field.

    By default control characters are escaped; details keep their line
    breaks (tracebacks), nothing else does.
    """
    changes = {}
    for field in dataclasses.fields(alert):
        value = getattr(alert, field.name)
        if field.name == 'members':
            continue
        if field.name == 'details' and value:
            changes['details'] = '\n'.join(
                transform(line) for line in value.split('\n'))
        elif isinstance(value, (str, tuple)):
            changes[field.name] = _apply(value, transform)
    return dataclasses.replace(alert, **changes)


def _upper_first(value):
    value = str(value)
    return value[:1].upper() + value[1:]


def _iso(stamp):
    return stamp.strftime('%Y-%m-%d %H:%M:%S UTC') if stamp else '-'


class Templates:
    """The sandboxed Jinja2 environments of the mails."""

    def __init__(self, templates_dir=None):
        loaders = []
        if templates_dir:
            loaders.append(jinja2.FileSystemLoader(templates_dir))
        loaders.append(jinja2.FileSystemLoader(TEMPLATES))
        loader = jinja2.ChoiceLoader(loaders)
        self.text = sandbox.SandboxedEnvironment(
            loader=loader, autoescape=False, undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True)
        self.html = sandbox.SandboxedEnvironment(
            loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
        for env in (self.text, self.html):
            env.filters['upper_first'] = _upper_first

    @staticmethod
    def _context(alert, region):
        return {
            'alert': alert,
            'region': clean_header(region or '', 64),
            'summary': alert.summary if alert.is_digest else summary(alert),
            'first_seen': _iso(alert.first_seen),
            'last_seen': _iso(alert.last_seen),
            'next_steps': next_steps(alert),
            'version': version.version_string(),
        }

    def render(self, alert, region):
        """(subject, text body, HTML body) of the alert's mail."""
        prefix = 'digest_' if alert.is_digest else ''
        # The subject is one header line: control characters become spaces.
        subject = clean_header(self.text.get_template(
            prefix + 'subject.txt').render(self._context(
                display_copy(alert, clean_header), region)))
        shown = display_copy(alert)
        context = self._context(shown, region)
        context['subject'] = subject
        if alert.is_digest:
            context['members'] = [display_copy(m) for m in alert.members]
            context['unlisted'] = alert.digest_count - len(alert.members)
        text = self.text.get_template(prefix + 'body.txt').render(context)
        html = self.html.get_template(prefix + 'body.html').render(context)
        return subject, text, html


def next_steps(alert):
    steps = []
    if alert.instance_uuid:
        if alert.request_id:
            steps.append('openstack server event show %s %s'
                         % (alert.instance_uuid, alert.request_id))
        steps.append('openstack server show %s -c status -c fault'
                     % alert.instance_uuid)
        steps.append('openstack server event list %s' % alert.instance_uuid)
    elif alert.request_id:
        steps.append('grep %s in the logs of the nova services on %s'
                     % (alert.request_id, alert.host or 'the controllers'))
    if alert.host:
        steps.append('openstack compute service list --host %s' % alert.host)
    return steps


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
        register_opts(conf)
        self.staff = (staff_mod.StaffDirectory(conf)
                      if self.options.staff_users else None)
        self.templates = None

    @classmethod
    def list_opts(cls):
        return list(cls.OPTS)

    def check(self):
        problems = []
        values = {opt.dest: rules.option_value(self.conf, GROUP, opt.dest,
                                               problems)
                  for opt in EMAIL_OPTS}
        if problems:
            raise base.DriverConfigError('; '.join(problems))
        if not values['smtp_host']:
            problems.append('[email] smtp_host is not set')
        from_address = values['from_address']
        if not from_address:
            problems.append('[email] from_address is not set')
        elif not valid_address(email.utils.parseaddr(from_address)[1]) or \
                clean_header(from_address, 320) != from_address.strip():
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
        if self.staff is not None:
            problems.extend(self.staff.check())
        if not problems:
            try:
                self.templates = Templates(values['templates_dir'])
                self.templates.render(alert_mod.sample(self.receiver),
                                      self.conf.region_name)
            except jinja2.TemplateError as exc:
                problems.append('templates: %s: %s'
                                % (type(exc).__name__, exc))
        if problems:
            raise base.DriverConfigError('; '.join(problems))

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
        options = self.conf[GROUP]
        if self.templates is None:
            self.templates = Templates(options.templates_dir)
        subject, text, html = self.templates.render(alert,
                                                    self.conf.region_name)
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
        msg.set_content(text)
        msg.add_alternative(html, subtype='html')
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
