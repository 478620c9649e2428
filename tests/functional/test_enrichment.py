"""Enrichment from a real nova-api and a real Keystone."""

import json
import socket
import threading
import time

from oslo_config import cfg
import pytest

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import enrich
from nova_error_notifier import opts
from nova_error_notifier import record as rec
from tests.functional import keystone as keystone_helpers
from tests.functional import rabbitmq as rq
from tests.functional import service_process

REQUEST = 'req-5e1f0a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b'
TRACEBACK = 'Traceback (most recent call last):\n  File "x.py"\nBoom\n'


@pytest.fixture(scope='module')
def cloud(keystone, nova_api):
    ks = keystone
    project = ks.create_project('enrich-web')
    user = ks.create_user('enrich-alice', 'pw-alice', project=project)
    ks.grant_project('member', project, user_id=user)
    server = nova_api.create_server(project, user, 'web-07',
                                    vm_state='error', host='compute-07')
    nova_api.add_fault(server, code=500,
                       message='No valid host was found. There are not '
                               'enough hosts available.',
                       details=TRACEBACK)
    nova_api.add_action(server, REQUEST, action='create', events=[
        {'event': 'conductor_schedule_and_build_instances',
         'result': 'Error', 'host': 'ctl-01', 'traceback': TRACEBACK,
         'details': 'No valid host was found.'}])
    # A service user with only the "service" role: 403 from Nova.
    weak = ks.create_user('enrich-weak', 'Weak-Pw-3')
    ks.grant_project('service', project, user_id=weak)
    return {'project': project, 'user': user, 'server': server,
            'ks': ks, 'nova': nova_api}


def credentials(ks, username=None, password=None, project=None):
    return ks.service_credentials_conf(
        username or keystone_helpers.ADMIN_USER,
        password or ks.admin_password,
        project or keystone_helpers.ADMIN_PROJECT)


def enricher(tmp_path, cloud, extra='', creds=None):
    path = tmp_path / 'enrich.conf'
    path.write_text('[DEFAULT]\nregion_name = RegionOne\n' +
                    (creds or credentials(cloud['ks'])) +
                    '\n[enrichment]\nenabled = true\ntimeout = 2\n' + extra)
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(['--config-file', str(path)], project='nova_error_notifier',
         default_config_files=[])
    return enrich.Enricher(conf)


def make_alert(cloud, server=None, request_id=REQUEST):
    return alert_mod.from_records([rec.ErrorRecord(
        event_type='compute_task.build_instances', priority='ERROR',
        format='legacy', instance_uuid=server or cloud['server'],
        request_id=request_id, project_id=cloud['project'],
        user_id=cloud['user'], exception='NoValidHost')], receiver='r',
        rule='x', include_details=True)


def test_alert_carries_fault_and_action(tmp_path, cloud):
    alert = enricher(tmp_path, cloud).enrich(make_alert(cloud))
    assert alert.enriched is True
    assert alert.enrichment_note is None
    e = alert.enrichment
    assert e['server']['status'] == 'ERROR'
    assert e['server']['name'] == 'web-07'
    assert e['server']['host'] == 'compute-07'       # admin credentials
    assert e['fault']['code'] == 500
    assert e['fault']['message'].startswith('No valid host was found.')
    assert e['fault']['details'] == TRACEBACK.rstrip('\n') or \
        'Boom' in e['fault']['details']
    assert e['action']['action'] == 'create'
    assert e['action']['request_id'] == REQUEST
    [event] = e['action']['events']
    assert event['result'] == 'Error'
    assert event['host'] == 'ctl-01'                 # microversion 2.62
    assert event['details'] == 'No valid host was found.'   # 2.84
    assert 'Boom' in event['traceback']
    assert alert.project_name == 'enrich-web'
    assert alert.user_name == 'enrich-alice'
    # Receivers without include_details get neither details nor tracebacks.
    plain = alert_mod.for_receiver(alert, 'plain', False)
    assert plain.enrichment['fault']['details'] is None
    assert plain.enrichment['action']['events'][0]['traceback'] is None
    assert plain.enrichment['fault']['message'] == e['fault']['message']


def test_deleted_server_gives_404_and_no_enrichment(tmp_path, cloud,
                                                    caplog):
    alert = enricher(tmp_path, cloud).enrich(make_alert(
        cloud, server='00000000-dead-4000-8000-000000000000'))
    assert alert.enriched is False
    assert '404' in alert.enrichment_note
    assert any('not enriched' in r.getMessage() for r in caplog.records)


def test_unknown_request_gives_server_but_no_action(tmp_path, cloud):
    alert = enricher(tmp_path, cloud).enrich(make_alert(
        cloud, request_id='req-00000000-0000-4000-8000-000000000000'))
    assert alert.enriched is True
    assert alert.enrichment['server']['status'] == 'ERROR'
    assert 'action' not in alert.enrichment
    assert '404' in alert.enrichment_note


def test_missing_role_gives_403(tmp_path, cloud):
    weak = credentials(cloud['ks'], 'enrich-weak', 'Weak-Pw-3',
                       'enrich-web')
    alert = enricher(tmp_path, cloud, creds=weak).enrich(make_alert(cloud))
    assert alert.enriched is False
    assert '403' in alert.enrichment_note
    assert 'Weak-Pw-3' not in alert.enrichment_note


def test_slow_api_stays_within_the_budget(tmp_path, cloud):
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        slow = enricher(tmp_path, cloud, 'compute_endpoint_override = '
                        'http://127.0.0.1:%d/v2.1\n'
                        % listener.getsockname()[1])
        start = time.monotonic()
        alert = slow.enrich(make_alert(cloud))
        elapsed = time.monotonic() - start
    finally:
        stop.set()
        thread.join(2)
        listener.close()
        for conn in held:
            conn.close()
    # The budget is 2 s; leave room for a loaded CI machine.
    assert elapsed < 2.0 + 1.5, elapsed
    assert alert.enriched is False
    assert 'within 2.0 s' in alert.enrichment_note or \
        'timed out' in alert.enrichment_note or \
        'budget' in alert.enrichment_note


def test_answers_are_cached(tmp_path, cloud):
    first = enricher(tmp_path, cloud, 'cache_ttl = 60\n')
    assert first.enrich(make_alert(cloud)).enriched
    cloud['nova'].stop_api()
    try:
        again = first.enrich(make_alert(cloud))
        assert again.enriched is True          # from the cache
        assert again.enrichment['fault']['code'] == 500
    finally:
        cloud['nova'].start_api()


def webhook_config(vhost, hook, cloud):
    """Every error to one webhook receiver, enriched from ``cloud``."""
    return '\n'.join([
        '[DEFAULT]', 'transport_url = %s' % vhost.url,
        'region_name = RegionOne', 'rules = all',
        '[rule:all]', 'events = *', 'receivers = hook',
        '[receiver:hook]', 'driver = webhook', 'url = %s' % hook.url,
        '[enrichment]', 'enabled = true', 'timeout = 2', 'cache_ttl = 0',
        credentials(cloud['ks']), ''])


def test_service_webhook_shows_the_fault_then_survives_an_api_outage(
        tmp_path, cloud, rabbitmq_vhost, webhook_server):
    hook = webhook_server()
    config = webhook_config(rabbitmq_vhost, hook, cloud)
    proc = service_process.ServiceProcess(tmp_path, config)
    proc.start()
    try:
        with rq.Publisher(rabbitmq_vhost.url) as pub:
            pub.publish({'request_id': REQUEST}, 'compute.ctl-01',
                        'compute.instance.update', 'INFO',
                        {'instance_id': cloud['server'], 'state': 'error',
                         'old_state': 'building', 'tenant_id':
                         cloud['project'], 'display_name': 'web-07'})
            [request] = hook.wait_for_requests(1, timeout=60)
            alert = request.json['alerts'][0]
            assert request.schema_errors == []
            assert alert['enriched'] is True
            assert alert['fault']['message'].startswith('No valid host')
            assert alert['fault']['details'] is None   # no include_details
            assert [e['result'] for e in alert['action']['events']] == \
                ['Error']
            cloud['nova'].stop_api()
            try:
                start = time.monotonic()
                pub.publish({'request_id': 'req-after-api-stop'},
                            'compute.ctl-01', 'compute.instance.update',
                            'INFO', {'instance_id': cloud['server'],
                                     'state': 'error', 'old_state': 'active',
                                     'tenant_id': cloud['project']})
                requests = hook.wait_for_requests(2, timeout=60)
                elapsed = time.monotonic() - start
            finally:
                cloud['nova'].start_api()
        second = requests[1].json['alerts'][0]
        assert second['enriched'] is False
        assert second['enrichment_note']
        assert elapsed < service_process.GROUP_WAIT + 2 + 3, elapsed
        assert proc.wait_for('not enriched')
    finally:
        assert proc.stop() == 0
    assert cloud['ks'].admin_password not in proc.log()
    json.dumps(second)


# -- ids that are not well-formed never reach the API -------------------------

HOSTILE_INSTANCE_IDS = ['../../os-hypervisors', 'x?all_tenants=1',
                        'a' * 300, '%s/../../os-hypervisors']
HOSTILE_REQUEST_IDS = ['req-../../../os-hypervisors', 'x?all_tenants=1',
                       'req-' + 'a' * 300, REQUEST + '/../..']


def api_requests(nova):
    """The requests nova-api logged (its request_log middleware)."""
    with open(nova.log_path, encoding='utf-8', errors='replace') as handle:
        return [line for line in handle if 'nova.api.openstack.requestlog'
                in line and '"GET ' in line]


def wait_for_api_log(nova, count, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        lines = api_requests(nova)
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_hostile_ids_make_no_api_request(tmp_path, cloud):
    nova = cloud['nova']
    enricher_ = enricher(tmp_path, cloud, 'cache_ttl = 0\n')
    # The control: a well-formed alert is seen by nova-api (server and
    # action), so that the log below would show any request.
    before = api_requests(nova)
    assert enricher_.enrich(make_alert(cloud)).enriched is True
    after = wait_for_api_log(nova, len(before) + 2)
    new = after[len(before):]
    assert len(new) == 2, new
    assert cloud['server'] in new[0] and REQUEST in new[1]

    for hostile in HOSTILE_INSTANCE_IDS:
        hostile = hostile.replace('%s', cloud['server'])
        before = api_requests(nova)
        alert = enricher_.enrich(make_alert(cloud, server=hostile))
        assert alert.enriched is False, hostile
        assert alert.enrichment is None
        assert alert.enrichment_note == enrich.BAD_INSTANCE
        # Keystone's names are still looked up: the ids are fine.
        assert alert.project_name == 'enrich-web'
        time.sleep(0.3)                  # a late log line would show here
        assert api_requests(nova) == before, hostile

    for hostile in HOSTILE_REQUEST_IDS:
        before = api_requests(nova)
        alert = enricher_.enrich(make_alert(cloud, request_id=hostile))
        assert alert.enriched is True          # the server is well-formed
        assert 'action' not in alert.enrichment
        assert alert.enrichment_note == enrich.BAD_REQUEST
        wait_for_api_log(nova, len(before) + 1)
        time.sleep(0.3)
        new = api_requests(nova)[len(before):]
        assert len(new) == 1, new
        assert '/servers/%s ' % cloud['server'] in new[0] or \
            '/servers/%s"' % cloud['server'] in new[0], new
        assert 'os-instance-actions' not in new[0]


def test_service_alert_with_a_hostile_instance_id_says_why(
        tmp_path, cloud, rabbitmq_vhost, webhook_server):
    hook = webhook_server()
    config = webhook_config(rabbitmq_vhost, hook, cloud)
    proc = service_process.ServiceProcess(tmp_path, config)
    proc.start()
    nova = cloud['nova']
    try:
        before = api_requests(nova)
        with rq.Publisher(rabbitmq_vhost.url) as pub:
            pub.publish({'request_id': 'x?all_tenants=1'}, 'compute.ctl-01',
                        'compute.instance.update', 'INFO',
                        {'instance_id': '../../os-hypervisors',
                         'state': 'error', 'old_state': 'building',
                         'tenant_id': cloud['project'],
                         'display_name': 'web-07'})
            [request] = hook.wait_for_requests(1, timeout=60)
        alert = request.json['alerts'][0]
        assert request.schema_errors == []
        assert alert['instance']['uuid'] == '../../os-hypervisors'
        assert alert['enriched'] is False
        assert alert['enrichment_note'] == enrich.BAD_INSTANCE
        assert alert['server'] is None and alert['action'] is None
        assert alert['project_name'] == 'enrich-web'    # from Keystone
        assert proc.wait_for('not enriched.*is not a UUID')
    finally:
        assert proc.stop() == 0
    assert api_requests(nova) == before
