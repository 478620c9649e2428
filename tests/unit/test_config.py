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
"""Loading and checking rules and receivers: nova_error_notifier.config."""

import os
import shutil
import subprocess
import sys
import textwrap
import uuid

from oslo_config import cfg
import pytest
from stevedore import _cache as stevedore_cache
from stevedore import extension as stevedore_extension

from nova_error_notifier import config
from nova_error_notifier.drivers import log as log_driver
from nova_error_notifier import opts
from nova_error_notifier import receivers as receivers_mod
from nova_error_notifier import record as rec

EXAMPLE = '''\
    [DEFAULT]
    transport_url = rabbit://nova:secret@controller:5672/
    rules = build_failures, everything_else

    [rule:build_failures]
    events = compute_task.build_instances, notifier.instance.create_failed
    receivers = ops_log

    [rule:everything_else]
    events = *
    exclude_exceptions = KeyPairExists, AggregateNameExists
    receivers = ops_log

    [receiver:ops_log]
    driver = log
    '''

# One valid rule and receiver every broken snippet below can lean on.
BASE = '''\
    [rule:ok]
    events = *
    receivers = ops_log

    [receiver:ops_log]
    driver = log
    '''


def make_conf(tmp_path, text, name='nen.conf'):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(['--config-file', str(path)], project='nova_error_notifier')
    return conf


def load(tmp_path, text):
    return config.load(make_conf(tmp_path, text))


def problems_of(tmp_path, text):
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


def record(event_type, synthetic=(), exception=None):
    return rec.ErrorRecord(event_type=event_type, priority='ERROR',
                           format='legacy', synthetic_events=synthetic,
                           exception=exception)


def test_example_configuration_loads(tmp_path):
    settings = load(tmp_path, EXAMPLE)
    assert settings.warnings == []
    assert [r.name for r in settings.ruleset.rules] == [
        'build_failures', 'everything_else']
    assert sorted(settings.receivers) == ['ops_log']
    receiver = settings.receivers['ops_log']
    assert receiver.driver_name == 'log'
    assert isinstance(receiver.driver, log_driver.LogDriver)
    assert receiver.include_details is False

    ruleset = settings.ruleset
    build = ruleset.match(record('compute_task.build_instances',
                                 exception='NoValidHost'))
    assert [(r.rule, r.receiver) for r in build.routes] == [
        ('build_failures', 'ops_log')]
    created = ruleset.match(record('instance.create.error',
                                   synthetic=(rec.CREATE_FAILED,)))
    assert [r.name for r in created.applied] == ['build_failures']
    keypair = ruleset.match(record('compute.exception',
                                   exception='KeyPairExists'))
    assert keypair.routes == ()
    other = ruleset.match(record('compute.libvirt.error',
                                 exception='libvirtError'))
    assert [(r.rule, r.receiver) for r in other.routes] == [
        ('everything_else', 'ops_log')]


def test_no_rules_use_the_log_receiver(tmp_path):
    settings = load(tmp_path, '''\
        [DEFAULT]
        ''')
    assert [r.name for r in settings.ruleset.rules] == ['default']
    assert list(settings.receivers) == ['log']
    assert isinstance(settings.receivers['log'].driver, log_driver.LogDriver)


def test_empty_receivers_mute(tmp_path):
    settings = load(tmp_path, '''\
        [DEFAULT]
        rules = quiet

        [rule:quiet]
        events = *
        receivers =
        ''')
    assert settings.receivers == {}
    assert settings.ruleset.match(record('resize_instance')).routes == ()


@pytest.mark.parametrize('snippet, expected', [
    pytest.param('''\
        [DEFAULT]
        rules = ok, paging
        [rule:paging]
        events = instance.create.error
        receivers = pager
        ''', ["receiver 'pager'", '[receiver:pager]'],
        id='unknown-receiver'),
    pytest.param('''\
        [DEFAULT]
        rules = ok, mailing
        [rule:mailing]
        events = instance.create.error
        receivers = mail
        [receiver:mail]
        driver = emial
        ''', ['[receiver:mail]', "'emial'", 'not installed'],
        id='unknown-driver'),
    pytest.param('''\
        [DEFAULT]
        rules = ok, driverless
        [rule:driverless]
        events = instance.create.error
        receivers = nodriver
        [receiver:nodriver]
        include_details = true
        ''', ['[receiver:nodriver]', 'driver is not set'],
        id='receiver-without-driver'),
    pytest.param('''\
        [DEFAULT]
        rules = ok, spaced
        [rule:spaced]
        events = compute task
        receivers = ops_log
        ''', ['[rule:spaced]', "'compute task'"], id='bad-glob'),
    pytest.param('''\
        [DEFAULT]
        rules = ok, brackets
        [rule:brackets]
        events = instance.[create.error
        receivers = ops_log
        ''', ['[rule:brackets]', 'unbalanced'], id='unbalanced-bracket'),
    pytest.param('''\
        [DEFAULT]
        rules = ok, empty
        [rule:empty]
        events =
        receivers = ops_log
        ''', ['[rule:empty]', 'events is empty'], id='empty-events'),
    pytest.param('''\
        [DEFAULT]
        rules = ok, noevents
        [rule:noevents]
        receivers = ops_log
        ''', ['[rule:noevents]', 'events is empty'], id='missing-events'),
    pytest.param('''\
        [DEFAULT]
        rules = ok, noreceivers
        [rule:noreceivers]
        events = instance.create.error
        ''', ['[rule:noreceivers]', 'receivers is not set'],
        id='receivers-missing'),
    pytest.param('''\
        [DEFAULT]
        rules = ok, ghost
        ''', ["rule 'ghost'", '[rule:ghost]', 'no'],
        id='rule-without-section'),
    pytest.param('''\
        [DEFAULT]
        rules = ok, foo
        [rule:foo]
        events = notifier.instance.foo
        receivers = ops_log
        ''', ['[rule:foo]', "'notifier.instance.foo'",
              'notifier.instance.create_failed'],
        id='unknown-synthetic'),
    pytest.param('''\
        [DEFAULT]
        rules = ok, maybe
        [rule:maybe]
        events = resize_instance
        receivers = ops_log
        continue = maybe
        ''', ['[rule:maybe]', 'continue', "'maybe'"], id='bad-continue'),
    pytest.param('''\
        [DEFAULT]
        rules = ok, badexc
        [rule:badexc]
        events = *
        include_exceptions = No Valid Host
        receivers = ops_log
        ''', ['[rule:badexc]', "'No Valid Host'"], id='bad-exception-name'),
    pytest.param('''\
        [DEFAULT]
        rules = ok, ok
        ''', ["rule 'ok'", 'more than once'], id='duplicate-rule'),
    pytest.param('''\
        [DEFAULT]
        rules = ok, details
        [rule:details]
        events = resize_instance
        receivers = loud
        [receiver:loud]
        driver = log
        include_details = sometimes
        ''', ['[receiver:loud]', "'sometimes'"], id='bad-include-details'),
])
def test_each_problem_is_reported(tmp_path, snippet, expected):
    problems = problems_of(tmp_path, textwrap.dedent(snippet) +
                           textwrap.dedent(BASE))
    assert len(problems) == 1, problems
    for text in expected:
        assert text in problems[0], (text, problems[0])


BROKEN = '''\
    [DEFAULT]
    rules = ok, paging, mailing, spaced, empty, noreceivers, ghost, foo, maybe

    [rule:ok]
    events = *
    receivers = ops_log

    [rule:paging]
    events = instance.create.error
    receivers = pager

    [rule:mailing]
    events = resize_instance
    receivers = mail

    [rule:spaced]
    events = compute task
    receivers = ops_log

    [rule:empty]
    events =
    receivers = ops_log

    [rule:noreceivers]
    events = compute.exception

    [rule:foo]
    events = notifier.instance.foo
    receivers = ops_log

    [rule:maybe]
    events = compute.libvirt.error
    receivers = ops_log
    continue = maybe

    [receiver:ops_log]
    driver = log

    [receiver:mail]
    driver = emial
    '''

# One marker per problem of BROKEN: each must appear in exactly one problem.
BROKEN_MARKERS = {
    'unknown receiver': "'pager'",
    'unknown driver': "'emial'",
    'bad glob': "'compute task'",
    'empty events': '[rule:empty]',
    'receivers missing': '[rule:noreceivers]',
    'rule without section': "'ghost'",
    'unknown synthetic': "'notifier.instance.foo'",
    'invalid bool': "'maybe'",
}


def test_rule_problems_are_all_reported_at_once(tmp_path):
    problems = problems_of(tmp_path, BROKEN)
    for what in ('bad glob', 'empty events', 'receivers missing',
                 'rule without section', 'unknown synthetic',
                 'invalid bool'):
        hits = [p for p in problems if BROKEN_MARKERS[what] in p]
        assert len(hits) == 1, (what, problems)


def test_receiver_problems_are_all_reported_at_once(tmp_path):
    problems = problems_of(tmp_path, '''\
        [DEFAULT]
        rules = ok, paging, mailing
        [rule:ok]
        events = *
        receivers = ops_log, nodriver
        [rule:paging]
        events = instance.create.error
        receivers = pager
        [rule:mailing]
        events = resize_instance
        receivers = mail
        [receiver:ops_log]
        driver = log
        [receiver:nodriver]
        [receiver:mail]
        driver = emial
        ''')
    assert len(problems) == 3, problems
    assert any("'pager'" in p for p in problems)
    assert any("'emial'" in p and '[receiver:mail]' in p for p in problems)
    assert any('[receiver:nodriver]' in p for p in problems)


def test_every_problem_is_reported_at_once(tmp_path):
    # Broken rules must not hide the problems of the receivers they name
    # (this failed on the committed code: see the report).
    problems = problems_of(tmp_path, BROKEN)
    missing = [what for what, marker in sorted(BROKEN_MARKERS.items())
               if not any(marker in p for p in problems)]
    assert not missing, (
        'config.load did not report %s; it reported only: %s'
        % (', '.join(missing), problems))
    assert len(problems) == len(BROKEN_MARKERS), problems


def test_bad_continue_does_not_hide_other_problems_of_the_rule(tmp_path):
    # One unreadable option must not hide the rule's other problems (this
    # failed on the committed code: see the report).
    problems = problems_of(tmp_path, '''\
        [DEFAULT]
        rules = bad
        [rule:bad]
        events = compute task, notifier.instance.foo
        receivers = ops_log
        continue = maybe
        [receiver:ops_log]
        driver = log
        ''')
    assert any("'maybe'" in p for p in problems), problems
    missing = [m for m in ("'compute task'", "'notifier.instance.foo'")
               if not any(m in p for p in problems)]
    assert not missing, (
        'with "continue = maybe" in [rule:bad], its events problems %s '
        'are not reported; reported only: %s'
        % (missing, problems))


def test_config_error_message_has_one_line_per_problem(tmp_path):
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, '''\
            [DEFAULT]
            rules = ghost, spaced
            [rule:spaced]
            events = compute task
            receivers = ops_log
            [receiver:ops_log]
            driver = log
            ''')
    assert len(info.value.problems) == 2
    assert str(info.value).splitlines() == info.value.problems


def test_unlisted_rule_section_is_a_warning(tmp_path):
    settings = load(tmp_path, EXAMPLE + '''
    [rule:forgotten]
    events = *
    receivers = nowhere
    ''')
    assert len(settings.warnings) == 1
    assert '[rule:forgotten]' in settings.warnings[0]
    assert 'not listed' in settings.warnings[0]
    # It is not applied, and its unknown receiver is no error.
    assert [r.name for r in settings.ruleset.rules] == [
        'build_failures', 'everything_else']
    assert sorted(settings.receivers) == ['ops_log']


def test_rule_sections_without_rules_option_give_a_warning(tmp_path):
    # With `rules` unset, [rule:x] sections must not be ignored silently
    # (this failed on the committed code: see the report).
    settings = load(tmp_path, '''\
        [DEFAULT]

        [rule:pages]
        events = *
        receivers = ops_log

        [receiver:ops_log]
        driver = log
        ''')
    assert [r.name for r in settings.ruleset.rules] == ['default']
    assert any('[rule:pages]' in w for w in settings.warnings), (
        '[rule:pages] is ignored without any warning when [DEFAULT] '
        'rules is unset; warnings: %r' % (settings.warnings,))


# --- third-party drivers, installed as real entry points -------------------

DRIVER_MODULE = '''\
from oslo_config import cfg

from nova_error_notifier.drivers import base

CONSTRUCTED = []


class PagerDriver(base.Driver):
    OPTS = [cfg.StrOpt('endpoint', help='Where pages go.')]

    def __init__(self, conf, receiver):
        super().__init__(conf, receiver)
        CONSTRUCTED.append(receiver)

    def check(self):
        if not self.options.endpoint:
            raise base.DriverConfigError('endpoint is required')

    def notify(self, alert):
        pass


class ExplodingDriver(base.Driver):
    def __init__(self, conf, receiver):
        raise RuntimeError('kaboom in the constructor')

    def notify(self, alert):
        pass


class NotADriver:
    pass
'''

BROKEN_MODULE = '''\
raise ImportError('no module named pagerlib (needed by the driver)')
'''


class ThirdPartyDrivers:
    def __init__(self, root, module, broken_module):
        self.root = root
        self.module = module
        self.broken_module = broken_module


def _write_distribution(root, module, broken_module):
    (root / (module + '.py')).write_text(DRIVER_MODULE)
    (root / (broken_module + '.py')).write_text(BROKEN_MODULE)
    dist = root / ('%s-1.0.dist-info' % module)
    dist.mkdir()
    (dist / 'METADATA').write_text('Metadata-Version: 2.1\nName: %s\n'
                                   'Version: 1.0\n' % module)
    (dist / 'entry_points.txt').write_text(textwrap.dedent('''\
        [nova_error_notifier.drivers]
        pager = {m}:PagerDriver
        boom = {m}:ExplodingDriver
        notadriver = {m}:NotADriver
        brokenimport = {b}:Driver
        '''.format(m=module, b=broken_module)))


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A package on sys.path that registers four drivers.

    stevedore caches entry points twice: per namespace in
    ExtensionManager.ENTRY_POINT_CACHE (for the whole process) and per
    sys.path in stevedore._cache (in memory, and on disk under
    XDG_CACHE_HOME). Both are replaced by empty ones for the test, and
    restored afterwards so that later tests do not see these drivers.
    """
    root = tmp_path / 'site'
    root.mkdir()
    tag = uuid.uuid4().hex[:8]
    module = 'nen_fake_drivers_%s' % tag
    broken_module = 'nen_broken_driver_%s' % tag
    _write_distribution(root, module, broken_module)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(stevedore_extension.ExtensionManager,
                        'ENTRY_POINT_CACHE', {})
    fresh = stevedore_cache.Cache(cache_dir=str(tmp_path / 'ep-cache'))
    monkeypatch.setattr(stevedore_cache, 'get_group_all',
                        fresh.get_group_all)
    monkeypatch.setattr(stevedore_cache, 'get_group_named',
                        fresh.get_group_named)
    yield ThirdPartyDrivers(root, module, broken_module)
    sys.modules.pop(module, None)
    sys.modules.pop(broken_module, None)


def _driver_conf(driver, extra=''):
    return '''\
        [DEFAULT]
        rules = all

        [rule:all]
        events = *
        receivers = pg

        [receiver:pg]
        driver = %s
        %s
        ''' % (driver, extra)


def test_third_party_driver_loads(tmp_path, third_party):
    # The positive control: the entry points written by the fixture are
    # really found, and the driver's own options live in its receiver group.
    settings = load(tmp_path, _driver_conf('pager',
                                           'endpoint = https://pager/x'))
    receiver = settings.receivers['pg']
    assert receiver.driver_name == 'pager'
    assert type(receiver.driver).__module__ == third_party.module
    assert receiver.driver.options.endpoint == 'https://pager/x'
    assert sys.modules[third_party.module].CONSTRUCTED == ['pg']


def test_third_party_driver_check_failure(tmp_path, third_party):
    problems = problems_of(tmp_path, _driver_conf('pager'))
    assert len(problems) == 1, problems
    assert '[receiver:pg]' in problems[0]
    assert 'pager' in problems[0]
    assert 'endpoint is required' in problems[0]


def test_driver_raising_at_construction_stops_start_up(tmp_path,
                                                       third_party):
    problems = problems_of(tmp_path, _driver_conf('boom'))
    assert len(problems) == 1, problems
    assert '[receiver:pg]' in problems[0]
    assert "'boom'" in problems[0]
    assert 'RuntimeError' in problems[0]
    assert 'kaboom in the constructor' in problems[0]


def test_driver_failing_to_import_stops_start_up(tmp_path, third_party):
    problems = problems_of(tmp_path, _driver_conf('brokenimport'))
    assert len(problems) == 1, problems
    assert '[receiver:pg]' in problems[0]
    assert "'brokenimport'" in problems[0]
    assert 'failed to load' in problems[0]
    assert 'no module named pagerlib' in problems[0]


def test_entry_point_that_is_not_a_driver(tmp_path, third_party):
    problems = problems_of(tmp_path, _driver_conf('notadriver'))
    assert len(problems) == 1, problems
    assert "'notadriver'" in problems[0]
    assert 'not a subclass' in problems[0]


def test_load_driver_class_direct(third_party):
    driver_class = receivers_mod.load_driver_class('pager')
    assert driver_class.__name__ == 'PagerDriver'
    assert receivers_mod.load_driver_class('log') is log_driver.LogDriver
    with pytest.raises(ValueError) as info:
        receivers_mod.load_driver_class('emial')
    assert "'emial'" in str(info.value)


def _replay_script():
    path = shutil.which('nova-error-notifier-replay',
                        path=os.path.dirname(sys.executable))
    assert path, 'nova-error-notifier-replay is not installed next to %s' % (
        sys.executable)
    return path


def test_replay_exits_2_when_a_third_party_driver_breaks(tmp_path):
    root = tmp_path / 'site'
    root.mkdir()
    tag = uuid.uuid4().hex[:8]
    _write_distribution(root, 'nen_fake_drivers_%s' % tag,
                        'nen_broken_driver_%s' % tag)
    conf_path = tmp_path / 'broken.conf'
    conf_path.write_text(textwrap.dedent('''\
        [DEFAULT]
        rules = all

        [rule:all]
        events = *
        receivers = pg, pb

        [receiver:pg]
        driver = boom

        [receiver:pb]
        driver = brokenimport
        '''))
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [str(root)] + [p for p in [env.get('PYTHONPATH')] if p])
    env['XDG_CACHE_HOME'] = str(tmp_path / 'xdg-cache')
    env['HOME'] = str(tmp_path)
    proc = subprocess.run([_replay_script(), '--config-file',
                           str(conf_path)],
                          cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stdout.splitlines()
             if 'Configuration error:' in line]
    assert len(lines) == 2, proc.stdout
    assert any("'boom'" in line and 'kaboom in the constructor' in line
               for line in lines), lines
    assert any("'brokenimport'" in line and 'failed to load' in line
               for line in lines), lines
    assert 'messages,' not in proc.stdout
