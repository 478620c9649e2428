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
"""Records to delivered alerts without the outbox (pipeline.py), as the
replay command runs them: rules, one alert per receiver, one failing
receiver affecting no other."""

import logging

import pytest

from nova_error_notifier import config
from nova_error_notifier.drivers import base
from nova_error_notifier import pipeline
from nova_error_notifier import record as rec
from tests.unit import conf_fixtures

HOSTILE = 'compute.instance.create.error\nnova-error-notifier alert ' \
          'rule=forged\x1b[2J'


class Keeper(base.Driver):
    """Keeps the alerts it is given; raises ``error`` if one is set."""

    def __init__(self, conf, receiver, error=None):
        super().__init__(conf, receiver)
        self.error = error
        self.alerts = []

    def notify(self, alert):
        self.alerts.append(alert)
        if self.error is not None:
            raise self.error


@pytest.fixture
def settings(tmp_path):
    conf = conf_fixtures.conf_from_text(tmp_path, '\n'.join([
        '[DEFAULT]', 'rules = builds, rest',
        '[rule:builds]', 'events = compute.instance.create.error',
        'exclude_exceptions = Ignored',
        'receivers = ops, pager', 'continue = true',
        '[rule:rest]', 'events = *', 'receivers = audit, ops',
        '[receiver:ops]', 'driver = log', 'include_details = true',
        '[receiver:pager]', 'driver = log',
        '[receiver:audit]', 'driver = log', '']))
    loaded = config.load(conf)
    for receiver in loaded.receivers.values():
        receiver.driver = Keeper(conf, receiver.name)
    return loaded


def record(event_type='compute.instance.create.error', exception='NoValid',
           **extra):
    return rec.ErrorRecord(event_type, 'ERROR', 'legacy',
                           exception=exception, request_id='req-1',
                           message_id='m-1', instance_uuid='i-1',
                           details='Traceback (most recent call last): ...',
                           **extra)


def kept(settings, name):
    return settings.receivers[name].driver.alerts


def test_one_alert_per_receiver_in_route_order(settings):
    outcome = pipeline.Pipeline(settings).handle(record())
    assert outcome.record == record()
    assert [d.route for d in outcome.deliveries] == [
        ('builds', 'ops'), ('builds', 'pager'), ('rest', 'audit')]
    assert all(d.outcome.sent for d in outcome.deliveries)
    for delivery in outcome.deliveries:
        assert delivery.alert.receiver == delivery.route.receiver
        assert delivery.alert.rule == delivery.route.rule
        assert kept(settings, delivery.route.receiver) == [delivery.alert]
    # One incident: every receiver's alert has the same id.
    assert len({d.alert.id for d in outcome.deliveries}) == 1


def test_details_only_for_receivers_that_opt_in(settings):
    outcome = pipeline.Pipeline(settings).handle(record())
    by_receiver = {d.route.receiver: d.alert for d in outcome.deliveries}
    assert by_receiver['ops'].details.startswith('Traceback')
    assert by_receiver['pager'].details is None
    assert by_receiver['audit'].details is None


def test_plan_delivers_nothing(settings):
    match, planned = pipeline.Pipeline(settings).plan(record())
    assert [r.name for _route, r, _alert in planned] == ['ops', 'pager',
                                                         'audit']
    assert [rule.name for rule in match.applied] == ['builds', 'rest']
    for name in ('ops', 'pager', 'audit'):
        assert kept(settings, name) == []


def test_a_failing_receiver_affects_no_other(settings, caplog):
    settings.receivers['pager'].driver.error = base.DriverError(
        'HTTP 503 from the pager', retryable=True)
    settings.receivers['ops'].driver.error = KeyError('bug in a driver')
    with caplog.at_level(logging.ERROR, logger='nova_error_notifier'):
        outcome = pipeline.Pipeline(settings).handle(record())
    results = {d.route.receiver: d.outcome for d in outcome.deliveries}
    assert results['audit'].sent
    assert not results['pager'].sent and results['pager'].retryable
    assert 'HTTP 503 from the pager' in results['pager'].error
    # An unexpected exception is a retryable failure too, never raised.
    assert not results['ops'].sent and results['ops'].retryable
    assert len(kept(settings, 'audit')) == 1
    lines = [r.getMessage() for r in caplog.records
             if r.name == 'nova_error_notifier.pipeline']
    assert len(lines) == 2
    assert any(line.startswith('Receiver pager (driver log) could not '
                               'deliver alert ') for line in lines)


def test_an_excluded_exception_falls_to_the_next_rule(settings):
    outcome = pipeline.Pipeline(settings).handle(record(exception='Ignored'))
    assert [d.route for d in outcome.deliveries] == [
        ('rest', 'audit'), ('rest', 'ops')]


def test_hostile_request_id_in_the_failure_line_is_escaped(settings,
                                                           caplog):
    settings.receivers['audit'].driver.error = base.DriverError('no')
    hostile = record(event_type='compute.instance.delete.error')
    hostile = rec.from_dict(dict(rec.to_dict(hostile),
                                 request_id='req-1\nFORGED line\x1b[2J'))
    with caplog.at_level(logging.ERROR, logger='nova_error_notifier'):
        pipeline.Pipeline(settings).handle(hostile)
    [line] = [r.getMessage() for r in caplog.records
              if r.name == 'nova_error_notifier.pipeline']
    assert '\n' not in line and '\x1b' not in line
    assert 'retryable=False' in line


def test_unmatched_record_is_logged_escaped(tmp_path, settings, caplog):
    # A rule set that does not catch everything.
    narrow = config.load(conf_fixtures.conf_from_text(
        tmp_path, '[DEFAULT]\nrules = only\n[rule:only]\n'
                  'events = instance.create.error\nreceivers = r\n'
                  '[receiver:r]\ndriver = log\n', name='narrow.conf'))
    with caplog.at_level(logging.DEBUG, logger='nova_error_notifier'):
        outcome = pipeline.Pipeline(narrow).handle(record(
            event_type=HOSTILE))
    assert outcome.deliveries == ()
    assert outcome.match.matched == ()
    [line] = [r.getMessage() for r in caplog.records
              if r.name == 'nova_error_notifier.pipeline']
    assert line.startswith('No rule matched ')
    assert '\n' not in line and '\x1b' not in line
