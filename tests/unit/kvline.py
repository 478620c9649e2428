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
"""A strict reader of ``key=value`` / ``key="..."`` log lines, for tests.

It reads back what :func:`nova_error_notifier.logsafe.pairs` writes: bare
values run to the next space and hold no quote, backslash, ``=`` or
whitespace; quoted values use the escapes ``\\\\``, ``\\"``, ``\\n``,
``\\r``, ``\\t``, ``\\xHH`` and ``\\uHHHH``. Anything else raises
``ValueError``, so a forged pair or a stray character cannot slip through.
"""

import string

ALERT_PREFIX = 'nova-error-notifier alert '

_KEY_CHARS = frozenset(string.ascii_letters + string.digits + '_')
_SIMPLE_ESCAPES = {'\\': '\\', '"': '"', 'n': '\n', 'r': '\r', 't': '\t'}


def _quoted(line, pos):
    """Decode the quoted value starting after the quote at ``pos - 1``."""
    out = []
    while True:
        if pos >= len(line):
            raise ValueError('unterminated quoted value in %r' % line)
        char = line[pos]
        if char == '"':
            return ''.join(out), pos + 1
        if char != '\\':
            out.append(char)
            pos += 1
            continue
        code = line[pos + 1:pos + 2]
        if code in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[code])
            pos += 2
        elif code in ('x', 'u'):
            width = 2 if code == 'x' else 4
            digits = line[pos + 2:pos + 2 + width]
            if len(digits) != width or not all(
                    d in string.hexdigits for d in digits):
                raise ValueError('bad \\%s escape at %d in %r'
                                 % (code, pos, line))
            out.append(chr(int(digits, 16)))
            pos += 2 + width
        else:
            raise ValueError('unknown escape %r at %d in %r'
                             % (code, pos, line))


def parse_pairs(line):
    """Return the ``(key, value)`` pairs of ``line``, in order."""
    pairs = []
    pos = 0
    while pos < len(line):
        start = pos
        while pos < len(line) and line[pos] in _KEY_CHARS:
            pos += 1
        if pos == start or line[pos:pos + 1] != '=':
            raise ValueError('expected key= at %d in %r' % (start, line))
        key = line[start:pos]
        pos += 1
        if line[pos:pos + 1] == '"':
            value, pos = _quoted(line, pos + 1)
        else:
            end = pos
            while end < len(line) and line[end] != ' ':
                end += 1
            value = line[pos:end]
            if any(c in value for c in '"\\=') or any(
                    c.isspace() for c in value):
                raise ValueError('unsafe bare value %r in %r' % (value, line))
            pos = end
        pairs.append((key, value))
        if pos < len(line):
            if line[pos] != ' ':
                raise ValueError('expected a space at %d in %r' % (pos, line))
            pos += 1
            if pos == len(line):
                raise ValueError('trailing space in %r' % line)
    return pairs


def parse_alert(text):
    """Parse the part of ``text`` from the alert prefix on.

    :returns: the pairs as a list (to see duplicates) and as a dict.
    """
    index = text.index(ALERT_PREFIX)
    pairs = parse_pairs(text[index + len(ALERT_PREFIX):])
    return pairs, dict(pairs)
