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
"""SMTP credentials are never sent in clear unless the operator says so.

``smtp_username`` with ``smtp_security = none`` stops the real service
process and fails ``check-config``; with ``[email] allow_plaintext_auth =
true`` the service starts (with one warning) and mails a failure published
on a real RabbitMQ through a real SMTP server that offers AUTH on a plain
connection, logging in there.
"""

import subprocess

from tests.functional import rabbitmq as rq
from tests.functional import service_process

USER = 'relay-user'
PASSWORD = 'Plain-Relay-Pw-41'
UUID = 'c0ffee00-0000-4000-8000-0000000000b1'


def _config(rabbitmq_url, smtp_port, state_dir, allow=None):
    lines = [
        '[DEFAULT]', 'transport_url = %s' % rabbitmq_url,
        'rules = everything', 'region_name = RegionOne',
        '[rule:everything]', 'events = *', 'receivers = oncall',
        '[receiver:oncall]', 'driver = email', 'to = ops@example.com',
        '[email]', 'smtp_host = 127.0.0.1', 'smtp_port = %d' % smtp_port,
        'smtp_security = none', 'smtp_username = %s' % USER,
        'smtp_password = %s' % PASSWORD,
        'from_address = nova-alerts@example.org',
    ]
    if allow is not None:
        lines.append('allow_plaintext_auth = %s' % allow)
    lines += ['[delivery]', 'state_dir = %s' % state_dir, '']
    return '\n'.join(lines)


def _check_config(path):
    return subprocess.run(
        [service_process.console_script('nova-error-notifier-manage'),
         '--config-file', str(path), 'check-config'],
        capture_output=True, text=True, timeout=120)


def test_plaintext_login_is_refused_by_default(tmp_path, rabbitmq_vhost,
                                               smtp_server):
    server = smtp_server(mode='plain', auth={USER: PASSWORD})
    for allow in (None, 'false'):
        workdir = tmp_path / ('allow-%s' % allow)
        workdir.mkdir()
        text = _config(rabbitmq_vhost.url, server.port, workdir, allow)
        proc = service_process.ServiceProcess(workdir, text)
        status = proc.run_to_exit()
        assert status == 2, proc.log()[-3000:]
        log = proc.log()
        problems = [ln for ln in log.splitlines()
                    if 'Configuration error:' in ln]
        [problem] = [ln for ln in problems if 'smtp_username' in ln]
        assert 'smtp_security = none' in problem
        assert 'receiver:oncall' in problem
        assert 'allow_plaintext_auth' in problem
        assert 'Listening to ' not in log
        assert PASSWORD not in log and PASSWORD not in proc.output()

        result = _check_config(proc.config_path)
        assert result.returncode == 1, result.stdout + result.stderr
        errors = [ln for ln in result.stdout.splitlines()
                  if ln.startswith('ERROR: ')]
        assert len([ln for ln in errors if 'smtp_username' in ln and
                    'smtp_security = none' in ln]) == 1, result.stdout
        assert 'the service would not start' in result.stdout
        assert PASSWORD not in result.stdout + result.stderr
    # Nobody ever connected, let alone logged in.
    assert server.auth_attempts == []
    assert server.messages == []


def test_opt_out_logs_in_over_plain_smtp(tmp_path, rabbitmq_vhost,
                                         smtp_server):
    server = smtp_server(mode='plain', auth={USER: PASSWORD})
    text = _config(rabbitmq_vhost.url, server.port, tmp_path, 'true')
    proc = service_process.ServiceProcess(tmp_path, text)

    result = _check_config(proc.config_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [ln for ln in result.stdout.splitlines()
                if ln.startswith('ERROR: ')]
    assert PASSWORD not in result.stdout + result.stderr

    proc.start()
    try:
        with rq.Publisher(rabbitmq_vhost.url) as pub:
            pub.publish({'request_id': 'req-plain-auth-1'}, 'compute.hv-1',
                        'compute.instance.create.error', 'ERROR',
                        {'instance_id': UUID, 'display_name': 'db-7',
                         'state': 'building',
                         'exception': "NoValidHost('none')",
                         'message': 'No valid host was found.'})
        [received] = server.wait_for_messages(1, timeout=90)
        proc.wait_for(r'receiver=oncall attempt=1 outcome=sent',
                      timeout=30)
    finally:
        status = proc.stop()
    assert status == 0
    assert received.tls_version is None          # really a plain session
    assert received.auth_username == USER        # and it logged in
    assert server.auth_attempts[-1] == (USER, True)
    assert not [a for a in server.auth_attempts if not a[1]]
    assert received.rcpt_tos == ['ops@example.com']
    assert UUID[:8] in received.message['Subject']
    assert 'req-plain-auth-1' in received.data.decode('utf-8', 'replace')
    assert PASSWORD not in received.data.decode('utf-8', 'replace')

    log = proc.log()
    warnings = [ln for ln in log.splitlines()
                if 'allow_plaintext_auth = true' in ln]
    assert len(warnings) == 1, warnings
    assert 'WARNING' in warnings[0]
    assert '127.0.0.1:%d' % server.port in warnings[0]
    assert 'without TLS' in warnings[0]
    assert not [ln for ln in log.splitlines() if 'Configuration error' in ln]
    assert PASSWORD not in log and PASSWORD not in proc.output()
