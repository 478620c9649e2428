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
"""From error records to delivered alerts.

:class:`Pipeline` takes each :class:`ErrorRecord` an endpoint produced,
asks the rules which receivers it reaches, builds one :class:`Alert` per
receiver and hands it to the receiver's driver (through
:func:`nova_error_notifier.delivery.send`, as the delivery workers do). A
failing driver affects only its own receiver. Every outcome is returned, so
that the replay command can show what happened.
"""

import collections

from oslo_log import log

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import delivery
from nova_error_notifier import logsafe

LOG = log.getLogger(__name__)

#: One alert handed to one receiver; ``outcome`` is a delivery.Outcome.
Delivery = collections.namedtuple('Delivery', 'route alert outcome')
Outcome = collections.namedtuple('Outcome', 'record match deliveries')


class Pipeline:
    """Rules and receivers applied to records."""

    def __init__(self, settings):
        self.settings = settings

    def plan(self, record):
        """Route ``record``: its match and one alert per receiver.

        :returns: (match, [(route, receiver, alert), ...])
        """
        settings = self.settings
        match = settings.ruleset.match(record)
        planned = []
        for route in match.routes:
            receiver = settings.receivers[route.receiver]
            alert = alert_mod.from_records(
                [record], receiver=receiver.name, rule=route.rule,
                include_details=receiver.include_details)
            planned.append((route, receiver, alert))
        if not match.matched:
            LOG.debug('No rule matched %s (message_id=%s)',
                      logsafe.escape(record.event_type),
                      logsafe.escape(record.message_id))
        return match, planned

    def deliver(self, record, match, planned):
        """Hand each planned alert to its driver; return an Outcome."""
        deliveries = tuple(Delivery(route, alert,
                                    self._deliver(receiver, alert))
                           for route, receiver, alert in planned)
        return Outcome(record, match, deliveries)

    def handle(self, record):
        """Route ``record`` and deliver its alerts; return an Outcome."""
        return self.deliver(record, *self.plan(record))

    @staticmethod
    def _deliver(receiver, alert):
        outcome = delivery.send(receiver, alert)
        if not outcome.sent:
            LOG.error('Receiver %s (driver %s) could not deliver alert %s '
                      '(request_id=%s, retryable=%s): %s',
                      receiver.name, receiver.driver_name, alert.id,
                      logsafe.escape(alert.request_id), outcome.retryable,
                      outcome.error)
        return outcome
