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

DevStack itself is replaced by devstack_functions.sh: the functions the
plugin calls, written to behave as DevStack's own, quirks included (the
unquoted ``echo`` of ``iniset``, run in a directory with files as stack.sh's
is). Every path points into a temporary directory; the database clients
(``mysql``, ``psql``, ``createdb``) and ``nova-error-notifier-manage`` are
recording stand-ins, except in the tests on the real MariaDB and
PostgreSQL test servers (tests/databases.py).
"""

import configparser
import getpass
import os
import shlex
import subprocess
import sys
import textwrap

from oslo_config import cfg
import pytest
import sqlalchemy as sa

from nova_error_notifier.cmd import service as service_cmd
from nova_error_notifier import config as config_mod
from nova_error_notifier import migration
from tests import databases

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PLUGIN_DIR = os.path.join(ROOT, 'devstack')
STANDIN_DIR = os.path.dirname(os.path.abspath(__file__))
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
# What stack.sh's directory holds: an unquoted "*" becomes these
DEVSTACK_FILES = ('clean.sh', 'functions', 'functions-common', 'local.conf',
                  'stack.sh', 'stackrc', 'unstack.sh')
NO_DATABASE = 'key,rabbit,n-api,n-cond,n-sch,n-cpu'
WITH_MYSQL = 'key,rabbit,mysql,n-api,n-cond,n-sch,n-cpu'

FAKE_GENERATOR_SH = r"""#!/bin/bash
while [[ $# -gt 0 && "$1" != "--output-file" ]]; do
    shift
done
cp '%s' "$2"
"""

# A program that records its call in the stand-ins' log (``program``, its
# name, its arguments) and keeps a copy of the configuration file it was
# given, if any
RECORDER_SH = r"""#!/bin/bash
(IFS=$'\t'; echo "program	${0##*/}	$*") >>"$DEVSTACK_STANDIN_LOG"
prev=
for arg in "$@"; do
    if [[ "$prev" == --config-file ]]; then
        cp "$arg" "$DEVSTACK_STANDIN_ROOT/${0##*/}.conf"
    fi
    prev=$arg
done
"""

# What stack.sh, unstack.sh and clean.sh do, in short: DevStack's
# functions, override-defaults, (DevStack's lib/* and) settings, then
# plugin.sh with the phase, from stack.sh's directory and with its options.
DRIVER_SH = r"""
set -o errexit
set -o nounset
cd "$DEVSTACK_STANDIN_CWD"
source "$DEVSTACK_STANDIN_DIR/devstack_functions.sh"
source "$PLUGIN_DIR/override-defaults"
source "$PLUGIN_DIR/settings"
source "$PLUGIN_DIR/plugin.sh" "$@"
"""

NOVA_CONF = textwrap.dedent("""\
    [DEFAULT]
    transport_url = %s

    [notifications]
    notification_format = unversioned

    [oslo_messaging_notifications]
    transport_url = %s
    """) % (RABBIT_URL, PRESET_NOTIFY_URL)

# A cell conductor's file, as lib/nova writes it: its own virtual host,
# nothing about notifications
CELL_CONF = textwrap.dedent("""\
    [DEFAULT]
    transport_url = %s

    [database]
    connection = mysql+pymysql://root:secret@127.0.0.1/nova_cell1
    """) % CELL1_URL


def _executable(path, text):
    with open(path, 'w') as f:
        f.write(text)
    os.chmod(path, 0o755)


class Stack:
    """A fake DevStack node in a temporary directory."""

    def __init__(self, root, **overrides):
        self.root = str(root)
        self.log = os.path.join(self.root, 'calls.log')
        self.cwd = os.path.join(self.root, 'devstack')
        self.nova_dir = os.path.join(self.root, 'etc', 'nova')
        self.nova_conf = os.path.join(self.nova_dir, 'nova.conf')
        self.cpu_conf = os.path.join(self.nova_dir, 'nova-cpu.conf')
        self.cell_conf = os.path.join(self.nova_dir, 'nova_cell1.conf')
        self.conf_dir = os.path.join(self.root, 'etc',
                                     'nova_error_notifier')
        self.conf = os.path.join(self.conf_dir, 'nova_error_notifier.conf')
        self.state_dir = os.path.join(self.root, 'var', 'lib',
                                      'nova-error-notifier')
        self.units = os.path.join(self.root, 'systemd')
        self.user = getpass.getuser()
        os.makedirs(self.cwd)
        for name in DEVSTACK_FILES:
            open(os.path.join(self.cwd, name), 'w').close()
        # The database clients, first in PATH: recorders unless a test
        # uses the real ones
        clients = os.path.join(self.root, 'clients')
        os.makedirs(clients)
        if not overrides.pop('real_clients', False):
            for name in ('mysql', 'psql', 'createdb'):
                _executable(os.path.join(clients, name), RECORDER_SH)
        # The real oslo-config-generator takes a second or two: a stand-in
        # copying the committed sample does for most tests, with a
        # recording nova-error-notifier-manage.
        self.bin_dir = overrides.pop('bin_dir', None)
        if self.bin_dir is None:
            self.bin_dir = os.path.join(self.root, 'venv', 'bin')
            os.makedirs(self.bin_dir)
            _executable(os.path.join(self.bin_dir, 'oslo-config-generator'),
                        FAKE_GENERATOR_SH % SAMPLE)
            _executable(os.path.join(self.bin_dir,
                                     'nova-error-notifier-manage'),
                        RECORDER_SH)
        os.makedirs(self.nova_dir)
        self.driver = os.path.join(self.root, 'driver.sh')
        with open(self.driver, 'w') as f:
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
            'PATH': clients + os.pathsep + os.environ.get('PATH',
                                                          '/usr/bin:/bin'),
            'HOME': self.root,
            'LANG': 'C.UTF-8',
            'DEVSTACK_STANDIN_DIR': STANDIN_DIR,
            'DEVSTACK_STANDIN_LOG': self.log,
            'DEVSTACK_STANDIN_ROOT': self.root,
            'DEVSTACK_STANDIN_CWD': self.cwd,
            'DEVSTACK_STANDIN_PYTHON': sys.executable,
            'PLUGIN_DIR': PLUGIN_DIR,
            # DevStack's own variables (stackrc, lib/*)
            'DEST': os.path.join(self.root, 'opt', 'stack'),
            'STACK_USER': self.user,
            'GLOBAL_VENV': 'True',
            'DEVSTACK_VENV': os.path.dirname(self.bin_dir),
            'ENABLED_SERVICES': NO_DATABASE,
            'ENABLE_DEBUG_LOG_LEVEL': 'True',
            'REGION_NAME': 'RegionOne',
            'RABBIT_USERID': 'stackrabbit',
            'RABBIT_PASSWORD': 'rabbit-secret',
            'RABBIT_HOST': '192.0.2.10',
            'DATABASE_USER': 'root',
            'DATABASE_PASSWORD': 'db-secret',
            'MYSQL_HOST': '127.0.0.1',
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
        self.programs = {}
        self.nova_changed = {}
        self.outputs = {}

    def _nova_files(self):
        contents = {}
        for path in (self.nova_conf, self.cpu_conf, self.cell_conf):
            if os.path.exists(path):
                with open(path) as f:
                    contents[path] = f.read()
        return contents

    def run(self, *phase, check=True):
        """Source the plugin for one phase; return the calls it made."""
        before = _read_log(self.log)
        nova_before = self._nova_files()
        proc = subprocess.run(
            ['bash', self.driver] + list(phase),
            env=self.env, cwd=self.root, capture_output=True, text=True,
            timeout=120)
        if check:
            assert proc.returncode == 0, (
                'plugin.sh %s failed (%d):\n%s' % (
                    ' '.join(phase), proc.returncode, proc.stderr[-4000:]))
        name = ' '.join(phase)
        calls = _read_log(self.log)[len(before):]
        self.calls[name] = calls
        self.programs[name] = named(calls, 'program')
        self.nova_changed[name] = sorted(
            path for path, text in self._nova_files().items()
            if nova_before.get(path) != text)
        self.outputs[name] = proc.stdout + proc.stderr
        return proc, calls

    def run_all(self, phases=PHASES):
        for phase in phases:
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
        # clean removes the file: a copy for the tests
        self.conf_copy = os.path.join(self.root, 'post-config.conf')
        with open(self.conf_copy, 'w') as f:
            f.write(self.service_text)
        self.conf_mode = os.stat(self.conf).st_mode & 0o777
        self.state_dir_mode = os.stat(self.state_dir).st_mode & 0o777
        self.loaded = load_service_conf(self.conf)

    def iniget(self, path, section, option, cwd=None):
        """The value as DevStack's iniget (the stand-in) reads it."""
        script = ('source "$DEVSTACK_STANDIN_DIR/devstack_functions.sh"; '
                  'iniget %s %s %s' % (shlex.quote(path),
                                       shlex.quote(section),
                                       shlex.quote(option)))
        proc = subprocess.run(['bash', '-c', script], env=self.env,
                              cwd=cwd or self.cwd, capture_output=True,
                              text=True, check=True, timeout=60)
        return proc.stdout.rstrip('\n')


def _read_log(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
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


def oslo_values(path, wanted):
    """What oslo.config reads from ``path``: {(group, option): value}."""
    conf = cfg.ConfigOpts()
    for group, option in wanted:
        conf.register_opt(cfg.StrOpt(option), group=group)
    conf(['--config-file', path], project='devstack-test',
         default_config_files=[], default_config_dirs=[])
    try:
        return {(group, option): conf[group][option]
                for group, option in wanted}
    finally:
        conf.reset()


# Every option the plugin writes into the service's file, and what the
# default node (no database service, no e-mail) means by it
def expected_service_options(node):
    return {
        ('DEFAULT', 'debug'): 'True',
        ('DEFAULT', 'transport_url'): RABBIT_URL,
        ('DEFAULT', 'region_name'): 'RegionOne',
        ('DEFAULT', 'rules'): 'default',
        ('oslo_messaging_notifications', 'transport_url'): RABBIT_URL,
        ('listener', 'pool'): 'nova-error-notifier',
        ('delivery', 'state_dir'): node.state_dir,
        ('rule:default', 'events'): '*',
        ('rule:default', 'receivers'): 'log',
        ('receiver:log', 'driver'): 'log',
        ('service_credentials', 'auth_type'): 'password',
        ('service_credentials', 'auth_url'): KEYSTONE_URI,
        ('service_credentials', 'username'): 'nova',
        ('service_credentials', 'password'): 'service-secret',
        ('service_credentials', 'project_name'): 'service',
        ('service_credentials', 'user_domain_name'): 'Default',
        ('service_credentials', 'project_domain_name'): 'Default',
    }


SECRETS = ('rabbit-secret', 'service-secret', 'db-secret')


@pytest.fixture(scope='module')
def stack(tmp_path_factory):
    node = Stack(tmp_path_factory.mktemp('devstack'), bin_dir=BIN_DIR)
    node.run_all()
    return node


@pytest.fixture(scope='module')
def mysql_stack(tmp_path_factory):
    node = Stack(tmp_path_factory.mktemp('devstack-mysql'),
                 ENABLED_SERVICES=WITH_MYSQL)
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
        assert stack.nova_changed[phase] == [], phase


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
    assert named(calls, 'async_wait') == [['configure_neutron_nova']]
    at_wait = os.path.join(stack.root, 'nova.conf.at-configure_neutron_nova')
    with open(at_wait) as f:
        assert 'messagingv2' not in f.read()
    assert stack.nova[stack.nova_conf]['oslo_messaging_notifications'][
        'driver'] == 'messagingv2'


def test_cell_conductor_notifies_on_the_top_bus(stack):
    # Its own transport_url is the cell's virtual host: the notifications
    # must go where the service listens.
    cell = stack.nova[stack.cell_conf]
    assert cell['oslo_messaging_notifications']['transport_url'] == \
        RABBIT_URL
    assert stack.service['oslo_messaging_notifications'][
        'transport_url'] == RABBIT_URL


def test_nova_configured_at_post_config_only(stack):
    for phase, changed in stack.nova_changed.items():
        if phase == 'stack post-config':
            assert changed == sorted([stack.nova_conf, stack.cpu_conf,
                                      stack.cell_conf])
        else:
            assert changed == [], phase


def test_service_conf(stack):
    conf = stack.service
    for (section, option), value in expected_service_options(stack).items():
        assert conf[section][option] == value, (section, option)
    assert ['nova-error-notifier', stack.conf, 'DEFAULT'] in named(
        stack.calls['stack post-config'], 'iniset_rpc_backend')
    assert not conf.has_section('receiver:email')
    # No database service: the SQLite default, in the state directory
    assert not conf.has_option('database', 'connection')
    assert ['setup_logging', stack.conf] in stack.calls['stack post-config']
    # Passwords inside: not world-readable
    assert stack.conf_mode == 0o640
    # As the outbox wants its directory
    assert stack.state_dir_mode == 0o700


def test_events_star_survives_the_unquoted_echo(stack):
    # stack.sh's directory has files: DevStack's iniset would have written
    # their names. The stand-in really does:
    probe = os.path.join(stack.root, 'probe.conf')
    subprocess.run(
        ['bash', '-c', 'source "$DEVSTACK_STANDIN_DIR/devstack_functions.sh"'
         ' && iniset "$0" rule:default events "*"', probe],
        env=stack.env, cwd=stack.cwd, check=True, timeout=60)
    assert read_ini(probe)['rule:default']['events'] == ' '.join(
        sorted(DEVSTACK_FILES))
    # The plugin's survives, and the service reads it as "every event"
    assert 'events = *\n' in stack.service_text.split('[rule:default]')[1]
    assert [rule.name for rule in stack.loaded.ruleset.rules] == ['default']


def test_values_read_back_with_iniget(stack, tmp_path):
    # DevStack's iniget echoes unquoted too: read where "*" matches nothing
    expected = expected_service_options(stack)
    for (section, option), value in expected.items():
        assert stack.iniget(stack.conf_copy, section, option,
                            cwd=str(tmp_path)) == value, (section, option)
    assert oslo_values(stack.conf_copy, list(expected)) == expected


def test_service_conf_generated_from_sample(stack):
    # The generator next to the interpreter wrote it: no fallback
    assert named(stack.calls['stack post-config'], 'warn') == []
    assert '# From nova_error_notifier' in stack.service_text
    assert '#group_wait = 5.0' in stack.service_text


def test_service_conf_passes_the_service_checks(stack):
    settings = stack.loaded
    assert sorted(settings.receivers) == ['log']
    assert [rule.name for rule in settings.ruleset.rules] == ['default']


def test_no_database_service_no_database(stack):
    everything = [call for calls in stack.calls.values() for call in calls]
    assert named(everything, 'recreate_database') == []
    assert named(everything, 'database_connection_url') == []
    assert named(everything, 'program') == []


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
    assert not os.path.exists(os.path.join(
        stack.units, 'devstack@nova-error-notifier.service'))


def test_clean_removes_conf_and_state(stack):
    assert not os.path.exists(stack.conf)
    assert not os.path.exists(stack.conf_dir)
    assert not os.path.exists(stack.state_dir)
    # Nova's files are lib/nova's business
    assert os.path.exists(stack.nova_conf)


def test_mysql_database_created_at_post_config(mysql_stack):
    calls = mysql_stack.calls['stack post-config']
    assert named(calls, 'recreate_database') == [['nova_error_notifier']]
    # DevStack's lib/databases/mysql, with the clients it runs
    assert mysql_stack.programs['stack post-config'] == [
        ['mysql', '-uroot', '-pdb-secret', '-h127.0.0.1', '-e',
         'DROP DATABASE IF EXISTS nova_error_notifier;'],
        ['mysql', '-uroot', '-pdb-secret', '-h127.0.0.1', '-e',
         'CREATE DATABASE nova_error_notifier CHARACTER SET utf8;'],
    ]
    url = ('mysql+pymysql://root:db-secret@127.0.0.1/nova_error_notifier'
           '?charset=utf8')
    assert mysql_stack.service['database']['connection'] == url
    assert oslo_values(mysql_stack.conf_copy,
                       [('database', 'connection')]) == {
        ('database', 'connection'): url}
    # The SQLite directory stays set, unused
    assert mysql_stack.service['delivery']['state_dir'] == \
        mysql_stack.state_dir


def test_mysql_db_sync_before_start(mysql_stack):
    calls = mysql_stack.calls['stack extra']
    sync = ['program', 'nova-error-notifier-manage', '--config-file',
            mysql_stack.conf, 'db', 'sync']
    start = [c for c in calls if c[0] == 'run_process']
    assert sync in calls and len(start) == 1
    assert calls.index(sync) < calls.index(start[0])
    # Only there
    for phase, programs in mysql_stack.programs.items():
        if phase not in ('stack post-config', 'stack extra'):
            assert programs == [], phase
    assert [p for p in mysql_stack.programs['stack post-config']
            if p[0] == 'nova-error-notifier-manage'] == []
    # It was given the file with the connection
    synced = read_ini(os.path.join(mysql_stack.root,
                                   'nova-error-notifier-manage.conf'))
    assert synced['database']['connection'].startswith(
        'mysql+pymysql://root:db-secret@127.0.0.1/nova_error_notifier?')


def test_passwords_not_in_the_trace(mysql_stack, stack):
    # plugin.sh traces its commands (stack.sh's log): none shows a password
    for node in (mysql_stack, stack):
        post_config = node.outputs['stack post-config']
        assert '+ configure_nova_error_notifier' in post_config
        assert '+ setup_logging ' + node.conf in post_config
        for phase, output in node.outputs.items():
            for secret in SECRETS:
                assert secret not in output, (phase, secret)


def test_postgresql(tmp_path):
    node = Stack(tmp_path, ENABLED_SERVICES=NO_DATABASE + ',postgresql',
                 DATABASE_HOST='192.0.2.20')
    node.run_all(PHASES[:4])
    assert node.programs['stack post-config'] == [
        ['psql', '-h192.0.2.20', '-Uroot', '-dtemplate1', '-c',
         'DROP DATABASE IF EXISTS nova_error_notifier'],
        ['createdb', '-h', '192.0.2.20', '-Uroot', '-l', 'C', '-T',
         'template0', '-E', 'utf8', 'nova_error_notifier'],
    ]
    # DevStack's URL, with the driver DevStack installs (psycopg2) named:
    # SQLAlchemy 2.1's default for postgresql:// is psycopg 3
    assert named(node.calls['stack post-config'],
                 'database_connection_url') == [['nova_error_notifier']]
    assert node.service['database']['connection'] == (
        'postgresql+psycopg2://root:db-secret@192.0.2.20/nova_error_notifier'
        '?client_encoding=utf8')
    assert ['nova-error-notifier-manage', '--config-file', node.conf, 'db',
            'sync'] in node.programs['stack extra']


def test_database_service_not_used_when_told(tmp_path):
    node = Stack(tmp_path, ENABLED_SERVICES=WITH_MYSQL,
                 NOVA_ERROR_NOTIFIER_USE_DATABASE='false')
    node.run_all(PHASES[:4])
    assert not node.service.has_option('database', 'connection')
    assert node.service['delivery']['state_dir'] == node.state_dir
    everything = [call for calls in node.calls.values() for call in calls]
    assert named(everything, 'recreate_database') == []
    assert named(everything, 'program') == []


def test_db_sync_for_a_connection_from_local_conf(tmp_path):
    # No database service here, but local.conf's [[post-config|...]]
    # points the service at one: db sync runs at extra all the same.
    node = Stack(tmp_path)
    node.run('stack', 'post-config')
    with open(node.conf, 'a') as f:
        f.write('\n[database]\nconnection = mysql+pymysql://u:p@db/x\n')
    node.run('stack', 'extra')
    assert node.programs['stack extra'] == [
        ['nova-error-notifier-manage', '--config-file', node.conf, 'db',
         'sync']]


def test_bad_database_name_dies(tmp_path):
    node = Stack(tmp_path, ENABLED_SERVICES=WITH_MYSQL,
                 NOVA_ERROR_NOTIFIER_DATABASE_NAME='x; DROP DATABASE nova')
    proc, calls = node.run('stack', 'post-config', check=False)
    assert proc.returncode != 0
    assert len(named(calls, 'die')) == 1
    assert named(calls, 'recreate_database') == []


HOSTILE = {
    # value: where it goes
    'SERVICE_PASSWORD': ' p*ss  w$rd #1 \\$x \\ & "',
    'RABBIT_PASSWORD': 'r*bbit$HOME',
    'REGION_NAME': '-n',
    'SERVICE_PROJECT_NAME': '[a-z]*  ?',
    'NOVA_ERROR_NOTIFIER_EMAIL_TO': '"ops"@example.org, -e root',
    'NOVA_ERROR_NOTIFIER_EMAIL_FROM': "'alerts@example.org'",
    'NOVA_ERROR_NOTIFIER_POOL': 'pool\tnova ${x}',
    'NOVA_ERROR_NOTIFIER_SMTP_HOST': 'smtp.example.org',
    'KEYSTONE_SERVICE_URI': 'http://192.0.2.10/identity#frag;x',
}


def test_hostile_values_reach_the_service_unchanged(tmp_path):
    node = Stack(tmp_path, ENABLED_SERVICES=WITH_MYSQL,
                 DATABASE_PASSWORD='db*$pw d', **HOSTILE)
    node.run('stack', 'post-config')
    url = ('rabbit://stackrabbit:%s@192.0.2.10:5672/'
           % HOSTILE['RABBIT_PASSWORD'])
    expected = {
        ('DEFAULT', 'transport_url'): url,
        ('oslo_messaging_notifications', 'transport_url'): url,
        ('DEFAULT', 'region_name'): '-n',
        ('listener', 'pool'): HOSTILE['NOVA_ERROR_NOTIFIER_POOL'],
        ('rule:default', 'events'): '*',
        ('receiver:email', 'to'): HOSTILE['NOVA_ERROR_NOTIFIER_EMAIL_TO'],
        ('email', 'from_address'): HOSTILE['NOVA_ERROR_NOTIFIER_EMAIL_FROM'],
        ('service_credentials', 'password'): HOSTILE['SERVICE_PASSWORD'],
        ('service_credentials', 'project_name'):
            HOSTILE['SERVICE_PROJECT_NAME'],
        ('service_credentials', 'auth_url'): HOSTILE['KEYSTONE_SERVICE_URI'],
        ('database', 'connection'):
            'mysql+pymysql://root:db*$pw d@127.0.0.1/nova_error_notifier'
            '?charset=utf8',
    }
    assert oslo_values(node.conf, list(expected)) == expected
    # Nova reads the same URL
    cell = oslo_values(node.cell_conf,
                       [('oslo_messaging_notifications', 'transport_url')])
    assert cell == {('oslo_messaging_notifications', 'transport_url'): url}
    for secret in ('p*ss', 'r*bbit', 'db*'):
        assert secret not in node.outputs['stack post-config']


def test_line_breaks_refused(tmp_path):
    node = Stack(tmp_path, REGION_NAME='RegionOne\n[DEFAULT]\ndebug = x')
    proc, calls = node.run('stack', 'post-config', check=False)
    assert proc.returncode != 0
    assert len(named(calls, 'die')) == 1
    with open(node.conf) as f:
        assert 'debug = x' not in f.read()


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
    no_bin = tmp_path / 'empty' / 'bin'
    no_bin.mkdir(parents=True)
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


@pytest.mark.parametrize('backend', databases.SERVERS)
def test_real_database_server(backend, tmp_path):
    # DevStack's database functions with the real clients against the test
    # servers, then the real db sync: the outbox is at the newest schema.
    server = databases.server(backend)
    try:
        server.check()
    except databases.Unreachable as exc:
        pytest.fail(str(exc), pytrace=False)
    admin = databases.admin_url(backend)
    name = databases.new_name()
    home = tmp_path / 'node'
    home.mkdir()
    default_port = 3306 if backend == 'mariadb' else 5432
    port = str(admin.port or default_port)
    # DevStack puts DATABASE_HOST into the URL (and gives it to psql as
    # it is): a port there only when the server is not on the usual one
    host = admin.host
    if int(port) != default_port:
        host = '%s:%s' % (admin.host, port)
    env = {
        'ENABLED_SERVICES': NO_DATABASE + (
            ',mysql' if backend == 'mariadb' else ',postgresql'),
        'DATABASE_USER': admin.username,
        'DATABASE_PASSWORD': admin.password,
        'MYSQL_HOST': admin.host,
        'DATABASE_HOST': host,
        'MYSQL_TCP_PORT': port,
        'PGPORT': port,
        'NOVA_ERROR_NOTIFIER_DATABASE_NAME': name,
    }
    # As DevStack's configure_database_postgresql leaves it for psql
    pgpass = home / '.pgpass'
    pgpass.write_text('*:*:*:%s:%s\n' % (admin.username, admin.password))
    pgpass.chmod(0o600)
    node = Stack(home, bin_dir=BIN_DIR, real_clients=True, **env)
    try:
        node.run_all(PHASES[:4])
        assert server.exists(name)
        connection = read_ini(node.conf)['database']['connection']
        engine = sa.create_engine(connection, poolclass=sa.pool.NullPool)
        try:
            assert migration.version(engine) == (migration.head(), True)
        finally:
            engine.dispose()
    finally:
        server.drop(name)


def test_plugin_files_are_shell():
    # tox -e pep8 runs shellcheck and bashate on them
    for name in ('plugin.sh', 'settings', 'override-defaults'):
        with open(os.path.join(PLUGIN_DIR, name)) as f:
            assert f.readline() == '#!/bin/bash\n', name
        proc = subprocess.run(['bash', '-n', os.path.join(PLUGIN_DIR, name)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
