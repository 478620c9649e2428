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
"""Credentials out of URLs and texts, before they are shown anywhere.

Database and transport URLs carry passwords (``mysql+pymysql://user:pw@db/``,
``rabbit://nova:pw@ctl:5672/``) and sometimes secrets in their query string
(``?ssl_key_password=...``); error messages of database drivers and HTTP
libraries repeat the URL they failed on. Whatever prints, logs or stores a
URL or such a message passes it through :func:`url` or :func:`text` first.
"""

import logging
import re
import sys
from urllib import parse

MASK = '***'

#: Query parameters shown as they are: they configure, they never hold
#: credentials. Every other parameter's value is masked.
HARMLESS_QUERY_KEYS = frozenset((
    'charset', 'client_encoding', 'connect_timeout', 'application_name',
    'sslmode', 'ssl', 'ssl_ca', 'ssl_check_hostname', 'ssl_verify_cert',
    'read_default_group', 'plugin', 'binary_prefix', 'heartbeat',
    'heartbeat_interval', 'timeout', 'max_retries', 'ssl_version',
    'kombu_compression', 'amqp_durable_queues'))

# user:password@ after "scheme://", or after "," in a list of hosts
# (rabbit://a:pw@h1,b:pw@h2/); the password may hold anything but '@', '/'.
_USERINFO_RE = re.compile(
    r'(?P<pre>[A-Za-z][A-Za-z0-9+.-]*://|,)(?P<user>[^\s:/@,\'"]*):'
    r'(?P<password>[^\s@/\'"]*)@')
_QUERY_RE = re.compile(r'(?P<key>[?&;][^=&;#\s\'"]+)=(?P<value>[^&;#\s\'"]*)')


def _mask_userinfo(match):
    return '%s%s:%s@' % (match.group('pre'), match.group('user'), MASK)


def _mask_query_match(match):
    key = match.group('key')
    if key[1:].lower() in HARMLESS_QUERY_KEYS:
        return match.group(0)
    return '%s=%s' % (key, MASK)


def url(value):
    """``value`` with the password and the query's secrets masked.

    ``mysql+pymysql://nova:pw@db/x?charset=utf8&ssl_key=k`` becomes
    ``mysql+pymysql://nova:***@db/x?charset=utf8&ssl_key=***``; every
    host of a multi-host URL is masked.
    """
    if value is None:
        return None
    value = str(value)
    head, sep, query = value.partition('?')
    head = _USERINFO_RE.sub(_mask_userinfo, head)
    if sep:
        query = _QUERY_RE.sub(_mask_query_match, '?' + query)[1:]
    return head + sep + query


def text(value, secrets=()):
    """A message with every URL's password and query values masked.

    :param secrets: strings (passwords, tokens) to mask wherever they
        appear, also percent-encoded.
    """
    if value is None:
        return None
    value = str(value)
    for secret in secrets:
        if not secret or len(secret) < 3:
            continue
        for form in {secret, parse.quote(secret, safe=''),
                     parse.unquote(secret)}:
            if form:
                value = value.replace(form, MASK)
    if '@' in value:
        value = _USERINFO_RE.sub(_mask_userinfo, value)
    if '://' in value and '=' in value:
        value = _QUERY_RE.sub(_mask_query_match, value)
    return value


def url_secrets(value):
    """The password and query values of a URL: what :func:`text` masks."""
    found = []
    try:
        parts = parse.urlsplit(value or '')
    except ValueError:
        return found
    if parts.password:
        found.append(parts.password)
    for key, item in parse.parse_qsl(parts.query, keep_blank_values=False):
        if key.lower() not in HARMLESS_QUERY_KEYS:
            found.append(item)
    return found


#: Options whose values (and URL passwords and query values) are masked
#: in every log line, whichever library writes it.
SECRET_OPTIONS = (
    (None, 'transport_url'),
    ('oslo_messaging_notifications', 'transport_url'),
    ('database', 'connection'),
    ('database', 'slave_connection'),
    ('delivery', 'connection'),
    ('email', 'smtp_password'),
    ('service_credentials', 'password'),
)

#: Options of the operator's own sections, by prefix of the section:
#: every ``[bus:NAME]`` transport URL.
SECRET_SECTION_OPTIONS = (
    ('bus:', 'transport_url'),
)


def _secret_options(conf):
    """(group, name) of every secret option, the sections' included."""
    found = list(SECRET_OPTIONS)
    try:
        sections = conf.list_all_sections()
    except Exception:       # not parsed yet
        sections = ()
    for prefix, name in SECRET_SECTION_OPTIONS:
        found.extend((section, name) for section in sorted(sections)
                     if section.startswith(prefix))
    return found


def conf_secrets(conf):
    """The secrets of the service's own options (see SECRET_OPTIONS).

    With those of the sections of :data:`SECRET_SECTION_OPTIONS` whose
    options are registered.
    """
    found = []
    for group, name in _secret_options(conf):
        try:
            value = conf[group][name] if group else conf[name]
        except Exception:       # not registered in this command
            continue
        if not value or not isinstance(value, str):
            continue
        if '://' in value:
            found.extend(url_secrets(value))
        else:
            found.append(value)
    return [s for s in found if s and len(s) >= 3]


class LogFilter(logging.Filter):
    """Masks URL credentials and known secrets in every log record.

    Installed on the root logger's handlers, so that it also covers
    libraries that log a URL themselves (oslo.db warns about a URL without
    a driver name, with its query string).
    """

    def __init__(self, secrets=()):
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record):
        try:
            message = record.getMessage()
        except Exception:
            return True
        cleaned = text(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        # A traceback (LOG.exception) ends with the exception's message, and
        # oslo.log appends the summary of the exception being handled to
        # any WARNING or worse line logged in an except block: either may
        # repeat a URL or a password. The exception is replaced by a copy
        # with its message masked (and without its chain).
        exc_info = record.exc_info
        if not exc_info and record.levelno >= logging.WARNING:
            active = sys.exc_info()
            if active[0] is not None:
                masked = _masked_exception(active[1], self.secrets)
                if masked is not None:
                    record.exc_info = (type(masked), masked, None)
        elif exc_info and exc_info[0] is not None:
            masked = _masked_exception(exc_info[1], self.secrets)
            if masked is not None:
                record.exc_info = (type(masked), masked, exc_info[2])
                record.exc_text = None
        return True


def _masked_exception(exc, secrets):
    """A stand-in for ``exc`` with its message masked, or None if clean."""
    try:
        message = str(exc)
    except Exception:
        return None
    chained = exc.__cause__ or exc.__context__
    cleaned = text(message, secrets)
    if cleaned == message and chained is None:
        return None
    if cleaned == message and chained is not None:
        try:
            if text(str(chained), secrets) == str(chained):
                return None
        except Exception:
            pass
    kind = type(exc)
    stand_in = type(kind.__name__, (Exception,), {
        '__module__': kind.__module__, '__qualname__': kind.__qualname__})
    return stand_in(cleaned)


_FORMATTER = logging.Formatter()


def protect_logs(conf):
    """Install :class:`LogFilter` on every handler of the root logger."""
    scrubber = LogFilter(conf_secrets(conf))
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, LogFilter)]:
            handler.removeFilter(old)
        handler.addFilter(scrubber)
    return scrubber


def refresh(conf):
    """Add the secrets of options registered since :func:`protect_logs`.

    The ``[bus:NAME]`` groups are registered once the configuration is
    read; the filters already installed learn their URLs' secrets. Installs
    nothing where :func:`protect_logs` was not called.
    """
    secrets = conf_secrets(conf)
    for handler in logging.getLogger().handlers:
        for scrubber in handler.filters:
            if isinstance(scrubber, LogFilter):
                scrubber.secrets = sorted(
                    set(scrubber.secrets) | set(secrets), key=len,
                    reverse=True)
