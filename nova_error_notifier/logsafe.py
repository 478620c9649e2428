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

# Every character of the Unicode categories Cc (C0 and C1 controls, DEL),
# Cf (invisible format characters: soft hyphen, zero-width characters,
# bidirectional marks, overrides and isolates, the Arabic and Syriac
# number signs, interlinear annotation, the tag characters...), Zl and Zp
# (the line and paragraph separators that some viewers treat as line
# breaks). A newline must not forge a line, and an invisible character must
# not make a line display differently from what it says.
#
# The ranges are written out (no walk over every code point at import):
# they cover those categories up to Unicode 15.1, and
# tests/unit/test_logsafe.py checks them against the running Python's
# unicodedata. A range may hold a few unassigned code points around the
# format characters (U+2065, U+E0000, U+E0002-U+E001F): they are never text.
UNSAFE_RANGES = (
    (0x0000, 0x001f),     # C0 controls
    (0x007f, 0x009f),     # DEL, C1 controls (NEL...)
    (0x00ad, 0x00ad),     # soft hyphen
    (0x0600, 0x0605),     # Arabic number signs
    (0x061c, 0x061c),     # Arabic letter mark
    (0x06dd, 0x06dd),     # Arabic end of ayah
    (0x070f, 0x070f),     # Syriac abbreviation mark
    (0x0890, 0x0891),     # Arabic pound and piastre marks above
    (0x08e2, 0x08e2),     # Arabic disputed end of ayah
    (0x180e, 0x180e),     # Mongolian vowel separator
    (0x200b, 0x200f),     # zero-width space/(non-)joiner, LRM, RLM
    (0x2028, 0x202e),     # line/paragraph separators, bidi embeddings
    (0x2060, 0x206f),     # word joiner, invisible operators, isolates
    (0xfeff, 0xfeff),     # zero-width no-break space (BOM)
    (0xfff9, 0xfffb),     # interlinear annotation
    (0x110bd, 0x110bd),   # Kaithi number sign
    (0x110cd, 0x110cd),   # Kaithi number sign above
    (0x13430, 0x1343f),   # Egyptian hieroglyph format controls
    (0x1bca0, 0x1bca3),   # shorthand format controls
    (0x1d173, 0x1d17a),   # musical symbol beam, tie, slur, phrase
    (0xe0000, 0xe007f),   # tag characters
)


def char_class(ranges):
    """A regular expression character class (``[...]``) of code points.

    :param ranges: (first, last) pairs of code points, both included.
    """
    return '[%s]' % ''.join(
        '\\U%08x' % first if first == last else
        '\\U%08x-\\U%08x' % (first, last) for first, last in ranges)


#: The class of every unsafe character, as a regular expression.
UNSAFE_CLASS = char_class(UNSAFE_RANGES)
_UNSAFE_RE = re.compile(UNSAFE_CLASS)
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
    if code <= 0xffff:
        return '\\u%04x' % code
    return '\\U%08x' % code


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
