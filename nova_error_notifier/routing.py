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
"""Routing: due incidents become one delivery per receiver.

Once its ``[correlation] group_wait`` is over, an incident is *routed*: the
rules see every event type and synthetic event of the incident, and one
delivery per receiver is written to the outbox, subject to storm control
(:mod:`nova_error_notifier.storm`). A build failure that Nova rescheduled
and that then succeeded (the incident was resolved while it gathered) is
not alerted unless ``[correlation] alert_on_rescheduled`` is set.

Routing is one transaction per cycle, run by the router thread when
incidents or digests are due, by the one replica that holds the ``router``
lease. Twins of one failure that two replicas opened apart are folded
together here, never across regions: two buses (two Nova deployments or
cells) may carry the same request id.
"""

import time

from oslo_config import cfg
from oslo_log import log

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import logsafe
from nova_error_notifier import outbox
from nova_error_notifier import record as rec
from nova_error_notifier import storm
from nova_error_notifier import wakeup as wakeup_mod

LOG = log.getLogger(__name__)

GROUP = 'correlation'

ROUTING_OPTS = [
    cfg.BoolOpt('alert_on_rescheduled',
                default=False,
                help='Also alert on a build failure that Nova rescheduled '
                     'and that then succeeded within group_wait.'),
]


def register_opts(conf):
    conf.register_opts(ROUTING_OPTS, group=GROUP)


def list_opts():
    return [(GROUP, ROUTING_OPTS)]


class Incident:
    """What the rules see of an incident: every event, the best error."""

    def __init__(self, records):
        self.records = tuple(records)
        events = []
        for record in self.records:
            for event in record.events:
                if event not in events:
                    events.append(event)
        self.events = tuple(events)
        best = max(self.records, key=alert_mod.informativeness)
        self.exception = best.exception or next(
            (r.exception for r in self.records if r.exception), None)


class _Conflict(Exception):
    """A listener changed an incident while the router read it."""


class Router:
    """Routes the due incidents and closes the due digests.

    :param settings: the rules and receivers in force; the service replaces
        the attribute on reload.
    :param wakeup: the delivery workers'
        :class:`~nova_error_notifier.wakeup.Wakeup`, notified when a cycle
        wrote deliveries.
    """

    #: Seconds the routing lease lasts without renewal: another replica
    #: takes routing over that long after the router stopped.
    ROUTER_LEASE = 10.0

    def __init__(self, conf, store, settings, wakeup=None, clock=time.time):
        self.conf = conf
        self.store = store
        self.settings = settings
        self.clock = clock
        self.wakeup = wakeup if wakeup is not None else wakeup_mod.Wakeup()
        self.storm = storm.StormControl(conf)
        #: When the next incident or digest is due, as routing last saw it.
        self.next_due_at = None
        self._digest_due = None

    def route_due(self, limit=200):
        """Route the incidents and digests whose window is over.

        :returns: the number of deliveries written.
        """
        try:
            written, incident_due, digest_due = self.store.write(
                lambda tx: self._route_cycle(tx, limit))
        except Exception:
            # A lease renewed in the rolled back transaction is not held.
            self.store.forget_leases()
            raise
        self._digest_due = digest_due
        times = [t for t in (incident_due, digest_due) if t is not None]
        self.next_due_at = min(times) if times else None
        if written:
            self.wakeup.notify()
        return written

    def _route_cycle(self, tx, limit):
        """One transaction: route, close digests, see what is due next.

        Only the replica holding the ``router`` lease routes, so that storm
        limits and digests are counted once for all replicas.
        """
        if not tx.take_lease('router', self.ROUTER_LEASE):
            return (0, None, None)
        written = self._route(tx, limit)
        due = self._digest_due
        if due is None or due <= self.clock():
            written += self.storm.close_due(tx, self.clock())
        return (written,) + tx.next_due_times()

    def next_due(self):
        """When the earliest open incident or collecting digest is due."""
        times = [t for t in self.store.read(
            lambda tx: tx.next_due_times()) if t is not None]
        return min(times) if times else None

    def _route(self, tx, limit):
        now = self.clock()
        rows = tx.due_incidents(now, limit)
        written = 0
        limits = self.storm.limits(tx, now)
        for row in rows:
            # One incident that cannot be routed (a bug, a value the
            # database refuses) must not hold back the others, cycle after
            # cycle: it is set aside as "unroutable", with the reason.
            try:
                with tx.savepoint():
                    row = self._gather(tx, row, now)
                    if row is not None:
                        written += self._route_one(tx, row, now, limits)
            except _Conflict as exc:
                LOG.debug('Incident %s: %s; routed at the next cycle',
                          row.id, exc)
            except Exception as exc:
                if outbox.transient(exc):
                    # A lock or a lost connection says nothing about the
                    # incident: the whole cycle is tried again.
                    raise
                LOG.exception('Incident %s (request %s) could not be '
                              'routed', row.id, logsafe.escape(
                                  row.request_id))
                self._finish(tx, row, 'unroutable', outbox.fit_text(
                    '%s: %s' % (type(exc).__name__, exc), 255))
        return written

    def _gather(self, tx, row, now):
        """Join the twins of one failure that other replicas opened apart.

        Two replicas that receive the legacy and the versioned twin at the
        same instant cannot see each other's new incident: an instance-less
        one (``compute.exception``) and one with the instance, of the same
        request. The router brings them together: an instance-less incident
        is folded into the one incident of its request that has an
        instance (open, or already routed: then no new alert); an incident
        with an instance takes in the open instance-less ones, all of the
        same region. Returns the row to route, or None when it was folded
        into another.
        """
        if not row.request_id:
            return row
        others = tx.other_incidents_of_request(row.request_id, row.id,
                                               row.region)
        if not others:
            return row
        if row.instance_uuid is None:
            targets = [o for o in others if o.instance_uuid is not None and
                       o.state in ('open', 'routed')]
            if len(targets) != 1:
                return row
            self._merge(tx, targets[0], [row], now)
            return None
        bare = [o for o in others if o.instance_uuid is None and
                o.state == 'open']
        if not bare:
            return row
        self._merge(tx, row, bare, now)
        return tx.incident_by_key(row.key)

    def _merge(self, tx, target, sources, now):
        """Fold the records of ``sources`` into ``target``.

        Compare-and-swap on both: raises _Conflict when a listener changed
        one of them meanwhile (the savepoint is then rolled back).
        """
        records = outbox.loads(target.records)
        count = target.message_count
        for source in sources:
            if not self._finish(tx, source, 'merged',
                                'merged into incident %s' % target.id):
                raise _Conflict('incident %s changed meanwhile' % source.id)
            for item in outbox.loads(source.records):
                if len(records) < outbox.MAX_RECORDS:
                    records.append(item)
            count += source.message_count
        if not tx.merge_into_incident(target.id, target.message_count,
                                      outbox.dumps(records), count, now):
            raise _Conflict('incident %s changed meanwhile' % target.id)
        LOG.info('Incident(s) %s of request %s folded into incident %s',
                 ', '.join(s.id for s in sources),
                 logsafe.escape(target.request_id), target.id)

    def _finish(self, tx, row, state, note=None):
        return tx.finish_incident(row.id, state, note, self.clock())

    def _route_one(self, tx, row, now, limits):
        records = [rec.from_dict(r) for r in outbox.loads(row.records)]
        incident = Incident(records)
        # A reschedule that succeeded: only build failures, none of which
        # put the instance into ERROR.
        creation_only = (
            all(rec.CREATE_FAILED in r.synthetic_events for r in records) and
            not any(rec.ERROR_STATE in r.synthetic_events for r in records))
        if (row.resolved and creation_only and
                not self.conf[GROUP].alert_on_rescheduled):
            if self._finish(tx, row, 'suppressed',
                            'rescheduled build succeeded'):
                LOG.info('Incident %s: the build of instance %s was '
                         'rescheduled and succeeded: no alert', row.id,
                         logsafe.escape(row.instance_uuid))
            return 0
        match = self.settings.ruleset.match(incident)
        if not match.routes:
            self._finish(tx, row, 'suppressed',
                         'muted' if match.matched else 'no rule matched')
            return 0
        if not self._finish(tx, row, 'routed'):
            return 0      # another replica routed it
        built = []

        def alert_for(route):
            # Built when needed: in a storm most incidents are only counted
            # in a full digest.
            if not built:
                full = alert_mod.from_records(
                    records, receiver='', rule=None, include_details=True,
                    incident=row.id)
                built.append(alert_mod.with_count(full, row.message_count))
            alert = alert_mod.for_receiver(built[0], route.receiver, True)
            return alert_mod.with_rule(alert, route.rule)

        written = 0
        for route in match.routes:
            if limits.over(route.receiver):
                self.storm.add(tx, route, alert_for, now)
                continue
            added = int(tx.insert_delivery_once(
                row.id, route.receiver, route.rule, 'single',
                outbox.dumps(alert_mod.to_dict(alert_for(route))), now))
            limits.count(route.receiver, added)
            written += added
        return written
