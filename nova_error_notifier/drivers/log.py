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
"""The ``log`` driver: one log line per alert.

Each line carries the event types, the instance, project, host, request id,
exception and message, as ``key=value`` pairs whose values are escaped and
quoted, so that a hostile instance name cannot forge a line::

    nova-error-notifier alert rule=default receiver=log id=... \
events=compute_task.build_instances,notifier.instance.create_failed \
instance=b5e2... name=web-42 state=error project=9a8b... host=ctl-01 \
request_id=req-8e4f... exception=NoValidHost message="No valid host..."

An alert from a bus with a region (``[bus:NAME] region_name``) says so with
``region=...`` after its id.
"""

import logging

from oslo_config import cfg
from oslo_log import log

from nova_error_notifier.drivers import base
from nova_error_notifier import formatting
from nova_error_notifier import logsafe

LOG = log.getLogger('nova_error_notifier.alerts')
SERVICE_LOG = log.getLogger(__name__)

LEVELS = {
    'debug': logging.DEBUG,
    'info': logging.INFO,
    'warning': logging.WARNING,
    'error': logging.ERROR,
    'critical': logging.CRITICAL,
}

#: Longest message or reason written on a line.
MAX_VALUE = 2048


#: Members of a digest named on its line.
MAX_DIGEST_IDS = 100


def format_digest(alert):
    """A digest as one line: the summary and the incidents it folds."""
    members = alert.members[:MAX_DIGEST_IDS]
    items = [
        ('rule', alert.rule),
        ('receiver', alert.receiver),
        ('id', alert.id),
    ]
    if alert.region:
        items.append(('region', alert.region))
    items.extend([
        ('digest', alert.digest_count),
        ('summary', alert.summary),
        ('events', ','.join(alert.event_types)),
        ('incidents', ','.join(m.id for m in members)),
        ('instances', ','.join(m.instance_uuid or '-' for m in members)),
        ('requests', ','.join(m.request_id or '-' for m in members)),
        ('unlisted', alert.digest_count - len(members)),
        ('first_seen', formatting.iso_timestamp(alert.first_seen)),
        ('last_seen', formatting.iso_timestamp(alert.last_seen)),
    ])
    return 'nova-error-notifier digest ' + logsafe.pairs(items, MAX_VALUE)


def format_alert(alert, with_details=False):
    """The alert as one line of escaped ``key=value`` pairs."""
    if alert.is_digest:
        return format_digest(alert)
    items = [
        ('rule', alert.rule),
        ('receiver', alert.receiver),
        ('id', alert.id),
    ]
    if alert.region:
        items.append(('region', alert.region))
    items.extend([
        ('events', ','.join(alert.events)),
        ('instance', alert.instance_uuid),
        ('name', alert.instance_name),
        ('state', alert.instance_state),
        ('project', alert.project_id),
        ('host', alert.host),
        ('request_id', alert.request_id),
    ])
    if alert.global_request_id:
        items.append(('global_request_id', alert.global_request_id))
    items.extend([
        ('exception', alert.exception),
        ('code', alert.code),
        ('message', alert.message),
    ])
    if alert.reason:
        items.append(('reason', alert.reason))
    if alert.enriched is not None:
        fault = (alert.enrichment or {}).get('fault') or {}
        action = (alert.enrichment or {}).get('action') or {}
        failed = [e.get('event') for e in action.get('events') or []
                  if e.get('result') == 'Error']
        items.append(('enriched', 'yes' if alert.enriched else 'no'))
        if fault.get('message'):
            items.append(('fault', fault['message']))
        if failed:
            items.append(('failed_events', ','.join(str(e) for e in failed)))
    items.extend([
        ('count', alert.count),
        ('first_seen', formatting.iso_timestamp(alert.first_seen)),
        ('last_seen', formatting.iso_timestamp(alert.last_seen)),
    ])
    if alert.test:
        items.insert(0, ('test', 'true'))
    if with_details and alert.details:
        items.append(('details', alert.details))
    limit = None if with_details else MAX_VALUE
    return 'nova-error-notifier alert ' + logsafe.pairs(items, limit)


class LogDriver(base.Driver):
    """Writes each alert as one line to the service's log."""

    OPTS = [
        cfg.StrOpt('level',
                   default='warning',
                   choices=sorted(LEVELS),
                   help='Log level of the alert lines.'),
    ]

    def check(self):
        level = LEVELS[self.options.level]
        if not LOG.logger.isEnabledFor(level):
            SERVICE_LOG.warning(
                '[%s] level = %s is below the level the service logs at: '
                'its alerts will not appear (set a higher level, or debug = '
                'true)', self.group, self.options.level)

    def notify(self, alert):
        level = LEVELS[self.options.level]
        try:
            LOG.log(level, '%s', format_alert(
                alert, with_details=self.conf[self.group].include_details))
        except Exception as exc:  # a broken log handler
            raise base.DriverError('could not write the alert to the log: '
                                   '%s' % exc, retryable=True)
