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
"""Enrichment asks Nova and Keystone about well-formed ids only.

A real HTTP server on 127.0.0.1 stands in for both APIs (keystoneauth's
``none`` auth plugin, no catalog) and records every request it gets.
"""

import http.server
import json
import threading

from oslo_config import cfg
import pytest

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import enrich
from nova_error_notifier import opts
from nova_error_notifier import record as rec

UUID = 'b5e2c3f4-1a2b-4c3d-9e8f-7a6b5c4d3e2f'
REQUEST = 'req-6a0c5f2e-3c4d-4e5f-8a9b-0c1d2e3f4a5b'
PROJECT = '9a8b7c6d5e4f40312a1b2c3d4e5f6a7b'
USER = '3e1f4c1b9d2a4c6e8f0a1b2c3d4e5f60'

HOSTILE_IDS = [
    '../../os-hypervisors',
    'x?all_tenants=1',
    'a' * 300,
    UUID + '/../../os-hypervisors',
    UUID + '?all_tenants=1',
    UUID + '\n',
    UUID + ' ',
    UUID.replace('-', ''),
    '%2e%2e%2fos-hypervisors',
    '{' + UUID + '}',
    UUID[:-1] + 'g',
    '',
]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.paths.append(self.path)
        body = json.dumps({
            'server': {'status': 'ERROR', 'name': 'web-07',
                       'fault': {'code': 500, 'message': 'No valid host'}},
            'instanceAction': {'action': 'create', 'events': []},
            'project': {'name': 'web-prod'},
            'user': {'name': 'alice'}}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 (the base's name)
        pass


@pytest.fixture
def api():
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def enricher(api, tmp_path):
    port = api.server_address[1]
    path = tmp_path / 'enrich.conf'
    path.write_text('\n'.join([
        '[service_credentials]', 'auth_type = none',
        'endpoint = http://127.0.0.1:%d/identity' % port,
        '[enrichment]', 'enabled = true', 'timeout = 5', 'cache_ttl = 0',
        'compute_endpoint_override = http://127.0.0.1:%d/v2.1' % port, '']))
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(['--config-file', str(path)], project='nova_error_notifier',
         default_config_files=[])
    return enrich.Enricher(conf)


def make_alert(instance=UUID, request_id=REQUEST, project=PROJECT,
               user=USER):
    return alert_mod.from_records([rec.ErrorRecord(
        event_type='compute_task.build_instances', priority='ERROR',
        format='legacy', instance_uuid=instance, request_id=request_id,
        project_id=project, user_id=user, exception='NoValidHost')],
        receiver='r', rule='x')


def test_well_formed_ids_are_asked_about(enricher, api):
    alert = enricher.enrich(make_alert())
    assert api.paths == [
        '/v2.1/servers/%s' % UUID,
        '/v2.1/servers/%s/os-instance-actions/%s' % (UUID, REQUEST),
        '/identity/projects/%s' % PROJECT,
        '/identity/users/%s' % USER]
    assert alert.enriched is True
    assert alert.enrichment_note is None
    assert alert.enrichment['fault']['message'] == 'No valid host'
    assert alert.project_name == 'web-prod' and alert.user_name == 'alice'


@pytest.mark.parametrize('instance', [i for i in HOSTILE_IDS if i])
def test_an_instance_id_that_is_no_uuid_is_not_sent(enricher, api,
                                                    instance):
    alert = enricher.enrich(make_alert(instance=instance))
    assert not any(p.startswith('/v2.1') for p in api.paths), api.paths
    assert alert.enriched is False
    assert alert.enrichment is None
    assert alert.enrichment_note == enrich.BAD_INSTANCE
    # Keystone is still asked about the well-formed project and user.
    assert api.paths == ['/identity/projects/%s' % PROJECT,
                         '/identity/users/%s' % USER]


@pytest.mark.parametrize('request_id', [
    'req-../../os-hypervisors', REQUEST + '?all_tenants=1', REQUEST + '/x',
    'req-' + 'a' * 300, 'req-after-api-stop', UUID, 'REQ-' + UUID,
    REQUEST + '\n', 'x?all_tenants=1'])
def test_a_bad_request_id_skips_the_action_only(enricher, api, request_id):
    alert = enricher.enrich(make_alert(request_id=request_id))
    assert [p for p in api.paths if p.startswith('/v2.1')] == [
        '/v2.1/servers/%s' % UUID]
    assert alert.enriched is True
    assert 'action' not in alert.enrichment
    assert alert.enrichment['server']['name'] == 'web-07'
    assert alert.enrichment_note == enrich.BAD_REQUEST


@pytest.mark.parametrize('ident', [
    '../domains', 'x?y=1', 'a b', 'a/b', 'a%2fb', 'p.1', 'p' * 65,
    'p\n', 'p\x00'])
def test_bad_keystone_ids_are_not_sent(enricher, api, ident):
    alert = enricher.enrich(make_alert(project=ident, user=ident))
    assert not any(p.startswith('/identity') for p in api.paths), api.paths
    assert len(api.paths) == 2                       # server and action
    assert alert.enriched is True
    assert alert.project_name is None and alert.user_name is None
    assert alert.enrichment_note == '; '.join([
        enrich.BAD_KEYSTONE_ID % 'project', enrich.BAD_KEYSTONE_ID % 'user'])


@pytest.mark.parametrize('value,expected', [
    (UUID, True), (UUID.upper(), True), (None, False), (42, False),
] + [(i, False) for i in HOSTILE_IDS])
def test_is_uuid(value, expected):
    assert enrich.is_uuid(value) is expected


@pytest.mark.parametrize('value,expected', [
    (REQUEST, True), ('req-' + UUID.upper(), True), (UUID, False),
    ('req-x', False), (REQUEST + '\n', False), (None, False),
])
def test_is_request_id(value, expected):
    assert enrich.is_request_id(value) is expected


@pytest.mark.parametrize('value,expected', [
    (PROJECT, True), ('default', True), ('ldap_user-1', True),
    ('p' * 64, True), ('p' * 65, False), ('', False), ('a.b', False),
    ('a/b', False), (None, False),
])
def test_is_keystone_id(value, expected):
    assert enrich.is_keystone_id(value) is expected
