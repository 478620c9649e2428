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
"""The Alert value handed to drivers, and how it is built."""

import dataclasses
import datetime
import json

import pytest

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import record as rec

UUID = '3f9a1c2e-7b4d-4e8f-a1c2-9d8e7f6a5b4c'
T0 = datetime.datetime(2026, 10, 2, 14, 6, 15, tzinfo=datetime.timezone.utc)


def record(**fields):
    values = dict(event_type='instance.create.error', priority='ERROR',
                  format='versioned', request_id='req-1', instance_uuid=UUID,
                  message_id='m-1', timestamp=T0)
    values.update(fields)
    return rec.ErrorRecord(**values)


def test_an_alert_needs_a_record():
    with pytest.raises(ValueError):
        alert_mod.from_records([], receiver='r', rule=None)


def test_incident_id_is_stable_per_request_and_instance():
    first = alert_mod.incident_id([record()])
    assert first == alert_mod.incident_id([record(message_id='m-2')])
    assert first != alert_mod.incident_id([record(request_id='req-2')])
    assert first != alert_mod.incident_id([record(instance_uuid=None)])
    # Without a request id the message id stands in.
    assert alert_mod.incident_id([record(request_id=None)]) != \
        alert_mod.incident_id([record(request_id=None, message_id='m-2')])


def test_from_records_takes_the_most_informative_error():
    legacy = record(format='legacy', exception='NoValidHost',
                    message='NoValidHost', message_id='m-1',
                    event_type='compute_task.build_instances',
                    timestamp=T0 + datetime.timedelta(seconds=5))
    versioned = record(exception='NoValidHost', message='No valid host.',
                       details='Traceback', message_id='m-2',
                       synthetic_events=(rec.CREATE_FAILED,),
                       state='error', publisher_id='nova-compute:c1')
    assert alert_mod.informativeness(versioned) > \
        alert_mod.informativeness(legacy)
    alert = alert_mod.from_records([legacy, versioned], receiver='ops',
                                   rule='builds')
    assert alert.id == alert_mod.incident_id([legacy, versioned])
    assert (alert.receiver, alert.rule) == ('ops', 'builds')
    assert alert.message == 'No valid host.'
    assert alert.event_types == ('compute_task.build_instances',
                                 'instance.create.error')
    assert alert.events == alert.event_types + (rec.CREATE_FAILED,)
    assert alert.message_ids == ('m-1', 'm-2')
    assert alert.publishers == ('nova-compute:c1',)
    assert alert.count == 2
    assert alert.first_seen == T0
    assert alert.last_seen == T0 + datetime.timedelta(seconds=5)
    assert alert.instance_state == 'error'
    assert alert.details is None          # not asked for
    detailed = alert_mod.from_records([legacy, versioned], receiver='ops',
                                      rule='builds', include_details=True)
    assert detailed.details == 'Traceback'
    assert alert_mod.from_records([legacy], receiver='r', rule=None,
                                  incident='given').id == 'given'


def test_a_state_change_says_so():
    alert = alert_mod.from_records([record(
        event_type='instance.update', state='error', old_state='building')],
        receiver='r', rule=None)
    assert alert.message == 'Instance entered ERROR state (from building)'


def test_dict_round_trip_through_json():
    member = alert_mod.from_records([record()], receiver='r', rule='x')
    enriched = dataclasses.replace(member, enriched=True, enrichment={
        'server': {'status': 'ERROR'}})
    digest = alert_mod.digest('d-1', 'r', 'x', (enriched, member), 5,
                              '5 failed')
    for alert in (member, enriched, digest, alert_mod.sample()):
        data = json.loads(json.dumps(alert_mod.to_dict(alert)))
        assert alert_mod.from_dict(data) == alert
    data = alert_mod.to_dict(member)
    data['unknown_key'] = 1
    assert alert_mod.from_dict(data) == member


def test_for_receiver_leaves_details_out_unless_asked():
    alert = alert_mod.sample('first')
    plain = alert_mod.for_receiver(alert, 'plain', False)
    assert plain.receiver == 'plain'
    assert plain.details is None
    assert plain.enrichment['fault']['details'] is None
    assert plain.enrichment['fault']['message'] == \
        alert.enrichment['fault']['message']
    [event] = plain.enrichment['action']['events']
    assert event['traceback'] is None and event['details'] is None
    assert event['event'] == 'conductor_schedule'
    # The original is unchanged.
    assert alert.enrichment['fault']['details'] == 'Traceback ...'
    detailed = alert_mod.for_receiver(alert, 'detailed', True)
    assert detailed.details == alert.details
    assert detailed.enrichment == alert.enrichment
    digest = alert_mod.digest('d', 'first', 'r', (alert,), 1, 's')
    assert alert_mod.for_receiver(digest, 'plain', False).members[0] \
        .details is None


def test_digest_spans_its_members():
    one = alert_mod.from_records([record()], receiver='r', rule='x')
    two = alert_mod.from_records([record(
        request_id='req-2', event_type='compute.instance.resize.error',
        timestamp=T0 + datetime.timedelta(minutes=1))], receiver='r',
        rule='x')
    digest = alert_mod.digest('d-1', 'r', 'x', (one, two), 9, '9 failed')
    assert digest.is_digest and not one.is_digest
    assert digest.digest_count == 9 and digest.count == 2
    assert digest.event_types == ('instance.create.error',
                                  'compute.instance.resize.error')
    assert digest.first_seen == T0
    assert digest.last_seen == T0 + datetime.timedelta(minutes=1)


def test_with_count_and_with_rule():
    alert = alert_mod.from_records([record()], receiver='r', rule='x')
    assert alert_mod.with_count(alert, 7).count == 7
    assert alert_mod.with_count(alert, 0).count == 1
    assert alert_mod.with_rule(alert, 'y').rule == 'y'


def test_sample_is_complete_and_hostile():
    sample = alert_mod.sample('check')
    assert sample.receiver == 'check'
    assert '<&>' in sample.instance_name and '\\' in sample.instance_name
    for field in ('request_id', 'instance_uuid', 'host', 'exception',
                  'message', 'details', 'first_seen'):
        assert getattr(sample, field), field
    assert set(sample.enrichment) == {'server', 'fault', 'action'}
