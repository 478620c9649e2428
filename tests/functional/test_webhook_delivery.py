"""The webhook driver against a real HTTP(S) server, and end to end."""

import logging

from oslo_config import cfg
import pytest

from nova_error_notifier import config
from nova_error_notifier.drivers import base
from nova_error_notifier import opts
from tests.functional import rabbitmq as rq
from tests.functional import service_process
from tests.functional import test_service
from tests import shared_corpus
from tests.unit import test_email as email_tests

SECRET = 'Hook-Secret-Never-Logged-8'
TOKEN = 'Bearer-Token-Never-Logged-2'


def load(tmp_path, server, receiver_extra=''):
    path = tmp_path / 'hook.conf'
    path.write_text('\n'.join([
        '[DEFAULT]', 'region_name = RegionOne', 'rules = r',
        '[rule:r]', 'events = *', 'receivers = hook',
        '[receiver:hook]', 'driver = webhook',
        'url = %s?token=%s' % (server.url, TOKEN), 'timeout = 2',
        'secret = %s' % SECRET,
        'headers = Authorization:Bearer %s' % TOKEN,
        receiver_extra, '']))
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(['--config-file', str(path)], project='nova_error_notifier',
         default_config_files=[])
    return config.load(conf).receivers['hook'].driver


def test_signed_valid_delivery(tmp_path, webhook_server):
    server = webhook_server(secret=SECRET)
    driver = load(tmp_path, server)
    alert = email_tests.make_alert(name='web-01')
    driver.notify(alert)
    [request] = server.wait_for_requests(1)
    assert request.method == 'POST'
    assert request.signature_ok is True, request.signature_error
    assert request.schema_errors == []
    assert request.headers['Content-Type'] == 'application/json'
    assert request.headers['User-Agent'].startswith('nova-error-notifier/')
    assert request.headers['Authorization'] == 'Bearer ' + TOKEN
    assert request.json['alerts'][0]['id'] == alert.id
    assert request.json['alerts'][0]['request_id'] == 'req-8e4f2a1c'
    assert request.idempotency_key


def test_retries_keep_the_idempotency_key(tmp_path, webhook_server):
    server = webhook_server(secret=SECRET)
    driver = load(tmp_path, server)
    alert = email_tests.make_alert()
    server.respond_next(500)
    with pytest.raises(base.DriverError) as info:
        driver.notify(alert)
    assert info.value.retryable is True
    driver.notify(alert)
    driver.notify(email_tests.make_alert(message_id='m-other'))
    first, retry, other = server.wait_for_requests(3)
    assert first.idempotency_key == retry.idempotency_key
    assert other.idempotency_key != first.idempotency_key
    assert all(r.signature_ok for r in (first, retry, other))


@pytest.mark.parametrize('status,headers,retryable,retry_after', [
    (500, None, True, None),
    (503, {'Retry-After': '7'}, True, 7),
    (429, {'Retry-After': '2'}, True, 2),
    (408, None, True, None),
    (400, None, False, None),
    (401, None, False, None),
    (404, {'Retry-After': '9'}, False, None),
    (302, {'Location': 'http://127.0.0.1:1/'}, False, None),
])
def test_status_mapping(tmp_path, webhook_server, status, headers,
                        retryable, retry_after):
    server = webhook_server(secret=SECRET)
    driver = load(tmp_path, server)
    server.respond_next(status, headers=headers)
    with pytest.raises(base.DriverError) as info:
        driver.notify(email_tests.make_alert())
    error = info.value
    assert error.retryable is retryable
    assert error.retry_after == retry_after
    text = str(error)
    assert 'HTTP %d' % status in text
    assert TOKEN not in text and SECRET not in text
    assert '?' not in text


def test_timeout_is_retryable(tmp_path, webhook_server):
    server = webhook_server()
    driver = load(tmp_path, server)
    server.delay_next(5)
    with pytest.raises(base.DriverError) as info:
        driver.notify(email_tests.make_alert())
    assert info.value.retryable is True
    assert TOKEN not in str(info.value)


def test_https_needs_the_ca(tmp_path, webhook_server):
    server = webhook_server(mode='https', secret=SECRET)
    driver = load(tmp_path, server)
    with pytest.raises(base.DriverError) as info:
        driver.notify(email_tests.make_alert())
    assert info.value.retryable is False
    assert 'TLS' in str(info.value)
    driver = load(tmp_path, server, 'cafile = %s' % server.cafile)
    driver.notify(email_tests.make_alert())
    [request] = server.wait_for_requests(1)
    assert request.signature_ok


def test_nothing_secret_is_logged_even_with_debug(tmp_path, webhook_server,
                                                  caplog):
    server = webhook_server(secret=SECRET)
    driver = load(tmp_path, server)
    with caplog.at_level(logging.DEBUG):
        driver.notify(email_tests.make_alert())
        server.respond_next(400)
        with pytest.raises(base.DriverError):
            driver.notify(email_tests.make_alert())
    # Everything but the test's own HTTP server, which logs what it got.
    text = '\n'.join(r.getMessage() for r in caplog.records
                     if not r.name.startswith('tests.'))
    assert 'POST /hook?... HTTP/1.1' in text        # urllib3 did log
    assert TOKEN not in text and SECRET not in text


def test_service_delivers_every_nova_error(tmp_path, rabbitmq_vhost,
                                           webhook_server):
    """Acceptance: real RabbitMQ, Nova traffic, the service, a receiver."""
    server = webhook_server(secret=SECRET)
    bad = webhook_server()
    config_text = '\n'.join([
        '[DEFAULT]', 'transport_url = %s' % rabbitmq_vhost.url,
        'region_name = RegionOne', 'rules = all, bad',
        '[rule:all]', 'events = *', 'receivers = hook', 'continue = true',
        '[rule:bad]', 'events = *', 'receivers = picky',
        '[receiver:hook]', 'driver = webhook',
        'url = %s?token=%s' % (server.url, TOKEN), 'secret = %s' % SECRET,
        '[receiver:picky]', 'driver = webhook', 'url = %s' % bad.url,
        'secret = %s' % SECRET, ''])
    proc = service_process.ServiceProcess(tmp_path, config_text,
                                          ['--debug'])
    bad.respond_next(400, count=1000)
    proc.start()
    try:
        entries = test_service.wire_entries()
        errors = [e for _, e in entries if e['is_error']]
        with rq.Publisher(rabbitmq_vhost.url) as pub:
            for _, entry in entries:
                pub.publish_wire_file(shared_corpus.path_of(entry))
        requests = server.wait_for_requests(
            len(test_service.failures(errors)), timeout=90)
        for request in requests:
            assert request.signature_ok is True
            assert request.schema_errors == []
        alerts = [r.json['alerts'][0] for r in requests]
        for entry in errors:
            expected = entry['expected']
            found = [a for a in alerts
                     if entry['event_type'] in a['event_types'] and
                     a['request_id'] == expected['request_id']]
            assert len(found) == 1, entry['file']
            if expected['instance_uuid']:
                assert found[0]['instance']['uuid'] == \
                    expected['instance_uuid']
        assert len({r.idempotency_key for r in requests}) == len(requests)
        lines = proc.wait_for(r'Receiver picky \(driver webhook\) could not '
                              r'deliver.*HTTP 400',
                              count=len(test_service.failures(errors)))
        assert all('retryable=False' in line for line in lines)
    finally:
        assert proc.stop() == 0
    text = proc.log() + proc.output()
    assert SECRET not in text and TOKEN not in text
    assert shared_corpus.FAKE_TOKEN not in text
