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
"""The ``webhook`` driver: a signed, versioned JSON body per alert.

::

    [receiver:chatops]
    driver = webhook
    url = https://hooks.example.org/nova
    secret = a-long-random-string
    headers = Authorization:Bearer abc123

The default body is version 1 of the document described by the JSON Schema
``nova_error_notifier/schemas/webhook-v1.json``. Each alert of it has a
``region``: the region of the bus its failure was reported on (``[bus:NAME]
region_name``, ``[listener] region_name``), null without one; the body's
own ``region`` is the alert's, else ``[DEFAULT] region_name``. Fields are
only ever added to version 1 (receivers ignore the ones they do not
know). With a ``secret`` each
request carries ``X-Nova-Error-Notifier-Timestamp`` and
``X-Nova-Error-Notifier-Signature: sha256=<hex HMAC-SHA256 of
"<timestamp>.<body>">``. ``Idempotency-Key`` is the same for every retry of
one alert to one receiver.

HTTP goes through a keystoneauth1 ``Session`` (TLS options, timeouts). Its
request logging is kept off, so that header values (tokens) never reach a
log line even with ``debug = true``. Every text the driver raises or logs
(HTTP libraries repeat the URL they failed on) has the URL's user
information and query values masked, and the URL's password, query values,
``secret`` and header values replaced wherever they appear: none of them
reaches a log line, the audit log, the outbox or a command's output.

A ``body_template`` is the operator's, the values it prints are Nova's
(hostile): the template runs in the JSON kind of the sandboxed
:class:`nova_error_notifier.formatting.Environment`, where every
``{{ ... }}`` is JSON-encoded on its way out. A string
prints as the content of a JSON string, with quotes, backslashes, the JSON
punctuation and every control or invisible character as ``\\uXXXX``
escapes, so that ``"name": "{{ alert.instance.name }}"`` stays one string
whatever the name; numbers, booleans and None print as JSON literals,
dicts and lists as JSON; ``{{ value | tojson }}`` prints a complete JSON
value (quotes included), to be used outside quotes. ``| safe`` or any
other filter cannot make a value skip the encoding. The rendered body must
parse as JSON, or the alert is refused for good (a non-retryable error);
``check-config`` and start-up render the template with a hostile alert and
refuse a template whose output then breaks or gets a key from a value.
"""

import email.utils
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from urllib import parse

import jinja2
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from oslo_config import cfg
from oslo_log import log

from nova_error_notifier import alert as alert_mod
from nova_error_notifier.drivers import base
from nova_error_notifier import formatting
from nova_error_notifier import logsafe
from nova_error_notifier import redact

LOG = log.getLogger(__name__)

BODY_VERSION = '1'
# A query string: "?" and what follows it up to a space or a quote.
_QUERY_RE = re.compile(r'\?[^\s\'")]+')
# "scheme://userinfo@": what is left of it once redact has masked passwords.
_USERINFO_RE = re.compile(r'(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)'
                          r'[^\s/?#@\'"]*@')
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'schemas', 'webhook-v1.json')
TIMESTAMP_HEADER = 'X-Nova-Error-Notifier-Timestamp'
SIGNATURE_HEADER = 'X-Nova-Error-Notifier-Signature'
IDEMPOTENCY_HEADER = 'Idempotency-Key'
RETRYABLE_STATUS = frozenset((408, 429))
MAX_RETRY_AFTER = 3600

# keystoneauth logs requests and responses (headers included) at DEBUG on
# the logger it is given: give it one that never logs below INFO.
_HTTP_LOG = logging.getLogger('nova_error_notifier.webhook.http')
_HTTP_LOG.setLevel(logging.INFO)


#: Secrets of every webhook receiver of the process (URL passwords and
#: query values, signing secrets, header values), masked in urllib3's log
#: lines whichever receiver they belong to.
_KNOWN_SECRETS = set()
_KNOWN_SECRETS_LOCK = threading.Lock()


class _QueryRedactor(logging.Filter):
    """Cuts query strings and secrets out of urllib3's DEBUG lines."""

    def filter(self, record):
        if record.args and isinstance(record.args, tuple):
            with _KNOWN_SECRETS_LOCK:
                secrets = sorted(_KNOWN_SECRETS, key=len, reverse=True)
            record.args = tuple(
                _QUERY_RE.sub('?...', redact.text(arg, secrets))
                if isinstance(arg, str) else arg
                for arg in record.args)
        return True


_URLLIB3_LOG = logging.getLogger('urllib3.connectionpool')


def alert_document(alert):
    """One alert of the version 1 body."""
    return {
        'id': alert.id,
        'rule': alert.rule,
        'event_types': list(alert.event_types),
        'synthetic_events': list(alert.synthetic_events),
        'request_id': alert.request_id,
        'global_request_id': alert.global_request_id,
        'instance': {
            'uuid': alert.instance_uuid,
            'name': alert.instance_name,
            'state': alert.instance_state,
            'host': alert.host,
        },
        'project_id': alert.project_id,
        'project_name': alert.project_name,
        'user_id': alert.user_id,
        'user_name': alert.user_name,
        'error': {
            'exception': alert.exception,
            'message': alert.message,
            'reason': alert.reason,
            'code': alert.code,
            'details': alert.details,
        },
        'publishers': list(alert.publishers),
        'count': alert.count,
        'first_seen': formatting.iso_timestamp(alert.first_seen),
        'last_seen': formatting.iso_timestamp(alert.last_seen),
        'test': alert.test,
        'region': alert.region,
        'enriched': alert.enriched,
        'enrichment_note': alert.enrichment_note,
        'server': (alert.enrichment or {}).get('server'),
        'fault': (alert.enrichment or {}).get('fault'),
        'action': (alert.enrichment or {}).get('action'),
    }


def body_document(alerts, receiver, region):
    """The version 1 body for ``alerts`` (one or more).

    A digest alert becomes its members, with a ``digest`` object saying how
    many incidents it stands for.
    """
    document = {
        'version': BODY_VERSION,
        'receiver': receiver,
        'region': region,
        'alerts': [],
    }
    for alert in alerts:
        if alert.is_digest:
            document['alerts'].extend(alert_document(m)
                                      for m in alert.members)
            document['digest'] = {
                'id': alert.id,
                'count': alert.digest_count,
                'listed': len(alert.members),
                'summary': alert.summary,
            }
        else:
            document['alerts'].append(alert_document(alert))
    return document


def sign(secret, timestamp, body):
    """The signature header value for ``body`` (bytes)."""
    digest = hmac.new(secret.encode('utf-8'),
                      str(timestamp).encode('ascii') + b'.' + body,
                      hashlib.sha256).hexdigest()
    return 'sha256=' + digest


def idempotency_key(alert, receiver):
    """The same for every retry of one alert to one receiver."""
    first_seen = formatting.iso_timestamp(alert.first_seen) or ''
    material = '\n'.join([receiver, alert.id] +
                         list(alert.message_ids or [first_seen]) +
                         [m.id for m in alert.members])
    return hashlib.sha256(material.encode('utf-8')).hexdigest()[:40]


def safe_url(url):
    """The URL without credentials and query string, for log lines."""
    try:
        parts = parse.urlsplit(url)
        host = parts.hostname or ''
        if parts.port:
            host = '%s:%d' % (host, parts.port)
        return parse.urlunsplit((parts.scheme, host, parts.path, '', ''))
    except ValueError:
        return '(unparsable URL)'


# -- body templates ----------------------------------------------------------

def _keys(document):
    """Every key of a parsed JSON document, at any depth."""
    if isinstance(document, dict):
        for key, value in document.items():
            yield key
            yield from _keys(value)
    elif isinstance(document, list):
        for value in document:
            yield from _keys(value)


# -- secrets -----------------------------------------------------------------

#: Query values and header values shorter than this are masked in URLs
#: only, not wherever they appear (``?v=1`` must not mask every "1").
MIN_LOOSE_SECRET = 4


def parse_retry_after(value, now=None):
    """Seconds to wait from a ``Retry-After`` value, or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(int(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0, min(int(when.timestamp() - now), MAX_RETRY_AFTER))


class WebhookDriver(base.Driver):
    """POSTs each alert as JSON to a URL."""

    OPTS = [
        cfg.StrOpt('url',
                   secret=True,
                   help='Where the alerts are POSTed (http:// or https://). '
                        'Required. Secret, as its query string may hold a '
                        'token: log lines show it without one.'),
        cfg.StrOpt('secret',
                   secret=True,
                   help='Shared secret: each request is signed with '
                        'HMAC-SHA256 (X-Nova-Error-Notifier-Signature).'),
        cfg.FloatOpt('timeout',
                     default=10.0,
                     min=0.1,
                     help='Seconds to wait for the receiver.'),
        cfg.StrOpt('body_template',
                   help='Path of a Jinja2 template rendering the JSON body '
                        'instead of the default version 1 document (for '
                        'Slack, Mattermost or Teams style receivers). Its '
                        'context: "body" (the version 1 document), "alert" '
                        '(its first alert), "receiver" and "region".'),
        cfg.DictOpt('headers',
                    default={},
                    secret=True,
                    help='Extra static headers, e.g. '
                         '"Authorization:Bearer abc". Never logged.'),
        cfg.StrOpt('cafile',
                   help='CA bundle to verify the receiver\'s certificate '
                        'with. Default: the system\'s.'),
        cfg.StrOpt('certfile',
                   help='Client certificate (PEM) to present.'),
        cfg.StrOpt('keyfile',
                   help='Key of certfile, if not in the same file.'),
        cfg.BoolOpt('insecure',
                    default=False,
                    help='Do not verify the receiver\'s certificate.'),
    ]

    def __init__(self, conf, receiver):
        super().__init__(conf, receiver)
        self._session = None
        self._template = None
        self._secrets = None
        if not any(isinstance(f, _QueryRedactor)
                   for f in _URLLIB3_LOG.filters):
            _URLLIB3_LOG.addFilter(_QueryRedactor())
        self.secrets()

    def secrets(self):
        """What must never be shown, longest first.

        The URL's password (or its user name when it has no password) and
        query values, the signing secret and the header values.
        """
        if self._secrets is None:
            options = self.options
            strict, loose = [], []
            try:
                parts = parse.urlsplit(options.url or '')
                if parts.password:
                    strict.append(parts.password)
                elif parts.username:
                    # https://TOKEN@host/: the user name is the secret.
                    strict.append(parts.username)
                loose.extend(value for _, value in parse.parse_qsl(
                    parts.query, keep_blank_values=False))
                loose.extend(parts.query.split('&'))
            except ValueError:
                pass
            if options.secret:
                strict.append(options.secret)
            for value in (options.headers or {}).values():
                loose.append(value)
                # "Bearer abc123": the token on its own too.
                loose.extend(value.split()[1:])
            found = set()
            for value in strict:
                found.update(v for v in (value, parse.unquote(value)) if v)
            for value in loose:
                found.update(v for v in (value, parse.unquote(value))
                             if len(v) >= MIN_LOOSE_SECRET)
            self._secrets = sorted(found, key=len, reverse=True)
            with _KNOWN_SECRETS_LOCK:
                _KNOWN_SECRETS.update(self._secrets)
        return self._secrets

    def scrub(self, text, limit=300):
        """``text`` with no secret of the receiver in it, on one line.

        Every URL's user information and query values are masked, query
        strings cut, and the receiver's secrets replaced wherever they
        appear (also percent-encoded or decoded).
        """
        text = redact.text(str(text), self.secrets())
        # "scheme://TOKEN@host" has no password for redact to mask.
        text = _USERINFO_RE.sub(r'\g<scheme>***@', text)
        return logsafe.escape(_QUERY_RE.sub('?...', text), limit)

    def check(self):
        options = self.options
        problems = []
        if not options.url:
            problems.append('url is not set')
        else:
            try:
                parts = parse.urlsplit(options.url)
                usable = parts.scheme in ('http', 'https') and \
                    bool(parts.hostname)
                parts.port     # raises for a port out of range
            except ValueError:
                usable = False
            if not usable:
                problems.append('url %s is not an http:// or https:// URL'
                                % safe_url(options.url))
        for key in ('cafile', 'certfile', 'keyfile', 'body_template'):
            path = options[key]
            if path and not os.path.isfile(path):
                problems.append('%s %s does not exist' % (key, path))
        if options.keyfile and not options.certfile:
            problems.append('keyfile needs certfile')
        for name in options.headers:
            if not name or any(c in name for c in ' :\r\n') or \
                    any(c in options.headers[name] for c in '\r\n'):
                problems.append('headers: %r is not a valid header'
                                % logsafe.escape(name, 60))
        if not problems and options.body_template:
            problems.extend(self._check_template(options.body_template))
        if problems:
            raise base.DriverConfigError(
                '; '.join(self.scrub(p, None) for p in problems))

    def _check_template(self, path):
        """Render the template with the sample, then a hostile alert."""
        try:
            self._template = formatting.load_template(path, formatting.JSON)
            self._render(alert_mod.sample(self.receiver))
        except jinja2.TemplateError as exc:
            return ['body_template %s: %s: %s' % (
                path, type(exc).__name__, exc)]
        except (base.DriverError, OSError) as exc:
            return ['body_template %s: %s' % (path, exc)]
        try:
            body = json.loads(self._render(
                formatting.hostile_sample(self.receiver)))
        except (jinja2.TemplateError, base.DriverError) as exc:
            return ['body_template %s, with an alert whose Nova values hold '
                    'quotes, backslashes, brackets and control characters: '
                    '%s' % (path, exc)]
        if any(formatting.HOSTILE_MARK in key for key in _keys(body)):
            return ['body_template %s: a Nova value becomes a key of the '
                    'body: keys must be the template\'s own text' % path]
        return []

    @property
    def session(self):
        if self._session is None:
            options = self.options
            verify = False if options.insecure else (options.cafile or True)
            cert = None
            if options.certfile:
                cert = ((options.certfile, options.keyfile)
                        if options.keyfile else options.certfile)
            self._session = ks_session.Session(
                verify=verify, cert=cert, timeout=options.timeout,
                user_agent=formatting.user_agent())
        return self._session

    def _render(self, alert):
        """The request body (bytes) for ``alert``.

        :raises DriverError: (not retryable) when the template fails or
            its output is not JSON.
        """
        region = formatting.alert_region(alert, self.conf.region_name)
        document = body_document([alert], self.receiver, region)
        if self._template is None:
            return json.dumps(document, ensure_ascii=False,
                              sort_keys=True).encode('utf-8')
        try:
            text = self._template.render(body=document,
                                         alert=document['alerts'][0],
                                         receiver=self.receiver,
                                         region=region)
        except jinja2.TemplateError as exc:
            raise base.DriverError('body_template failed: %s: %s'
                                   % (type(exc).__name__, exc))
        try:
            json.loads(text)
        except ValueError as exc:
            # Where it broke, not what the body holds (Nova's values).
            raise base.DriverError(
                'body_template did not render JSON (%s): a value printed '
                'outside quotes? Print strings inside quotes ("{{ x }}") or '
                'as {{ x | tojson }}' % _json_error(exc), retryable=False)
        return text.encode('utf-8')

    def headers(self, alert, body, now=None):
        headers = dict(self.options.headers)
        headers['Content-Type'] = 'application/json'
        headers[IDEMPOTENCY_HEADER] = idempotency_key(alert, self.receiver)
        secret = self.options.secret
        if secret:
            timestamp = int(time.time() if now is None else now)
            headers[TIMESTAMP_HEADER] = str(timestamp)
            headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
        return headers

    def notify(self, alert):
        """One attempt; every error's text is scrubbed of secrets."""
        try:
            self._post(alert)
        except base.DriverError as exc:
            raise base.DriverError(self.scrub(exc), retryable=exc.retryable,
                                   retry_after=exc.retry_after) from None
        except Exception as exc:
            # Not left to the caller: its traceback would show the URL.
            raise base.DriverError('POST %s: %s: %s' % (
                safe_url(self.options.url), type(exc).__name__,
                self.scrub(exc)), retryable=True) from None

    def _post(self, alert):
        body = self._render(alert)
        headers = self.headers(alert, body)
        url = self.options.url
        where = safe_url(url)
        try:
            response = self.session.post(
                url, data=body, headers=headers, authenticated=False,
                raise_exc=False, redirect=False, logger=_HTTP_LOG)
        except ks_exc.SSLError as exc:
            raise base.DriverError('POST %s: TLS failed: %s' % (
                where, exc), retryable=False)
        except (ks_exc.ConnectFailure, ks_exc.ConnectTimeout,
                ks_exc.RequestTimeout, ks_exc.UnknownConnectionError) as exc:
            raise base.DriverError('POST %s: %s: %s' % (
                where, type(exc).__name__, exc), retryable=True)
        status = response.status_code
        if 200 <= status < 300:
            return
        retryable = status >= 500 or status in RETRYABLE_STATUS
        retry_after = (parse_retry_after(response.headers.get('Retry-After'))
                       if retryable else None)
        raise base.DriverError(
            'POST %s answered HTTP %d %s%s' % (
                where, status, logsafe.escape(response.reason or '', 80),
                ' (Retry-After %ss)' % retry_after
                if retry_after is not None else ''),
            retryable=retryable, retry_after=retry_after)


def _json_error(exc):
    """Where a body failed to parse (never its text)."""
    if isinstance(exc, json.JSONDecodeError):
        return '%s at line %d column %d' % (exc.msg, exc.lineno, exc.colno)
    return type(exc).__name__


def list_opts():
    return list(WebhookDriver.OPTS)
