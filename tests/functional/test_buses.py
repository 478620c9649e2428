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
"""Several buses, one service: two RabbitMQ vhosts stand for two regions.

The real ``nova-error-notifier`` with ``[listener] workers = 2`` listens to
the default bus (RegionOne) and to ``[bus:region-two]``; Nova's recorded
notifications are published on both, so that every failure has the same
request id and instance on both buses. Enrichment asks the compute API of
the alert's region in a real Keystone's catalog.
"""

import itertools
import sqlite3
import subprocess
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
from tests.functional import test_enrichment
from tests.functional import test_service
from tests import shared_corpus

PASSWORD = 'Region-Two-Pw-5d2e'
_vhosts = itertools.count(1)


@pytest.fixture
def region_two(rabbitmq):
    """A second vhost, with a user of its own: region two's bus."""
    name = 'test-buses-two-%d' % next(_vhosts)
    rabbitmq.add_vhost(name)
    user = 'nen-two-%s' % name.rsplit('-', 1)[1]
    rabbitmq.ctl('add_user', user, PASSWORD)
    rabbitmq.ctl('set_permissions', '-p', name, user, '.*', '.*', '.*')
    url = rabbitmq.vhost_url(name).replace(
        'guest:guest', '%s:%s' % (user, PASSWORD))
    try:
        yield name, url, rabbitmq.vhost_url(name)
    finally:
        rabbitmq.delete_vhost(name)
        rabbitmq.ctl('delete_user', user)


def config(one_url, two_url, workdir, workers=2):
    return '\n'.join([
        '[DEFAULT]', 'transport_url = %s' % one_url, 'rules = all',
        '[rule:all]', 'events = *', 'receivers = ops',
        '[receiver:ops]', 'driver = log',
        '[listener]', 'workers = %d' % workers, 'region_name = RegionOne',
        '[bus:region-two]', 'transport_url = %s' % two_url,
        'region_name = RegionTwo',
        '[delivery]', 'state_dir = %s' % workdir,
        'max_alerts_per_interval = 0',
        '[correlation]', 'group_wait = %s' % service_process.GROUP_WAIT,
        ''])


def incidents(workdir):
    path = workdir / 'nova_error_notifier.sqlite'
    with sqlite3.connect(str(path)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(
            'SELECT region, request_id, instance_uuid, state FROM incidents')]


def check_config(path):
    return subprocess.run(
        [service_process.console_script('nova-error-notifier-manage'),
         '--config-file', str(path), 'check-config'],
        capture_output=True, text=True, timeout=120)


def test_one_alert_per_failure_per_bus(tmp_path, rabbitmq, rabbitmq_vhost,
                                       region_two):
    two_vhost, two_url, two_guest_url = region_two
    proc = service_process.ServiceProcess(
        tmp_path, config(rabbitmq_vhost.url, two_url, tmp_path),
        extra_args=['--debug'])
    proc.start()
    try:
        # Two listener processes, each listening to both buses.
        lines = proc.wait_for('Listening to ', count=4, timeout=60)
        assert len([ln for ln in lines if 'bus region-two: ' in ln]) == 2
        assert all(', region Region' in ln for ln in lines)
        entries = test_service.wire_entries()
        errors = [e for _, e in entries if e['is_error']]
        failures = test_service.failures(errors)
        for url in (rabbitmq_vhost.url, two_guest_url):
            with rq.Publisher(url) as pub:
                for _, entry in entries:
                    pub.publish_wire_file(shared_corpus.path_of(entry))
        proc.wait_for_alerts(2 * len(failures), timeout=90)
        time.sleep(service_process.GROUP_WAIT + 1.5)
        alerts = [test_service.parse_alert(line)
                  for line in proc.alert_lines()]
        # One alert per failure per bus: nothing merged across buses,
        # nothing doubled.
        assert len(alerts) == 2 * len(failures)
        assert len({a['id'] for a in alerts}) == len(alerts)
        by_region = {}
        for alert in alerts:
            by_region.setdefault(alert.get('region'), []).append(alert)
        assert sorted(by_region) == ['RegionOne', 'RegionTwo']
        for region, found in by_region.items():
            assert len(found) == len(failures), region
            test_service.assert_covered(found, errors)
        for request_id in failures:
            both = [a for a in alerts if a['request_id'] == request_id]
            assert sorted(a['region'] for a in both) == ['RegionOne',
                                                         'RegionTwo']
            assert len({a.get('instance') for a in both}) == 1
        routed = [i for i in incidents(tmp_path) if i['state'] == 'routed']
        assert sorted(i['region'] for i in routed) == sorted(
            ['RegionOne', 'RegionTwo'] * len(failures))
        assert proc.stop() == 0
    finally:
        proc.kill()
    text = proc.log() + proc.output()
    assert 'transport_url' in text                # options were logged
    assert PASSWORD not in text
    assert 'Traceback' not in text
    assert shared_corpus.FAKE_TOKEN not in text

    # check-config asks every bus's broker about its pool queue.
    assert check_config(proc.config_path).returncode == 0
    quorum = tmp_path / 'quorum.conf'
    with open(proc.config_path, encoding='utf-8') as handle:
        quorum.write_text(handle.read() + '\n[oslo_messaging_rabbit]\n'
                          'rabbit_quorum_queue = true\n')
    result = check_config(quorum)
    warnings = [ln for ln in result.stdout.splitlines()
                if ln.startswith('WARNING:') and 'pool queue' in ln]
    assert len(warnings) == 2, result.stdout
    assert sum(ln.startswith('WARNING: [bus:region-two]: ')
               for ln in warnings) == 1
    assert any('vhost %s' % two_vhost in ln for ln in warnings)
    assert PASSWORD not in result.stdout + result.stderr


def test_an_unreachable_bus_holds_no_other_back(tmp_path, rabbitmq_vhost):
    port = rq._free_ports(1)[0]
    dead = 'rabbit://nen:%s@127.0.0.1:%d/' % (PASSWORD, port)
    proc = service_process.ServiceProcess(
        tmp_path, config(rabbitmq_vhost.url, dead, tmp_path, workers=1))
    proc.start()
    try:
        proc.wait_for('Connecting to bus region-two: ', timeout=30)
        with rq.Publisher(rabbitmq_vhost.url) as pub:
            pub.publish({'request_id': 'req-alive'}, 'compute.hv-1',
                        'compute.instance.create.error', 'ERROR',
                        {'instance_id': 'inst-alive', 'state': 'building',
                         'exception': "NoValidHost('x')", 'message': 'x'})
        [line] = proc.wait_for_alerts(1, timeout=60)
        alert = test_service.parse_alert(line)
        assert alert['region'] == 'RegionOne'
        assert alert['request_id'] == 'req-alive'
        assert '127.0.0.1:%d' % port in proc.log()    # retried, shown
        assert proc.stop() == 0
        assert proc.stop_seconds < 10
    finally:
        proc.kill()
    assert PASSWORD not in proc.log() + proc.output()


# -- enrichment: the compute API of the alert's region ------------------------

@pytest.fixture
def regions(keystone, nova_api):
    """Two more regions in Keystone's catalog, with compute endpoints.

    RegionTwo's refuses connections; RegionThree's is nova-api's, as the
    default region's (RegionOne) is.
    """
    ks = keystone
    [compute] = [s for s in ks.get('/services', type='compute')['services']
                 if s['enabled']]
    made = []
    dead_port = rq._free_ports(1)[0]
    for region, url in (('RegionTwo', 'http://127.0.0.1:%d/v2.1'
                         % dead_port), ('RegionThree', nova_api.url)):
        ks.session.post(ks.auth_url + '/regions',
                        json={'region': {'id': region}})
        endpoint = ks.session.post(ks.auth_url + '/endpoints', json={
            'endpoint': {'service_id': compute['id'], 'interface': 'public',
                         'region_id': region, 'url': url,
                         'enabled': True}}).json()['endpoint']
        made.append((region, endpoint['id']))
    try:
        yield ks, nova_api
    finally:
        for region, endpoint_id in made:
            ks.session.delete(ks.auth_url + '/endpoints/' + endpoint_id)
            ks.session.delete(ks.auth_url + '/regions/' + region)


def test_enrichment_asks_the_nova_api_of_the_alert_s_region(tmp_path,
                                                            regions):
    ks, nova = regions
    project = ks.create_project('buses-web-%d' % next(_vhosts))
    user = ks.create_user('buses-alice-%s' % project[:8], 'pw-alice',
                          project=project)
    server = nova.create_server(project, user, 'web-r3', vm_state='error',
                                host='compute-r3')
    nova.add_fault(server, code=500, message='No valid host was found.')
    path = tmp_path / 'enrich.conf'
    path.write_text('[DEFAULT]\nregion_name = RegionOne\n' +
                    test_enrichment.credentials(ks) +
                    '\n[enrichment]\nenabled = true\ntimeout = 3\n')
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(['--config-file', str(path)], project='nova_error_notifier',
         default_config_files=[])
    enricher = enrich.Enricher(conf)

    def alert(region):
        return alert_mod.from_records([rec.with_region(rec.ErrorRecord(
            event_type='compute_task.build_instances', priority='ERROR',
            format='legacy', instance_uuid=server, project_id=project,
            user_id=user, exception='NoValidHost'), region)], 'r', 'x')
    # Without a region: [enrichment] / [DEFAULT] region_name, as before.
    plain = enricher.enrich(alert(None))
    assert plain.enriched is True
    assert plain.enrichment['fault']['code'] == 500
    # RegionThree's compute API is nova-api too.
    three = enricher.enrich(alert('RegionThree'))
    assert three.enriched is True and three.region == 'RegionThree'
    assert three.enrichment['server']['name'] == 'web-r3'
    # RegionTwo's refuses: the alert went there, not to RegionOne's.
    two = enricher.enrich(alert('RegionTwo'))
    assert two.enriched is False
    assert 'compute' in two.enrichment_note
    # Keystone answered for every region (the names are Keystone's).
    assert two.project_name.startswith('buses-web-')
    # A region the catalog does not know: said, not raised.
    nowhere = enricher.enrich(alert('RegionNowhere'))
    assert nowhere.enriched is False
    assert 'EndpointNotFound' in nowhere.enrichment_note
    assert keystone_helpers.ADMIN_USER not in (nowhere.enrichment_note or '')
