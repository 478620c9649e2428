# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.
"""``nova-error-notifier-manage``: operator commands.

::

    nova-error-notifier-manage --config-file F check-config
    nova-error-notifier-manage --config-file F test-route FILE ...
    nova-error-notifier-manage --config-file F send-test --receiver NAME
    nova-error-notifier-manage --config-file F pending
    nova-error-notifier-manage --config-file F dead-letters list
    nova-error-notifier-manage --config-file F dead-letters retry [ID ...]
    nova-error-notifier-manage --config-file F dead-letters purge [ID ...]
    nova-error-notifier-manage --config-file F rejected list [--json]
    nova-error-notifier-manage --config-file F rejected show ID
    nova-error-notifier-manage --config-file F rejected purge [ID ...]
    nova-error-notifier-manage --config-file F stats
    nova-error-notifier-manage --config-file F db sync
    nova-error-notifier-manage --config-file F db version

Everything a command prints goes through one function that escapes it as
log lines are escaped (:func:`nova_error_notifier.logsafe.escape`): event
types, instance names, receivers' errors and stored messages from Nova
cannot forge a line or send escape sequences to the terminal.
"""

import dataclasses
import datetime
import json
import sys
import uuid

from oslo_config import cfg
from oslo_log import log

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import bus
from nova_error_notifier.cmd import service as service_cmd
from nova_error_notifier import delivery
from nova_error_notifier import listener
from nova_error_notifier import logsafe
from nova_error_notifier import outbox
from nova_error_notifier import receivers as receivers_mod
from nova_error_notifier import record as rec
from nova_error_notifier import redact
from nova_error_notifier import rules as rules_mod
from nova_error_notifier import service
from nova_error_notifier import version
from nova_error_notifier import wire

_LEVELS = {rules_mod.EXACT: 'an exact name', rules_mod.GLOB: 'a glob',
           rules_mod.ANY: '"*"'}


def _when(stamp):
    if not stamp:
        return '-'
    return datetime.datetime.fromtimestamp(
        stamp, datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S')


def _out(line=''):
    """Print one line; whatever it holds is escaped (logsafe.escape).

    Values from Nova (event types, names, messages, receivers' errors) and
    from the outbox reach the terminal through here only: a newline, an
    escape sequence or a bidi override in them cannot forge a line or
    garble the screen. Already escaped text is left as it is.
    """
    sys.stdout.write(logsafe.escape(line) + '\n')


def _err(line):
    """An error line on stderr, escaped like :func:`_out`."""
    sys.stderr.write(logsafe.escape(line) + '\n')


def _json_lines(value):
    """``value`` as indented JSON lines that escaping leaves unchanged.

    Every non-ASCII and control character is a ``\\uXXXX`` escape (DEL
    too, which ``json`` leaves as it is), so the output is both valid JSON
    and safe for a terminal.
    """
    text = json.dumps(value, ensure_ascii=True, sort_keys=True, indent=2)
    return text.replace('\x7f', '\\u007f').splitlines()


def _store(conf):
    """The outbox as the service would use it (schema at head)."""
    try:
        return service.open_store(conf)
    except service.StartupError as exc:
        raise outbox.StoreConfigError(str(exc))


def do_db(conf):
    """``db sync`` and ``db version``."""
    store = outbox.Store.from_conf(conf)
    where = store.describe()
    if conf.command.action == 'version':
        at, newest = store.schema_version()
        _out('%s: revision %s (newest: %s)%s' % (
            where, at or 'none', newest,
            '' if at == newest else '; run "db sync"'))
        return 0
    before, after = store.upgrade()
    if before == after:
        _out('%s: already at revision %s' % (where, after))
    else:
        _out('%s: upgraded from %s to revision %s' % (
            where, before or 'an empty database', after))
    return 0


def do_pending(conf):
    rows = _store(conf).pending()
    _out('%-6s %-36s %-20s %-7s %-9s %-8s %-19s %s' % (
        'ID', 'INCIDENT', 'RECEIVER', 'KIND', 'STATE', 'ATTEMPTS',
        'NEXT ATTEMPT', 'LAST ERROR'))
    for row in rows:
        _out('%-6s %-36s %-20s %-7s %-9s %-8s %-19s %s' % (
            row['id'], row['incident_id'], logsafe.escape(row['receiver']),
            row['kind'], row['state'], row['attempts'],
            _when(row['next_attempt_at']),
            logsafe.escape(row['last_error'] or '-', 120)))
    _out('%d pending deliveries' % len(rows))
    return 0


def do_dead_letters(conf):
    action = conf.command.action
    ids = _ids(conf, 'dead letter', 'dead-letters list')
    store = _store(conf)
    if action == 'list':
        rows = store.dead()
        _out('%-6s %-36s %-20s %-19s %s' % ('ID', 'INCIDENT', 'RECEIVER',
                                            'SINCE', 'REASON'))
        for row in rows:
            _out('%-6s %-36s %-20s %-19s %s' % (
                row['id'], row['incident_id'],
                logsafe.escape(row['receiver']), _when(row['created_at']),
                logsafe.escape(row['reason'] or '-', 200)))
        _out('%d dead letters' % len(rows))
    elif action == 'retry':
        count = store.retry_dead(ids or None)
        _out('%d dead letter(s) queued for delivery again (a running '
             'service picks them up)' % count)
    else:
        count = store.purge_dead(ids or None)
        _out('%d dead letter(s) purged' % count)
    return 0


_REJECTED_LIST_KEYS = ('id', 'first_seen', 'last_seen', 'attempts',
                       'event_type', 'priority', 'publisher_id',
                       'message_key', 'reason')


def _ids(conf, what, listing):
    ids = []
    for value in conf.command.ids:
        try:
            ids.append(int(value))
        except ValueError:
            raise _UsageError('%s is not a %s id (see "%s")' % (
                logsafe.quote(value, 80), what, listing))
    return ids


def do_rejected(conf):
    """Bus messages the service could not store, kept with the reason."""
    action = conf.command.action
    ids = _ids(conf, 'rejected message', 'rejected list')
    store = _store(conf)
    if action == 'list':
        if ids:
            raise _UsageError('rejected list takes no id ("rejected show '
                              'ID" shows one)')
        rows = store.rejected()
        if conf.command.json:
            for line in _json_lines([{key: row.get(key) for key in
                                      _REJECTED_LIST_KEYS} for row in rows]):
                _out(line)
            return 0
        _out('%-6s %-19s %-8s %-40s %-40s %s' % (
            'ID', 'SINCE', 'ATTEMPTS', 'EVENT TYPE', 'MESSAGE ID', 'REASON'))
        for row in rows:
            _out('%-6s %-19s %-8s %-40s %-40s %s' % (
                row['id'], _when(row['first_seen']), row['attempts'],
                logsafe.escape(row['event_type'], 40),
                logsafe.escape(row['message_key'], 40),
                logsafe.escape(row['reason'], 200)))
        _out('%d rejected messages' % len(rows))
        return 0
    if action == 'show':
        if len(ids) != 1:
            raise _UsageError('rejected show takes one id')
        row = store.rejected_one(ids[0])
        if row is None:
            _out('ERROR: no rejected message %d (see "rejected list")'
                 % ids[0])
            return 1
        for key in _REJECTED_LIST_KEYS:
            value = row.get(key)
            if key in ('first_seen', 'last_seen') and value:
                value = '%s UTC' % _when(value)
            _out('%-13s %s' % (key + ':', logsafe.escape(value)))
        body = row.get('body')
        if body is None:
            _out('body:         -')
            return 0
        _out('body:')
        try:
            lines = _json_lines(json.loads(body))
        except ValueError:
            # Not JSON: what could be read of it, on one escaped line.
            lines = [logsafe.escape(body)]
        for line in lines:
            _out('  ' + line)
        return 0
    count = store.purge_rejected(ids or None)
    _out('%d rejected message(s) purged' % count)
    return 0


class _UsageError(Exception):
    """A command's arguments are wrong (exit status 2)."""


def do_stats(conf):
    for key, value in sorted(_store(conf).counts().items()):
        _out('%-28s %d' % (key, value))
    return 0


def do_check_config(conf):
    """Load everything the service would; report every problem."""
    settings, problems, warnings = service.check(conf, transport=True)
    if not problems:
        # The broker's existing pool queue against [oslo_messaging_rabbit]
        # (classic or quorum, durable or not).
        warnings = list(warnings) + bus.pool_queue_warnings(conf)
    for problem in problems:
        _out('ERROR: %s' % logsafe.escape(problem))
    for warning in warnings:
        _out('WARNING: %s' % logsafe.escape(warning))
    if problems:
        _out('%d problem(s): the service would not start' % len(problems))
        return 1
    _out('OK: %d rule(s) (%s); receivers: %s' % (
        len(settings.ruleset),
        ', '.join(r.name for r in settings.ruleset.rules),
        ', '.join('%s (%s)' % (name, r.driver_name) for name, r in
                  sorted(settings.receivers.items()))))
    return 0


def _explain(record, ruleset, receivers):
    what = record.exception or 'no exception'
    _out('  error: %s, events: %s' % (logsafe.escape(what),
                                      ', '.join(record.events)))
    for rule in ruleset.rules:
        level = rule.specificity(record.events)
        if level is None:
            _out('  rule %s: no event matches %s' % (
                rule.name, ', '.join(rule.events)))
        elif not rule.accepts_exception(record.exception):
            _out('  rule %s: matches by %s, but the exception %s is %s' % (
                rule.name, _LEVELS[level], logsafe.escape(what),
                'excluded' if rule.exclude_exceptions and record.exception
                and not rule.include_exceptions else 'not included'))
        else:
            _out('  rule %s: matches by %s%s' % (
                rule.name, _LEVELS[level],
                ' (continue = true)' if rule.cont else ''))
    match = ruleset.match(record)
    if not match.matched:
        _out('  => no rule: no alert')
        return
    then = [r.name for r in match.applied[1:]]
    suffix = ', then ' + ', '.join(then) if then else ''
    _out('  => wins: %s%s' % (match.applied[0].name, suffix))
    if not match.routes:
        _out('  => receivers: none (muted)')
    for route in match.routes:
        receiver = receivers.get(route.receiver)
        _out('  => receiver %s (driver %s) via rule %s' % (
            route.receiver, receiver.driver_name if receiver else '?',
            route.rule))


def do_test_route(conf):
    """Which rules and receivers each notification reaches, and why."""
    settings, problems, _ = service.check(conf, transport=False)
    if problems:
        for problem in problems:
            _out('ERROR: %s' % logsafe.escape(problem))
        return 1
    found = []

    def sink(item):
        found.append(item)
    endpoints = service.load_endpoints(conf, sink)
    drops = []
    sink.on_drop = drops.append
    dispatcher = listener.Recorder(listener.BatchEndpoint(
        endpoints, lambda items: [sink(item) for item in items],
        on_drop=drops.append))
    status = 0
    for path in conf.command.files:
        for item in wire.read_file(path):
            if isinstance(item, wire.WireError):
                _out('%s' % logsafe.escape(item))
                status = 1
                continue
            del found[:]
            del drops[:]
            _out('%s: %s [%s]' % (
                logsafe.escape(item.source),
                logsafe.escape(item.message.get('event_type'), 120),
                logsafe.escape(item.message.get('priority'), 20)))
            dispatcher.dispatch(item.ctxt, item.message)
            for reason in drops:
                _out('  dropped: %s' % logsafe.escape(reason))
                status = 1
            records = [r for r in found if isinstance(r, rec.ErrorRecord)]
            if not records and not drops:
                _out('  not an error: no alert')
            for record in records:
                _explain(record, settings.ruleset, settings.receivers)
    _out('(the service also gathers the messages of one failure into one '
         'alert per receiver)')
    return status


def do_send_test(conf):
    """Send a clearly marked test alert through one receiver."""
    name = conf.command.receiver
    try:
        receiver = receivers_mod.load(conf, [name])[name]
    except receivers_mod.ReceiverError as exc:
        for problem in exc.problems:
            _out('ERROR: %s' % logsafe.escape(problem))
        return 1
    alert = dataclasses.replace(
        alert_mod.sample(name), id=str(uuid.uuid4()), test=True,
        rule='send-test', instance_name='nova-error-notifier-test',
        request_id='req-%s' % uuid.uuid4(), exception='TestAlert',
        synthetic_events=(), event_types=('nova-error-notifier.test',),
        message='This is a test alert sent by nova-error-notifier-manage '
                'send-test. Nothing failed.')
    alert = alert_mod.for_receiver(alert, name, receiver.include_details)
    outcome = delivery.send(receiver, alert)
    if not outcome.sent:
        _out('FAILED: receiver %s (driver %s), retryable=%s: %s' % (
            name, receiver.driver_name, outcome.retryable, outcome.error))
        return 1
    _out('Sent test alert %s through receiver %s (driver %s)' % (
        alert.id, name, receiver.driver_name))
    return 0


def _add_parsers(subparsers):
    check = subparsers.add_parser(
        'check-config', help='Load the configuration, every rule, receiver, '
                             'driver and template, and report every '
                             'problem.')
    check.set_defaults(func=do_check_config)
    route = subparsers.add_parser(
        'test-route', help='Show which rules and receivers notification '
                           'files reach, and why.')
    route.add_argument('files', nargs='+', help='Notification files.')
    route.set_defaults(func=do_test_route)
    send = subparsers.add_parser(
        'send-test', help='Send a test alert through one receiver.')
    send.add_argument('--receiver', required=True,
                      help='Name of the receiver ([receiver:NAME]).')
    send.set_defaults(func=do_send_test)
    pending = subparsers.add_parser(
        'pending', help='List deliveries not done yet.')
    pending.set_defaults(func=do_pending)
    dead = subparsers.add_parser(
        'dead-letters', help='List, retry or purge failed deliveries.')
    dead.add_argument('action', choices=('list', 'retry', 'purge'))
    dead.add_argument('ids', nargs='*',
                      help='Dead letter ids (default: all).')
    dead.set_defaults(func=do_dead_letters)
    rejected = subparsers.add_parser(
        'rejected', help='List, show or purge the bus messages the service '
                         'could not store (kept with the reason).')
    rejected.add_argument('action', choices=('list', 'show', 'purge'))
    rejected.add_argument('ids', nargs='*',
                          help='Rejected message ids (show: one; purge: '
                               'default all).')
    rejected.add_argument('--json', action='store_true',
                          help='list: print JSON instead of a table.')
    rejected.set_defaults(func=do_rejected)
    stats = subparsers.add_parser(
        'stats', help='Count incidents and deliveries by state.')
    stats.set_defaults(func=do_stats)
    db = subparsers.add_parser(
        'db', help='The outbox database schema: "sync" brings it to the '
                   'newest revision (run it before starting upgraded '
                   'replicas on a shared database), "version" says where '
                   'it is.')
    db.add_argument('action', choices=('sync', 'version'))
    db.set_defaults(func=do_db)


COMMAND_OPT = cfg.SubCommandOpt('command', title='Commands',
                                handler=_add_parsers,
                                help='What to do.')


def main(argv=None):
    conf = service_cmd.build_conf()
    conf.register_cli_opt(COMMAND_OPT)
    try:
        conf(sys.argv[1:] if argv is None else argv,
             project=service_cmd.PROJECT,
             version=version.version_string(),
             description='Operator commands of nova-error-notifier.')
    except cfg.Error as exc:
        _err('nova-error-notifier-manage: %s' % exc)
        return 2
    log.setup(conf, service_cmd.PROJECT)
    logsafe.protect_handlers()
    redact.protect_logs(conf)
    try:
        return conf.command.func(conf)
    except _UsageError as exc:
        _err('nova-error-notifier-manage: %s' % exc)
        return 2
    except (outbox.StoreUnavailable, outbox.StoreError,
            outbox.StoreConfigError) as exc:
        _err('nova-error-notifier-manage: the outbox is not usable: %s'
             % exc)
        return 1


if __name__ == '__main__':
    sys.exit(main())
