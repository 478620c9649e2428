"""nova-error-notifier-manage: check-config, test-route, send-test."""

import json
import time

import pytest

from nova_error_notifier.cmd import manage
from nova_error_notifier.drivers import base as driver_base
from nova_error_notifier.drivers import log as log_driver
from nova_error_notifier import outbox
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


@pytest.mark.parametrize('error,expected', [
    (driver_base.DriverError('POST http://u:Pw-Never-Shown@h/x?token=Tk-9 '
                             'answered HTTP 400\nFORGED', retryable=False),
     'retryable=False: POST http://u:***@h/x?token=*** answered HTTP '
     '400\\nFORGED'),
    (RuntimeError('broken at http://u:Pw-Never-Shown@h/'),
     'retryable=True: RuntimeError: broken at http://u:***@h/'),
])
def test_send_test_reports_a_failure_without_secrets(tmp_path, capsys,
                                                     monkeypatch, error,
                                                     expected):
    def notify(self, alert):
        raise error
    monkeypatch.setattr(log_driver.LogDriver, 'notify', notify)
    assert manage.main(write(tmp_path, GOOD) +
                       ['send-test', '--receiver', 'ops']) == 1
    out = capsys.readouterr().out
    [line] = [ln for ln in out.splitlines() if ln.startswith('FAILED')]
    assert line == 'FAILED: receiver ops (driver log), %s' % expected
    assert 'Pw-Never-Shown' not in out and 'Tk-9' not in out


# -- everything printed is escaped -------------------------------------------

#: Characters that must never reach the terminal raw.
RAW = ('\x1b', '\r', '\x00', '\u2028', '\u202e', '\x7f', '\x9b')
FORGED = 'FORGED line \x1b[2J'
HOSTILE = ('evil\nFORGED line \x1b[2J\r\n\u2028x\u202ey\x00z\x9b'
           '"\' \\ end')
#: How HOSTILE prints once escaped.
HOSTILE_ESCAPED = ('evil\\nFORGED line \\x1b[2J\\r\\n\\u2028x\\u202ey'
                   '\\x00z\\x9b"\' \\ end')


def assert_clean(out):
    for char in RAW:
        assert char not in out, (char, out)
    assert not any(line.startswith('FORGED') for line in out.splitlines())


def store_of(tmp_path):
    store = outbox.Store('sqlite:///%s' % (tmp_path /
                                           'nova_error_notifier.sqlite'))
    store.create_schema()
    return store


def add_delivery(store, receiver, last_error, dead_reason=None):
    """A pending delivery, or a dead one with a dead letter."""
    now = time.time()

    def work(conn):
        delivery = conn.execute(outbox.deliveries.insert().values(
            incident_id='11111111-2222-4333-8444-555555555555',
            receiver=receiver, rule='r', kind='single', alert='{}',
            state='dead' if dead_reason else 'pending', attempts=3,
            created_at=now, next_attempt_at=now,
            last_error=last_error)).inserted_primary_key[0]
        if dead_reason:
            conn.execute(outbox.dead_letters.insert().values(
                delivery_id=delivery,
                incident_id='11111111-2222-4333-8444-555555555555',
                receiver=receiver, reason=dead_reason, created_at=now))
    store.write(work)


def test_pending_and_dead_letters_are_escaped(tmp_path, capsys):
    store = store_of(tmp_path)
    add_delivery(store, 'ops', 'POST failed: ' + HOSTILE)
    add_delivery(store, 'noc' + HOSTILE, 'x', dead_reason='dead: ' + HOSTILE)
    args = write(tmp_path, GOOD)
    assert manage.main(args + ['pending']) == 0
    out = capsys.readouterr().out
    assert_clean(out)
    assert 'POST failed: ' + HOSTILE_ESCAPED[:60] in out
    assert out.splitlines()[-1] == '1 pending deliveries'
    assert manage.main(args + ['dead-letters', 'list']) == 0
    out = capsys.readouterr().out
    assert_clean(out)
    assert 'dead: ' + HOSTILE_ESCAPED in out
    assert 'noc' + HOSTILE_ESCAPED[:10] in out
    assert len(out.splitlines()) == 3, out       # header, one row, total


def hostile_notification(tmp_path):
    path = tmp_path / 'hostile.json'
    path.write_text(json.dumps({
        'message_id': 'm-' + HOSTILE, 'publisher_id': 'compute.' + HOSTILE,
        'event_type': 'compute.instance.create.error' + HOSTILE,
        'priority': 'ERROR', 'timestamp': '2026-09-14 09:12:11.481790',
        '_context_request_id': 'req-' + HOSTILE,
        'payload': {'instance_id': 'b5e2c3f4-1a2b-4c3d-9e8f-7a6b5c4d3e2f',
                    'display_name': HOSTILE, 'state': 'error',
                    'tenant_id': 'p-1', 'message': HOSTILE,
                    'exception': repr({'class': 'Boom' + HOSTILE,
                                       'message': HOSTILE,
                                       'kwargs': {'code': 500}})}}))
    return str(path)


def test_test_route_escapes_event_types_and_exceptions(tmp_path, capsys):
    everything = GOOD.replace('exclude_exceptions = KeyPairExists\n', '')
    status = manage.main(write(tmp_path, everything) + [
        'test-route', hostile_notification(tmp_path)])
    out = capsys.readouterr().out
    assert_clean(out)
    # The header and the events line both show the event type escaped.
    assert out.count('compute.instance.create.error' +
                     HOSTILE_ESCAPED) >= 2, out
    assert status == 0, out
    assert '  => wins: everything' in out


def test_check_config_problems_are_escaped(tmp_path, capsys):
    bad = GOOD.replace('receivers = ops, noc', 'receivers = ops, noc, '
                       'gh\x1bost')
    assert manage.main(write(tmp_path, bad) + ['check-config']) == 1
    out = capsys.readouterr().out
    assert_clean(out)
    assert 'gh\\x1bost' in out


def test_out_escapes_every_line_and_keeps_escaped_text(capsys):
    manage._out('a\nb \x1b[31m \\n already escaped \u202e')
    assert capsys.readouterr().out == \
        'a\\nb \\x1b[31m \\n already escaped \\u202e\n'


# -- rejected messages -------------------------------------------------------

def add_rejected(tmp_path):
    store = store_of(tmp_path)
    first = store.add_rejected(
        'msg-' + HOSTILE, 'database refused: ' + HOSTILE,
        event_type='compute.instance.create.error' + HOSTILE,
        priority='ERROR', publisher_id='compute.' + HOSTILE,
        body=json.dumps({'instance_name': HOSTILE, 'n': 1}))
    second = store.add_rejected('msg-2', 'broken', event_type='x.error',
                                body='not json ' + HOSTILE)
    return store, first, second


def test_rejected_list_is_escaped(tmp_path, capsys):
    store, first, second = add_rejected(tmp_path)
    assert manage.main(write(tmp_path, GOOD) + ['rejected', 'list']) == 0
    out = capsys.readouterr().out
    assert_clean(out)
    lines = out.splitlines()
    assert lines[0].split() == ['ID', 'SINCE', 'ATTEMPTS', 'EVENT', 'TYPE',
                                'MESSAGE', 'ID', 'REASON']
    assert len(lines) == 4, out
    assert lines[1].startswith('%-6s ' % first)
    assert 'database refused: ' + HOSTILE_ESCAPED in lines[1]
    assert lines[2].startswith('%-6s ' % second) and 'broken' in lines[2]
    assert lines[-1] == '2 rejected messages'


def test_rejected_list_json(tmp_path, capsys):
    store, first, second = add_rejected(tmp_path)
    assert manage.main(write(tmp_path, GOOD) +
                       ['rejected', 'list', '--json']) == 0
    out = capsys.readouterr().out
    assert_clean(out)
    assert out.isascii()
    rows = json.loads(out)
    assert [r['id'] for r in rows] == [first, second]
    # The outbox keeps a NUL byte as the text "\x00".
    stored = HOSTILE.replace('\x00', '\\x00')
    assert rows[0]['reason'] == 'database refused: ' + stored
    assert rows[0]['event_type'] == 'compute.instance.create.error' + stored
    assert rows[0]['publisher_id'] == 'compute.' + stored
    assert rows[0]['message_key'] == store.rejected_one(first)[
        'message_key']
    assert rows[0]['attempts'] == 1
    assert 'body' not in rows[0]


def test_rejected_show_every_field_and_the_body(tmp_path, capsys):
    store, first, second = add_rejected(tmp_path)
    args = write(tmp_path, GOOD)
    assert manage.main(args + ['rejected', 'show', str(first)]) == 0
    out = capsys.readouterr().out
    assert_clean(out)
    assert 'reason:       database refused: ' + HOSTILE_ESCAPED in out
    # A message id with control characters is kept as its hash.
    assert 'message_key:  %s\n' % store.rejected_one(first)[
        'message_key'] in out
    assert 'publisher_id: compute.' + HOSTILE_ESCAPED in out
    assert 'priority:     ERROR' in out
    assert 'first_seen:   20' in out and ' UTC' in out
    body = out.split('body:\n', 1)[1]
    assert json.loads(body) == {'instance_name': HOSTILE, 'n': 1}
    assert manage.main(args + ['rejected', 'show', str(second)]) == 0
    out = capsys.readouterr().out
    assert_clean(out)
    assert 'body:\n  not json ' + HOSTILE_ESCAPED + '\n' in out


def test_rejected_show_unknown_or_bad_id(tmp_path, capsys):
    store, first, second = add_rejected(tmp_path)
    args = write(tmp_path, GOOD)
    assert manage.main(args + ['rejected', 'show', '999']) == 1
    assert 'no rejected message 999' in capsys.readouterr().out
    assert manage.main(args + ['rejected', 'show', 'x\x1b[2J']) == 2
    err = capsys.readouterr().err
    assert_clean(err)
    assert '"x\\x1b[2J" is not a rejected message id (see "rejected ' \
        'list")' in err
    assert manage.main(args + ['rejected', 'show']) == 2
    assert 'takes one id' in capsys.readouterr().err
    assert manage.main(args + ['dead-letters', 'purge', '1', 'two']) == 2
    assert 'two is not a dead letter id (see "dead-letters list")' in \
        capsys.readouterr().err


def test_rejected_purge_some_then_all(tmp_path, capsys):
    store, first, second = add_rejected(tmp_path)
    third = store.add_rejected('msg-3', 'again')
    args = write(tmp_path, GOOD)
    assert manage.main(args + ['rejected', 'purge', str(first)]) == 0
    assert '1 rejected message(s) purged' in capsys.readouterr().out
    assert [r['id'] for r in store.rejected()] == [second, third]
    assert manage.main(args + ['rejected', 'purge']) == 0
    assert '2 rejected message(s) purged' in capsys.readouterr().out
    assert store.rejected() == []
    assert manage.main(args + ['stats']) == 0
    assert 'rejected_messages' in capsys.readouterr().out
