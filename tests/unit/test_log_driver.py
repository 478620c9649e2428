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
"""The ``log`` driver: one escaped log record per alert."""

import dataclasses
import datetime
import logging
import textwrap

from oslo_config import cfg
import pytest

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import config
from nova_error_notifier.drivers import base
from nova_error_notifier.drivers import log as log_driver
from nova_error_notifier import opts
from nova_error_notifier import record as rec
from tests.unit import kvline

ALERT_LOGGER = 'nova_error_notifier.alerts'
UUID = '3f9a1c2e-7b4d-4e8f-a1c2-9d8e7f6a5b4c'
REQUEST_ID = 'req-2b7c4e91-5d3a-4f6b-8c2e-1a9d7f3b5e60'
STAMP = datetime.datetime(2026, 10, 2, 14, 6, 15, 220000,
                          tzinfo=datetime.timezone.utc)


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.NOTSET)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def captured():
    """Every record of the alerts logger, whatever the level."""
    logger = logging.getLogger(ALERT_LOGGER)
    handler = ListHandler()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def load_receiver(tmp_path, receiver_options=''):
    path = tmp_path / 'nen.conf'
    path.write_text(textwrap.dedent('''\
        [DEFAULT]
        rules = all

        [rule:all]
        events = *
        receivers = ops

        [receiver:ops]
        driver = log
        ''') + textwrap.dedent(receiver_options))
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[str(path)])
    settings = config.load(conf)
    receiver = settings.receivers['ops']
    assert isinstance(receiver.driver, log_driver.LogDriver)
    return receiver


def make_record(**overrides):
    fields = dict(
        event_type='compute_task.build_instances',
        priority='ERROR',
        format='legacy',
        synthetic_events=(rec.CREATE_FAILED, rec.ERROR_STATE),
        publisher_id='nova-conductor:ctl-a',
        publisher_host='ctl-a',
        timestamp=STAMP,
        message_id='8c1b6f3e-0000-4000-8000-000000000001',
        request_id=REQUEST_ID,
        project_id='4c1d7e2f8a9b40c3b5d6e7f8091a2b3c',
        instance_uuid=UUID,
        instance_name='web-42',
        state='error',
        exception='NoValidHost',
        message='No valid host was found. There are not enough hosts '
                'available.',
        code=500,
        details='Traceback (most recent call last):\n  File "x.py"\n'
                'NoValidHost: boom',
    )
    fields.update(overrides)
    return rec.ErrorRecord(**fields)


def make_alert(include_details=False, **overrides):
    return alert_mod.from_records([make_record(**overrides)],
                                  receiver='ops', rule='all',
                                  include_details=include_details)


def test_one_warning_record_per_alert_by_default(tmp_path, captured):
    receiver = load_receiver(tmp_path)
    receiver.driver.notify(make_alert())
    assert len(captured) == 1
    assert captured[0].levelno == logging.WARNING
    receiver.driver.notify(make_alert(request_id='req-other'))
    assert len(captured) == 2


@pytest.mark.parametrize('name, level', sorted(log_driver.LEVELS.items()))
def test_configured_level(tmp_path, captured, name, level):
    receiver = load_receiver(tmp_path, 'level = %s\n' % name)
    receiver.driver.notify(make_alert())
    assert [r.levelno for r in captured] == [level]


def test_invalid_level_stops_start_up(tmp_path):
    # A bad level must stop start-up, not fail every alert of the receiver
    # in LogDriver.notify (it did on the committed code: see the report).
    try:
        receiver = load_receiver(tmp_path, 'level = loud\n')
    except config.ConfigError as exc:
        problems = exc.problems
    else:
        try:
            receiver.driver.notify(make_alert())
            outcome = 'it was sent'
        except Exception as exc:
            outcome = '%s: %s' % (type(exc).__name__, exc)
        pytest.fail('[receiver:ops] level = loud is accepted at start-up '
                    '(config.load raised nothing); sending an alert then '
                    'gives: %s' % outcome)
    assert len(problems) == 1
    assert 'receiver:ops' in problems[0]
    assert 'loud' in problems[0]


def test_record_carries_the_alert(tmp_path, captured):
    receiver = load_receiver(tmp_path)
    alert = make_alert()
    receiver.driver.notify(alert)
    text = captured[0].getMessage()
    assert '\n' not in text
    assert text.startswith(kvline.ALERT_PREFIX)
    pairs, values = kvline.parse_alert(text)
    assert len(pairs) == len(values), 'duplicate keys in %r' % text
    assert values['rule'] == 'all'
    assert values['receiver'] == 'ops'
    assert values['id'] == alert.id
    assert values['events'] == ('compute_task.build_instances,'
                                'notifier.instance.create_failed,'
                                'notifier.instance.error_state')
    assert values['instance'] == UUID
    assert values['name'] == 'web-42'
    assert values['state'] == 'error'
    assert values['request_id'] == REQUEST_ID
    assert values['exception'] == 'NoValidHost'
    assert values['code'] == '500'
    assert values['message'] == ('No valid host was found. There are not '
                                 'enough hosts available.')
    assert values['host'] == 'ctl-a'
    assert values['first_seen'] == '2026-10-02T14:06:15.220000Z'
    assert 'details' not in values


def test_details_only_when_the_receiver_opts_in(tmp_path, captured):
    plain = load_receiver(tmp_path)
    # Even an alert that carries details is logged without them when the
    # receiver did not ask for them.
    plain.driver.notify(make_alert(include_details=True))
    assert 'details' not in kvline.parse_alert(captured[0].getMessage())[1]
    assert 'Traceback' not in captured[0].getMessage()

    detailed = load_receiver(tmp_path, 'include_details = true\n')
    assert detailed.include_details is True
    detailed.driver.notify(make_alert(include_details=True))
    text = captured[1].getMessage()
    assert '\n' not in text
    values = kvline.parse_alert(text)[1]
    assert values['details'] == ('Traceback (most recent call last):\n'
                                 '  File "x.py"\nNoValidHost: boom')


def test_hostile_values_stay_on_one_line(tmp_path, captured):
    receiver = load_receiver(tmp_path)
    name = 'evil\nnova-error-notifier alert rule=forged \x1b[2J'
    message = 'boom\r\n\u2028rule=forged2 "quoted" \\ \x00\x85'
    receiver.driver.notify(make_alert(instance_name=name, message=message,
                                      exception='Bad\nrule=x'))
    assert len(captured) == 1
    text = captured[0].getMessage()
    assert len(text.splitlines()) == 1
    assert '\x1b' not in text and '\x00' not in text
    pairs, values = kvline.parse_alert(text)
    assert [k for k, _ in pairs].count('rule') == 1
    assert values['rule'] == 'all'
    assert values['name'] == name
    assert values['message'] == message
    assert values['exception'] == 'Bad\nrule=x'


def test_long_message_is_bounded_without_details(tmp_path, captured):
    receiver = load_receiver(tmp_path)
    receiver.driver.notify(make_alert(message='m' * 5000))
    values = kvline.parse_alert(captured[0].getMessage())[1]
    assert values['message'] == 'm' * log_driver.MAX_VALUE + '...'


def test_lone_surrogates_can_be_written_to_a_utf8_file(tmp_path):
    receiver = load_receiver(tmp_path)
    path = tmp_path / 'alerts.log'
    handler = logging.FileHandler(str(path), encoding='utf-8')
    errors = []
    handler.handleError = lambda record: errors.append(record)
    logger = logging.getLogger(ALERT_LOGGER)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        receiver.driver.notify(make_alert(instance_name='vm\udc80x',
                                          message='oops \ud800 end'))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()
    assert errors == [], 'the file handler failed to write the alert'
    lines = path.read_text(encoding='utf-8').splitlines()
    assert len(lines) == 1
    values = kvline.parse_alert(lines[0])[1]
    assert values['name'] == 'vm?x'
    assert values['message'] == 'oops ? end'


def test_broken_handler_is_a_retryable_driver_error(tmp_path):
    receiver = load_receiver(tmp_path)

    class Broken(logging.Handler):
        def emit(self, record):
            raise OSError('disk full')

    logger = logging.getLogger(ALERT_LOGGER)
    handler = Broken()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        with pytest.raises(base.DriverError) as info:
            receiver.driver.notify(make_alert())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert info.value.retryable is True
    assert 'disk full' in str(info.value)


def test_format_alert_marks_test_alerts():
    alert = make_alert()
    line = log_driver.format_alert(alert)
    assert 'test' not in kvline.parse_alert(line)[1]
    line = log_driver.format_alert(dataclasses.replace(alert, test=True))
    pairs = kvline.parse_alert(line)[0]
    assert pairs[0] == ('test', 'true')
