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
"""The driver contract (drivers/base.py): options, errors, secrets."""

from oslo_config import cfg
import pytest

from nova_error_notifier.drivers import base
from nova_error_notifier import opts as service_opts
from tests.unit import conf_fixtures

GROUP = 'receiver:pager'


class Pager(base.Driver):
    OPTS = [
        cfg.StrOpt('endpoint'),
        cfg.StrOpt('token', secret=True),
        cfg.StrOpt('short_secret', secret=True),
        cfg.ListOpt('keys', default=[], secret=True),
        cfg.DictOpt('headers', default={}, secret=True),
        cfg.IntOpt('pin', secret=True),
        cfg.IntOpt('retries', default=3, min=0),
    ]

    def notify(self, alert):
        self.sent = alert


def make_conf(tmp_path, text='', opts=Pager.OPTS):
    def register(conf):
        # The service's own options (registered once, by opts), then the
        # driver's group as receivers.load registers it.
        service_opts.register_opts(conf)
        conf.register_opts(opts, group=GROUP)
    return conf_fixtures.conf_from_text(
        tmp_path, '[%s]\n%s' % (GROUP, text), register=register)


def test_a_driver_must_implement_notify():
    class Lazy(base.Driver):
        pass

    with pytest.raises(TypeError):
        Lazy(cfg.ConfigOpts(), 'lazy')


def test_the_driver_reads_its_own_group(tmp_path):
    conf = make_conf(tmp_path, 'endpoint = https://pager.example/\n')
    driver = Pager(conf, 'pager')
    assert driver.receiver == 'pager'
    assert driver.group == GROUP
    assert driver.options.endpoint == 'https://pager.example/'
    # [DEFAULT] region_name, the one option every driver may read.
    assert conf.region_name is None
    assert [o.dest for o in base.COMMON_OPTS] == ['region_name']


def test_defaults_of_the_contract(tmp_path):
    driver = Pager(make_conf(tmp_path), 'pager')
    assert driver.check() is None
    assert driver.wants_staff() is False
    assert driver.staff is None
    assert driver.secrets() == []


def test_list_opts_is_a_copy():
    listed = Pager.list_opts()
    assert listed == Pager.OPTS
    listed.append(cfg.StrOpt('extra'))
    assert len(Pager.OPTS) == 7


def test_secrets_are_the_secret_values_longest_first(tmp_path):
    conf = make_conf(tmp_path, '\n'.join([
        'endpoint = https://not-a-secret.example/',
        'token = Tok3n-Long-Enough',
        'short_secret = ab',
        'keys = k-one, k-two-longer',
        'headers = X-Auth:hdr-value,X-Empty:',
        'pin = 1234',
        '']))
    secrets = Pager(conf, 'pager').secrets()
    assert secrets == sorted(secrets, key=len, reverse=True)
    assert set(secrets) == {'Tok3n-Long-Enough', 'ab', 'k-one',
                            'k-two-longer', 'hdr-value'}
    # Not secret: the endpoint; not a string: the integer; empty: nothing.
    assert 'https://not-a-secret.example/' not in secrets
    assert '' not in secrets


def test_secrets_skip_what_cannot_be_read(tmp_path):
    # An invalid value and an option that was never registered: neither
    # makes secrets() fail, and the readable secrets are still there.
    conf = make_conf(tmp_path, 'token = Tok3n\npin = not-a-number\n',
                     opts=[o for o in Pager.OPTS if o.dest != 'keys'])
    assert Pager(conf, 'pager').secrets() == ['Tok3n']


def test_the_same_secret_twice_is_listed_once(tmp_path):
    conf = make_conf(tmp_path, 'token = same\nshort_secret = same\n')
    assert Pager(conf, 'pager').secrets() == ['same']


def test_option_value_reads_a_valid_value(tmp_path):
    conf = make_conf(tmp_path, 'retries = 5\n')
    problems = []
    assert base.option_value(conf, GROUP, 'retries', problems) == 5
    assert problems == []


@pytest.mark.parametrize('text, expected', [
    ('retries = many\n', "[receiver:pager] retries: invalid value: "),
    ('retries = -1\n', "[receiver:pager] retries: invalid value: "),
])
def test_option_value_turns_a_bad_value_into_one_problem(tmp_path, text,
                                                         expected):
    conf = make_conf(tmp_path, text)
    problems = []
    assert base.option_value(conf, GROUP, 'retries', problems) is None
    [problem] = problems
    assert problem.startswith(expected)
    # oslo.config's location noise ("Value for option retries from
    # LocationInfo...") is cut off.
    assert 'LocationInfo' not in problem
    assert 'is not valid' not in problem


def test_driver_error_says_whether_to_retry():
    error = base.DriverError('HTTP 503', retryable=True, retry_after=30)
    assert str(error) == 'HTTP 503'
    assert (error.retryable, error.retry_after) == (True, 30)
    plain = base.DriverError('HTTP 400')
    assert (plain.retryable, plain.retry_after) == (False, None)


def test_config_errors_are_value_errors():
    # receivers.load() reports ValueError from check() as a config problem.
    assert issubclass(base.DriverConfigError, ValueError)
    assert not issubclass(base.DriverError, ValueError)
