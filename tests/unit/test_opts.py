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
"""Options for oslo-config-generator and the committed sample file."""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys

from oslo_config import cfg

from nova_error_notifier import opts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
ETC = os.path.join(ROOT, 'etc', 'nova_error_notifier')
SAMPLE = os.path.join(ETC, 'nova_error_notifier.conf.sample')
GENERATOR_CONF = os.path.join(ETC,
                              'nova_error_notifier-config-generator.conf')
OUR_GROUPS = ('listener', 'receiver:<name>', 'rule:<name>', 'bus:<name>')


def test_list_opts_groups_and_help():
    groups = opts.list_opts()
    names = [group for group, _ in groups]
    assert sorted(names, key=str) == sorted(
        [None, 'listener', 'bus:<name>', 'receiver:<name>', 'rule:<name>',
         'email', 'staff', 'service_credentials', 'correlation', 'delivery',
         'database', 'enrichment'],
        key=str)
    assert len(names) == len(set(names))
    for group, options in groups:
        assert options, group
        option_names = [o.dest for o in options]
        assert len(option_names) == len(set(option_names)), group
        for option in options:
            assert isinstance(option, cfg.Opt), (group, option)
            assert option.help and option.help.strip(), (
                'option %s in group %s has no help' % (option.name, group))


def test_expected_options_are_listed():
    listed = {group: {o.dest for o in options}
              for group, options in opts.list_opts()}
    assert 'rules' in listed[None]
    assert {'topics', 'exchange', 'pool', 'endpoints',
            'watch_state_changes', 'stop_timeout'} <= listed['listener']
    assert {'events', 'receivers', 'include_exceptions',
            'exclude_exceptions', 'continue'} <= listed['rule:<name>']
    # The drivers' own options are documented with the receiver options.
    assert {'driver', 'include_details', 'level', 'to', 'staff_users',
            'url', 'secret', 'headers', 'body_template'} <= listed[
        'receiver:<name>']
    assert 'region_name' in listed[None]
    assert 'region_name' in listed['listener']
    assert {'transport_url', 'region_name', 'pool', 'exchange',
            'topics'} == listed['bus:<name>']
    assert {'smtp_host', 'smtp_password', 'from_address'} <= listed['email']
    assert {'role', 'project', 'cache_ttl'} <= listed['staff']


def test_register_opts_gives_defaults():
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    assert conf.rules == []
    assert conf.listener.exchange == 'nova'
    assert conf.listener.topics == ['notifications',
                                    'versioned_notifications']
    assert conf.listener.pool == 'nova-error-notifier'


def test_generator_entry_point():
    entry_points = importlib.metadata.entry_points(group='oslo.config.opts')
    ours = [ep for ep in entry_points if ep.name == 'nova_error_notifier']
    assert len(ours) == 1
    assert ours[0].load() is opts.list_opts


def _sections(text):
    """{section name: text} of a generated sample."""
    sections = {}
    name = None
    for line in text.splitlines():
        match = re.match(r'^\[([^\]]+)\]$', line)
        if match:
            name = match.group(1)
            assert name not in sections, 'section [%s] twice' % name
            sections[name] = []
        elif name is not None:
            sections[name].append(line)
    return {k: '\n'.join(v).strip() + '\n' for k, v in sections.items()}


def _namespace_block(section, namespace):
    """The part of a section under ``# From <namespace>``."""
    blocks = re.split(r'^#\n# From (\S+)\n#\n', section, flags=re.M)
    found = {blocks[i]: blocks[i + 1].strip()
             for i in range(1, len(blocks) - 1, 2)}
    return found.get(namespace)


def test_sample_config_is_up_to_date(tmp_path):
    generator = shutil.which('oslo-config-generator',
                             path=os.path.dirname(sys.executable))
    assert generator, 'oslo-config-generator not found next to %s' % (
        sys.executable)
    output = tmp_path / 'generated.conf.sample'
    proc = subprocess.run([generator, '--config-file', GENERATOR_CONF,
                           '--output-file', str(output)],
                          cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    generated = _sections(output.read_text())
    with open(SAMPLE, encoding='utf-8') as handle:
        committed = _sections(handle.read())

    for group in OUR_GROUPS:
        assert group in generated, sorted(generated)
        assert committed.get(group) == generated[group], (
            '[%s] of %s is out of date: regenerate it with "tox -e '
            'genconfig"' % (group, SAMPLE))

    ours = _namespace_block(generated['DEFAULT'], 'nova_error_notifier')
    assert ours and '#rules =' in ours
    assert _namespace_block(committed['DEFAULT'],
                            'nova_error_notifier') == ours, (
        '[DEFAULT] options of nova_error_notifier in %s are out of date: '
        'regenerate it with "tox -e genconfig"' % SAMPLE)
    # Every section the generator writes is in the committed sample.
    assert sorted(committed) == sorted(generated)
