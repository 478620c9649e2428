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
"""Escaping of untrusted values on log lines (nova_error_notifier.logsafe)."""

import random
import re
import sys
import unicodedata

import pytest

from nova_error_notifier import logsafe
from tests.unit import kvline

# Every character that must never reach a log line raw: C0 controls
# (newline, CR, ESC, NUL, ...), DEL, C1 controls (NEL ...) and the Unicode
# line and paragraph separators.
UNSAFE = ([chr(c) for c in range(0x00, 0x20)] +
          [chr(c) for c in range(0x7f, 0xa0)] +
          ['\u2028', '\u2029'])

HOSTILE = [
    'evil\nnova-error-notifier alert rule=forged',
    'evil\r\nrule=forged',
    'x" rule="forged',
    'x\\" rule=forged',
    'trailing backslash\\',
    '\\\\',
    '\\n literally, not a newline',
    'a=b',
    '=',
    '"',
    '',
    ' ',
    'two  spaces',
    '\x1b[2J\x1b[31mred',
    'nul\x00byte',
    'del\x7f',
    'nel\x85c1\x9b',
    'line\u2028sep\u2029para',
    'tab\there',
    'vt\x0bff\x0c',
    'fs\x1cgs\x1drs\x1e',
    'nbsp\xa0ideographic\u3000space',
    'caf\xe9 \u65e5\u672c \U0001f600',
    '\\x41 looks like an escape',
    '\\u2028 looks like an escape',
]


@pytest.mark.parametrize('char', UNSAFE, ids=lambda c: 'U+%04X' % ord(c))
def test_escape_never_emits_unsafe_characters(char):
    value = 'a%sb%s' % (char, char)
    for out in (logsafe.escape(value), logsafe.quote(value),
                logsafe.pairs([('k', value)])):
        bad = [c for c in out if c in UNSAFE]
        assert not bad, 'raw U+%04X in %r' % (ord(char), out)
        assert len(out.splitlines()) == 1, (
            'U+%04X splits %r into several lines' % (ord(char), out))


@pytest.mark.parametrize('char, escaped', [
    ('\n', '\\n'), ('\r', '\\r'), ('\t', '\\t'), ('\x1b', '\\x1b'),
    ('\x00', '\\x00'), ('\x7f', '\\x7f'), ('\x85', '\\x85'),
    ('\u2028', '\\u2028'), ('\u2029', '\\u2029'),
])
def test_escape_forms(char, escaped):
    assert logsafe.escape('a%sb' % char) == 'a%sb' % escaped


def test_none_is_a_dash():
    assert logsafe.escape(None) == '-'
    assert logsafe.quote(None) == '-'
    assert logsafe.pairs([('k', None)]) == 'k=-'


def test_plain_values_stay_bare():
    assert logsafe.quote('web-42') == 'web-42'
    assert logsafe.quote(500) == '500'
    assert logsafe.quote('req-8e4f.x:y/z') == 'req-8e4f.x:y/z'
    assert logsafe.escape('two words') == 'two words'


@pytest.mark.parametrize('value', ['a b', 'a"b', 'a\\b', 'a=b', '',
                                   'a\tb', 'a\xa0b', 'a\u3000b', 'a\nb'])
def test_quote_quotes_separators(value):
    out = logsafe.quote(value)
    assert out.startswith('"') and out.endswith('"'), out


def test_forged_line_cannot_split_or_add_a_pair():
    name = 'evil\nnova-error-notifier alert rule=forged'
    line = logsafe.pairs([('rule', 'real'), ('name', name),
                          ('exception', 'NoValidHost')])
    assert '\n' not in line
    assert len(line.splitlines()) == 1
    pairs = kvline.parse_pairs(line)
    assert [k for k, _ in pairs] == ['rule', 'name', 'exception']
    assert dict(pairs)['rule'] == 'real'
    assert dict(pairs)['name'] == name
    assert line == ('rule=real name="evil\\nnova-error-notifier alert '
                    'rule=forged" exception=NoValidHost')


@pytest.mark.parametrize('value', HOSTILE)
def test_hostile_values_round_trip(value):
    line = logsafe.pairs([('rule', 'r1'), ('name', value), ('tail', 'end')])
    assert len(line.splitlines()) == 1
    pairs = kvline.parse_pairs(line)
    assert pairs == [('rule', 'r1'), ('name', value), ('tail', 'end')], line


def test_random_hostile_values_round_trip():
    alphabet = (UNSAFE + list(' "\\=\'abcXYZ019-_.:[]') +
                ['\xa0', '\u3000', '\xe9', '\u65e5', '\U0001f600'])
    rng = random.Random(20261002)
    for _ in range(3000):
        value = ''.join(rng.choice(alphabet)
                        for _ in range(rng.randint(0, 12)))
        line = logsafe.pairs([('a', value), ('rule', 'r')])
        assert len(line.splitlines()) == 1, repr(line)
        assert kvline.parse_pairs(line) == [('a', value), ('rule', 'r')], (
            'round trip failed for %r -> %r' % (value, line))


def test_lone_surrogates_are_replaced(tmp_path):
    value = 'bad\udc80name\ud800'
    path = tmp_path / 'out.log'
    with open(path, 'w', encoding='utf-8') as handle:
        for out in (logsafe.escape(value), logsafe.quote(value),
                    logsafe.pairs([('name', value)])):
            out.encode('utf-8')   # would raise UnicodeEncodeError
            handle.write(out + '\n')
    text = path.read_text(encoding='utf-8')
    assert 'bad?name?' in text
    assert len(text.splitlines()) == 3


def test_limit_truncates():
    assert logsafe.escape('x' * 10, limit=4) == 'xxxx...'
    assert logsafe.escape('x' * 4, limit=4) == 'xxxx'
    assert logsafe.quote('a b c d', limit=3) == '"a b..."'
    # The limit counts characters before escaping: a newline stays escaped.
    assert logsafe.escape('\n' * 10, limit=2) == '\\n\\n...'


def test_non_string_values():
    assert logsafe.escape(ValueError('boom\nforged')) == 'boom\\nforged'
    assert logsafe.quote(12) == '12'


# -- the complete class: every Cc, Cf, Zl and Zp character ------------------

UNSAFE_CATEGORIES = ('Cc', 'Cf', 'Zl', 'Zp')


def _all_characters():
    return (chr(code) for code in range(sys.maxunicode + 1))


def test_unsafe_class_covers_every_control_format_and_separator():
    """Walks every code point with this Python's unicodedata."""
    expected = ''.join(c for c in _all_characters()
                       if unicodedata.category(c) in UNSAFE_CATEGORIES)
    assert len(expected) > 200      # the walk did run (230 in Unicode 14)
    missed = re.sub(logsafe.UNSAFE_CLASS, '', expected)
    assert not missed, ['U+%04X %s' % (ord(c), unicodedata.category(c))
                        for c in missed]
    # And escape() leaves none of them raw, on one line.
    out = logsafe.escape(expected)
    assert out.isascii() and len(out.splitlines()) == 1


def test_unsafe_class_spares_ordinary_text():
    """Only those categories (and unassigned code points) are matched."""
    regex = re.compile(logsafe.UNSAFE_CLASS)
    for first, last in logsafe.UNSAFE_RANGES:
        assert first <= last
        for code in range(first, last + 1):
            assert unicodedata.category(chr(code)) in \
                UNSAFE_CATEGORIES + ('Cn',), 'U+%04X' % code
    for text in ('web-01', 'caf\xe9', '\u65e5\u672c', '\U0001f600',
                 '\xa0\u3000', 'a b\tc'.replace('\t', ' ')):
        assert not regex.search(text), text


@pytest.mark.parametrize('char, escaped', [
    ('\xad', '\\xad'), ('\u061c', '\\u061c'), ('\u180e', '\\u180e'),
    ('\u200b', '\\u200b'), ('\u200e', '\\u200e'), ('\u200f', '\\u200f'),
    ('\u202e', '\\u202e'), ('\u2066', '\\u2066'), ('\ufeff', '\\ufeff'),
    ('\ufff9', '\\ufff9'), ('\ufffb', '\\ufffb'), ('\U000110bd',
                                                   '\\U000110bd'),
    ('\U00013430', '\\U00013430'), ('\U000e0001', '\\U000e0001'),
    ('\U000e0041', '\\U000e0041'), ('\U000e007f', '\\U000e007f'),
])
def test_format_characters_are_escaped(char, escaped):
    assert logsafe.escape('a%sb' % char) == 'a%sb' % escaped
    assert logsafe.quote('a%sb' % char) == '"a%sb"' % escaped


@pytest.mark.parametrize('char', ['\xad', '\u061c', '\u180e', '\u200b',
                                  '\u200e', '\u200f', '\u2066', '\ufff9'])
def test_format_characters_round_trip(char):
    value = 'name%send' % char
    line = logsafe.pairs([('name', value), ('rule', 'r')])
    assert char not in line
    assert kvline.parse_pairs(line) == [('name', value), ('rule', 'r')]
