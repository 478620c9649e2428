"""Acceptance: the service mails every Nova error to ops and the staff.

Real RabbitMQ, real Keystone, real SMTP server, the real service process.
"""

import re

from tests.functional import rabbitmq as rq
from tests.functional import service_process
from tests.functional import test_service
from tests.functional import test_staff_keystone as staff_tests
from tests import shared_corpus

SMTP_PASSWORD = 'Smtp-Acceptance-Pw-5'
HOSTILE = 'evil\r\nBcc: victim@example.com <script>alert(1)</script>'


def test_every_error_reaches_ops_and_the_staff(
        tmp_path, rabbitmq_vhost, keystone, smtp_server):
    ks = keystone
    prefix = 'acc'
    ops_project = ks.create_project(prefix + '-ops')
    staff_user = ks.create_user(prefix + 'admin', 'pw1',
                                email=prefix + 'admin@example.com')
    ks.grant_project('admin', ops_project, user_id=staff_user)
    disabled = ks.create_user(prefix + 'gone', 'pw2',
                              email=prefix + 'gone@example.com')
    ks.grant_project('admin', ops_project, user_id=disabled)
    ks.disable_user(disabled)
    member = ks.create_user(prefix + 'member', 'pw3',
                            email=prefix + 'member@example.com')
    ks.grant_project('member', ops_project, user_id=member)
    service_user = ks.create_user(prefix + 'svc', 'Svc-Acc-Pw-9')
    ks.grant_system('reader', user_id=service_user)

    server = smtp_server(mode='starttls', auth={'alerts': SMTP_PASSWORD})
    config = '\n'.join([
        'rules = everything',
        'region_name = RegionOne',
        '[rule:everything]', 'events = *', 'receivers = oncall',
        '[receiver:oncall]', 'driver = email', 'to = ops@example.com',
        'staff_users = true',
        '[email]', 'smtp_host = 127.0.0.1', 'smtp_port = %d' % server.port,
        'smtp_security = starttls', 'cafile = %s' % server.cafile,
        'smtp_username = alerts', 'smtp_password = %s' % SMTP_PASSWORD,
        'from_address = nova-alerts@example.org',
        '[staff]', 'project = %s-ops' % prefix,
        staff_tests.system_credentials(ks, prefix + 'svc', 'Svc-Acc-Pw-9'),
    ])
    proc = service_process.ServiceProcess(tmp_path, '[DEFAULT]\n'
                                          'transport_url = %s\n%s' % (
                                              rabbitmq_vhost.url, config))
    proc.start()
    try:
        entries = test_service.wire_entries()
        errors = [e for _, e in entries if e['is_error']]
        with rq.Publisher(rabbitmq_vhost.url) as pub:
            for _, entry in entries:
                pub.publish_wire_file(shared_corpus.path_of(entry))
            pub.publish({'request_id': 'req-hostile-0001'}, 'compute.hv-1',
                        'compute.instance.create.error', 'ERROR',
                        {'instance_id': 'c0ffee00-0000-4000-8000-00000000000a',
                         'display_name': HOSTILE, 'state': 'building',
                         'exception': "X('<b>boom</b>')", 'message': 'X'})
        received = server.wait_for_messages(
            len(test_service.failures(errors)) + 1, timeout=90)
        expected_rcpts = {'ops@example.com', prefix + 'admin@example.com'}
        for mail in received:
            assert set(mail.rcpt_tos) == expected_rcpts, mail.rcpt_tos
            assert mail.message['To'] == 'ops@example.com'
            assert mail.message['Bcc'] is None
            raw = mail.data.decode('utf-8', 'replace')
            assert shared_corpus.FAKE_TOKEN not in raw
            assert SMTP_PASSWORD not in raw and 'Svc-Acc-Pw-9' not in raw
            html = mail.message.get_body(
                preferencelist=('html',)).get_content()
            assert '<script>' not in html and '<b>boom' not in html
        subjects = [m.message['Subject'] for m in received]
        for entry in errors:
            request_id = entry['expected']['request_id']
            assert any(request_id in m.data.decode('utf-8', 'replace')
                       for m in received), entry['file']
        hostile = [m for m in received if 'c0ffee00' in
                   m.message['Subject']]
        assert len(hostile) == 1
        assert '\n' not in hostile[0].message['Subject']
        bad = [s for s in subjects
               if not s.startswith('[nova-error-notifier][RegionOne] ')]
        assert not bad, bad

        # The SMTP server goes away: the log names the receiver and why.
        server.stop()
        with rq.Publisher(rabbitmq_vhost.url) as pub:
            pub.publish({'request_id': 'req-after-stop-1'}, 'compute.hv-1',
                        'compute.instance.create.error', 'ERROR',
                        {'instance_id': 'after-stop', 'exception': "X('y')",
                         'message': 'X'})
        [line] = proc.wait_for(r'Receiver oncall \(driver email\) could not '
                               r'deliver', timeout=60)
        assert re.search(r'SMTP server 127\.0\.0\.1:%d' % server.port, line)
        assert 'req-after-stop-1' in line
        assert 'retryable=True' in line
        assert proc.process.poll() is None
    finally:
        status = proc.stop()
    assert status == 0
    log = proc.log()
    assert SMTP_PASSWORD not in log and 'Svc-Acc-Pw-9' not in log
    assert shared_corpus.FAKE_TOKEN not in log
