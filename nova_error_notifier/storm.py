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
"""Storm control: per receiver, a limit of single alerts, then digests.

Per receiver, at most ``[delivery] max_alerts_per_interval`` single alerts
per ``group_interval``; past that, the incidents routed to the receiver are
folded into one digest per receiver and interval (``digest_max_items`` of
them listed, the others counted), delivered when the interval is over.

Routing (:mod:`nova_error_notifier.routing`) asks, in its transaction,
whether a receiver is over its limit (:class:`Limits`), adds the incidents
that are to a digest (:meth:`StormControl.add`) and closes the digests that
are due (:meth:`StormControl.close_due`). Only the replica holding the
routing lease routes, so that the limits hold across replicas.
"""

import collections
import uuid

from oslo_config import cfg
from oslo_log import log

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import outbox

LOG = log.getLogger(__name__)

GROUP = 'delivery'

STORM_OPTS = [
    cfg.IntOpt('group_interval',
               default=120,
               min=1,
               help='Seconds of the storm control window: per receiver, '
                    'at most max_alerts_per_interval single alerts in it; '
                    'past that, incidents are folded into one digest per '
                    'receiver and interval.'),
    cfg.IntOpt('max_alerts_per_interval',
               default=20,
               min=0,
               help='Single alerts per receiver and group_interval before '
                    'digests take over; 0 means no limit.'),
    cfg.IntOpt('digest_max_items',
               default=50,
               min=1,
               help='Incidents listed in a digest; beyond that they are '
                    'counted.'),
]


def register_opts(conf):
    conf.register_opts(STORM_OPTS, group=GROUP)


def list_opts():
    return [(GROUP, STORM_OPTS)]


def summarise(alerts, count, interval):
    """The one-line summary of a digest.

    "37 instances failed with NoValidHost on 4 hosts in the last 2 minutes"
    and the like.
    """
    exceptions = collections.Counter(a.exception or 'an error'
                                     for a in alerts)
    hosts = {a.host for a in alerts if a.host}
    instances = {a.instance_uuid for a in alerts if a.instance_uuid}
    if interval % 60 == 0:
        window = '%d minute%s' % (interval // 60,
                                  '' if interval == 60 else 's')
    else:
        window = '%d seconds' % interval
    what = ('%d instances failed' % count if len(instances) == len(alerts)
            else '%d failures' % count)
    if len(exceptions) == 1:
        what += ' with %s' % next(iter(exceptions))
    else:
        what += ' (%s)' % ', '.join(
            '%s: %d' % item for item in exceptions.most_common(5))
    if hosts:
        what += ' on %d host%s' % (len(hosts), '' if len(hosts) == 1
                                   else 's')
    return '%s in the last %s' % (what, window)


class Limits:
    """The receivers' single alerts of the current interval.

    Counted during one routing transaction: read from the outbox once per
    receiver, then kept up to date with :meth:`count`.
    """

    def __init__(self, tx, now, limit, interval):
        self._tx = tx
        self._since = now - interval
        self.limit = limit
        self._sent = {}

    def over(self, receiver):
        """Whether the receiver had its single alerts of the interval."""
        if receiver not in self._sent:
            self._sent[receiver] = 0 if not self.limit else \
                self._tx.singles_sent_since(receiver, self._since)
        return bool(self.limit) and self._sent[receiver] >= self.limit

    def count(self, receiver, added):
        """``added`` single alerts written for the receiver.

        Only after :meth:`over` was asked about the receiver.
        """
        self._sent[receiver] += added


class StormControl:
    """Receiver limits and digests, in the router's transactions."""

    def __init__(self, conf):
        self.conf = conf

    @property
    def options(self):
        return self.conf[GROUP]

    def limits(self, tx, now):
        """The :class:`Limits` of one routing transaction at ``now``."""
        options = self.options
        return Limits(tx, now, options.max_alerts_per_interval,
                      options.group_interval)

    def add(self, tx, route, alert_for, now):
        """Fold an incident routed to ``route.receiver`` into its digest.

        :param alert_for: ``alert_for(route)`` builds the incident's alert,
            called only when the digest lists it.
        """
        options = self.options
        row = tx.collecting_digest(route.receiver)
        if row is None:
            tx.open_digest(
                str(uuid.uuid4()), route.receiver, route.rule,
                outbox.dumps([alert_mod.to_dict(alert_for(route))]), now,
                now + options.group_interval)
            return
        if row.count >= options.digest_max_items:
            # The digest lists enough incidents already: only count this
            # one, without reading and rewriting the list.
            tx.count_in_digest(row.id)
            return
        members = outbox.loads(tx.digest_members(row.id))
        if len(members) < options.digest_max_items:
            members.append(alert_mod.to_dict(alert_for(route)))
        tx.add_to_digest(row.id, outbox.dumps(members))

    def close_due(self, tx, now):
        """Close the digests due by ``now``: one delivery each.

        :returns: the number of deliveries written.
        """
        options = self.options
        written = 0
        interval = options.group_interval
        for row in tx.due_digests(now):
            members = tuple(alert_mod.from_dict(m)
                            for m in outbox.loads(row.members))
            digest = alert_mod.digest(row.id, row.receiver, row.rule,
                                      members, row.count,
                                      summarise(members, row.count,
                                                interval))
            tx.close_digest(row.id)
            written += tx.insert_delivery_once(
                row.id, row.receiver, row.rule, 'digest',
                outbox.dumps(alert_mod.to_dict(digest)), now)
            LOG.warning('Receiver %s got more than %d alerts in %d s: %d '
                        'incidents folded into digest %s', row.receiver,
                        options.max_alerts_per_interval, interval,
                        row.count, row.id)
        return written
