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
    nova-error-notifier-manage --config-file F stats
"""

import dataclasses
import datetime
import sys
import uuid

from oslo_config import cfg
from oslo_log import log

from nova_error_notifier import alert as alert_mod
from nova_error_notifier.cmd import service as service_cmd
from nova_error_notifier.drivers import base as driver_base
from nova_error_notifier.endpoints import base as endpoint_base
from nova_error_notifier import logsafe
from nova_error_notifier import outbox
from nova_error_notifier import receivers as receivers_mod
from nova_error_notifier import record as rec
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
    sys.stdout.write(line + '\n')


def _store(conf):
    store = outbox.Store.from_conf(conf)
    store.create_schema()
    return store


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
    ids = [int(i) for i in conf.command.ids]
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


def do_stats(conf):
    for key, value in sorted(_store(conf).counts().items()):
        _out('%-28s %d' % (key, value))
    return 0


def do_check_config(conf):
    """Load everything the service would; report every problem."""
    settings, problems, warnings = service.check(conf, transport=True)
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
    dispatcher = endpoint_base.GuardedDispatcher(endpoints, None,
                                                 on_drop=drops.append)
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
            dispatcher.dispatch(_Incoming(item.ctxt, item.message))
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
    try:
        receiver.driver.notify(alert)
    except driver_base.DriverError as exc:
        _out('FAILED: receiver %s (driver %s), retryable=%s: %s' % (
            name, receiver.driver_name, exc.retryable,
            logsafe.escape(exc)))
        return 1
    _out('Sent test alert %s through receiver %s (driver %s)' % (
        alert.id, name, receiver.driver_name))
    return 0


class _Incoming:
    def __init__(self, ctxt, message):
        self.ctxt = ctxt
        self.message = message


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
    stats = subparsers.add_parser(
        'stats', help='Count incidents and deliveries by state.')
    stats.set_defaults(func=do_stats)


COMMAND_OPT = cfg.SubCommandOpt('command', title='Commands',
                                handler=_add_parsers,
                                help='What to do.')


def main(argv=None):
    conf = service_cmd.build_conf()
    outbox.register_opts(conf)
    conf.register_cli_opt(COMMAND_OPT)
    try:
        conf(sys.argv[1:] if argv is None else argv,
             project=service_cmd.PROJECT,
             version=version.version_string(),
             description='Operator commands of nova-error-notifier.')
    except cfg.Error as exc:
        sys.stderr.write('nova-error-notifier-manage: %s\n' % exc)
        return 2
    log.setup(conf, service_cmd.PROJECT)
    try:
        return conf.command.func(conf)
    except outbox.StoreUnavailable as exc:
        sys.stderr.write('nova-error-notifier-manage: the outbox is not '
                         'usable: %s\n' % exc)
        return 1


if __name__ == '__main__':
    sys.exit(main())
