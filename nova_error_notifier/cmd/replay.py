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
"""``nova-error-notifier-replay``: feed notification files to the service.

Each file is read as wire-format notifications (see
:mod:`nova_error_notifier.wire`) and dispatched through the same
oslo.messaging dispatcher, endpoint plugins, rules and drivers as the
listener uses, with no broker. For each message it shows whether it is an
error, which rules and receivers it reached and the alerts sent.

With no file, the sample notifications shipped with the package are used;
with no configuration file found, an embedded demo configuration.
"""

import glob
import os
import sys

from oslo_config import cfg
from oslo_log import log

from nova_error_notifier.cmd import service as service_cmd
from nova_error_notifier import listener
from nova_error_notifier import logsafe
from nova_error_notifier import pipeline as pipeline_mod
from nova_error_notifier import record as rec
from nova_error_notifier import redact
from nova_error_notifier import service
from nova_error_notifier import version
from nova_error_notifier import wire

SAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'samples')
DEMO_CONFIG = os.path.join(SAMPLES_DIR, 'demo.conf')

CLI_OPTS = [
    cfg.MultiStrOpt('files',
                    positional=True,
                    required=False,
                    default=[],
                    help='Notification files: wire-format bodies, inner '
                         'messages, Nova doc samples or JSON lines. Default: '
                         'the samples shipped with the package.'),
]


def _out(line=''):
    """Print one line, escaped (see manage._out); stop on a closed pipe."""
    try:
        sys.stdout.write(logsafe.escape(line) + '\n')
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, like other tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1)


def _describe_record(record, match):
    what = record.exception or 'error'
    if record.message and record.message != record.exception:
        what = '%s: %s' % (what, record.message)
    elif not record.exception and record.state == 'error':
        what = 'entered ERROR state (from %s)' % (record.old_state or '?')
    _out('  error: %s' % logsafe.escape(what, 300))
    if record.reason:
        _out('    reason: %s' % logsafe.escape(record.reason, 300))
    _out('    ' + logsafe.pairs([
        ('request_id', record.request_id),
        ('instance', record.instance_uuid),
        ('state', record.state),
        ('host', record.host),
        ('project', record.project_id)]))
    if record.synthetic_events:
        _out('    synthetic events: %s' % ', '.join(record.synthetic_events))
    if not match.matched:
        _out('  rules: none matched: no alert')
        return
    _out('  rules matched: %s' % ', '.join(r.name for r in match.matched))
    _out('  rules applied: %s' % ', '.join(r.name for r in match.applied))
    if not match.routes:
        _out('  receivers: none (muted by rule %s)' % match.applied[0].name)


def _describe_deliveries(outcome):
    for delivery in outcome.deliveries:
        attempt = delivery.outcome
        status = ('sent' if attempt.sent else
                  'FAILED: %s' % logsafe.escape(attempt.error, 300))
        _out('  alert %s -> receiver %s (rule %s): %s' % (
            delivery.alert.id, delivery.route.receiver, delivery.route.rule,
            status))


def _label(source):
    """Shipped samples by their short name, other files as given."""
    if source.startswith(SAMPLES_DIR + os.sep):
        return 'samples/' + source[len(SAMPLES_DIR) + 1:]
    return source


def main(argv=None):
    conf = service_cmd.build_conf()
    conf.register_cli_opts(CLI_OPTS)
    found = cfg.find_config_files(project=service_cmd.PROJECT)
    args = sys.argv[1:] if argv is None else argv
    try:
        conf(args, project=service_cmd.PROJECT,
             version=version.version_string(),
             default_config_files=found or [DEMO_CONFIG],
             description='Feeds notification files through the endpoints, '
                         'rules and drivers of nova-error-notifier, without '
                         'a broker, and shows what each message hit.')
    except cfg.Error as exc:
        sys.stderr.write('nova-error-notifier-replay: %s\n' % exc)
        return 2
    log.setup(conf, service_cmd.PROJECT)
    logsafe.protect_handlers()
    redact.protect_logs(conf)
    _out('nova-error-notifier-replay %s, configuration: %s' % (
        version.version_string(), ', '.join(conf.config_file) or
        ', '.join(conf.default_config_files or []) or 'built-in defaults'))
    settings = service.load_checked(conf, transport=False)
    if settings is None:
        return 2
    pipeline = pipeline_mod.Pipeline(settings)
    outcomes = []
    drops = []
    resolutions = []

    def sink(record):
        if isinstance(record, rec.Resolution):
            _out('  not an error: instance %s was built (an earlier build '
                 'failure of it would be a reschedule)'
                 % logsafe.escape(record.instance_uuid))
            resolutions.append(record)
            return
        match, planned = pipeline.plan(record)
        _describe_record(record, match)
        outcome = pipeline.deliver(record, match, planned)
        _describe_deliveries(outcome)
        outcomes.append(outcome)

    sink.on_drop = drops.append
    endpoints = service.load_endpoints(conf, sink)
    dispatcher = listener.Recorder(listener.BatchEndpoint(
        endpoints, lambda items: [sink(item) for item in items],
        on_drop=drops.append))
    files = conf.files or sorted(glob.glob(os.path.join(SAMPLES_DIR,
                                                        '*.json')))
    totals = {'messages': 0, 'errors': 0, 'alerts': 0, 'failed': 0,
              'unreadable': 0}
    for path in files:
        for item in wire.read_file(path):
            if isinstance(item, wire.WireError):
                totals['unreadable'] += 1
                _out('%s: unreadable: %s' % (
                    logsafe.escape(_label(str(path))),
                    logsafe.escape(item, 300)))
                continue
            totals['messages'] += 1
            message = item.message
            _out('%s: %s [%s]' % (
                logsafe.escape(_label(item.source)),
                logsafe.escape(message.get('event_type'), 120),
                logsafe.escape(message.get('priority'), 20)))
            del outcomes[:]
            del drops[:]
            del resolutions[:]
            dispatcher.dispatch(item.ctxt, message)
            for reason in drops:
                totals['unreadable'] += 1
                _out('  dropped: %s' % logsafe.escape(reason, 300))
            if not outcomes and not drops and not resolutions:
                _out('  not an error: no alert')
            for outcome in outcomes:
                totals['errors'] += 1
                totals['alerts'] += sum(1 for d in outcome.deliveries
                                        if d.outcome.sent)
                totals['failed'] += sum(1 for d in outcome.deliveries
                                        if not d.outcome.sent)
    _out('')
    _out('%(messages)d messages, %(errors)d errors recognised, %(alerts)d '
         'alerts sent, %(failed)d deliveries failed, %(unreadable)d '
         'unreadable' % totals)
    return 1 if totals['failed'] or totals['unreadable'] else 0


if __name__ == '__main__':
    sys.exit(main())
