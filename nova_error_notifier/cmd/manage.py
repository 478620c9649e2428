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
"""``nova-error-notifier-manage``: operator commands on the outbox.

::

    nova-error-notifier-manage --config-file F pending
    nova-error-notifier-manage --config-file F dead-letters list
    nova-error-notifier-manage --config-file F dead-letters retry [ID ...]
    nova-error-notifier-manage --config-file F dead-letters purge [ID ...]
    nova-error-notifier-manage --config-file F stats
"""

import datetime
import sys

from oslo_config import cfg
from oslo_log import log

from nova_error_notifier.cmd import service as service_cmd
from nova_error_notifier import logsafe
from nova_error_notifier import outbox
from nova_error_notifier import version


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


def _add_parsers(subparsers):
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
