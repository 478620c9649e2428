"""Proves the real webhook receiver (tests/functional/webhook_server.py).

The clients are ``requests`` (what the driver's keystoneauth1 Session uses)
and, for TLS, the stdlib ``urllib``.  Signatures are computed here
independently of the server's code, and checked against a known answer
made with ``openssl dgst -sha256 -hmac``.
"""

import copy
import hashlib
import hmac
import json
import os
import ssl
import threading
import time
from urllib import error as urllib_error
from urllib import request as urllib_request

import pytest
import requests

try:
    from tests.functional import procutil
    from tests.functional import webhook_server as webhook_helpers
except ModuleNotFoundError as exc:
    if exc.name not in ('tests', 'tests.functional'):
        raise  # jsonschema, aiosmtpd or cryptography missing: say so
    import procutil
    import webhook_server as webhook_helpers

SECRET = 'correct horse battery staple'
TS_HEADER = 'X-Nova-Error-Notifier-Timestamp'
SIG_HEADER = 'X-Nova-Error-Notifier-Signature'
VALID = {
    'version': '1',
    'receiver': 'chatops',
    'region': 'RegionOne',
    'alerts': [{
        'id': 'inc-7f3a',
        'rule': 'build-failures',
        'event_types': ['compute.instance.create.error'],
        'request_id': 'req-0b1c',
        'global_request_id': None,
        'instance': {'uuid': '6f1b6a3e-5d7b-4d8e-9a0c-1f2e3d4c5b6a',
                     'name': 'vm-1', 'state': 'error', 'host': 'compute-1'},
        'project_id': 'p1',
        'user_id': 'u1',
        'error': {'exception': 'PortBindingFailed',
                  'message': 'Binding failed for port 1',
                  'code': 500, 'details': None},
        'count': 1,
        'first_seen': '2024-05-01T12:00:00Z',
        'last_seen': '2024-05-01T12:00:01.250000Z',
    }],
}


def _body(document=VALID):
    return json.dumps(document, ensure_ascii=False,
                      sort_keys=True).encode('utf-8')


def _sign(secret, body, timestamp=None):
    """The driver's signature headers, computed independently."""
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(secret.encode('utf-8'),
                   timestamp.encode('ascii') + b'.' + body, hashlib.sha256)
    return {TS_HEADER: timestamp, SIG_HEADER: 'sha256=' + mac.hexdigest()}


def _headers(secret=None, body=b'', key='idem-1', **extra):
    headers = {'Content-Type': 'application/json',
               'User-Agent': 'nova-error-notifier/1.0.0',
               'Idempotency-Key': key}
    if secret is not None:
        headers.update(_sign(secret, body))
    headers.update(extra)
    return headers


@pytest.fixture
def http():
    """A requests Session that ignores proxy settings of the environment."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


def _post(http, server, body, headers, **kwargs):
    kwargs.setdefault('timeout', 10)
    kwargs.setdefault('verify', server.cafile or True)
    return http.post(server.url, data=body, headers=headers, **kwargs)


_port_closed = procutil.port_refused


# -- signatures --------------------------------------------------------------

def test_signature_known_answer():
    # printf '%s' '1700000000.{"a":1}' | openssl dgst -sha256 -hmac k3y
    expected = ('sha256=fd5a70e965043f7df6309c2c3b5ff5a8ffa99b1f5175e9a3114'
                '59e73c4634d4a')
    assert _sign('k3y', b'{"a":1}', 1700000000)[SIG_HEADER] == expected
    assert webhook_helpers.compute_signature(
        'k3y', 1700000000, b'{"a":1}') == expected
    assert webhook_helpers.compute_signature(
        b'k3y', '1700000000', b'{"a":1}') == expected


def test_signed_valid_body_is_accepted_and_recorded(webhook_server, http):
    server = webhook_server(secret=SECRET)
    assert server.url.startswith('http://127.0.0.1:')
    assert server.url.endswith('/hook')
    body = _body()
    resp = _post(http, server, body,
                 _headers(SECRET, body, key='inc-7f3a/chatops',
                          Authorization='Bearer abc123'))
    assert resp.status_code == 200
    assert resp.json() == {'ok': True}
    [req] = server.wait_for_requests(1)
    assert req.method == 'POST'
    assert req.path == '/hook'
    assert req.query == ''
    assert req.body == body
    assert req.json == VALID
    assert req.signature_ok is True, req.signature_error
    assert req.signature_error is None
    assert req.schema_checked is True
    assert req.schema_errors == []
    assert req.idempotency_key == 'inc-7f3a/chatops'
    assert abs(req.timestamp - time.time()) < 60
    assert req.status == 200
    assert req.tls_version is None
    assert req.http_version == 'HTTP/1.1'
    # Header lookups ignore case.
    assert req.headers['content-type'] == 'application/json'
    assert req.headers['CONTENT-TYPE'] == 'application/json'
    assert req.headers['authorization'] == 'Bearer abc123'
    assert 'user-agent' in req.headers
    assert req.headers.get('x-absent') is None


def test_non_ascii_body_is_utf8(webhook_server, http):
    server = webhook_server(secret=SECRET)
    document = copy.deepcopy(VALID)
    document['alerts'][0]['instance']['name'] = 'vm-é-雪'
    body = _body(document)
    _post(http, server, body, _headers(SECRET, body))
    [req] = server.wait_for_requests(1)
    assert req.signature_ok is True, req.signature_error
    assert req.json['alerts'][0]['instance']['name'] == 'vm-é-雪'


def test_wrong_signature_is_flagged(webhook_server, http):
    server = webhook_server(secret=SECRET)
    body = _body()
    wrong = _sign('not the secret', body)
    tampered = _sign(SECRET, body)
    resp = _post(http, server, body, _headers(**wrong))
    # Recorded, not refused: the test asserts on the verdict.
    assert resp.status_code == 200
    _post(http, server, body + b' ', _headers(**tampered))
    _post(http, server, body, _headers())
    _post(http, server, body, _headers(**{
        TS_HEADER: tampered[TS_HEADER],
        SIG_HEADER: tampered[SIG_HEADER].upper()}))
    stale = _sign(SECRET, body, timestamp=int(time.time()) - 3600)
    _post(http, server, body, _headers(**stale))
    bad, tampered_req, unsigned, upper, old = server.wait_for_requests(5)
    assert bad.signature_ok is False
    assert 'signature mismatch' in bad.signature_error
    assert tampered_req.signature_ok is False
    assert 'signature mismatch' in tampered_req.signature_error
    assert unsigned.signature_ok is False
    assert TS_HEADER in unsigned.signature_error
    assert unsigned.timestamp is None
    assert upper.signature_ok is False
    assert 'lower-case hex' in upper.signature_error
    assert old.signature_ok is False
    assert 'max_skew' in old.signature_error
    assert old.timestamp == int(stale[TS_HEADER])


def test_no_secret_means_no_verdict(webhook_server, http):
    server = webhook_server()
    body = _body()
    _post(http, server, body, _headers(**_sign('whatever', body)))
    [req] = server.wait_for_requests(1)
    assert req.signature_ok is None
    assert req.signature_error is None


def test_max_skew_none_accepts_old_timestamps(webhook_server, http):
    server = webhook_server(secret=SECRET, max_skew=None)
    body = _body()
    _post(http, server, body, _headers(**_sign(SECRET, body, 1700000000)))
    [req] = server.wait_for_requests(1)
    assert req.signature_ok is True, req.signature_error


# -- schema ------------------------------------------------------------------

def test_invalid_body_gets_schema_errors(webhook_server, http):
    server = webhook_server()
    document = copy.deepcopy(VALID)
    document['version'] = '2'
    document['alerts'][0]['count'] = 0
    document['alerts'][0]['first_seen'] = '2024-05-01 12:00:00'
    del document['alerts'][0]['error']
    resp = _post(http, server, _body(document), _headers())
    assert resp.status_code == 200
    [req] = server.wait_for_requests(1)
    errors = req.schema_errors
    assert len(errors) == 4, errors
    assert any(e.startswith('$.version: ') for e in errors), errors
    assert any(e.startswith('$.alerts[0].count: ') for e in errors), errors
    assert any(e.startswith('$.alerts[0].first_seen: ')
               for e in errors), errors
    assert any(e.startswith('$.alerts[0]: ') and "'error'" in e
               for e in errors), errors


def test_non_json_and_empty_bodies(webhook_server, http):
    server = webhook_server()
    _post(http, server, b'{"version": ', _headers())
    _post(http, server, b'\xff\xfe{}', _headers())
    _post(http, server, b'', _headers())
    truncated, not_utf8, empty = server.wait_for_requests(3)
    for req in (truncated, not_utf8, empty):
        assert req.json is None
        assert req.json_error.startswith('body is not UTF-8 JSON')
        assert req.schema_errors == [req.json_error]
    assert empty.body == b''


def test_validation_can_be_turned_off(webhook_server, http):
    server = webhook_server(validate=False)
    _post(http, server, b'{"free": "form"}', _headers())
    _post(http, server, b'not json', _headers())
    free, text = server.wait_for_requests(2)
    assert free.schema_errors == [] and free.schema_checked is False
    assert free.json == {'free': 'form'}
    assert text.schema_errors == [] and text.json is None
    server.validate = True  # an attribute too
    _post(http, server, b'{"free": "form"}', _headers())
    checked = server.wait_for_requests(3)[2]
    assert checked.schema_checked is True and checked.schema_errors


def test_default_schema_is_the_package_schema(tmp_path):
    assert os.path.isfile(webhook_helpers.DEFAULT_SCHEMA_PATH)
    with open(webhook_helpers.DEFAULT_SCHEMA_PATH) as f:
        assert json.load(f)['$schema'] == (
            'https://json-schema.org/draft/2020-12/schema')
    validator = webhook_helpers.load_validator()
    assert webhook_helpers.validation_errors(validator, VALID) == []


def test_custom_schema_path(webhook_server, http, tmp_path):
    schema = tmp_path / 'schema.json'
    schema.write_text(json.dumps({
        '$schema': 'https://json-schema.org/draft/2020-12/schema',
        'type': 'object', 'required': ['text'],
        'properties': {'text': {'type': 'string'}}}))
    server = webhook_server(schema_path=str(schema))
    _post(http, server, b'{"text": "hi"}', _headers())
    _post(http, server, _body(), _headers())
    good, bad = server.wait_for_requests(2)
    assert good.schema_errors == []
    assert bad.schema_errors == ["$: 'text' is a required property"]


def test_broken_schema_fails_start(tmp_path):
    schema = tmp_path / 'schema.json'
    schema.write_text('{"type": 12}')
    server = webhook_helpers.WebhookServer(schema_path=str(schema))
    with pytest.raises(webhook_helpers.WebhookServerError,
                       match='cannot load the JSON schema'):
        server.start()
    assert not server.running
    with pytest.raises(webhook_helpers.WebhookServerError):
        webhook_helpers.WebhookServer(
            schema_path=str(tmp_path / 'missing.json')).start()


# -- requests in general -----------------------------------------------------

def test_any_path_query_and_method_are_recorded(webhook_server, http):
    server = webhook_server(path='/services/T0/B1')
    assert server.url == server.base_url + '/services/T0/B1'
    resp = http.put(server.base_url + '/other/path?token=a%2Fb&x=&x=2',
                    data=b'{}', timeout=10)
    assert resp.status_code == 200
    http.get(server.url, timeout=10)
    put, get = server.wait_for_requests(2)
    assert (put.method, put.path, put.query) == (
        'PUT', '/other/path', 'token=a%2Fb&x=&x=2')
    assert put.query_params == {'token': ['a/b'], 'x': ['', '2']}
    assert (get.method, get.path, get.body) == ('GET', '/services/T0/B1',
                                                b'')


def test_chunked_body_and_repeated_headers(webhook_server, http):
    server = webhook_server(secret=SECRET)
    body = _body()
    headers = _headers(SECRET, body)

    def chunks():
        yield body[:10]
        yield body[10:]

    resp = http.post(server.url, data=chunks(), headers=headers, timeout=10)
    assert resp.status_code == 200
    [req] = server.wait_for_requests(1)
    assert req.headers['transfer-encoding'] == 'chunked'
    assert req.body == body
    assert req.signature_ok is True, req.signature_error
    raw = webhook_helpers.Headers([('X-A', '1'), ('x-a', '2'), ('B', '3')])
    assert raw['x-A'] == '1, 2'
    assert raw.get_all('X-a') == ['1', '2']
    assert list(raw) == ['X-A', 'B']


# -- TLS ---------------------------------------------------------------------

def test_https_with_cafile(webhook_server, http):
    server = webhook_server(mode='https', secret=SECRET)
    assert server.url.startswith('https://127.0.0.1:')
    assert os.path.isfile(server.cafile)
    body = _body()
    resp = _post(http, server, body, _headers(SECRET, body),
                 verify=server.cafile)
    assert resp.status_code == 200
    # By name too, and through the stdlib client with strict X.509 checks.
    context = server.client_context()
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    req = urllib_request.Request(
        'https://localhost:%d/hook' % server.port, data=body,
        headers=_headers(SECRET, body), method='POST')
    opener = urllib_request.build_opener(
        urllib_request.ProxyHandler({}),
        urllib_request.HTTPSHandler(context=context))
    with opener.open(req, timeout=10) as answer:
        assert answer.status == 200
    first, second = server.wait_for_requests(2)
    for got in (first, second):
        assert got.tls_version in ('TLSv1.2', 'TLSv1.3')
        assert got.signature_ok is True, got.signature_error
        assert got.schema_errors == []
    assert server.tls_errors == []


def test_https_without_cafile_fails_verification(webhook_server, http):
    server = webhook_server(mode='https')
    with pytest.raises(requests.exceptions.SSLError):
        _post(http, server, _body(), _headers(), verify=True)
    opener = urllib_request.build_opener(urllib_request.ProxyHandler({}))
    with pytest.raises(urllib_error.URLError) as exc_info:
        opener.open(server.url, data=_body(), timeout=10)
    assert isinstance(exc_info.value.reason, ssl.SSLCertVerificationError)
    # Plain HTTP spoken to the TLS port fails too.
    with pytest.raises(requests.exceptions.ConnectionError):
        http.post(server.url.replace('https:', 'http:'), data=b'{}',
                  timeout=10)
    server.wait_for_requests(0)
    # The refused handshakes are the clients' business: recorded, and the
    # server carries on (the teardown finds no error).
    deadline = time.monotonic() + 5
    while len(server.tls_errors) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(server.tls_errors) == 3, server.tls_errors
    resp = _post(http, server, _body(), _headers())
    assert resp.status_code == 200
    server.wait_for_requests(1)


# -- failure injection -------------------------------------------------------

def test_respond_next_500_then_429_then_200(webhook_server, http):
    server = webhook_server(secret=SECRET)
    server.respond_next(500, body='internal error')
    server.respond_next(429, headers={'Retry-After': '2'}, count=2)
    assert [r.status for r in server.pending_responses] == [500, 429, 429]
    body = _body()
    statuses = []
    for _ in range(4):
        resp = _post(http, server, body, _headers(SECRET, body, key='k1'))
        statuses.append(resp.status_code)
        if resp.status_code == 500:
            assert resp.text == 'internal error'
            assert resp.headers['Content-Type'].startswith('text/plain')
        if resp.status_code == 429:
            assert resp.headers['Retry-After'] == '2'
            assert resp.content == b''
    assert statuses == [500, 429, 429, 200]
    got = server.wait_for_requests(4)
    assert [r.status for r in got] == [500, 429, 429, 200]
    assert {r.idempotency_key for r in got} == {'k1'}
    assert all(r.signature_ok for r in got)
    assert server.pending_responses == []


@pytest.mark.parametrize('status', [400, 408, 401, 503])
def test_respond_next_other_statuses(webhook_server, http, status):
    server = webhook_server()
    server.respond_next(status, headers=[('Connection', 'close')])
    resp = _post(http, server, _body(), _headers())
    assert resp.status_code == status
    assert resp.headers['Connection'] == 'close'
    assert _post(http, server, _body(), _headers()).status_code == 200
    assert [r.status for r in server.wait_for_requests(2)] == [status, 200]


def test_respond_next_redirect(webhook_server, http):
    server = webhook_server()
    server.respond_next(302, headers={'Location': server.base_url + '/moved'})
    resp = _post(http, server, _body(), _headers(), allow_redirects=False)
    assert resp.status_code == 302
    assert resp.headers['Location'] == server.base_url + '/moved'
    [req] = server.wait_for_requests(1)
    assert req.status == 302


def test_respond_next_rejects_nonsense(webhook_server):
    server = webhook_server()
    for status in (100, 600, '500', True):
        with pytest.raises(ValueError):
            server.respond_next(status)
    with pytest.raises(ValueError):
        server.respond_next(500, count=0)
    with pytest.raises(ValueError):
        server.respond_next(500, headers={'Content-Length': '3'})
    with pytest.raises(ValueError):
        server.respond_next(500, headers={'X-Bad': 'a\r\nInjected: 1'})
    with pytest.raises(ValueError):
        server.respond_next(204, body=b'x')
    with pytest.raises(TypeError):
        server.respond_next(500, body={'error': 1})
    with pytest.raises(ValueError):
        server.delay_next(0)
    with pytest.raises(ValueError):
        server.delay_next(1, count=-1)
    assert server.pending_responses == [] and server.pending_delays == []


def test_delay_next_makes_the_client_time_out(webhook_server, http):
    server = webhook_server(secret=SECRET)
    server.delay_next(3)
    body = _body()
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        _post(http, server, body, _headers(SECRET, body), timeout=0.5)
    assert time.monotonic() - started < 2.5
    # Recorded on arrival, before the delay.
    [slow] = server.wait_for_requests(1, timeout=1)
    assert slow.delay == 3.0 and slow.status == 200
    assert slow.signature_ok is True
    started = time.monotonic()
    assert _post(http, server, body, _headers(SECRET, body)).status_code == 200
    assert time.monotonic() - started < 1.0
    server.wait_for_requests(2)


def test_delay_and_status_together(webhook_server, http):
    server = webhook_server()
    server.delay_next(0.3)
    server.respond_next(503)
    started = time.monotonic()
    resp = _post(http, server, _body(), _headers())
    assert resp.status_code == 503
    assert time.monotonic() - started >= 0.3


def test_reset_failures(webhook_server, http):
    server = webhook_server()
    server.respond_next(500, count=3)
    server.delay_next(5)
    server.reset_failures()
    resp = _post(http, server, _body(), _headers(), timeout=2)
    assert resp.status_code == 200


# -- the helper's own contract -----------------------------------------------

def test_wait_for_requests_says_what_arrived(webhook_server, http):
    server = webhook_server()
    with pytest.raises(AssertionError, match=r'expected 1 .* 0 arrived'):
        server.wait_for_requests(1, timeout=0.2)
    _post(http, server, _body(), _headers(key='first'))
    _post(http, server, _body(), _headers(key='second'))
    assert len(server.wait_for_requests(2)) == 2
    with pytest.raises(AssertionError,
                       match=r"(?s)expected 1 .* 2 arrived.*'second'"):
        server.wait_for_requests(1, timeout=0.2)
    assert [r.idempotency_key for r in server.requests] == ['first',
                                                            'second']


def test_constructor_rejects_bad_options():
    with pytest.raises(ValueError):
        webhook_helpers.WebhookServer(mode='tls')
    with pytest.raises(TypeError):
        webhook_helpers.WebhookServer(secret=12)
    with pytest.raises(TypeError):
        webhook_helpers.WebhookServer(secret='')
    with pytest.raises(ValueError):
        webhook_helpers.WebhookServer(path='hook')
    with pytest.raises(ValueError):
        webhook_helpers.WebhookServer(max_skew=0)


def test_factory_servers_are_independent(webhook_server):
    plain = webhook_server()
    secure = webhook_server(mode='https', secret=SECRET)
    other = webhook_server(mode='https')
    assert len({plain.port, secure.port, other.port}) == 3
    assert plain.cafile is None
    assert secure.cafile != other.cafile
    assert plain.running and secure.running and other.running


@pytest.mark.parametrize('mode', ['http', 'https'])
def test_stop_leaves_nothing_behind(mode, http):
    before = set(threading.enumerate())
    server = webhook_helpers.WebhookServer(mode=mode, secret=SECRET)
    with server:
        tmpdir = server.tmpdir
        assert (tmpdir is not None) == (mode == 'https')
        # A kept-alive connection and a request held by delay_next must not
        # hold stop() up.
        assert _post(http, server, _body(), _headers()).status_code == 200
        server.delay_next(30)
        outcome = []

        def slow_post():
            try:
                with requests.Session() as session:
                    session.trust_env = False
                    outcome.append(_post(session, server, b'{}', {},
                                         timeout=30))
            except requests.exceptions.RequestException as exc:
                outcome.append(exc)

        slow = threading.Thread(target=slow_post)
        slow.start()
        server.wait_for_requests(2)
        threads = [t for t in threading.enumerate() if t not in before
                   and t.name.startswith('webhook-test-server-')]
        assert len(threads) == 3, threads  # serving, kept-alive, delayed
        started = time.monotonic()
    assert time.monotonic() - started < 3
    slow.join(10)
    assert not slow.is_alive()
    # The held request got no answer: the connection was closed under it.
    [error] = outcome
    assert isinstance(error, requests.exceptions.ConnectionError), error
    assert not server.running
    for thread in threads:
        assert not thread.is_alive()
    assert set(threading.enumerate()) - before == set()
    if tmpdir is not None:
        assert not os.path.exists(tmpdir)
    assert _port_closed(server.port)
    server.stop()  # idempotent
    with pytest.raises(webhook_helpers.WebhookServerError):
        server.start()


def test_server_errors_fail_stop(webhook_server, http, monkeypatch):
    server = webhook_server()

    def broken(record):
        raise RuntimeError('recording broke')

    monkeypatch.setattr(server, '_record', broken)
    resp = _post(http, server, _body(), _headers())
    assert resp.status_code == 500
    assert 'recording broke' in resp.text
    with pytest.raises(webhook_helpers.WebhookServerError,
                       match='recording broke'):
        server.stop()
    server.stop()  # reported once


def test_signature_headers_helper():
    body = _body()
    headers = webhook_helpers.signature_headers(SECRET, body, 1700000000)
    assert headers == _sign(SECRET, body, 1700000000)
