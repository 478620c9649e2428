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
