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
"""Regions: keys per region, incidents that never merge across buses, and
the region in every driver's output (real SQLite outbox, real drivers)."""

import dataclasses
import json

import pytest

from nova_error_notifier import alert as alert_mod
from nova_error_notifier.drivers import log as log_driver
from nova_error_notifier.drivers import webhook
from nova_error_notifier import enrich
from nova_error_notifier import ingest as ingest_mod
from nova_error_notifier import record as rec
from tests.unit import kvline
from tests.unit import outbox_fixtures as fx
from tests.unit import test_email as email_tests
from tests.unit import test_enrich as enrich_tests
from tests.unit import test_replica_logic as replica_tests
from tests.unit import test_webhook as webhook_tests

world = fx.world
replicas = replica_tests.replicas
api = enrich_tests.api
enricher = enrich_tests.enricher
REQ = fx.REQ
UUID = fx.UUID
HOSTILE_REGION = 'Two\r\nBcc: evil@example.org\x1b[2J "q" \u202e'


def record(region=None, **kwargs):
    return rec.with_region(fx.record(**kwargs), region)


# -- keys ---------------------------------------------------------------------

def test_without_a_region_keys_are_as_before():
    assert rec.scoped(None, 'req-1|u') == 'req-1|u'
    assert ingest_mod.message_key(record(message_id='m-1')) == 'm-1'
    assert ingest_mod.incident_key('req-1', 'u') == 'req-1|u'
    assert ingest_mod.incident_key('req-1', None) == 'req-1|'


@pytest.mark.parametrize('a, b', [
    ((None, 'x'), ('RegionTwo', 'x')),
    (('RegionTwo', 'x'), ('RegionThree', 'x')),
    # A hostile text cannot pass for another region's key.
    ((None, 'region:9:RegionTwo|x'), ('RegionTwo', 'x')),
    (('R', '1:x|y'), ('R|1', 'x|y')),
    (('ab', 'c'), ('a', 'bc')),
])
def test_scoped_keys_never_collide(a, b):
    assert rec.scoped(*a) != rec.scoped(*b)


def test_message_and_incident_keys_are_the_region_s():
    one, two = record(message_id='m-1'), record('RegionTwo', message_id='m-1')
    assert ingest_mod.message_key(one) != ingest_mod.message_key(two)
    bare_one = record(message_id=None)
    bare_two = record('RegionTwo', message_id=None)
    assert ingest_mod.message_key(bare_one) != \
        ingest_mod.message_key(bare_two)
    assert ingest_mod.incident_key(REQ, UUID) != \
        ingest_mod.incident_key(REQ, UUID, 'RegionTwo')
    # The key of a long region or id still fits its column.
    assert len(ingest_mod.incident_key(REQ, UUID, 'R' * 300)) <= 255
    assert alert_mod.incident_id([one]) != alert_mod.incident_id([two])


# -- grouping and routing never merge across regions -------------------------

def test_one_failure_on_two_buses_is_two_alerts(world):
    conf, store, ingest, router, pool, clock = world()
    # The same request id, instance and even message id on both buses.
    first = ingest.add_many([record(message_id='m1'),
                             record('RegionTwo', message_id='m1')])
    assert len(set(first)) == 2 and None not in first
    rows = fx.rows(store, 'incidents')
    assert sorted((r['region'] or '-') for r in rows) == ['-', 'RegionTwo']
    assert len(fx.rows(store, 'messages')) == 2
    # Twins of each bus join their own bus's incident only.
    again = ingest.add_many([
        record(message_id='m2', event_type='compute_task.build_instances'),
        record('RegionTwo', message_id='m2',
               event_type='compute_task.build_instances')])
    assert again == first
    # A message seen on one bus is seen on that bus only.
    assert ingest.add(record('RegionTwo', message_id='m1')) is None
    clock.now += 10
    assert router.route_due() == 4            # two incidents, two receivers
    assert fx.drain(pool) == ['sent'] * 4
    for receiver in ('a', 'b'):
        alerts = [a for _, a in fx.Recorder.calls[receiver]]
        assert sorted((a.region or '-') for a in alerts) == ['-',
                                                             'RegionTwo']
        assert all(a.count == 2 for a in alerts)
        assert len({a.id for a in alerts}) == 2


def test_an_instance_less_twin_joins_its_own_region_only(world):
    conf, store, ingest, router, pool, clock = world()
    one = ingest.add(record(message_id='l1', fmt='legacy'))
    bare = ingest.add(record('RegionTwo', event_type='compute.exception',
                             message_id='v1', instance=None, synthetic=()))
    assert bare != one
    full = ingest.add(record('RegionTwo', message_id='l2', fmt='legacy'))
    assert full == bare                      # learnt its instance
    assert len(fx.rows(store, 'incidents')) == 2


def test_a_build_that_succeeded_resolves_its_region_only(world):
    conf, store, ingest, router, pool, clock = world()
    ingest.add(record(message_id='m1'))
    ingest.add(record('RegionTwo', message_id='m1'))
    ingest.add(rec.with_region(rec.Resolution(
        'compute.instance.create.end', UUID, request_id=REQ,
        message_id='e1'), 'RegionTwo'))
    resolved = {(r['region'] or '-'): bool(r['resolved'])
                for r in fx.rows(store, 'incidents')}
    assert resolved == {'-': False, 'RegionTwo': True}
    clock.now += 10
    assert router.route_due() == 2            # the default bus's only
    fx.drain(pool)
    alerts = [a for _, a in fx.Recorder.calls['a']]
    assert [a.region for a in alerts] == [None]


def test_twins_opened_apart_are_not_folded_across_regions(replicas):
    conf, _, (a, b), (store, other), (pool, _), clock = replicas
    bare = record('RegionTwo', event_type='compute.exception',
                  message_id='v1', instance=None, synthetic=())
    full = record(event_type='compute.instance.create.error',
                  message_id='l1', fmt='legacy')

    def open_apart(item):
        def work(tx):
            batch = ingest_mod._Batch(clock())
            request_id, instance = ingest_mod._ids(item)
            batch.open(ingest_mod.incident_key(request_id, instance,
                                               item.region), item,
                       conf.correlation.group_wait)
            batch.flush(tx)
        return work
    store.write(open_apart(full))
    other.write(open_apart(bare))
    clock.now += 10
    assert a.route_due() == 4                 # nothing merged
    assert sorted(r['state'] for r in fx.rows(store, 'incidents')) == [
        'routed', 'routed']


def test_a_digest_has_a_region_only_when_all_it_folds_share_it():
    one = alert_mod.from_records([record('RegionTwo')], 'a', 'r')
    two = alert_mod.from_records([record(message_id='m2')], 'a', 'r')
    assert alert_mod.digest('d', 'a', 'r', [one, one], 2, 's').region == \
        'RegionTwo'
    assert alert_mod.digest('d', 'a', 'r', [one, two], 2, 's').region is None
    # Incidents counted but not listed may be of another region.
    assert alert_mod.digest('d', 'a', 'r', [one], 5, 's').region is None


def test_the_region_survives_the_outbox():
    alert = alert_mod.from_records([record('RegionTwo')], 'a', 'r')
    assert alert.region == 'RegionTwo'
    assert alert_mod.from_dict(json.loads(json.dumps(
        alert_mod.to_dict(alert)))).region == 'RegionTwo'
    item = rec.from_dict(rec.to_dict(record('RegionTwo')))
    assert item.region == 'RegionTwo'
    assert rec.from_dict({'event_type': 'e', 'priority': 'ERROR',
                          'format': 'legacy'}).region is None


# -- the region in each driver's output ---------------------------------------

def test_the_log_line_names_the_region(tmp_path):
    line = log_driver.format_alert(dataclasses.replace(
        email_tests.make_alert(name='web-01'), region='RegionTwo'))
    pairs, found = kvline.parse_alert(line)
    assert found['region'] == 'RegionTwo'
    assert 'region' not in kvline.parse_alert(log_driver.format_alert(
        email_tests.make_alert(name='web-01')))[1]


def test_a_hostile_region_is_escaped_on_the_log_line():
    alert = dataclasses.replace(email_tests.make_alert(name='web-01'),
                                region=HOSTILE_REGION)
    line = log_driver.format_alert(alert)
    assert '\n' not in line and '\r' not in line and '\x1b' not in line
    pairs, found = kvline.parse_alert(line)
    assert found['region'] == HOSTILE_REGION
    assert [k for k, _ in pairs].count('region') == 1


def test_the_digest_line_names_the_region():
    member = dataclasses.replace(email_tests.make_alert(), region='R2')
    digest = alert_mod.digest('d', 'ops', 'r', [member], 1, 'one failure')
    line = log_driver.format_alert(digest)
    assert 'region=R2 ' in line


def test_the_webhook_body_carries_the_alert_s_region(tmp_path):
    driver = webhook_tests.driver_of(webhook_tests.load(tmp_path))
    validator = webhook_tests.schema_validator()
    plain = json.loads(driver._render(email_tests.make_alert()))
    validator.validate(plain)
    assert plain['version'] == '1'
    assert plain['region'] == 'RegionOne'          # [DEFAULT] region_name
    assert plain['alerts'][0]['region'] is None
    regional = json.loads(driver._render(dataclasses.replace(
        email_tests.make_alert(), region='RegionTwo')))
    validator.validate(regional)
    assert regional['version'] == '1'
    assert regional['region'] == 'RegionTwo'
    assert regional['alerts'][0]['region'] == 'RegionTwo'


def test_a_hostile_region_stays_one_json_string(tmp_path):
    driver = webhook_tests.driver_of(webhook_tests.load(tmp_path))
    body = json.loads(driver._render(dataclasses.replace(
        email_tests.make_alert(), region=HOSTILE_REGION)))
    assert body['alerts'][0]['region'] == HOSTILE_REGION
    # Through a body template, as every other value.
    template = tmp_path / 'body.json'
    template.write_text('{"text": "{{ region }} / {{ alert.region }}"}')
    templated = webhook_tests.driver_of(webhook_tests.load(
        tmp_path, extra='body_template = %s' % template))
    text = json.loads(templated._render(dataclasses.replace(
        email_tests.make_alert(), region=HOSTILE_REGION)))['text']
    # JSON-encoded on its way out: one string, the value as it is.
    assert text == HOSTILE_REGION + ' / ' + HOSTILE_REGION


def test_the_digest_webhook_body_names_each_member_s_region(tmp_path):
    one = dataclasses.replace(email_tests.make_alert(), region='R2')
    two = dataclasses.replace(email_tests.make_alert(), region=None)
    digest = alert_mod.digest('d', 'hook', 'r', [one, two], 2, 'two')
    body = webhook.body_document([digest], 'hook', 'RegionOne')
    webhook_tests.schema_validator().validate(body)
    assert [a['region'] for a in body['alerts']] == ['R2', None]


def test_the_mail_subject_names_the_alert_s_region(tmp_path):
    driver = email_tests.driver_of(email_tests.load(tmp_path))
    regional = dataclasses.replace(email_tests.make_alert(name='web-01'),
                                   region='RegionTwo')
    parsed = email_tests.parse(driver.build_message(regional, ['o@x.org']))
    assert parsed['Subject'].startswith('[nova-error-notifier][RegionTwo] ')
    text, html = email_tests.parts(parsed)
    assert 'in region RegionTwo' in text
    # Without a region of its own: [DEFAULT] region_name, as before.
    plain = email_tests.parse(driver.build_message(
        email_tests.make_alert(name='web-01'), ['o@x.org']))
    assert plain['Subject'].startswith('[nova-error-notifier][RegionOne] ')


def test_a_hostile_region_adds_no_header(tmp_path):
    driver = email_tests.driver_of(email_tests.load(tmp_path))
    alert = dataclasses.replace(email_tests.make_alert(name='web-01'),
                                region=HOSTILE_REGION)
    msg = driver.build_message(alert, ['o@x.org'])
    raw = msg.as_bytes()
    assert b'\nBcc:' not in raw and b'\x1b' not in raw
    parsed = email_tests.parse(msg)
    assert 'Bcc' not in parsed
    subject = parsed['Subject']
    assert '\n' not in subject and '\r' not in subject
    assert subject.startswith('[nova-error-notifier][Two Bcc: ')


# -- enrichment asks the Nova API of the alert's region -----------------------

def test_an_alert_with_a_region_asks_that_region_s_compute_api(enricher,
                                                               api):
    alert = rec.with_region(rec.ErrorRecord(
        event_type='compute_task.build_instances', priority='ERROR',
        format='legacy', instance_uuid=enrich_tests.UUID,
        request_id=enrich_tests.REQUEST), 'RegionTwo')
    enriched = enricher.enrich(alert_mod.from_records([alert], 'r', 'x'))
    assert enriched.enriched is True
    # Not [enrichment] compute_endpoint_override (the default bus's Nova):
    # the catalog's compute endpoint of RegionTwo (here the none plugin's
    # one endpoint stands for the catalog).
    assert api.paths[0] == '/identity/servers/%s' % enrich_tests.UUID
    adapter = enricher._adapter('compute', 'RegionTwo')
    assert adapter.region_name == 'RegionTwo'
    assert adapter.endpoint_override is None
    default = enricher._adapter('compute')
    assert default.endpoint_override.endswith('/v2.1')
    # Keystone is the [enrichment] one for every alert.
    assert enricher._adapter('identity', 'RegionTwo') is \
        enricher._adapter('identity')


def test_answers_are_cached_per_region(enricher, api):
    enricher.conf.set_override('cache_ttl', 60, group=enrich.GROUP)
    plain = enrich_tests.make_alert(project=None, user=None)
    regional = dataclasses.replace(plain, region='RegionTwo')
    enricher.enrich(plain)
    enricher.enrich(regional)
    enricher.enrich(plain)
    enricher.enrich(regional)
    assert len(api.paths) == 4      # server and action, once per region
