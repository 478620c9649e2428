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
"""The file editing behind the DevStack stand-ins of devstack_functions.sh.

DevStack's ``inc/ini-config`` edits INI files with ``sed`` line addresses:
a section is the range from a line matching ``^\\[<section>\\]`` to the next
line matching ``^\\[.*\\]`` (both included, names used as regular
expressions, as DevStack interpolates them), an option a line matching
``^<option>[ \\t]*=``. This script does the same edits, written anew:

``set FILE SECTION OPTION VALUE``
    VALUE as the shell function already made it (after DevStack's unquoted
    ``echo``). A missing section is appended (a blank line and its header);
    an option found in the section's range has the rest of its line
    replaced, keeping ``option = `` as it was written; a missing one is
    added right below every header of the section.
``get FILE SECTION OPTION``
    Prints the option's lines of the section, whole (the shell function
    cuts them at the first ``=`` and echoes them unquoted, as DevStack's).
``has FILE SECTION OPTION``
    Exit status 0 when the section has the option.
``comment FILE SECTION OPTION`` / ``delete FILE SECTION OPTION``
    Puts a ``#`` before the option's lines of the section / removes them.
"""

import os
import re
import sys
import tempfile

_ANY_HEADER = re.compile(r'^\[.*\]')


def _header(section):
    return re.compile(r'^\[%s\]' % section)


def _option(option):
    return re.compile(r'^%s[ \t]*=' % option)


def _in_ranges(lines, section):
    """Which lines sed's ``/^\\[section\\]/,/^\\[.*\\]/`` address covers."""
    start = _header(section)
    covered = []
    active = False
    for line in lines:
        if active:
            covered.append(True)
            if _ANY_HEADER.match(line):
                active = False
        elif start.match(line):
            covered.append(True)
            active = True
        else:
            covered.append(False)
    return covered


def _read(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding='utf-8', errors='surrogateescape',
              newline='') as f:
        text = f.read()
    if not text:
        return []
    lines = text.split('\n')
    if text.endswith('\n'):
        lines.pop()
    return lines


def _write(path, lines):
    # As ``sed -i``: a new file in the same directory, renamed over the
    # old one, with its mode
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.sed')
    with os.fdopen(fd, 'w', encoding='utf-8', errors='surrogateescape',
                   newline='') as f:
        f.write(''.join(line + '\n' for line in lines))
    if os.path.exists(path):
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    os.replace(tmp, path)


def _matching(lines, section, option):
    pattern = _option(option)
    return [i for i, (line, covered) in
            enumerate(zip(lines, _in_ranges(lines, section)))
            if covered and pattern.match(line)]


def do_set(path, section, option, value):
    lines = _read(path)
    header = _header(section)
    if not any(header.match(line) for line in lines):
        lines += ['', '[%s]' % section]
    found = _matching(lines, section, option)
    if found:
        keep = re.compile(r'^(%s[ \t]*=[ \t]*).*$' % option)
        for i in found:
            lines[i] = keep.sub(lambda m: m.group(1) + value, lines[i])
    else:
        added = []
        for line in lines:
            added.append(line)
            if header.match(line):
                added.append('%s = %s' % (option, value))
        lines = added
    _write(path, lines)
    return 0


def do_get(path, section, option):
    lines = _read(path)
    for i in _matching(lines, section, option):
        print(lines[i])
    return 0


def do_has(path, section, option):
    return 0 if _matching(_read(path), section, option) else 1


def do_comment(path, section, option):
    lines = _read(path)
    for i in _matching(lines, section, option):
        lines[i] = '#' + lines[i]
    _write(path, lines)
    return 0


def do_delete(path, section, option):
    lines = _read(path)
    gone = set(_matching(lines, section, option))
    _write(path, [line for i, line in enumerate(lines) if i not in gone])
    return 0


def main(argv):
    action, args = argv[0], argv[1:]
    return globals()['do_' + action](*args)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
