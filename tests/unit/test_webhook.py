"""The webhook driver's body, signature, idempotency key and checks."""

import hashlib
import hmac
import json
import logging
import socket

import jsonschema
from oslo_config import cfg
import pytest

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import config
from nova_error_notifier.drivers import base
from nova_error_notifier.drivers import webhook
from nova_error_notifier import formatting
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


# -- templates that a Nova value cannot break --------------------------------

HOSTILE_NAMES = [
    '", "evil": "x',
    'a\\', '\\"', '"}', '{"x": 1}', '}, "evil": {"a": 1',
    'web\n01\r\n\x00\x1b[2J\u2028\u2029\u202e\u200b',
    '] , [ : ,', '\ud800 lone', 'emoji \U0001F600 \u00e9',
    '{{ 7 * 7 }}', '</script><b>', '\\u0022', "'single'",
]


def template_driver(tmp_path, text, check=True):
    template = tmp_path / 'body.json.j2'
    if check:
        template.write_text(text)
        return driver_of(load(tmp_path, extra='body_template = %s'
                              % template))
    # A template that start-up's check would refuse, swapped in after it.
    template.write_text('{"ok": 1}')
    driver = driver_of(load(tmp_path, extra='body_template = %s'
                            % template))
    template.write_text(text)
    driver._template = formatting.load_template(str(template),
                                                formatting.JSON)
    return driver


def render(driver, **fields):
    return json.loads(driver._render(email_tests.make_alert(**fields)))


def check_problems(tmp_path, text):
    template = tmp_path / 'body.json.j2'
    template.write_text(text)
    with pytest.raises(config.ConfigError) as info:
        config.load(load(tmp_path, extra='body_template = %s' % template))
    return '\n'.join(info.value.problems)


@pytest.mark.parametrize('name', HOSTILE_NAMES)
@pytest.mark.parametrize('text', [
    '{"name": "{{ alert.instance.name }}", "n": 1}',
    '{"name": "{{ alert.instance.name | safe }}", "n": 1}',
    '{"name": "{{ alert.instance.name | e }}", "n": 1}',
    '{"name": "{{ alert.instance.name | string }}", "n": 1}',
    '{"name": "{{ alert.instance.name ~ "" }}", "n": 1}',
    '{"name": {{ alert.instance.name | tojson }}, "n": 1}',
    '{"name": {{ alert.instance.name | tojson | safe }}, "n": 1}',
])
def test_a_value_stays_one_string(tmp_path, text, name):
    driver = template_driver(tmp_path, text)
    body = render(driver, name=name)
    assert sorted(body) == ['n', 'name']
    expected = name.replace('\ud800', '?') if '\ud800' in name else name
    if '| e ' in text:
        expected = (expected.replace('&', '&amp;').replace('<', '&lt;')
                    .replace('>', '&gt;').replace('"', '&#34;')
                    .replace("'", '&#39;'))
    assert body['name'] == expected


@pytest.mark.parametrize('name', HOSTILE_NAMES)
def test_a_template_backslash_cannot_end_the_string(tmp_path, name):
    # Before the value: "\{{ x }}" would turn a \" of a JSON escape into a
    # closing quote; values have no quote or backslash left to turn.
    driver = template_driver(tmp_path, '{"name": "\\\\{{ alert.instance.name '
                                       '}}", "n": 1}', check=False)
    body = render(driver, name=name)
    assert sorted(body) == ['n', 'name']
    assert body['name'].startswith('\\')


def test_numbers_booleans_none_and_structures_are_json(tmp_path):
    driver = template_driver(tmp_path, '''{
        "count": {{ alert.count }}, "enriched": {{ alert.enriched }},
        "test": {{ alert.test }}, "code": {{ alert.error.code }},
        "reason": {{ alert.error.reason }}, "instance": {{ alert.instance }},
        "events": {{ alert.event_types }}, "everything": {{ body }},
        "quoted": "{{ alert.error.code }} {{ alert.count }}"}''')
    alert = email_tests.make_alert(name='x", "evil": "1')
    body = json.loads(driver._render(alert))
    document = webhook.body_document([alert], 'hook', 'RegionOne')
    assert body['count'] == 1 and body['code'] == 500
    assert body['test'] is False and body['reason'] is None
    assert body['enriched'] is None
    assert body['instance'] == document['alerts'][0]['instance']
    assert body['events'] == ['compute_task.build_instances']
    assert body['everything'] == document
    assert body['quoted'] == '500 1'
    assert sorted(body) == ['code', 'count', 'enriched', 'events',
                            'everything', 'instance', 'quoted', 'reason',
                            'test']


@pytest.mark.parametrize('text,expected', [
    # Naive: a string value outside quotes.
    ('{"name": {{ alert.instance.name }}}', 'did not render JSON'),
    ('{"text": {{ alert.error.message | safe }}}', 'did not render JSON'),
    # tojson inside quotes.
    ('{"name": "{{ alert.instance.name | tojson }}"}', 'did not render JSON'),
    # A structure inside quotes.
    ('{"instance": "{{ alert.instance }}"}', 'did not render JSON'),
    # A Nova value as a key.
    ('{"{{ alert.instance.name }}": 1}', 'a Nova value becomes a key'),
    ('{ {{ alert.error.exception | tojson }}: 1}',
     'a Nova value becomes a key'),
])
def test_check_config_refuses_naive_templates(tmp_path, text, expected):
    problems = check_problems(tmp_path, text)
    assert 'body_template' in problems and expected in problems, problems
    assert 'receiver:hook' in problems
    # The problem says where the body broke, never what it held.
    assert formatting.HOSTILE_MARK not in problems.split('becomes a key')[0]


def test_check_config_names_the_hostile_alert(tmp_path):
    # Fine with the plain sample, broken by a long hostile name.
    assert len(formatting.HOSTILE_TEXT) > 60 > len(
        alert_mod.sample().instance_name)
    problems = check_problems(tmp_path, (
        '{% if alert.instance.name | length > 60 %}'
        '{"a": {{ alert.instance.name }}}{% else %}{"a": 1}{% endif %}'))
    assert 'with an alert whose Nova values hold quotes' in problems
    assert 'did not render JSON (Expecting value at line 1 column 7)' in \
        problems, problems


def test_refused_body_is_not_retryable_and_sends_nothing(tmp_path):
    driver = template_driver(tmp_path, '{"name": {{ alert.instance.name }}}',
                             check=False)
    with pytest.raises(base.DriverError) as info:
        driver.notify(email_tests.make_alert(name='", "evil": "x'))
    assert info.value.retryable is False
    assert 'did not render JSON' in str(info.value)
    assert 'evil' not in str(info.value)
    # A value that happens to be a JSON literal is no key either.
    body = json.loads(driver._render(email_tests.make_alert(name='1')))
    assert body == {'name': 1}


def test_hostile_sample_is_hostile_everywhere():
    sample = formatting.hostile_sample('hook')
    document = webhook.body_document([sample], 'hook', None)
    alert = document['alerts'][0]
    for value in (alert['instance']['name'], alert['error']['message'],
                  alert['error']['exception'], alert['request_id'],
                  alert['event_types'][0], alert['project_name'],
                  alert['fault']['message'],
                  alert['action']['events'][0]['details']):
        assert value == formatting.HOSTILE_TEXT
    for char in '"\\{}[],:\n\r\x00\u2028\u202e':
        assert char in formatting.HOSTILE_TEXT
    schema_validator().validate(document)


# -- secrets never leave the driver ------------------------------------------

PASSWORD = 'S3cret%40Pw-x'          # percent-encoded '@'
TOKEN = 'T0ken-y-abc'


def secret_driver(tmp_path, port=9, extra=''):
    return driver_of(load(tmp_path, receiver=(
        'url = http://alice:%s@127.0.0.1:%d/hook?token=%s&v=1' % (
            PASSWORD, port, TOKEN)), extra=(
        'secret = Hm4c-Secret-q\nheaders = X-Api-Key:Hdr-K3y-w\n' + extra)))


def assert_no_secret(text):
    for secret in (PASSWORD, 'S3cret@Pw-x', TOKEN, 'Hm4c-Secret-q',
                   'Hdr-K3y-w'):
        assert secret not in text, (secret, text)


def test_connection_refused_names_no_secret(tmp_path):
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    port = listener.getsockname()[1]
    listener.close()                 # nothing listens there any more
    driver = secret_driver(tmp_path, port)
    with pytest.raises(base.DriverError) as info:
        driver.notify(email_tests.make_alert())
    text = str(info.value)
    assert info.value.retryable is True
    assert text.startswith('POST http://127.0.0.1:%d/hook: ConnectFailure: '
                           % port), text
    assert 'alice' not in text
    assert_no_secret(text)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unexpected_errors_become_scrubbed_driver_errors(tmp_path):
    # A header value http.client cannot encode: not a keystoneauth error.
    driver = secret_driver(tmp_path, extra='headers = X-Api-Key:Hdr-K3y-w,'
                                           'X-Bad:x\u20acy\n')
    with pytest.raises(base.DriverError) as info:
        driver.notify(email_tests.make_alert())
    assert 'UnicodeEncodeError' in str(info.value)
    assert str(info.value).startswith('POST http://127.0.0.1:9/hook: ')
    assert_no_secret(str(info.value))


@pytest.mark.parametrize('text', [
    'Unable to establish connection to http://alice:S3cret%40Pw-x@h:1/hook'
    '?token=T0ken-y-abc&v=1: refused',
    'Max retries exceeded with url: /hook?token=T0ken-y-abc (x)',
    'user alice password S3cret@Pw-x and token T0ken-y-abc in a message',
    'https://T0ken-y-abc@h/ and https://x:y@h/ and Hdr-K3y-w, Hm4c-Secret-q',
    'encoded: S3cret%2540Pw-x T0ken%2Dy%2Dabc',
])
def test_scrub_masks_every_form(tmp_path, text):
    driver = secret_driver(tmp_path)
    scrubbed = driver.scrub(text)
    assert_no_secret(scrubbed)
    assert 'x:y@' not in scrubbed
    assert '\n' not in scrubbed


def test_urllib3_lines_hold_no_secret(tmp_path):
    driver = secret_driver(tmp_path)
    record = logging.LogRecord(
        'urllib3.connectionpool', logging.DEBUG, __file__, 1,
        '%s://%s:%s "%s %s %s" %s %s', ('http', '127.0.0.1', 9, 'POST',
                                        '/hook?token=%s' % TOKEN,
                                        'HTTP/1.1', 200, 2), None)
    for handler_filter in webhook._URLLIB3_LOG.filters:
        handler_filter.filter(record)
    assert driver.secrets()
    assert record.getMessage() == ('http://127.0.0.1:9 "POST /hook?... '
                                   'HTTP/1.1" 200 2')


def test_bad_url_problem_names_no_secret(tmp_path):
    conf = load(tmp_path, receiver='url = ftp://alice:%s@h/x?token=%s' % (
        PASSWORD, TOKEN))
    with pytest.raises(config.ConfigError) as info:
        config.load(conf)
    problems = '\n'.join(info.value.problems)
    assert 'ftp://h/x is not an http:// or https:// URL' in problems
    assert_no_secret(problems)
