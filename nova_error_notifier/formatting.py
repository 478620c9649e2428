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
"""Turning an alert into text: what every driver shares.

Every value of an :class:`~nova_error_notifier.alert.Alert` may come from a
tenant (an instance is named by its owner) or from Nova's messages, so
nothing here prints a value as it is:

* words: :func:`summary` (``build of web-01 (b5e2c3f4…) failed``),
  :func:`next_steps` (the commands an operator runs next),
  :func:`alert_region` (the region an alert shows);
* timestamps: :func:`iso_timestamp` (machine-readable) and
  :func:`readable_timestamp` (for people);
* escaping: :func:`clean_header` (one line a mail header or a chat title
  can hold), :func:`text_block` and :func:`html_block` (multi-line values
  whose lines all start with fixed text), :func:`display_copy` (the alert
  with every text field made safe), :func:`json_string_content` and
  :func:`json_value` (values inside a JSON document), :func:`encodable`;
* templates: :class:`Environment`, the one sandboxed Jinja2 environment
  every alert template runs in (kinds :data:`TEXT`, :data:`HTML` and
  :data:`JSON`), :func:`load_template`, :func:`template_context` and
  :func:`hostile_sample`, an alert to check templates with.

For example, a third-party driver rendering its own text template::

    from nova_error_notifier import formatting

    env = formatting.Environment(formatting.TEXT, ['/etc/my-driver'])
    text = env.get_template('page.txt').render(
        formatting.template_context(formatting.display_copy(alert), region))
"""

import collections.abc
import dataclasses
import math
import os
import re

import jinja2
from jinja2 import sandbox
import markupsafe

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import logsafe
from nova_error_notifier import record as rec
from nova_error_notifier import version

#: Longest line :func:`clean_header` returns by default (a mail subject).
MAX_SUBJECT = 200
#: Longest instance name in a summary: a subject keeps room for the
#: instance's short uuid and what failed.
MAX_SUMMARY_NAME = 64
#: Start of every line of a multi-line value in plain text.
BLOCK_PREFIX = '  | '

# What never reaches a header: controls, format characters (zero-width,
# bidirectional), line and paragraph separators (logsafe's class) and lone
# surrogates, which cannot be encoded.
_HEADER_UNSAFE_RE = re.compile(logsafe.char_class(
    logsafe.UNSAFE_RANGES + ((0xd800, 0xdfff),)) + '+')


# -- summaries and next steps ------------------------------------------------

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


def _bounded(name):
    if len(name) > MAX_SUMMARY_NAME:
        return name[:MAX_SUMMARY_NAME - 1] + '\u2026'
    return name


def summary(alert):
    """``build of web-01 (b5e2c3f4…) failed`` and the like.

    The text holds the alert's values as they are: escape it for where it
    goes (or summarise a :func:`display_copy`).
    """
    if alert.instance_uuid:
        target = ('%s (%s)' % (_bounded(alert.instance_name), _short(
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


def next_steps(alert):
    """The commands an operator runs next, as a list of strings."""
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


def alert_region(alert, default=None):
    """The region an alert shows: its bus's, else ``default``.

    ``default`` is the deployment's (``[DEFAULT] region_name``) for the
    drivers that showed one before there were several buses. The text is
    as configured: escape it for where it goes (:func:`template_context`
    makes it one clean line).
    """
    return alert.region or default or None


# -- timestamps --------------------------------------------------------------

def iso_timestamp(stamp):
    """``2026-10-02T14:06:15.220000Z``, or None without a timestamp."""
    return stamp.strftime('%Y-%m-%dT%H:%M:%S.%fZ') if stamp else None


def readable_timestamp(stamp):
    """``2026-10-02 14:06:15 UTC``, or ``-`` without a timestamp."""
    return stamp.strftime('%Y-%m-%d %H:%M:%S UTC') if stamp else '-'


# -- escaping ----------------------------------------------------------------

def encodable(text):
    """``text`` with anything UTF-8 cannot encode (lone surrogates) as '?'."""
    return text.encode('utf-8', 'replace').decode('utf-8')


def clean_header(value, limit=MAX_SUBJECT):
    """One line of plain text, safe in a header, whatever Python folds it.

    Controls, format characters, line and paragraph separators and lone
    surrogates become spaces; "=?" and "?=" are split by a space, so that
    no RFC 2047 encoded word can be recognised (and decoded into a line
    break by the standard library); white space is collapsed and the
    result cut to ``limit`` characters.
    """
    value = '' if value is None else str(value)
    value = _HEADER_UNSAFE_RE.sub(' ', value)
    value = value.replace('=?', '= ?').replace('?=', '? =')
    value = ' '.join(value.split())
    if len(value) > limit:
        value = value[:limit - 1].rstrip() + '\u2026'
    return value


def header_safe(value):
    """True if ``value`` holds no character :func:`clean_header` removes."""
    return not _HEADER_UNSAFE_RE.search(str(value))


def _lines(value):
    """The lines of a multi-line value, without trailing empty ones.

    Every line break Python knows splits (CR, LF, VT, FF, NEL, U+2028...):
    whatever a reader takes for a line break starts a new, prefixed line.
    """
    lines = str(value).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def text_block(value):
    """A multi-line value for plain text: escaped, every line prefixed.

    Each line is escaped (:func:`logsafe.escape`) and starts with
    :data:`BLOCK_PREFIX`, so that no line of the text begins with a value.
    """
    return '\n'.join(BLOCK_PREFIX + logsafe.escape(line)
                     for line in _lines(value))


def html_block(value):
    """A multi-line value for HTML, as markup on one source line.

    The line breaks are written ``&#10;`` (a line break in ``<pre>``), so
    that no physical line of the HTML source begins with the value.
    """
    return markupsafe.Markup('&#10;').join(
        markupsafe.escape(logsafe.escape(line)) for line in _lines(value))


def _apply(value, transform):
    if isinstance(value, str):
        return transform(value)
    if isinstance(value, tuple):
        return tuple(_apply(v, transform) for v in value)
    return value


# Multi-line values of the enrichment: (parent key, key).
_ENRICHMENT_BLOCKS = frozenset([('fault', 'details'),
                                ('events', 'traceback')])


def _copy_data(value, transform, block, path=()):
    """Nested enrichment data with every string made safe."""
    if isinstance(value, dict):
        return {(transform(k) if isinstance(k, str) else k):
                _copy_data(v, transform, block, path + (k,))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy_data(v, transform, block, path) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if tuple(path[-2:]) in _ENRICHMENT_BLOCKS:
        return block(str(value))
    return transform(str(value))


def display_copy(alert, transform=logsafe.escape, block=text_block):
    """The alert with every text field made safe to show.

    ``transform`` is applied to every single-line text field, ``block`` to
    the multi-line ones (the details, the enrichment's fault details and
    event tracebacks); the enrichment's strings go through them too. By
    default values are escaped and the lines of multi-line values prefixed
    with :data:`BLOCK_PREFIX`, for plain text. Digest members are left as
    they are: make a copy of each.
    """
    changes = {}
    for field in dataclasses.fields(alert):
        value = getattr(alert, field.name)
        if field.name == 'members':
            continue
        if field.name == 'details':
            if value:
                changes['details'] = block(value)
        elif field.name == 'enrichment':
            if value is not None:
                changes['enrichment'] = _copy_data(value, transform, block)
        elif isinstance(value, (str, tuple)):
            changes[field.name] = _apply(value, transform)
    return dataclasses.replace(alert, **changes)


# What a printed string may keep as it is: it can neither end a JSON string
# (quote, backslash), nor, outside one, build a structure (the JSON
# punctuation), nor hide (controls, invisible and separator characters, which
# logsafe knows). Everything else becomes a \uXXXX escape, which a template's
# own backslash before the value cannot turn into a closing quote either.
_JSON_UNSAFE_RE = re.compile('["\\\\{}\\[\\],:]|%s' % logsafe.UNSAFE_CLASS)


def _json_escape(match):
    char = match.group(0)
    code = ord(char)
    if code <= 0xffff:
        return '\\u%04x' % code
    code -= 0x10000          # a surrogate pair, as JSON spells it
    return '\\u%04x\\u%04x' % (0xd800 + (code >> 10), 0xdc00 + (code & 0x3ff))


def json_string_content(value):
    """``value`` as the content of a JSON string (no quotes around it).

    Quotes, backslashes, ``{}[],:`` and every control or invisible
    character are ``\\uXXXX`` escapes: the result cannot end the string it
    is put in, nor add anything to the document when put outside one.
    """
    text = str(value)
    if not text.isascii():
        # Lone surrogates are no text: replace them.
        text = encodable(text)
    return _JSON_UNSAFE_RE.sub(_json_escape, text)


class JSONText(str):
    """A complete JSON value made by the ``tojson`` filter.

    Only this filter makes one; any operation that changes it
    (concatenation, slicing, other filters) gives a plain string again,
    which is encoded.
    """


def json_value(value):
    """``value`` as a JSON document, strings encoded as above."""
    if isinstance(value, JSONText):
        return str(value)
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value)) if math.isfinite(value) else 'null'
    if isinstance(value, collections.abc.Mapping):
        return '{%s}' % ', '.join(
            '"%s": %s' % (json_string_content(key), json_value(item))
            for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return '[%s]' % ', '.join(json_value(item) for item in value)
    return '"%s"' % json_string_content(value)


# -- templates ---------------------------------------------------------------

#: Plain text: values printed as they are (escape them beforehand, see
#: :func:`display_copy`); a template's trailing newline is kept.
TEXT = 'text'
#: HTML: every value autoescaped.
HTML = 'html'
#: JSON: every value JSON-encoded (see :class:`Environment`).
JSON = 'json'
KINDS = (TEXT, HTML, JSON)


def _upper_first(value):
    value = str(value)
    return value[:1].upper() + value[1:]


def _json_finalize(value):
    """What ``{{ value }}`` prints in JSON: never raw text from a value."""
    if isinstance(value, str) and not isinstance(value, JSONText):
        return json_string_content(value)      # Markup too: no bypass
    if isinstance(value, jinja2.Undefined):
        return json_string_content(value)      # StrictUndefined raises
    return json_value(value)


def _tojson(value, indent=None):
    """The ``tojson`` filter: a complete JSON value (``indent`` ignored)."""
    return JSONText(json_value(value))


def _safe(value):
    """The ``safe`` filter: marks nothing safe (``tojson | safe`` works)."""
    return value if isinstance(value, JSONText) else str(value)


class Environment(sandbox.SandboxedEnvironment):
    """The sandboxed Jinja2 environment every alert template runs in.

    Templates are the operator's, the values they print Nova's. The
    sandbox keeps a template away from Python's internals (a
    ``SecurityError``), and an undefined name raises (``StrictUndefined``),
    so that a typo fails when the template is checked at start-up, not at
    the first alert. What ``{{ ... }}`` prints depends on ``kind``:

    * :data:`TEXT`: the value as it is, so pass values escaped
      (:func:`display_copy`); the filter ``upper_first`` is there;
    * :data:`HTML`: the value autoescaped; ``upper_first`` too;
    * :data:`JSON`: the value JSON-encoded: a string prints as the content
      of a JSON string (:func:`json_string_content`), so that ``"name":
      "{{ alert.instance.name }}"`` stays one string whatever the name;
      numbers, booleans and None as JSON literals, dicts and lists as JSON;
      ``{{ value | tojson }}`` prints a complete JSON value (quotes
      included), to be used outside quotes; ``| safe`` or any other filter
      cannot make a value skip the encoding.

    :param kind: :data:`TEXT`, :data:`HTML` or :data:`JSON`.
    :param directories: where templates are looked up, first match wins.
    """

    def __init__(self, kind, directories):
        if kind not in KINDS:
            raise ValueError('template kind %r is not one of %s'
                             % (kind, ', '.join(KINDS)))
        options = dict(loader=jinja2.FileSystemLoader(list(directories)),
                       undefined=jinja2.StrictUndefined,
                       autoescape=kind == HTML)
        if kind == TEXT:
            options['keep_trailing_newline'] = True
        if kind == JSON:
            options['finalize'] = _json_finalize
        super().__init__(**options)
        self.kind = kind
        if kind == JSON:
            self.filters['tojson'] = _tojson
            self.filters['safe'] = _safe
        else:
            self.filters['upper_first'] = _upper_first


def load_template(path, kind):
    """The template in the file ``path``, in a new :class:`Environment`.

    :raises jinja2.TemplateError: when it cannot be read or parsed.
    """
    directory, name = os.path.split(os.path.abspath(path))
    return Environment(kind, [directory]).get_template(name)


def version_string():
    """The version of nova-error-notifier, as alerts show it."""
    return version.version_string()


def user_agent():
    """``nova-error-notifier/<version>``, for HTTP requests."""
    return 'nova-error-notifier/%s' % version_string()


def template_context(alert, region):
    """The variables of an alert template.

    ``alert`` (as given: pass a :func:`display_copy`), ``region`` (one
    clean line), ``summary``, ``first_seen`` and ``last_seen``
    (:func:`readable_timestamp`), ``next_steps`` and ``version``.
    """
    return {
        'alert': alert,
        'region': clean_header(region or '', 64),
        'summary': alert.summary if alert.is_digest else summary(alert),
        'first_seen': readable_timestamp(alert.first_seen),
        'last_seen': readable_timestamp(alert.last_seen),
        'next_steps': next_steps(alert),
        'version': version_string(),
    }


#: A marker in every string of the hostile sample alert: a key of a rendered
#: JSON document holding it came from a Nova value.
HOSTILE_MARK = 'nen-hostile'
#: Every text of the hostile sample: quotes, backslashes, JSON punctuation,
#: line breaks, controls, invisible characters and template syntax.
HOSTILE_TEXT = ('%s", "%s-key": "x\\" \\\\ }]{[,: \n\r\t\x00\x1b[2J '
                '\u2028\u2029\u202e\u200b {{ 7 * 7 }} </script>'
                % (HOSTILE_MARK, HOSTILE_MARK))
#: Fields of the sample alert that stay as they are (ids a document does not
#: show as text, timestamps).
_KEEP_FIELDS = frozenset(('receiver', 'first_seen', 'last_seen', 'members',
                          'test', 'enriched', 'count', 'code',
                          'digest_count'))


def _hostile(value):
    if isinstance(value, str):
        return HOSTILE_TEXT
    if isinstance(value, dict):
        return {key: _hostile(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_hostile(item) for item in value)
    return value


def hostile_sample(receiver):
    """The sample alert (:func:`alert.sample`) with every text hostile.

    Every string a Nova value could be is :data:`HOSTILE_TEXT`: a template
    that renders it as intended renders any alert.
    """
    sample = alert_mod.sample(receiver)
    changes = {}
    for field in dataclasses.fields(sample):
        if field.name not in _KEEP_FIELDS:
            changes[field.name] = _hostile(getattr(sample, field.name))
    return dataclasses.replace(sample, **changes)
