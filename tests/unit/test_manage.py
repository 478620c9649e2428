"""nova-error-notifier-manage: check-config, test-route, send-test."""

from nova_error_notifier.cmd import manage
from tests import shared_corpus

GOOD = '''[DEFAULT]
rules = builds, everything
[rule:builds]
events = compute_task.build_instances, notifier.instance.create_failed
receivers = ops
[rule:everything]
events = *
exclude_exceptions = KeyPairExists
receivers = ops, noc
[receiver:ops]
driver = log
[receiver:noc]
driver = log
level = error
[delivery]
state_dir = %(dir)s
'''


def write(tmp_path, text):
    path = tmp_path / 'c.conf'
    path.write_text(text % {'dir': tmp_path})
    return ['--config-file', str(path)]


def corpus(name):
    return '%s/%s' % (shared_corpus.CORPUS, name)


def test_check_config_reports_every_problem(tmp_path, capsys):
    bad = GOOD.replace('driver = log\nlevel', 'driver = emial\nlevel')
    bad = bad.replace('receivers = ops, noc', 'receivers = ops, noc, ghost')
    assert manage.main(write(tmp_path, bad) + ['check-config']) == 1
    out = capsys.readouterr().out
    assert "driver 'emial' is not installed" in out
    assert "receiver 'ghost' has no [receiver:ghost] section" in out
    assert '2 problem(s)' in out


def test_check_config_ok(tmp_path, capsys):
    assert manage.main(write(tmp_path, GOOD) + ['check-config']) == 0
    out = capsys.readouterr().out
    assert out.startswith('OK: 2 rule(s) (builds, everything); receivers: '
                          'noc (log), ops (log)')


def test_test_route_names_the_winner_and_why(tmp_path, capsys):
    status = manage.main(write(tmp_path, GOOD) + [
        'test-route',
        corpus('legacy/error--compute_task.build_instances--NoValidHost.json'),
        corpus('versioned-wire/error--compute.exception--create_key_pair'
               '.json'),
        corpus('versioned-wire/error--libvirt.connect.error.json'),
        corpus('legacy/info--compute.instance.create.start.json')])
    assert status == 0
    out = capsys.readouterr().out
    blocks = out.split('\n/')
    build, keypair, libvirt, info = blocks[0], blocks[1], blocks[2], \
        blocks[3]
    assert '  rule builds: matches by an exact name' in build
    assert '  => wins: builds' in build
    assert '  => receiver ops (driver log) via rule builds' in build
    assert 'noc' not in build.split('=> wins')[1]
    assert 'the exception KeyPairExists is excluded' in keypair
    assert '  => no rule: no alert' in keypair
    assert '  => wins: everything' in libvirt
    assert '  => receiver noc (driver log) via rule everything' in libvirt
    assert 'not an error: no alert' in info


def test_send_test_through_a_receiver(tmp_path, capsys):
    assert manage.main(write(tmp_path, GOOD) +
                       ['send-test', '--receiver', 'ops']) == 0
    out = capsys.readouterr().out
    assert 'Sent test alert' in out and 'receiver ops (driver log)' in out
    # oslo.log writes the log driver's line to stdout here.
    [line] = [ln for ln in out.splitlines()
              if 'nova-error-notifier alert ' in ln]
    assert 'test=true' in line and 'Nothing failed' in line


def test_send_test_to_an_unknown_receiver(tmp_path, capsys):
    assert manage.main(write(tmp_path, GOOD) +
                       ['send-test', '--receiver', 'nope']) == 1
    assert "receiver 'nope' has no [receiver:nope] section" in \
        capsys.readouterr().out
