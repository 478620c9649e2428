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
"""A webhook URL's password and token reach no log, file or output.

The real service with a real RabbitMQ and a real HTTP receiver configured
as ``http://alice:PASSWORD@127.0.0.1:PORT/hook?token=TOKEN``: the receiver
first answers 500 (retried), then stops (connection refused, the error
keystoneauth words with the whole URL), until the delivery reaches the dead
letters. Then no file of the service's work directory (the log with its
audit lines, the SQLite outbox and its -wal/-shm files, the process's
stdout and stderr) and no output of ``nova-error-notifier-manage`` holds
the password or the token, in any spelling.
"""

import base64
import os
import subprocess
from urllib import parse
import uuid

from tests.functional import rabbitmq as rq
from tests.functional import service_process
from tests.functional import test_reliability as reliability

PASSWORD = 'S3cret-Pw-x'
TOKEN = 'T0ken-y'
SIGNING = 'Hm4c-Signing-Secret-3'
HEADER = 'Hdr-Api-K3y-9'
SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'nova_error_notifier', 'samples',
    '05-legacy-compute_task.build_instances.json')


def forbidden():
    """Every spelling of the secrets, as bytes."""
    values = set()
    for secret in (PASSWORD, TOKEN, SIGNING, HEADER):
        values.update({secret, parse.quote(secret, safe=''),
                       secret.replace('-', '%2D')})
    values.add(base64.b64encode(('alice:%s' % PASSWORD).encode()).decode())
    return sorted(v.encode() for v in values)


def leaks(data):
    return [secret for secret in forbidden() if secret in data]


def manage(proc, *args):
    """Run nova-error-notifier-manage with the service's configuration."""
    result = subprocess.run(
        [service_process.console_script('nova-error-notifier-manage'),
         '--config-file', proc.config_path] + list(args),
        stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
        cwd=proc.workdir)
    return result.returncode, result.stdout + result.stderr


def dead_letters(workdir):
    try:
        return reliability.query(workdir, 'SELECT reason FROM dead_letters')
    except Exception:          # not created yet
        return []


def test_url_password_and_token_never_leak(tmp_path, rabbitmq_vhost,
                                           webhook_server):
    workdir = tmp_path / 'service'
    workdir.mkdir(mode=0o700)
    hook = webhook_server(secret=SIGNING)
    hook.respond_next(500, count=1000)
    url = 'http://alice:%s@127.0.0.1:%d/hook?token=%s' % (
        PASSWORD, hook.port, TOKEN)
    config = '\n'.join([
        '[DEFAULT]', 'transport_url = %s' % rabbitmq_vhost.url,
        'region_name = RegionOne', 'rules = all',
        '[rule:all]', 'events = *', 'receivers = hook',
        '[receiver:hook]', 'driver = webhook', 'url = %s' % url,
        'secret = %s' % SIGNING, 'headers = X-Api-Key:%s' % HEADER,
        'timeout = 2',
        '[delivery]', 'state_dir = %s' % workdir, 'retry_deadline = 12',
        'retry_initial_delay = 0.3', 'retry_max_delay = 1', ''])
    proc = service_process.ServiceProcess(workdir, config, ['--debug'])
    proc.start()
    outputs = {}
    try:
        request_id = 'req-%s' % uuid.uuid4()
        with rq.Publisher(rabbitmq_vhost.url) as pub:
            pub.publish({'request_id': request_id}, 'compute.ctl-01',
                        'compute.instance.update', 'INFO',
                        {'instance_id': str(uuid.uuid4()), 'state': 'error',
                         'old_state': 'active', 'display_name': 'web-07',
                         'tenant_id': reliability.PROJECT})
        # The receiver got the request with the URL's credentials: the
        # password is in use, not lost on the way.
        first = hook.wait_for_requests(1, timeout=60)[0]
        assert first.headers['Authorization'] == 'Basic ' + \
            base64.b64encode(('alice:%s' % PASSWORD).encode()).decode()
        assert first.headers['X-Api-Key'] == HEADER
        assert first.signature_ok is True
        assert first.query_params == {'token': [TOKEN]}
        proc.wait_for(r'Receiver hook \(driver webhook\) could not deliver'
                      r'.*HTTP 500', timeout=30)
        outputs['pending (HTTP 500)'] = manage(proc, 'pending')

        hook.stop()
        lines = proc.wait_for(r'could not deliver.*ConnectFailure',
                              timeout=30)
        assert 'POST http://127.0.0.1:%d/hook: ConnectFailure' % hook.port \
            in lines[0], lines[0]
        outputs['pending (refused)'] = manage(proc, 'pending')
        outputs['send-test'] = manage(proc, 'send-test', '--receiver',
                                      'hook')
        reliability.wait_until(lambda: dead_letters(workdir), 60,
                               lambda: 'no dead letter yet; log tail:\n%s'
                               % proc.log()[-3000:])
        outputs['dead-letters list'] = manage(proc, 'dead-letters', 'list')
        outputs['stats'] = manage(proc, 'stats')
        outputs['check-config'] = manage(proc, 'check-config')
        outputs['test-route'] = manage(proc, 'test-route', SAMPLE)
        # Read the outbox files while the service has them open (WAL).
        files = {name: (workdir / name).read_bytes()
                 for name in os.listdir(workdir)
                 if (workdir / name).is_file()}
    finally:
        assert proc.stop() == 0
    for name in os.listdir(workdir):
        if (workdir / name).is_file():
            files[name + ' (stopped)'] = (workdir / name).read_bytes()

    # No file and no output holds a secret ...
    assert 'service.log' in files and 'service.out' in files
    assert 'nova_error_notifier.sqlite' in files
    found = {}
    for name, data in list(files.items()) + [
            ('manage ' + key, value[1]) for key, value in outputs.items()]:
        if name.startswith(os.path.basename(proc.config_path)):
            continue                  # the configuration itself
        if leaks(data):
            found[name] = leaks(data)
    assert found == {}, found
    # ... and the commands said what they should.
    status, out = outputs['pending (refused)']
    assert status == 0 and b'ConnectFailure' in out, out
    assert b'127.0.0.1:%d/hook' % hook.port in out
    status, out = outputs['send-test']
    assert status == 1 and b'FAILED: receiver hook' in out, out
    status, out = outputs['dead-letters list']
    assert status == 0 and b'1 dead letters' in out, out
    assert b'retry deadline passed' in out
    status, out = outputs['check-config']
    assert status == 0 and b'OK: 1 rule(s)' in out, out
    status, out = outputs['test-route']
    assert status == 0 and b'=> receiver hook (driver webhook)' in out, out
    [(reason,)] = dead_letters(workdir)
    assert 'ConnectFailure' in reason and 'alice' not in reason, reason
    log = proc.log()
    assert 'nova_error_notifier.audit' in log
    assert 'retry deadline passed' in log

    assert any(name.endswith('-wal') for name in files), sorted(files)
    # The secrets are really where they could have leaked from.
    with open(proc.config_path, 'rb') as handle:
        assert set(leaks(handle.read())) >= {PASSWORD.encode(),
                                             TOKEN.encode()}
