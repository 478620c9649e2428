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
"""The error record, the resolution, and their JSON form (record.py)."""

import dataclasses
import datetime
import json

import pytest

from nova_error_notifier import record as rec

WHEN = datetime.datetime(2026, 12, 4, 18, 30, 1, 250000,
                         tzinfo=datetime.timezone.utc)
HOSTILE = 'web-1\r\nBcc: x@example.com\x1b[2J\u202e\x00'


def full_record(**overrides):
    values = dict(
        event_type='compute.instance.create.error', priority='ERROR',
        format='legacy', synthetic_events=(rec.CREATE_FAILED,),
        publisher_id='compute.cmp-1', publisher_service='compute',
        publisher_host='cmp-1', timestamp=WHEN, message_id='m-1',
        request_id='req-1', global_request_id='req-g', project_id='p',
        project_name='pn', user_id='u', user_name='un', instance_uuid='i-1',
        instance_name=HOSTILE, instance_project_id='p2',
        instance_host='cmp-2', state='error', old_state='building',
        exception='NoValidHost', remote=True, message=HOSTILE,
        reason='no host', code=500,
        arguments=(('flavor', 'm1.small'), ('count', 2), ('none', None)),
        location='nova.conductor.manager.build', details='Traceback ...')
    values.update(overrides)
    return rec.ErrorRecord(**values)


def test_synthetic_events_are_named_apart_from_nova_events():
    assert rec.SYNTHETIC_EVENTS == (rec.CREATE_FAILED, rec.ERROR_STATE)
    for name in rec.SYNTHETIC_EVENTS:
        assert name.startswith(rec.SYNTHETIC_PREFIX)
    # Nova's event types never start with the prefix.
    assert not 'compute.instance.create.error'.startswith(
        rec.SYNTHETIC_PREFIX)


def test_minimal_record_defaults():
    record = rec.ErrorRecord('instance.create.error', 'ERROR', 'versioned')
    assert record.synthetic_events == ()
    assert record.arguments == ()
    assert record.remote is False
    for field in dataclasses.fields(record):
        if field.name not in ('event_type', 'priority', 'format',
                              'synthetic_events', 'arguments', 'remote'):
            assert getattr(record, field.name) is None, field.name


def test_events_put_the_nova_event_first():
    record = full_record(synthetic_events=(rec.CREATE_FAILED,
                                           rec.ERROR_STATE))
    assert record.events == ('compute.instance.create.error',
                             rec.CREATE_FAILED, rec.ERROR_STATE)
    assert full_record(synthetic_events=()).events == (
        'compute.instance.create.error',)
    # A list given by a caller comes out as a tuple all the same.
    assert full_record(synthetic_events=[rec.ERROR_STATE]).events == (
        'compute.instance.create.error', rec.ERROR_STATE)


@pytest.mark.parametrize('instance_host, publisher_host, expected', [
    ('cmp-2', 'cmp-1', 'cmp-2'),
    (None, 'cmp-1', 'cmp-1'),
    ('', 'cmp-1', 'cmp-1'),
    (None, None, None),
])
def test_host_prefers_the_instance_host(instance_host, publisher_host,
                                        expected):
    record = full_record(instance_host=instance_host,
                         publisher_host=publisher_host)
    assert record.host == expected


def test_records_are_frozen_and_hashable():
    record = full_record()
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.message = 'changed'
    assert record == full_record()
    assert hash(record) == hash(full_record())
    assert record != full_record(message_id='m-2')


def test_to_dict_is_json_and_round_trips():
    record = full_record()
    data = rec.to_dict(record)
    assert set(data) == {f.name for f in dataclasses.fields(record)}
    assert data['timestamp'] == '2026-12-04T18:30:01.250000+00:00'
    assert data['synthetic_events'] == [rec.CREATE_FAILED]
    assert data['arguments'] == [['flavor', 'm1.small'], ['count', 2],
                                 ['none', None]]
    # Hostile text is kept as it is: escaping is for the outputs.
    assert data['instance_name'] == HOSTILE
    text = json.dumps(data)
    back = rec.from_dict(json.loads(text))
    assert back == record
    assert back.timestamp.tzinfo is not None
    assert isinstance(back.arguments[0], tuple)


def test_from_dict_ignores_unknown_keys_and_fills_defaults():
    back = rec.from_dict({
        'event_type': 'instance.update', 'priority': 'INFO',
        'format': 'versioned', 'not_a_field': 'x', '__class__': 'evil',
        'timestamp': None})
    assert back == rec.ErrorRecord('instance.update', 'INFO', 'versioned')


def test_from_dict_without_a_required_field_fails():
    with pytest.raises(TypeError):
        rec.from_dict({'priority': 'ERROR', 'format': 'legacy'})


def test_from_dict_rejects_a_bad_timestamp():
    with pytest.raises(ValueError):
        rec.from_dict({'event_type': 'e', 'priority': 'ERROR',
                       'format': 'legacy', 'timestamp': '04/12/2026'})


def test_resolution_round_trips():
    resolution = rec.Resolution('instance.create.end', 'i-1',
                                request_id='req-1', message_id='m-9',
                                timestamp=WHEN)
    data = rec.to_dict(resolution)
    assert data['event_type'] == 'instance.create.end'
    assert data['timestamp'] == WHEN.isoformat()
    back = rec.from_dict(json.loads(json.dumps(data)), cls=rec.Resolution)
    assert back == resolution
    assert rec.from_dict({'event_type': 'e', 'instance_uuid': 'i'},
                         cls=rec.Resolution).request_id is None


def test_retry_later_is_an_exception_of_its_own():
    assert issubclass(rec.RetryLater, Exception)
    assert not issubclass(rec.RetryLater, ValueError)
