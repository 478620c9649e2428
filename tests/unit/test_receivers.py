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
"""Receivers built from their sections (receivers.py).

Third-party drivers found through real entry points are in
test_config.py; here the drivers are the shipped ones, or classes handed to
``load()`` in place of the entry point look-up.
"""

from oslo_config import cfg
import pytest

from nova_error_notifier.drivers import base
from nova_error_notifier.drivers import email as email_driver
from nova_error_notifier.drivers import log as log_driver
from nova_error_notifier.drivers import webhook as webhook_driver
from nova_error_notifier import receivers
from nova_error_notifier import staff
from tests.unit import conf_fixtures


def make_conf(tmp_path, text=''):
    # Nothing registered: load() registers what it reads.
    return conf_fixtures.conf_from_text(tmp_path, text, register=None)


def problems_of(conf, names, implicit=False):
    with pytest.raises(receivers.ReceiverError) as info:
        receivers.load(conf, names, implicit=implicit)
    return info.value.problems


class Seen:
    """What the fake drivers below saw, by receiver name."""

    staff_at_check = {}


class StaffDriver(base.Driver):
    OPTS = [cfg.BoolOpt('to_staff', default=True)]

    def wants_staff(self):
        return self.options.to_staff

    def check(self):
        Seen.staff_at_check[self.receiver] = self.staff

    def notify(self, alert):
        pass


class BadOptsDriver(base.Driver):
    @classmethod
    def list_opts(cls):
        return [cfg.StrOpt('level'), cfg.IntOpt('level')]

    def notify(self, alert):
        pass


class CrashingDriver(base.Driver):
    def __init__(self, conf, receiver):
        raise RuntimeError('no pager library')

    def notify(self, alert):
        pass


@pytest.fixture
def fake_drivers(monkeypatch):
    drivers = {'staffy': StaffDriver, 'badopts': BadOptsDriver,
               'crashing': CrashingDriver}
    real = receivers.load_driver_class

    def load_driver_class(name):
        return drivers[name] if name in drivers else real(name)

    monkeypatch.setattr(receivers, 'load_driver_class', load_driver_class)
    Seen.staff_at_check = {}


def test_a_receiver_gets_its_driver_and_options(tmp_path):
    conf = make_conf(tmp_path, '[receiver:ops]\ndriver = log\n'
                               'level = error\ninclude_details = true\n')
    loaded = receivers.load(conf, ['ops'])
    ops = loaded['ops']
    assert list(loaded) == ['ops']
    assert (ops.name, ops.driver_name, ops.include_details) == (
        'ops', 'log', True)
    assert isinstance(ops.driver, log_driver.LogDriver)
    assert ops.driver.options.level == 'error'
    assert repr(ops) == '<Receiver ops driver=log>'


def test_the_implicit_log_receiver_needs_no_section(tmp_path):
    conf = make_conf(tmp_path)
    log = receivers.load(conf, [receivers.DEFAULT_RECEIVER],
                         implicit=True)[receivers.DEFAULT_RECEIVER]
    assert log.driver_name == receivers.DEFAULT_DRIVER == 'log'
    assert log.include_details is False
    # Only the default receiver is implicit.
    assert problems_of(conf, ['other'], implicit=True) == [
        "receiver 'other' has no [receiver:other] section"]


def test_a_named_receiver_needs_its_section(tmp_path):
    conf = make_conf(tmp_path)
    assert problems_of(conf, ['log']) == [
        "receiver 'log' has no [receiver:log] section"]


def test_every_broken_receiver_is_reported_at_once(tmp_path):
    conf = make_conf(tmp_path, '\n'.join([
        '[receiver:nodriver]', 'level = error',
        '[receiver:typo]', 'driver = emial',
        '[receiver:badflag]', 'driver = log', 'include_details = maybe',
        '[receiver:badlevel]', 'driver = log', 'level = loud',
        '[receiver:good]', 'driver = log', '']))
    with pytest.raises(receivers.ReceiverError) as info:
        receivers.load(conf, ['nodriver', 'typo', 'missing', 'badflag',
                              'badlevel', 'good'])
    problems = info.value.problems
    assert problems[0] == '[receiver:nodriver] driver is not set'
    assert problems[1] == (
        "[receiver:typo]: driver 'emial' is not installed (no entry point "
        "'emial' in namespace nova_error_notifier.drivers)")
    assert problems[2] == "receiver 'missing' has no [receiver:missing] " \
                          "section"
    assert problems[3].startswith(
        '[receiver:badflag] include_details: invalid value: ')
    assert problems[4].startswith('[receiver:badlevel] level: invalid value')
    assert 'loud' in problems[4]
    assert len(problems) == 5
    # One line per problem in the message too.
    assert str(info.value) == '; '.join(problems)


def test_a_driver_that_wants_staff_gets_the_directory_before_check(
        tmp_path, fake_drivers):
    conf = make_conf(tmp_path, '\n'.join([
        '[receiver:pager]', 'driver = staffy',
        '[receiver:quiet]', 'driver = staffy', 'to_staff = false', '']))
    loaded = receivers.load(conf, ['pager', 'quiet'])
    directory = Seen.staff_at_check['pager']
    assert isinstance(directory, staff.StaffDirectory)
    assert loaded['pager'].driver.staff is directory
    assert Seen.staff_at_check['quiet'] is None
    # One directory per receiver: each has its own cache.
    conf2 = make_conf(tmp_path, '[receiver:a]\ndriver = staffy\n'
                                '[receiver:b]\ndriver = staffy\n')
    both = receivers.load(conf2, ['a', 'b'])
    assert both['a'].driver.staff is not both['b'].driver.staff


def test_driver_failures_name_the_receiver_and_driver(tmp_path,
                                                      fake_drivers):
    conf = make_conf(tmp_path, '[receiver:p1]\ndriver = badopts\n'
                               '[receiver:p2]\ndriver = crashing\n')
    first, second = problems_of(conf, ['p1', 'p2'])
    assert first.startswith("[receiver:p1]: the options of driver "
                            "'badopts' cannot be registered: ")
    assert second == ("[receiver:p2]: driver 'crashing' failed to start: "
                      "RuntimeError: no pager library")


def test_a_config_error_from_check_is_a_problem(tmp_path):
    # The webhook driver refuses a receiver without a URL in check().
    conf = make_conf(tmp_path, '[receiver:hook]\ndriver = webhook\n')
    [problem] = problems_of(conf, ['hook'])
    assert problem.startswith('[receiver:hook] (driver webhook): ')


def test_load_driver_class_of_the_shipped_drivers():
    assert receivers.load_driver_class('log') is log_driver.LogDriver
    assert receivers.load_driver_class('email') is email_driver.EmailDriver
    assert receivers.load_driver_class('webhook') is \
        webhook_driver.WebhookDriver
    with pytest.raises(ValueError) as info:
        receivers.load_driver_class('../../etc/passwd')
    assert 'is not installed' in str(info.value)


def test_list_opts_documents_every_shipped_drivers_options():
    [(group, opts)] = receivers.list_opts()
    assert group == 'receiver:<name>'
    names = [o.dest for o in opts]
    assert names[:2] == ['driver', 'include_details']
    for driver in (log_driver.LogDriver, email_driver.EmailDriver,
                   webhook_driver.WebhookDriver):
        for opt in driver.list_opts():
            assert opt.dest in names, (driver, opt.dest)
