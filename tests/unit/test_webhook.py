"""The webhook driver's body, signature, idempotency key and checks."""

import hashlib
import hmac
import json

import jsonschema
from oslo_config import cfg
import pytest

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import config
from nova_error_notifier.drivers import webhook
from nova_error_notifier import opts
from nova_error_notifier import record as rec
from tests.unit import test_email as email_tests


def schema_validator():
    with open(webhook.SCHEMA_PATH, encoding='utf-8') as handle:
        schema = json.load(handle)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def load(tmp_path, receiver='url = http://127.0.0.1:9/hook', extra=''):
    path = tmp_path / 'hook.conf'
    path.write_text('\n'.join([
        '[DEFAULT]', 'region_name = RegionOne', 'rules = r',
        '[rule:r]', 'events = *', 'receivers = hook',
        '[receiver:hook]', 'driver = webhook', receiver, extra, '']))
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(['--config-file', str(path)], project='nova_error_notifier',
         default_config_files=[])
    return conf


def driver_of(conf):
    return config.load(conf).receivers['hook'].driver


def test_default_body_validates_and_carries_the_alert(tmp_path):
    driver = driver_of(load(tmp_path))
    alert = email_tests.make_alert(name='web-01', state='error')
    body = json.loads(driver._render(alert))
    schema_validator().validate(body)
    assert body['version'] == '1'
    assert body['receiver'] == 'hook'
    assert body['region'] == 'RegionOne'
    [item] = body['alerts']
    assert item['id'] == alert.id
    assert item['request_id'] == 'req-8e4f2a1c'
    assert item['instance'] == {'uuid': email_tests.UUID, 'name': 'web-01',
                                'state': 'error', 'host': 'ctl-01'}
    assert item['error']['exception'] == 'NoValidHost'
    assert item['error']['code'] == 500
    assert item['error']['details'] is None       # not opted in
    assert item['event_types'] == ['compute_task.build_instances']
    assert item['synthetic_events'] == [rec.CREATE_FAILED]
    assert item['first_seen'].endswith('Z')


def test_details_only_when_opted_in(tmp_path):
    driver = driver_of(load(tmp_path))
    body = json.loads(driver._render(email_tests.make_alert(
        include_details=True)))
    assert body['alerts'][0]['error']['details'].startswith('Traceback')


def test_every_sample_shape_validates(tmp_path):
    validator = schema_validator()
    minimal = alert_mod.from_records([rec.ErrorRecord(
        event_type='compute.libvirt.error', priority='ERROR',
        format='legacy')], receiver='hook', rule=None)
    for alert in (minimal, alert_mod.sample('hook'),
                  email_tests.make_alert()):
        validator.validate(webhook.body_document([alert], 'hook', None))


def test_signature_is_hmac_of_timestamp_and_body(tmp_path):
    driver = driver_of(load(tmp_path, extra='secret = s3cr3t-hook'))
    alert = email_tests.make_alert()
    body = driver._render(alert)
    headers = driver.headers(alert, body, now=1700000000)
    assert headers['X-Nova-Error-Notifier-Timestamp'] == '1700000000'
    expected = hmac.new(b's3cr3t-hook', b'1700000000.' + body,
                        hashlib.sha256).hexdigest()
    assert headers['X-Nova-Error-Notifier-Signature'] == 'sha256=' + expected
    assert headers['Content-Type'] == 'application/json'


def test_no_secret_no_signature(tmp_path):
    driver = driver_of(load(tmp_path))
    alert = email_tests.make_alert()
    headers = driver.headers(alert, driver._render(alert))
    assert 'X-Nova-Error-Notifier-Signature' not in headers


def test_idempotency_key_stable_per_alert_and_receiver():
    first = email_tests.make_alert(message_id='m-1')
    retry = email_tests.make_alert(message_id='m-1')
    twin = email_tests.make_alert(message_id='m-2')   # same incident id
    assert first.id == twin.id
    key = webhook.idempotency_key(first, 'hook')
    assert key == webhook.idempotency_key(retry, 'hook')
    assert key != webhook.idempotency_key(twin, 'hook')
    assert key != webhook.idempotency_key(first, 'other')


@pytest.mark.parametrize('value,expected', [
    ('120', 120), ('0', 0), (' 5 ', 5), ('99999', 3600), ('soon', None),
    (None, None), ('Wed, 21 Oct 2015 07:28:10 GMT', 10),
])
def test_retry_after(value, expected):
    now = 1445412480.0     # 07:28:00 GMT that day
    assert webhook.parse_retry_after(value, now=now) == expected


def test_safe_url_drops_credentials_and_query():
    assert webhook.safe_url('https://user:pw@hooks.example.org:8443/a/b'
                            '?token=abc#x') == \
        'https://hooks.example.org:8443/a/b'


@pytest.mark.parametrize('receiver,expected', [
    ('url =', 'url is not set'),
    ('url = ftp://x/y', 'url ftp://x/y is not an http:// or https://'),
    ('url = not a url', 'is not an http:// or https:// URL'),
    ('url = http://x/\ncafile = /nonexistent.pem', 'cafile /nonexistent'),
    ('url = http://x/\nkeyfile = %(key)s', 'keyfile needs certfile'),
    ('url = http://x/\ntimeout = -1', 'timeout'),
])
def test_bad_options_stop_start_up(tmp_path, receiver, expected):
    key = tmp_path / 'k.pem'
    key.write_text('x')
    conf = load(tmp_path, receiver=receiver % {'key': key})
    with pytest.raises(config.ConfigError) as info:
        config.load(conf)
    assert any(expected in p and 'receiver:hook' in p
               for p in info.value.problems), info.value.problems


def test_slack_style_template(tmp_path):
    template = tmp_path / 'slack.json.j2'
    template.write_text('{"text": {{ ("%s: %s on %s" % (alert.error.exception,'
                        ' alert.error.message, alert.instance.name))'
                        ' | tojson }}}')
    driver = driver_of(load(tmp_path, extra='body_template = %s' % template))
    body = json.loads(driver._render(email_tests.make_alert(
        name='web "1" <x>')))
    assert body == {'text': 'NoValidHost: No valid host was found. '
                            '<b>bold</b> & more on web "1" <x>'}


@pytest.mark.parametrize('text,expected', [
    ('{"text": {{ alert.nope.deeper }}}', 'UndefinedError'),
    ('not json at all {{ alert.id }}', 'did not render JSON'),
    ('{{ alert.__class__.__mro__ }}', 'SecurityError'),
    ('{% if %}', 'TemplateSyntaxError'),
])
def test_broken_template_stops_start_up(tmp_path, text, expected):
    template = tmp_path / 'bad.j2'
    template.write_text(text)
    conf = load(tmp_path, extra='body_template = %s' % template)
    with pytest.raises(config.ConfigError) as info:
        config.load(conf)
    problems = '\n'.join(info.value.problems)
    assert 'body_template' in problems
    assert expected in problems or (expected == 'SecurityError' and
                                    'unsafe' in problems), problems


def test_secret_options_are_declared_secret():
    by_name = {o.name: o for o in webhook.WebhookDriver.OPTS}
    assert by_name['secret'].secret
    assert by_name['headers'].secret
