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
"""The DevStack plugin (devstack/), run by bash through every phase.

DevStack itself is replaced by a few stand-ins for the functions the plugin
calls (``iniset`` really edits INI files, the others record their calls);
every path points into a temporary directory.
"""

import configparser
import getpass
import os
import subprocess
import sys
import textwrap

import pytest

from nova_error_notifier.cmd import service as service_cmd
from nova_error_notifier import config as config_mod

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PLUGIN_DIR = os.path.join(ROOT, 'devstack')
SAMPLE = os.path.join(ROOT, 'etc', 'nova_error_notifier',
                      'nova_error_notifier.conf.sample')
BIN_DIR = os.path.dirname(sys.executable)

RABBIT_URL = 'rabbit://stackrabbit:rabbit-secret@192.0.2.10:5672/'
CELL1_URL = RABBIT_URL + 'nova_cell1'
# What lib/nova may have set already, kept as it is
PRESET_NOTIFY_URL = 'rabbit://notify:notify-secret@192.0.2.11:5672/'
KEYSTONE_URI = 'http://192.0.2.10/identity'
PHASES = (('stack', 'pre-install'), ('stack', 'install'),
          ('stack', 'post-config'), ('stack', 'extra'), ('unstack',),
          ('clean',))

# A real (small) iniset/iniget, editing lines in place as DevStack's do:
# an option is replaced where it is, or added right below its section's
# header; a missing section is appended.
INIFILE_PY = r'''
import os
import re
import sys


def section_range(lines, section):
    start = None
    for i, line in enumerate(lines):
        name = line.strip()
        if name.startswith('[') and name.endswith(']'):
            if start is not None:
                return start, i
            if name[1:-1] == section:
                start = i
    return (start, len(lines)) if start is not None else (None, None)


def find(lines, start, end, option):
    pattern = re.compile(r'^\s*%s\s*=' % re.escape(option))
    for i in range(start + 1, end):
        if pattern.match(lines[i]):
            return i
    return None


def main(action, path, section, option, value=None):
    lines = []
    if os.path.exists(path):
        with open(path) as f:
            lines = f.read().splitlines()
    start, end = section_range(lines, section)
    if action == 'get':
        if start is not None:
            i = find(lines, start, end, option)
            if i is not None:
                print(lines[i].split('=', 1)[1].strip())
        return
    line = '%s = %s' % (option, value)
    if start is None:
        lines += ['', '[%s]' % section, line]
    else:
        i = find(lines, start, end, option)
        if i is None:
            lines.insert(start + 1, line)
        else:
            lines[i] = line
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


main(*sys.argv[1:])
'''

# Stand-ins for the DevStack functions the plugin uses. Each call is
# recorded in $STANDIN_LOG, one line, its arguments separated by tabs.
STANDINS_SH = r'''
function _record {
    local IFS=$'\t'
    echo "$*" >>"$STANDIN_LOG"
}

function iniset {
    if [[ "$1" == "-sudo" ]]; then
        shift
    fi
    _record iniset "$@"
    "$STANDIN_PYTHON" "$STANDIN_DIR/inifile.py" set "$@"
}

function iniget {
    "$STANDIN_PYTHON" "$STANDIN_DIR/inifile.py" get "$@"
}

function get_transport_url {
    echo "$STANDIN_RABBIT_URL${1:-}"
}

function get_notification_url {
    echo "$STANDIN_RABBIT_URL${1:-}"
}

function iniset_rpc_backend {
    _record iniset_rpc_backend "$@"
    iniset "$2" "${3:-DEFAULT}" transport_url "$(get_transport_url "${4:-}")"
}

function get_python_exec_prefix {
    echo "$STANDIN_BIN_DIR"
}

function trueorfalse {
    local default=$1
    local value=${!2:-$default}
    case ${value,,} in
        1|yes|true|on) echo True ;;
        0|no|false|off) echo False ;;
        *) echo "$default" ;;
    esac
}

function is_service_enabled {
    local service
    for service in "$@"; do
        if [[ ",$ENABLED_SERVICES," == *",$service,"* ]]; then
            return 0
        fi
        if [[ "$service" == nova && ",$ENABLED_SERVICES" == *",n-"* ]]; then
            return 0
        fi
    done
    return 1
}

function enable_service {
    local service
    _record enable_service "$@"
    for service in "$@"; do
        if [[ ",${DISABLED_SERVICES:-}," == *",$service,"* ]]; then
            continue
        fi
        if ! is_service_enabled "$service"; then
            ENABLED_SERVICES+=",$service"
        fi
    done
}

function conductor_conf {
    echo "$NOVA_CONF_DIR/nova_cell$1.conf"
}

# Runs the command itself, refusing any path outside the test's directory
function sudo {
    local arg
    _record sudo "$@"
    for arg in "${@:2}"; do
        if [[ "$arg" == /* && "$arg" != "$STANDIN_ROOT"/* ]]; then
            echo "stand-in sudo: $arg is outside $STANDIN_ROOT" >&2
            return 1
        fi
    done
    "$@"
}

function die {
    _record die "$@"
    echo "die: $*" >&2
    exit 1
}

function async_wait { _record async_wait "$@"; }
function run_process { _record run_process "$@"; }
function stop_process { _record stop_process "$@"; }
function setup_develop { _record setup_develop "$@"; }
function install_package { _record install_package "$@"; }
function recreate_database { _record recreate_database "$@"; }
function setup_logging { _record setup_logging "$@"; }
function echo_summary { _record echo_summary "$@"; }
function warn { _record warn "$@"; }
'''

FAKE_GENERATOR_SH = r'''#!/bin/bash
while [[ $# -gt 0 && "$1" != "--output-file" ]]; do
    shift
done
cp '%s' "$2"
'''

# What stack.sh, unstack.sh and clean.sh do, in short: override-defaults,
# then (DevStack's lib/* and) settings, then plugin.sh with the phase.
DRIVER_SH = r'''
set -o errexit
set -o nounset
source "$STANDIN_DIR/standins.sh"
source "$PLUGIN_DIR/override-defaults"
source "$PLUGIN_DIR/settings"
source "$PLUGIN_DIR/plugin.sh" "$@"
'''

NOVA_CONF = textwrap.dedent('''\
    [DEFAULT]
    transport_url = %s

    [notifications]
    notification_format = unversioned

    [oslo_messaging_notifications]
    transport_url = %s
    ''') % (RABBIT_URL, PRESET_NOTIFY_URL)

# A cell conductor's file, as lib/nova writes it: its own virtual host,
# nothing about notifications
CELL_CONF = textwrap.dedent('''\
    [DEFAULT]
    transport_url = %s

    [database]
    connection = mysql+pymysql://root:secret@127.0.0.1/nova_cell1
    ''') % CELL1_URL


class Stack:
    """A fake DevStack node in a temporary directory."""

    def __init__(self, root, **overrides):
        self.root = str(root)
        self.standins = os.path.join(self.root, 'standins')
        self.log = os.path.join(self.root, 'calls.log')
        self.nova_dir = os.path.join(self.root, 'etc', 'nova')
        self.nova_conf = os.path.join(self.nova_dir, 'nova.conf')
        self.cpu_conf = os.path.join(self.nova_dir, 'nova-cpu.conf')
        self.cell_conf = os.path.join(self.nova_dir, 'nova_cell1.conf')
        self.conf_dir = os.path.join(self.root, 'etc',
                                     'nova_error_notifier')
        self.conf = os.path.join(self.conf_dir, 'nova_error_notifier.conf')
        self.state_dir = os.path.join(self.root, 'var', 'lib',
                                      'nova-error-notifier')
        self.user = getpass.getuser()
        os.makedirs(self.standins)
        # The real oslo-config-generator takes a second or two: a stand-in
        # copying the committed sample does for most tests.
        self.bin_dir = overrides.pop('bin_dir', None)
        if self.bin_dir is None:
            self.bin_dir = os.path.join(self.root, 'bin')
            os.makedirs(self.bin_dir)
            fake = os.path.join(self.bin_dir, 'oslo-config-generator')
            with open(fake, 'w') as f:
                f.write(FAKE_GENERATOR_SH % SAMPLE)
            os.chmod(fake, 0o755)
        os.makedirs(self.nova_dir)
        with open(os.path.join(self.standins, 'inifile.py'), 'w') as f:
            f.write(INIFILE_PY)
        with open(os.path.join(self.standins, 'standins.sh'), 'w') as f:
            f.write(STANDINS_SH)
        with open(os.path.join(self.standins, 'driver.sh'), 'w') as f:
            f.write(DRIVER_SH)
        with open(self.nova_conf, 'w') as f:
            f.write(NOVA_CONF)
        # lib/nova's nova-cpu.conf: nova.conf with the cell's transport_url
        with open(self.cpu_conf, 'w') as f:
            f.write(NOVA_CONF.replace(RABBIT_URL + '\n', CELL1_URL + '\n',
                                      1))
        with open(self.cell_conf, 'w') as f:
            f.write(CELL_CONF)
        self.env = {
            'PATH': os.environ.get('PATH', '/usr/bin:/bin'),
            'HOME': self.root,
            'LANG': 'C.UTF-8',
            'STANDIN_DIR': self.standins,
            'STANDIN_LOG': self.log,
            'STANDIN_ROOT': self.root,
            'STANDIN_PYTHON': sys.executable,
            'STANDIN_RABBIT_URL': RABBIT_URL,
            'STANDIN_BIN_DIR': self.bin_dir,
            'PLUGIN_DIR': PLUGIN_DIR,
            # DevStack's own variables (stackrc, lib/*)
            'DEST': os.path.join(self.root, 'opt', 'stack'),
            'STACK_USER': self.user,
            'ENABLED_SERVICES': 'key,rabbit,mysql,n-api,n-cond,n-sch,n-cpu',
            'ENABLE_DEBUG_LOG_LEVEL': 'True',
            'REGION_NAME': 'RegionOne',
            'KEYSTONE_SERVICE_URI': KEYSTONE_URI,
            'SERVICE_PASSWORD': 'service-secret',
            'SERVICE_PROJECT_NAME': 'service',
            'SERVICE_DOMAIN_NAME': 'Default',
            'NOVA_CONF_DIR': self.nova_dir,
            'NOVA_CONF': self.nova_conf,
            'NOVA_CPU_CONF': self.cpu_conf,
            'NOVA_NUM_CELLS': '1',
            # The plugin's, pointed into the temporary directory
            'NOVA_ERROR_NOTIFIER_DIR': ROOT,
            'NOVA_ERROR_NOTIFIER_CONF_DIR': self.conf_dir,
            'NOVA_ERROR_NOTIFIER_CONF': self.conf,
            'NOVA_ERROR_NOTIFIER_STATE_DIR': self.state_dir,
        }
        self.env.update(overrides)
        self.calls = {}

    def run(self, *phase, check=True):
        """Source the plugin for one phase; return the calls it made."""
        before = self._read_log()
        proc = subprocess.run(
            ['bash', os.path.join(self.standins, 'driver.sh')] + list(phase),
            env=self.env, cwd=self.root, capture_output=True, text=True,
            timeout=120)
        if check:
            assert proc.returncode == 0, (
                'plugin.sh %s failed (%d):\n%s' % (
                    ' '.join(phase), proc.returncode, proc.stderr[-4000:]))
        calls = self._read_log()[len(before):]
        self.calls[' '.join(phase)] = calls
        return proc, calls

    def run_all(self):
        for phase in PHASES:
            self.run(*phase)
            if phase == ('stack', 'post-config'):
                self.snapshot()

    def snapshot(self):
        """Read the configuration files as post-config left them."""
        self.nova = {path: read_ini(path) for path in
                     (self.nova_conf, self.cpu_conf, self.cell_conf)}
        self.service = read_ini(self.conf)
        with open(self.conf) as f:
            self.service_text = f.read()
        self.conf_mode = os.stat(self.conf).st_mode & 0o777
        self.state_dir_existed = os.path.isdir(self.state_dir)
        self.loaded = load_service_conf(self.conf)

    def _read_log(self):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [line.rstrip('\n').split('\t') for line in f]


def read_ini(path):
    parser = configparser.ConfigParser(interpolation=None, strict=False,
                                       default_section='no default')
    with open(path) as f:
        parser.read_file(f)
    return parser


def load_service_conf(path):
    """The configuration through the service's own loader and checks."""
    conf = service_cmd.build_conf()
    conf(['--config-file', path], project='nova_error_notifier',
         default_config_files=[], default_config_dirs=[])
    try:
        return config_mod.load(conf)
    finally:
        conf.reset()


def named(calls, name):
    return [call[1:] for call in calls if call[0] == name]


@pytest.fixture(scope='module')
def stack(tmp_path_factory):
    node = Stack(tmp_path_factory.mktemp('devstack'), bin_dir=BIN_DIR)
    node.run_all()
    return node


@pytest.fixture(scope='module')
def mail_stack(tmp_path_factory):
    node = Stack(tmp_path_factory.mktemp('devstack-mail'),
                 NOVA_ERROR_NOTIFIER_SMTP_HOST='smtp.example.org',
                 NOVA_ERROR_NOTIFIER_SMTP_PORT='2525',
                 NOVA_ERROR_NOTIFIER_EMAIL_TO='ops@example.org',
                 NOVA_ERROR_NOTIFIER_EMAIL_FROM='alerts@example.org')
    node.run_all()
    return node


def test_install_phases(stack):
    assert named(stack.calls['stack pre-install'], 'setup_develop') == []
    assert named(stack.calls['stack install'], 'setup_develop') == [[ROOT]]
    # Nothing is started or written before its phase
    for phase in ('stack pre-install', 'stack install'):
        assert named(stack.calls[phase], 'iniset') == []
        assert named(stack.calls[phase], 'run_process') == []


def test_settings_enable_the_service(stack):
    assert named(stack.calls['stack install'], 'enable_service') == [
        ['nova-error-notifier']]


def test_nova_emits_notifications(stack):
    for path, nova in stack.nova.items():
        where = os.path.basename(path)
        assert nova['oslo_messaging_notifications']['driver'] == \
            'messagingv2', where
        assert nova['notifications']['notification_format'] == 'both', where
        assert nova['notifications']['notify_on_state_change'] == \
            'vm_and_task_state', where
    # Nothing else of lib/nova's is touched
    nova = stack.nova[stack.nova_conf]
    assert nova['DEFAULT']['transport_url'] == RABBIT_URL
    assert nova['oslo_messaging_notifications']['transport_url'] == \
        PRESET_NOTIFY_URL
    cell = stack.nova[stack.cell_conf]
    assert cell['DEFAULT']['transport_url'] == CELL1_URL
    assert cell['database']['connection'].endswith('/nova_cell1')


def test_nova_confs_edited_after_neutron_nova_config(stack):
    # stack.sh configures Neutron in nova.conf in the background during
    # post-config: the plugin waits for it before editing the same files.
    calls = stack.calls['stack post-config']
    waits = [i for i, call in enumerate(calls) if call[0] == 'async_wait']
    edits = [i for i, call in enumerate(calls) if call[0] == 'iniset' and
             call[1].startswith(stack.nova_dir + os.sep)]
    assert [calls[i] for i in waits] == [
        ['async_wait', 'configure_neutron_nova']]
    assert edits and waits[0] < edits[0]


def test_cell_conductor_notifies_on_the_top_bus(stack):
    # Its own transport_url is the cell's virtual host: the notifications
    # must go where the service listens.
    cell = stack.nova[stack.cell_conf]
    assert cell['oslo_messaging_notifications']['transport_url'] == \
        RABBIT_URL
    assert stack.service['oslo_messaging_notifications'][
        'transport_url'] == RABBIT_URL


def test_nova_configured_at_post_config_only(stack):
    for phase, calls in stack.calls.items():
        nova_calls = [c for c in named(calls, 'iniset')
                      if c[0].startswith(stack.nova_dir + os.sep)]
        if phase == 'stack post-config':
            # 3 options in each of the 3 files, plus the notification
            # transport_url of the cell conductor (the others have one)
            assert len(nova_calls) == 3 * 3 + 1
        else:
            assert nova_calls == [], phase


def test_service_conf(stack):
    conf = stack.service
    assert conf['DEFAULT']['transport_url'] == RABBIT_URL
    assert ['nova-error-notifier', stack.conf, 'DEFAULT'] in named(
        stack.calls['stack post-config'], 'iniset_rpc_backend')
    assert conf['DEFAULT']['region_name'] == 'RegionOne'
    assert conf['DEFAULT']['debug'] == 'True'
    assert conf['DEFAULT']['rules'] == 'default'
    assert conf['rule:default']['events'] == '*'
    assert conf['rule:default']['receivers'] == 'log'
    assert conf['receiver:log']['driver'] == 'log'
    assert not conf.has_section('receiver:email')
    assert conf['delivery']['state_dir'] == stack.state_dir
    assert conf['listener']['pool'] == 'nova-error-notifier'
    assert dict(conf['service_credentials']) == {
        'auth_type': 'password',
        'auth_url': KEYSTONE_URI,
        'username': 'nova',
        'password': 'service-secret',
        'project_name': 'service',
        'user_domain_name': 'Default',
        'project_domain_name': 'Default',
    }
    assert ['setup_logging', stack.conf] in stack.calls['stack post-config']
    # Passwords inside: not world-readable
    assert stack.conf_mode == 0o640
    assert stack.state_dir_existed


def test_service_conf_generated_from_sample(stack):
    # The generator next to the interpreter wrote it: no fallback
    assert named(stack.calls['stack post-config'], 'warn') == []
    assert '# From nova_error_notifier' in stack.service_text
    assert '#group_wait = 5.0' in stack.service_text


def test_service_conf_passes_the_service_checks(stack):
    settings = stack.loaded
    assert sorted(settings.receivers) == ['log']
    assert [rule.name for rule in settings.ruleset.rules] == ['default']


def test_started_at_extra(stack):
    expected = ['nova-error-notifier',
                '%s/nova-error-notifier --config-file %s'
                % (stack.bin_dir, stack.conf)]
    for phase, calls in stack.calls.items():
        started = named(calls, 'run_process')
        assert started == ([expected] if phase == 'stack extra' else []), \
            phase


def test_stopped_at_unstack(stack):
    for phase, calls in stack.calls.items():
        stopped = named(calls, 'stop_process')
        assert stopped == ([['nova-error-notifier']] if phase == 'unstack'
                           else []), phase
    # unstack keeps the configuration for the next stack.sh
    assert named(stack.calls['unstack'], 'sudo') == []


def test_clean_removes_conf_and_state(stack):
    assert not os.path.exists(stack.conf)
    assert not os.path.exists(stack.conf_dir)
    assert not os.path.exists(stack.state_dir)
    # Nova's files are lib/nova's business
    assert os.path.exists(stack.nova_conf)


def test_email_receiver(mail_stack):
    conf = mail_stack.service
    assert conf['rule:default']['receivers'] == 'log, email'
    assert conf['receiver:log']['driver'] == 'log'
    assert conf['receiver:email']['driver'] == 'email'
    assert conf['receiver:email']['to'] == 'ops@example.org'
    assert conf['receiver:email']['staff_users'] == 'False'
    assert conf['email']['smtp_host'] == 'smtp.example.org'
    assert conf['email']['smtp_port'] == '2525'
    assert conf['email']['from_address'] == 'alerts@example.org'
    settings = mail_stack.loaded
    assert sorted(settings.receivers) == ['email', 'log']
    assert settings.receivers['email'].driver_name == 'email'


def test_email_defaults(tmp_path):
    node = Stack(tmp_path, NOVA_ERROR_NOTIFIER_SMTP_HOST='127.0.0.1',
                 NOVA_ERROR_NOTIFIER_EMAIL_STAFF_USERS='yes')
    for phase in PHASES[:3]:
        node.run(*phase)
    node.snapshot()
    conf = node.service
    assert conf['receiver:email']['to'] == '%s@localhost' % node.user
    assert conf['receiver:email']['staff_users'] == 'True'
    assert conf['email']['from_address'] == 'nova-error-notifier@localhost'
    assert not conf.has_option('email', 'smtp_port')


def test_notification_format_override(tmp_path):
    node = Stack(tmp_path, NOVA_ERROR_NOTIFIER_NOTIFICATION_FORMAT='versioned')
    node.run('stack', 'post-config')
    for path in (node.nova_conf, node.cpu_conf, node.cell_conf):
        assert read_ini(path)['notifications']['notification_format'] == \
            'versioned'


def test_restack_starts_afresh(tmp_path):
    # An e-mail receiver switched off since the last stack.sh goes away
    node = Stack(tmp_path, NOVA_ERROR_NOTIFIER_SMTP_HOST='smtp.example.org')
    node.run('stack', 'post-config')
    assert read_ini(node.conf).has_section('receiver:email')
    del node.env['NOVA_ERROR_NOTIFIER_SMTP_HOST']
    node.run('stack', 'post-config')
    conf = read_ini(node.conf)
    assert not conf.has_section('receiver:email')
    assert conf['rule:default']['receivers'] == 'log'
    # and Nova's files hold each option once
    with open(node.nova_conf) as f:
        assert f.read().count('notify_on_state_change') == 1


def test_committed_sample_when_generator_fails(tmp_path):
    no_bin = tmp_path / 'empty-bin'
    no_bin.mkdir()
    node = Stack(tmp_path / 'node', bin_dir=str(no_bin))
    for phase in PHASES[:4]:
        node.run(*phase)
    node.snapshot()
    calls = node.calls['stack post-config']
    assert len(named(calls, 'warn')) == 1
    with open(SAMPLE) as f:
        sample = f.read()
    # The sample's text, with the plugin's options added
    assert '#group_wait = 5.0' in node.service_text
    assert len(node.service_text) > len(sample)
    assert node.service['listener']['pool'] == 'nova-error-notifier'
    assert sorted(node.loaded.receivers) == ['log']
    assert named(node.calls['stack extra'], 'run_process') == [
        ['nova-error-notifier', '%s/nova-error-notifier --config-file %s'
         % (no_bin, node.conf)]]


def test_compute_only_node(tmp_path):
    # disable_service nova-error-notifier in local.conf: Nova is still
    # told to notify, but nothing of the service is installed or run.
    node = Stack(tmp_path, ENABLED_SERVICES='n-cpu,placement-client',
                 DISABLED_SERVICES='nova-error-notifier')
    for phase in PHASES:
        node.run(*phase)
    everything = [call for calls in node.calls.values() for call in calls]
    assert named(everything, 'setup_develop') == []
    assert named(everything, 'run_process') == []
    assert named(everything, 'stop_process') == []
    assert not os.path.exists(node.conf_dir)
    nova = read_ini(node.cpu_conf)
    assert nova['oslo_messaging_notifications']['driver'] == 'messagingv2'
    assert nova['notifications']['notify_on_state_change'] == \
        'vm_and_task_state'


def test_nova_files_not_yet_written_are_left_alone(tmp_path):
    # No nova-compute or cell conductor here (or their files come later,
    # from nova.conf): the plugin does not create their files.
    node = Stack(tmp_path)
    os.unlink(node.cpu_conf)
    os.unlink(node.cell_conf)
    node.run('stack', 'post-config')
    assert not os.path.exists(node.cpu_conf)
    assert not os.path.exists(node.cell_conf)
    nova = read_ini(node.nova_conf)
    assert nova['notifications']['notification_format'] == 'both'


def test_pre_install_without_clone_dies(tmp_path):
    node = Stack(tmp_path,
                 NOVA_ERROR_NOTIFIER_DIR=str(tmp_path / 'missing'))
    proc, calls = node.run('stack', 'pre-install', check=False)
    assert proc.returncode != 0
    assert len(named(calls, 'die')) == 1


def test_plugin_files_are_shell():
    # tox -e pep8 runs shellcheck and bashate on them
    for name in ('plugin.sh', 'settings', 'override-defaults'):
        with open(os.path.join(PLUGIN_DIR, name)) as f:
            assert f.readline() == '#!/bin/bash\n', name
        proc = subprocess.run(['bash', '-n', os.path.join(PLUGIN_DIR, name)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
