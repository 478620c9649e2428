"""``nova-error-notifier`` refuses broken configurations at start-up."""

import subprocess

import pytest

from tests.functional import service_process

PASSWORD = 'Pw-That-Must-Not-Leak-91'


@pytest.mark.parametrize('config,expected', [
    ('[DEFAULT]\ntransport_url = foo://u:%s@h/\n' % PASSWORD,
     'transport_url is not usable: DriverLoadFailure'),
    ('[DEFAULT]\ntransport_url = rabbit://u:%s@h:port/\n' % PASSWORD,
     'transport_url is not usable: ValueError'),
    ('[DEFAULT]\ntransport_url = rabbit://u:%s@h/\n[listener]\n'
     'watch_state_changes = maybe\n' % PASSWORD,
     "[listener] watch_state_changes: invalid value: Unexpected boolean "
     "value 'maybe'"),
    ('[DEFAULT]\ntransport_url = rabbit://u:%s@h/\n[listener]\n'
     'endpoints = versioned, legasy\n' % PASSWORD,
     'legasy'),
    ('[DEFAULT]\ntransport_url = rabbit://u:%s@h/\n[listener]\n'
     'stop_timeout = 0\n' % PASSWORD,
     '[listener] stop_timeout: invalid value'),
])
def test_broken_config_exits_2_with_a_clear_line(tmp_path, config, expected):
    proc = service_process.ServiceProcess(tmp_path, config, ['--debug'])
    assert proc.run_to_exit(timeout=60) == 2
    text = proc.log() + proc.output()
    assert 'Configuration error: ' in text
    assert expected in text
    assert 'did not start' in text
    assert 'Traceback' not in text
    assert PASSWORD not in text


def test_unparsable_config_file(tmp_path):
    path = tmp_path / 'bad.conf'
    path.write_text('garbage line\n[listener\n')
    result = subprocess.run(
        [service_process.console_script('nova-error-notifier'),
         '--config-file', str(path)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert 'configuration error' in result.stderr
    assert 'bad.conf' in result.stderr


def test_non_ascii_names_under_an_ascii_locale_are_not_lost(tmp_path):
    """A log file in the C locale still gets the alert, escaped."""
    import json
    import os
    message = {
        'message_id': 'm-locale', 'publisher_id': 'compute.hv-1',
        'event_type': 'compute.instance.create.error', 'priority': 'ERROR',
        '_context_request_id': 'req-locale-1',
        'payload': {'instance_id': 'u-locale', 'display_name': 'сервер-🔥',
                    'exception': "X('é 中')", 'message': '中文'}}
    sample = tmp_path / 'm.json'
    sample.write_text(json.dumps(message))
    conf = tmp_path / 'c.conf'
    conf.write_text('[DEFAULT]\n')
    log_file = tmp_path / 'replay.log'
    env = dict(os.environ, LC_ALL='C', LANG='C', PYTHONUTF8='0',
               PYTHONCOERCECLOCALE='0')
    result = subprocess.run(
        [service_process.console_script('nova-error-notifier-replay'),
         '--config-file', str(conf), '--log-file', str(log_file),
         str(sample)], capture_output=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert b'Logging error' not in result.stderr
    text = log_file.read_bytes().decode('ascii')
    alert = [ln for ln in text.splitlines()
             if 'nova-error-notifier alert' in ln]
    assert len(alert) == 1
    assert 'request_id=req-locale-1' in alert[0]
    assert 'instance=u-locale' in alert[0]


def test_every_problem_is_reported_in_one_run(tmp_path):
    config = '\n'.join([
        '[DEFAULT]',
        'transport_url = rabbit://u:%s@h:56x2/' % PASSWORD,
        'rules = a, b',
        '[rule:b]',
        'events = *',
        'exclude_exception = KeyPairExists',
        'receivers = x',
        '[receiver:x]',
        'driver = log',
        'levle = error',
        '[receiver:spare]',
        'driver = log',
        '[listner]',
        'pool = p',
        '[listener]',
        'endpoints = versioned, legacyy',
        '',
    ])
    proc = service_process.ServiceProcess(tmp_path, config)
    assert proc.run_to_exit(timeout=60) == 2
    log = proc.log()
    errors = [ln.split('Configuration error: ', 1)[1]
              for ln in log.splitlines() if 'Configuration error: ' in ln]
    assert any("rule 'a'" in e for e in errors), errors
    assert any(e.startswith('[rule:b] exclude_exception: unknown option')
               for e in errors), errors
    assert any(e.startswith('[receiver:x] levle: unknown option')
               for e in errors), errors
    assert any('legacyy' in e for e in errors), errors
    assert any(e.startswith('transport_url is not usable') for e in errors)
    assert len(errors) == 5, errors
    warnings = [ln for ln in log.splitlines() if 'Configuration: ' in ln]
    assert any('unknown section [listner]' in w for w in warnings)
    assert any('[receiver:spare] is not used by any rule' in w
               for w in warnings)
    assert PASSWORD not in log
    assert 'Traceback' not in log
