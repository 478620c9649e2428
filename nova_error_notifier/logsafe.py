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
"""Make untrusted strings safe to put on one log line.

Instance names, exception messages and event types come from the bus. A
newline or an ANSI escape in them must not forge or garble a log line, so
every value that reaches a log line goes through :func:`escape`.
"""

import logging
import re
import sys

# C0 and C1 control characters, DEL, the Unicode line/paragraph separators
# that some log viewers treat as line breaks, and the invisible format
# characters (zero-width, bidirectional overrides and isolates) that can make
# a line display differently from what it says.
_UNSAFE_RE = re.compile('[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e'
                        '\u2060-\u2069\ufeff]')
_QUOTE_RE = re.compile(r'[\s"\\=]')
_NAMED = {'\n': '\\n', '\r': '\\r', '\t': '\\t'}


def _replace(match):
    char = match.group(0)
    named = _NAMED.get(char)
    if named:
        return named
    code = ord(char)
    if code <= 0xff:
        return '\\x%02x' % code
    return '\\u%04x' % code


def _text(value, limit):
    value = str(value)
    if limit is not None and len(value) > limit:
        value = value[:limit] + '...'
    if not value.isascii():
        # Lone surrogates cannot be written to a UTF-8 log file.
        value = value.encode('utf-8', 'replace').decode('utf-8')
    return value


def escape(value, limit=None):
    """Return ``value`` as a single-line string with controls escaped."""
    if value is None:
        return '-'
    return _UNSAFE_RE.sub(_replace, _text(value, limit))


def quote(value, limit=None):
    """Like :func:`escape`, quoted where needed.

    Values holding spaces, quotes, backslashes, '=' or control characters
    are quoted, so that every ``key=value`` pair of a line can be read back
    unambiguously.
    """
    if value is None:
        return '-'
    value = _text(value, limit)
    if value and not _QUOTE_RE.search(value) and \
            not _UNSAFE_RE.search(value):
        return value
    value = value.replace('\\', '\\\\').replace('"', '\\"')
    return '"%s"' % _UNSAFE_RE.sub(_replace, value)


def pairs(items, limit=None):
    """Format ``(key, value)`` pairs as ``key=value`` with safe values."""
    return ' '.join('%s=%s' % (key, quote(value, limit))
                    for key, value in items)


def protect_handlers():
    """Make the root logger's streams write what their encoding cannot.

    Python opens log files in the locale's encoding. Under a non-UTF-8
    locale an instance name in another script would raise in the handler,
    which prints a traceback to stderr and loses the line: replace such
    characters with escapes instead.
    """
    streams = [sys.stdout, sys.stderr]
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.errors = 'backslashreplace'   # used when it reopens
        streams.append(getattr(handler, 'stream', None))
    for stream in streams:
        reconfigure = getattr(stream, 'reconfigure', None)
        if reconfigure is not None:
            try:
                reconfigure(errors='backslashreplace')
            except (ValueError, OSError):
                pass
