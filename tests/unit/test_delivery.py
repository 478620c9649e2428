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
"""delivery.send: the one call of a driver, and the outcome it comes to."""

import logging

from oslo_config import cfg
import pytest

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import delivery
from nova_error_notifier.drivers import base
from nova_error_notifier import pipeline
from nova_error_notifier import receivers
from tests.unit import test_email as email_tests
from tests.unit import test_webhook as webhook_tests

TOKEN = 'Tok3n-Never-Shown'
PASSWORD = 'Pa55-Never-Shown'
HEADER_SECRET = 'Hdr-Never-Shown'


class Scripted(base.Driver):
    """Raises what the test gives it (or nothing), and counts calls."""

    OPTS = [
        cfg.StrOpt('token', secret=True),
        cfg.DictOpt('headers', default={}, secret=True),
        cfg.StrOpt('plain'),
    ]

    def __init__(self, conf, receiver, raises=None):
        super().__init__(conf, receiver)
        self.raises = raises
        self.calls = []

    def notify(self, alert):
        self.calls.append(alert)
        if self.raises is not None:
            raise self.raises


def make_driver(raises=None, token=TOKEN):
    conf = cfg.ConfigOpts()
    conf.register_opts(Scripted.OPTS, group='receiver:pager')
    conf([], default_config_files=[])
    conf.set_override('token', token, group='receiver:pager')
    conf.set_override('headers', {'X-Key': HEADER_SECRET},
                      group='receiver:pager')
    conf.set_override('plain', 'shown', group='receiver:pager')
    return Scripted(conf, 'pager', raises)


def make_receiver(raises=None):
    return receivers.Receiver('pager', 'scripted', make_driver(raises),
                              include_details=False)


def alert():
    return alert_mod.sample('pager')


def assert_clean(text):
    for secret in (TOKEN, PASSWORD, HEADER_SECRET):
        assert secret not in text, (secret, text)
    assert '\n' not in text and '\r' not in text and '\x1b' not in text


def test_sent():
    target = make_receiver()
    sample = alert()
    outcome = delivery.send(target, sample)
    assert outcome == delivery.Outcome(delivery.SENT)
    assert outcome.sent and not outcome.retryable
    assert outcome.error is None and outcome.retry_after is None
    [given] = target.driver.calls
    assert given is sample


def test_exactly_one_attempt():
    target = make_receiver(base.DriverError('down', retryable=True))
    delivery.send(target, alert())
    assert len(target.driver.calls) == 1


@pytest.mark.parametrize('target', [make_receiver, make_driver])
def test_a_receiver_or_a_driver(target):
    outcome = delivery.send(target(base.DriverError('no', retryable=False)),
                            alert())
    assert outcome.status == delivery.PERMANENT
    assert outcome.error == 'no'


def test_retryable_driver_error():
    outcome = delivery.send(make_receiver(base.DriverError(
        'HTTP 503', retryable=True, retry_after=30)), alert())
    assert outcome.status == delivery.RETRYABLE
    assert outcome.retryable and not outcome.sent
    assert outcome.error == 'HTTP 503'
    assert outcome.retry_after == 30


def test_permanent_driver_error(caplog):
    with caplog.at_level(logging.DEBUG, logger='nova_error_notifier'):
        outcome = delivery.send(make_receiver(base.DriverError(
            'HTTP 400', retryable=False)), alert())
    assert outcome.status == delivery.PERMANENT
    assert not outcome.retryable and not outcome.sent
    assert outcome.error == 'HTTP 400'
    # The caller logs it, with its own context: nothing logged here.
    assert not [r for r in caplog.records
                if r.name == 'nova_error_notifier.delivery']


def test_unexpected_exception_is_logged_with_its_traceback(caplog):
    with caplog.at_level(logging.ERROR, logger='nova_error_notifier'):
        outcome = delivery.send(make_receiver(KeyError('surprise')),
                                alert())
    assert outcome.status == delivery.RETRYABLE
    assert outcome.error == "KeyError: 'surprise'"
    [record] = [r for r in caplog.records
                if r.name == 'nova_error_notifier.delivery']
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert 'scripted' in message and 'pager' in message
    assert alert().id in message
    trace = logging.Formatter().formatException(record.exc_info)
    assert trace.startswith('Traceback (most recent call last):')
    assert 'in notify' in trace and 'raise self.raises' in trace
    assert trace.splitlines()[-1] == (
        "nova_error_notifier.delivery.DriverCrashed: KeyError: 'surprise'")


def test_the_logged_traceback_holds_no_secret(caplog):
    try:
        raise OSError('inner %s' % PASSWORD)
    except OSError as inner:
        try:
            raise RuntimeError('token %s\nFORGED' % TOKEN) from inner
        except RuntimeError as exc:
            error = exc
    with caplog.at_level(logging.ERROR, logger='nova_error_notifier'):
        outcome = delivery.send(make_receiver(error), alert())
    assert_clean(outcome.error)
    [record] = [r for r in caplog.records
                if r.name == 'nova_error_notifier.delivery']
    trace = logging.Formatter().format(record)
    assert TOKEN not in trace and PASSWORD not in trace
    assert 'FORGED' in trace.splitlines()[-1]      # on the same line
    assert 'raise self.raises' in trace


def test_interrupts_are_not_outcomes():
    with pytest.raises(KeyboardInterrupt):
        delivery.send(make_receiver(KeyboardInterrupt()), alert())


@pytest.mark.parametrize('error', [
    base.DriverError('POST https://bot:%s@hooks.example.org/x?key=%s: '
                     'refused; header %s' % (PASSWORD, TOKEN, HEADER_SECRET),
                     retryable=True),
    RuntimeError('connect to http://u:%s@h/ failed, token %s'
                 % (PASSWORD, TOKEN)),
    ValueError('the token is %s\nFORGED line \x1b[2J' % TOKEN),
])
def test_secrets_are_not_in_the_outcome_text(error):
    outcome = delivery.send(make_receiver(error), alert())
    assert not outcome.sent
    assert_clean(outcome.error)


def test_secret_option_values_are_masked_percent_encoded_too():
    token = 'Tok/en@Never Shown'
    driver = make_driver(base.DriverError(
        'got Tok%2Fen%40Never%20Shown'), token=token)
    outcome = delivery.send(driver, alert())
    assert 'Never' not in outcome.error, outcome.error


def test_hostile_and_long_texts_are_made_safe():
    prefix = 'x\r\nFORGED\x1b[2J\u202e'
    outcome = delivery.send(make_receiver(base.DriverError(
        prefix + 'y' * 2000)), alert())
    assert outcome.error.startswith('x\\r\\nFORGED\\x1b[2J\\u202e')
    # MAX_ERROR characters are kept, then escaped.
    assert outcome.error.count('y') == delivery.MAX_ERROR - len(prefix)
    assert outcome.error.endswith('...')


def test_a_broken_secrets_method_loses_no_outcome():
    driver = make_driver(base.DriverError('down', retryable=True))

    def broken():
        raise RuntimeError('no secrets today')
    driver.secrets = broken
    outcome = delivery.send(driver, alert())
    assert outcome.retryable and outcome.error == 'down'


def test_default_secrets_are_the_secret_option_values():
    assert make_driver().secrets() == sorted(
        [TOKEN, HEADER_SECRET], key=len, reverse=True)


def test_outcome_failure_makes_its_text_safe():
    outcome = delivery.Outcome.failure('a\nb http://u:%s@h/' % PASSWORD,
                                       retryable=False)
    assert outcome.status == delivery.PERMANENT
    assert_clean(outcome.error)
    assert outcome.error.startswith('a\\nb http://u:')


def test_webhook_secrets_stay_out_of_the_outcome(tmp_path):
    driver = webhook_tests.secret_driver(tmp_path)    # nothing listens
    outcome = delivery.send(driver, email_tests.make_alert())
    assert outcome.retryable
    assert 'ConnectFailure' in outcome.error
    webhook_tests.assert_no_secret(outcome.error)


def test_email_password_is_one_of_its_secrets(tmp_path):
    driver = email_tests.driver_of(email_tests.load(
        tmp_path, extra='[email]\nsmtp_username = u\n'
                        'smtp_password = Secret-Mail-Pw-2\n'
                        'smtp_security = starttls\n'))
    assert 'Secret-Mail-Pw-2' in driver.secrets()


# -- the callers -------------------------------------------------------------

def test_pipeline_deliveries_carry_the_outcome(caplog):
    receiver = make_receiver(base.DriverError('HTTP 500 %s' % TOKEN,
                                              retryable=True))
    with caplog.at_level(logging.ERROR, logger='nova_error_notifier'):
        outcome = pipeline.Pipeline._deliver(receiver, alert())
    assert outcome.retryable
    assert_clean(outcome.error)
    [record] = [r for r in caplog.records
                if r.name == 'nova_error_notifier.pipeline']
    assert 'Receiver pager (driver scripted) could not deliver alert' in \
        record.getMessage()
    assert 'retryable=True' in record.getMessage()
    assert TOKEN not in record.getMessage()
    assert pipeline.Pipeline._deliver(make_receiver(), alert()).sent
