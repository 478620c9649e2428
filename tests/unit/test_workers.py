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
"""The process model's pieces that need no process: roles, generations."""

import os
import stat

from oslo_config import cfg
import pytest

from nova_error_notifier.cmd import service as cmd_service
from nova_error_notifier import config as config_mod
from nova_error_notifier import service
from nova_error_notifier import workers


def text(receiver, driver='log'):
    return '\n'.join([
        '[DEFAULT]', 'transport_url = rabbit://guest:guest@127.0.0.1:1/',
        'rules = all', '[rule:all]', 'events = *',
        'receivers = %s' % receiver, '[receiver:%s]' % receiver,
        'driver = %s' % driver, ''])


def parsed(*args):
    conf = cmd_service.build_conf()
    conf(list(args), project=service.PROJECT, default_config_files=[])
    return conf


@pytest.mark.parametrize('given, expected', [
    ([], list(workers.ROLES)),
    (['--role', 'router'], ['router']),
    (['--role', 'delivery', '--role', 'listener'], ['listener', 'delivery']),
])
def test_roles(given, expected):
    assert workers.roles_of(parsed(*given)) == expected


def test_an_unknown_role_is_refused_escaped():
    with pytest.raises(service.StartupError) as caught:
        workers.roles_of(parsed('--role', 'rou\nter'))
    assert 'not a role' in str(caught.value)
    assert '\n' not in str(caught.value)


def test_config_arguments_are_replaced_by_the_copies():
    args = ['--config-file', 'a.conf', '--config-file=b.conf',
            '--config-dir', 'd', '--config-dir=e', '--log-file', 'x.log',
            '--role', 'router']
    assert workers._strip_config_args(args) == ['--log-file', 'x.log',
                                                '--role', 'router']


@pytest.fixture
def generations(tmp_path):
    main = tmp_path / 'main.conf'
    main.write_text(text('first'))
    extra = tmp_path / 'conf.d'
    extra.mkdir()
    (extra / '10-delivery.conf').write_text(
        '[delivery]\nstate_dir = %s\n' % tmp_path)
    args = ['--config-file', str(main), '--config-dir', str(extra)]
    made = workers.Generations(args, shared=False)
    made.paths = main, extra
    yield made
    made.cleanup()
    assert not os.path.exists(made.root)


def test_a_sound_file_becomes_the_next_generation(generations):
    main, _ = generations.paths
    assert generations.current == 0
    assert stat.S_IMODE(os.stat(generations.root).st_mode) == 0o700
    main.write_text(text('second'))
    generation, settings = generations.offer(cmd_service.build_conf)
    assert generation == generations.current == 1
    assert sorted(settings.receivers) == ['second']
    # The copies are what every process loads: a change of the file after
    # the reload does not reach them.
    main.write_text(text('later'))
    again = generations.load(cmd_service.build_conf, 1)
    assert sorted(again.receivers) == ['second']
    copies = sorted(os.listdir(os.path.join(generations.root, '1')))
    assert copies == ['0000-main.conf', '0001-10-delivery.conf']
    for name in copies:
        mode = os.stat(os.path.join(generations.root, '1', name)).st_mode
        assert stat.S_IMODE(mode) == 0o600


def test_a_broken_file_changes_nothing(generations):
    main, _ = generations.paths
    main.write_text(text('typo', driver='emial'))
    with pytest.raises(config_mod.ConfigError) as caught:
        generations.offer(cmd_service.build_conf)
    assert "'emial'" in ' '.join(caught.value.problems)
    assert generations.current == 0
    assert os.listdir(generations.root) == []


def test_an_unparsable_file_changes_nothing(generations):
    main, _ = generations.paths
    main.write_text('[DEFAULT\nnot ini')
    with pytest.raises(config_mod.ConfigError):
        generations.offer(cmd_service.build_conf)
    assert generations.current == 0


def test_old_generations_are_removed(generations):
    main, _ = generations.paths
    for receiver in ('a', 'b', 'c', 'd', 'e', 'f'):
        main.write_text(text(receiver))
        generations.offer(cmd_service.build_conf)
    assert generations.current == 6
    assert sorted(os.listdir(generations.root)) == ['3', '4', '5', '6']


class _Stage(workers._Stage):
    role = 'router'

    def __init__(self, context):
        super().__init__(0, context)
        self.applied = []

    def apply(self, settings):
        self.applied.append(sorted(settings.receivers))


class _Context:
    def __init__(self, generations):
        self.conf = cfg.ConfigOpts()
        self.settings = None
        self.generation = 0
        self.generations = generations
        self.build_conf = cmd_service.build_conf


def test_a_process_loads_the_newest_generation_once(generations):
    main, _ = generations.paths
    stage = _Stage(_Context(generations))
    stage.reload()
    assert stage.applied == []
    main.write_text(text('x'))
    generations.offer(cmd_service.build_conf)
    main.write_text(text('y'))
    generations.offer(cmd_service.build_conf)
    stage.reload()
    assert stage.applied == [['y']] and stage.generation == 2
    stage.reload()
    assert stage.applied == [['y']]


def test_a_process_started_after_a_reload_starts_in_its_generation(
        generations):
    """The supervisor forks a dead process again with what is in force."""
    main, _ = generations.paths
    main.write_text(text('x'))
    generation, settings = generations.offer(cmd_service.build_conf)
    context = _Context(generations)
    context.settings, context.generation = settings, generation
    stage = _Stage(context)
    assert stage.generation == 1
    assert sorted(stage.settings.receivers) == ['x']
    stage.reload()
    assert stage.applied == []
    assert generations.args_of(1) == generations.args_for(1)
    assert generations.args_of(0) == generations.args
