"""A third-party driver, installed with pip, used by the real commands.

``tests/thirdparty_driver/`` is a separate package (``nen-file-driver``)
that registers the driver ``file`` (one JSON line per alert in a file) and
its options, plus two deliberately broken drivers.  The module installs it
into the running environment once, from a copy (a build in place would
leave ``build/`` and ``*.egg-info`` in the checkout), and uninstalls it at
the end.  Every command then runs as a subprocess, so that it finds the
driver through the installed entry points like an operator's would.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.functional import rabbitmq as rq
from tests.functional import service_process
from tests import shared_corpus

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'thirdparty_driver')
DISTRIBUTION = 'nen-file-driver'
NO_BROKER = 'rabbit://guest:guest@127.0.0.1:1/'


def _pip(*args):
    return subprocess.run(
        [sys.executable, '-m', 'pip', '--disable-pip-version-check'] +
        list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)


def _installed():
    return _pip('show', DISTRIBUTION).returncode == 0


@pytest.fixture(scope='module')
def file_driver(tmp_path_factory):
    """``nen-file-driver`` installed into this environment for the module.

    ``--no-build-isolation`` builds with the environment's own setuptools,
    offline; a setuptools older than 70.1 needs the ``wheel`` package for
    that, and without it pip builds in an isolated environment instead,
    fetching setuptools from PyPI.
    """
    if _installed():
        pytest.fail('%s is already installed in this environment (left by '
                    'an interrupted run?): pip uninstall -y %s'
                    % (DISTRIBUTION, DISTRIBUTION), pytrace=False)
    source = tmp_path_factory.mktemp('thirdparty') / 'nen-file-driver'
    shutil.copytree(PACKAGE_DIR, source, ignore=shutil.ignore_patterns(
        'build', '*.egg-info', '__pycache__'))
    attempts = []
    try:
        for isolation in (['--no-build-isolation'], []):
            result = _pip('install', '--no-deps', *isolation, str(source))
            attempts.append(result)
            if result.returncode == 0:
                break
        else:
            pytest.fail('could not install %s:\n%s' % (
                DISTRIBUTION, '\n---\n'.join(r.stdout[-3000:]
                                             for r in attempts)),
                        pytrace=False)
        yield source
    finally:
        result = _pip('uninstall', '-y', DISTRIBUTION)
        assert not _installed(), result.stdout


# -- helpers -----------------------------------------------------------------

def receiver_config(path, driver='file', extra=''):
    """Rules sending every error to the receiver ``jsonl``."""
    return '\n'.join([
        'rules = all',
        '[rule:all]',
        'events = *',
        'receivers = jsonl',
        '[receiver:jsonl]',
        'driver = %s' % driver,
        'path = %s' % path if path else '',
        extra,
        '',
    ])


def read_lines(path):
    """The alerts in ``path``, one dict per JSON line."""
    try:
        with open(path, encoding='utf-8') as handle:
            text = handle.read()
    except FileNotFoundError:
        return []
    assert not text or text.endswith('\n'), 'torn last line: %r' % text
    return [json.loads(line) for line in text.splitlines()]


def wait_for_lines(path, count, svc, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        lines = read_lines(path)
        if len(lines) >= count:
            return lines
        if svc.process.poll() is not None:
            raise AssertionError('the service exited with %s; log:\n%s' % (
                svc.process.returncode, svc.log()[-4000:]))
        if time.monotonic() > deadline:
            raise AssertionError(
                'timed out after %ss waiting for %d line(s) in %s (found '
                '%d); log tail:\n%s' % (timeout, count, path, len(lines),
                                        svc.log()[-4000:]))
        time.sleep(0.1)


def run(script, *args, timeout=60):
    return subprocess.run(
        [service_process.console_script(script)] + list(args),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, universal_newlines=True, timeout=timeout)


def corpus_errors(legacy_event_types):
    """Error entries of the failures behind some legacy event types.

    Returns {request id: [entries]}: every error message of the corpus
    (legacy and versioned wire) with the request id of one of the legacy
    entries named; the service gathers each list into one alert.
    """
    entries = [entry for section, entry in shared_corpus.manifest_entries()
               if section in ('legacy', 'versioned_wire') and
               entry['is_error']]
    request_ids = {entry['expected']['request_id'] for entry in entries
                   if entry['file'].startswith('legacy/') and
                   entry['event_type'] in legacy_event_types}
    assert len(request_ids) == len(legacy_event_types), request_ids
    failures = {}
    for entry in entries:
        request_id = entry['expected']['request_id']
        if request_id in request_ids:
            failures.setdefault(request_id, []).append(entry)
    return failures


def write_config(tmp_path, text, name='nen.conf'):
    path = tmp_path / name
    path.write_text(text, encoding='utf-8')
    return str(path)


@pytest.fixture
def start_service(tmp_path):
    processes = []

    def _start(config, **kwargs):
        workdir = tmp_path / ('svc%d' % len(processes))
        workdir.mkdir()
        proc = service_process.ServiceProcess(workdir, config)
        processes.append(proc)
        return proc.start(**kwargs)

    yield _start
    for proc in processes:
        proc.kill()


# -- the tests ---------------------------------------------------------------

def test_alerts_reach_the_file_through_the_service(file_driver, tmp_path,
                                                   rabbitmq_vhost,
                                                   start_service):
    out = tmp_path / 'out'
    out.mkdir()
    path = out / 'alerts.jsonl'
    failures = corpus_errors({'compute.instance.create.error',
                              'compute_task.build_instances',
                              'compute.libvirt.error', 'create_key_pair'})
    svc = start_service('[DEFAULT]\ntransport_url = %s\n%s' % (
        rabbitmq_vhost.url, receiver_config(path, extra='fsync = true')))
    published = 0
    with rq.Publisher(rabbitmq_vhost.url) as pub:
        for entries in failures.values():
            for entry in entries:
                pub.publish_wire_file(shared_corpus.path_of(entry))
                published += 1
    assert published > len(failures)  # twins and build steps: correlated
    lines = wait_for_lines(path, len(failures), svc)
    # One line per failure, none twice, none late.
    time.sleep(service_process.GROUP_WAIT + 1)
    assert read_lines(path) == lines
    by_request = {line['request_id']: line for line in lines}
    assert sorted(by_request) == sorted(failures)
    assert len({line['id'] for line in lines}) == len(lines)
    for request_id, entries in failures.items():
        line = by_request[request_id]
        assert line['receiver'] == 'jsonl'
        assert line['rule'] == 'all'
        assert line['test'] is False
        assert line['details'] is None      # include_details = false
        assert line['count'] == len(entries)
        events = line['event_types'] + line['synthetic_events']
        for entry in entries:
            assert entry['event_type'] in events, (entry['file'], line)
        uuids = {e['expected']['instance_uuid'] for e in entries}
        assert len(uuids) == 1
        assert line['instance_uuid'] == uuids.pop()
    # The service's own log says each delivery went out through "file".
    assert len(svc.wait_for(r'nova_error_notifier\.audit .*receiver=jsonl '
                            r'.*outcome=sent', count=len(failures))) == \
        len(failures)
    assert svc.alert_lines() == []         # nothing went to the log driver
    assert svc.stop() == 0
    assert 'Traceback' not in svc.log() + svc.output()
    assert shared_corpus.FAKE_TOKEN not in path.read_text()


def test_retryable_failures_are_retried_until_the_file_is_writable(
        file_driver, tmp_path, rabbitmq_vhost, start_service):
    path = tmp_path / 'alerts.jsonl'
    # A directory where the file should be: check() passes (its parent
    # exists) but every append fails with IsADirectoryError, an OSError.
    path.mkdir()
    entry = next(e for e in corpus_errors({'compute.libvirt.error'})
                 .popitem()[1] if e['file'].startswith('legacy/'))
    workdir_state = tmp_path / 'state'
    workdir_state.mkdir()
    svc = start_service('[DEFAULT]\ntransport_url = %s\n%s' % (
        rabbitmq_vhost.url, receiver_config(path, extra='\n'.join([
            '[delivery]',
            'state_dir = %s' % workdir_state,
            'retry_initial_delay = 0.2',
            'retry_max_delay = 0.5']))))
    with rq.Publisher(rabbitmq_vhost.url) as pub:
        pub.publish_wire_file(shared_corpus.path_of(entry))
    failed = svc.wait_for(r'Receiver jsonl \(driver file\) could not deliver '
                          r'.*retryable=True\).*could not append the alert',
                          count=2)
    assert 'Is a directory' in failed[0]
    path.rmdir()
    lines = wait_for_lines(path, 1, svc)
    assert lines[0]['request_id'] == entry['expected']['request_id']
    sent = svc.wait_for(r'nova_error_notifier\.audit .*receiver=jsonl '
                        r'attempt=(\d+) outcome=sent')
    assert int(re.search(r'attempt=(\d+)', sent[0]).group(1)) >= 3
    assert svc.stop() == 0
    assert len(read_lines(path)) == 1


def test_failure_past_the_deadline_is_a_dead_letter_and_goes_to_fallback(
        file_driver, tmp_path, rabbitmq_vhost, start_service):
    path = tmp_path / 'alerts.jsonl'
    path.mkdir()   # never writable
    entry = next(e for e in corpus_errors({'compute.libvirt.error'})
                 .popitem()[1] if e['file'].startswith('legacy/'))
    state = tmp_path / 'state'
    state.mkdir()
    config = '[DEFAULT]\ntransport_url = %s\n%s' % (
        rabbitmq_vhost.url, receiver_config(path, extra='\n'.join([
            '[receiver:ops_log]',
            'driver = log',
            '[delivery]',
            'state_dir = %s' % state,
            'retry_deadline = 0',
            'fallback_receiver = ops_log'])))
    svc = start_service(config)
    with rq.Publisher(rabbitmq_vhost.url) as pub:
        pub.publish_wire_file(shared_corpus.path_of(entry))
    fallback = svc.wait_for_alerts(1)
    assert 'receiver=ops_log' in fallback[0]
    assert entry['expected']['request_id'] in fallback[0]
    dead = svc.wait_for(r'nova_error_notifier\.audit .*receiver=jsonl '
                        r'attempt=1 outcome=.*dead: retry deadline passed: '
                        r'could not append the alert.*sent to fallback '
                        r'receiver ops_log')
    assert dead
    assert svc.stop() == 0
    result = run('nova-error-notifier-manage', '--config-file',
                 svc.config_path, 'dead-letters', 'list')
    assert result.returncode == 0, result.stdout
    assert re.search(r'\s+jsonl\s+.*could not append the alert',
                     result.stdout), result.stdout
    assert '1 dead letters' in result.stdout


@pytest.mark.parametrize('driver,extra,expected', [
    ('broken_import', '', [
        "[receiver:jsonl]: driver 'broken_import' failed to load: "
        "ImportError: nen_file_driver.broken_import is broken on purpose"]),
    ('broken_init', '', [
        "[receiver:jsonl]: driver 'broken_init' failed to start: "
        "RuntimeError: BrokenInitDriver is broken on purpose"]),
    ('file', 'no path', [
        '[receiver:jsonl] (driver file): path is required']),
    ('file', 'no directory', [
        '[receiver:jsonl] (driver file): path ', 'does not exist']),
    ('file', 'bad fsync', ['[receiver:jsonl]', 'fsync']),
])
def test_broken_receivers_stop_startup(file_driver, tmp_path, driver, extra,
                                       expected):
    path = tmp_path / 'alerts.jsonl'
    more = ''
    if extra == 'no path':
        path = None
    elif extra == 'no directory':
        path = tmp_path / 'missing' / 'alerts.jsonl'
    elif extra == 'bad fsync':
        more = 'fsync = perhaps'
    config = '[DEFAULT]\ntransport_url = %s\n%s' % (
        NO_BROKER, receiver_config(path, driver=driver, extra=more))
    workdir = tmp_path / 'svc'
    workdir.mkdir()
    proc = service_process.ServiceProcess(workdir, config)
    assert proc.run_to_exit() == 2
    problems = [line for line in proc.log().splitlines()
                if 'Configuration error:' in line]
    assert len(problems) == 1, proc.log()
    for text in expected:
        assert text in problems[0], problems[0]
    assert 'Traceback' not in proc.log() + proc.output()
    assert not os.path.exists(tmp_path / 'alerts.jsonl')


def test_config_generator_lists_the_driver_options(file_driver, tmp_path):
    sample = tmp_path / 'sample.conf'
    result = run('oslo-config-generator', '--namespace',
                 'nova_error_notifier', '--namespace', 'nen_file_driver',
                 '--output-file', str(sample))
    assert result.returncode == 0, result.stdout
    text = sample.read_text()
    assert text.count('[receiver:<name>]') == 1
    section = text.split('[receiver:<name>]', 1)[1].split('\n[', 1)[0]
    # One group, with the options of each namespace under its own header.
    parts = re.split(r'^#\n# From (\S+)\n#\n', section, flags=re.M)
    by_namespace = dict(zip(parts[1::2], parts[2::2]))
    assert sorted(by_namespace) == ['nen_file_driver', 'nova_error_notifier']
    assert '#driver = <None>' in by_namespace['nova_error_notifier']
    ours = by_namespace['nen_file_driver']
    assert '# File the alerts are appended to, one JSON document' in ours
    assert '(string value)\n#path = <None>\n' in ours
    assert '# Flush each line to disk (fsync)' in ours
    assert '(boolean value)\n#fsync = false\n' in ours


def test_replay_and_manage_commands_use_the_driver(file_driver, tmp_path):
    path = tmp_path / 'alerts.jsonl'
    config = write_config(tmp_path, '[DEFAULT]\n' + receiver_config(path))
    entry = next(e for e in corpus_errors({'compute_task.build_instances'})
                 .popitem()[1] if e['file'].startswith('legacy/'))
    result = run('nova-error-notifier-replay', '--config-file', config,
                 shared_corpus.path_of(entry))
    assert result.returncode == 0, result.stdout
    assert re.search(r'-> receiver jsonl \(rule all\): sent',
                     result.stdout), result.stdout
    assert ('1 messages, 1 errors recognised, 1 alerts sent, 0 deliveries '
            'failed, 0 unreadable') in result.stdout
    lines = read_lines(path)
    assert len(lines) == 1
    assert lines[0]['request_id'] == entry['expected']['request_id']
    assert lines[0]['instance_uuid'] == entry['expected']['instance_uuid']
    assert lines[0]['exception'] == 'NoValidHost'
    assert entry['event_type'] in lines[0]['event_types']

    result = run('nova-error-notifier-manage', '--config-file', config,
                 'check-config')
    assert result.returncode == 0, result.stdout
    assert 'receivers: jsonl (file)' in result.stdout
    result = run('nova-error-notifier-manage', '--config-file', config,
                 'send-test', '--receiver', 'jsonl')
    assert result.returncode == 0, result.stdout
    assert 'through receiver jsonl (driver file)' in result.stdout
    lines = read_lines(path)
    assert len(lines) == 2
    assert lines[1]['test'] is True


def test_replay_reports_a_failing_driver(file_driver, tmp_path):
    path = tmp_path / 'alerts.jsonl'
    path.mkdir()   # the directory exists, the file cannot be written
    config = write_config(tmp_path, '[DEFAULT]\n' + receiver_config(path))
    entry = next(e for e in corpus_errors({'compute_task.build_instances'})
                 .popitem()[1] if e['file'].startswith('legacy/'))
    result = run('nova-error-notifier-replay', '--config-file', config,
                 shared_corpus.path_of(entry))
    assert result.returncode == 1, result.stdout
    assert re.search(r'-> receiver jsonl \(rule all\): FAILED: could not '
                     r'append the alert to .*Is a directory', result.stdout)
    assert '1 deliveries failed' in result.stdout
