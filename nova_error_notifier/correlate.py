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
"""Correlation: the messages of one failure become one incident.

Nova reports one failure several times (legacy and versioned twins, the
steps of a failed build). Messages with the same request id, and the same
instance where there is one, are gathered in one incident for
``[correlation] group_wait`` seconds after the first; the incident is then
*routed*: the rules see every event type and synthetic event of the
incident, and one delivery per receiver is written to the outbox. Messages
arriving later for the same failure are folded into the incident without a
new alert.

A build failure that Nova rescheduled and that then succeeded (a
``create.end``, or an update from building to active, for the same
instance within the window) is not alerted unless ``[correlation]
alert_on_rescheduled`` is set.

Storm control: per receiver, at most ``[delivery]
max_alerts_per_interval`` single alerts per ``group_interval``; past that
the incidents are folded into one digest per receiver and interval.

Every change is one transaction in the outbox (:mod:`outbox`), committed
before the bus message is acknowledged.
"""

import collections
import hashlib
import threading
import time
import uuid

from oslo_config import cfg
from oslo_log import log
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import logsafe
from nova_error_notifier import outbox
from nova_error_notifier import record as rec

LOG = log.getLogger(__name__)

GROUP = 'correlation'

CORRELATION_OPTS = [
    cfg.FloatOpt('group_wait',
                 default=5.0,
                 min=0.0,
                 help='Seconds the messages of one failure (same request '
                      'id and instance) are gathered before its alert is '
                      'routed.'),
    cfg.BoolOpt('alert_on_rescheduled',
                default=False,
                help='Also alert on a build failure that Nova rescheduled '
                     'and that then succeeded within group_wait.'),
]

#: Records kept per incident (its message count goes on beyond).
MAX_RECORDS = 50


def register_opts(conf):
    conf.register_opts(CORRELATION_OPTS, group=GROUP)


def list_opts():
    return [(GROUP, CORRELATION_OPTS)]


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


def message_key(record):
    """The record's message id, or a stable stand-in without one."""
    if record.message_id:
        return record.message_id[:255]
    material = '|'.join(str(x) for x in (
        record.event_type, record.timestamp, record.request_id,
        record.publisher_id, record.instance_uuid, record.exception))
    return 'sha256:' + hashlib.sha256(material.encode('utf-8')).hexdigest()


def incident_key(request_id, instance_uuid):
    return ('%s|%s' % (request_id, instance_uuid or ''))[:255]


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


class Correlator:
    """Turns records into incidents and incidents into deliveries."""

    def __init__(self, conf, store, settings, clock=time.time):
        register_opts(conf)
        outbox.register_opts(conf)
        self.conf = conf
        self.store = store
        self.settings = settings
        self.clock = clock
        #: Set when deliveries were written, to wake the delivery workers.
        self.work_available = threading.Event()

    # -- the sink: one transaction per message -----------------------------

    def add(self, item):
        """Record one ErrorRecord or Resolution durably.

        :raises outbox.StoreUnavailable: the message must be requeued.
        """
        if isinstance(item, rec.Resolution):
            return self.store.write(lambda conn: self._resolve(conn, item))
        return self.store.write(lambda conn: self._attach(conn, item))

    def _seen(self, conn, key, now):
        """Record a message id; False if it was seen already."""
        try:
            with conn.begin_nested():
                conn.execute(outbox.messages.insert().values(
                    message_id=key, received_at=now))
        except sa_exc.IntegrityError:
            return False
        return True

    def _find(self, conn, record):
        inc = outbox.incidents
        key = incident_key(record.request_id, record.instance_uuid)
        row = conn.execute(sa.select(inc).where(inc.c.key == key)).first()
        if row is not None or not record.request_id:
            return row, key
        if record.instance_uuid is None:
            # compute.exception has no instance: join the incident of the
            # request, if there is exactly one.
            # Open or already routed: a twin that arrives late must not
            # make a second alert.
            rows = conn.execute(sa.select(inc).where(
                inc.c.request_id == record.request_id).limit(2)).all()
            if len(rows) == 1:
                return rows[0], key
            return None, key
        # An instance-less incident of the same request learns its instance.
        bare = conn.execute(sa.select(inc).where(
            inc.c.key == incident_key(record.request_id, None))).first()
        if bare is not None:
            conn.execute(inc.update().where(inc.c.id == bare.id).values(
                key=key, instance_uuid=record.instance_uuid))
            return bare, key
        return None, key

    def _attach(self, conn, record):
        now = self.clock()
        mkey = message_key(record)
        if not self._seen(conn, mkey, now):
            LOG.debug('Message %s was seen before: nothing to do',
                      logsafe.escape(mkey))
            return None
        inc = outbox.incidents
        if not record.request_id:
            row, key = None, 'message|' + mkey[:240]
        else:
            row, key = self._find(conn, record)
        if row is None:
            incident_id = str(uuid.uuid4())
            conn.execute(inc.insert().values(
                id=incident_id, key=key, request_id=record.request_id,
                instance_uuid=record.instance_uuid, state='open',
                records=outbox.dumps([rec.to_dict(record)]),
                message_count=1, resolved=False, opened_at=now,
                updated_at=now,
                due_at=now + self.conf[GROUP].group_wait))
        else:
            incident_id = row.id
            records = outbox.loads(row.records)
            if len(records) < MAX_RECORDS:
                records.append(rec.to_dict(record))
            conn.execute(inc.update().where(inc.c.id == row.id).values(
                records=outbox.dumps(records),
                message_count=row.message_count + 1, updated_at=now))
            if row.state != 'open':
                LOG.debug('Late message %s folded into incident %s (%s)',
                          logsafe.escape(mkey), row.id, row.state)
        conn.execute(outbox.messages.update().where(
            outbox.messages.c.message_id == mkey).values(
                incident_id=incident_id))
        return incident_id

    def _resolve(self, conn, resolution):
        inc = outbox.incidents
        condition = sa.and_(inc.c.instance_uuid == resolution.instance_uuid,
                            inc.c.state == 'open')
        if resolution.request_id:
            # A reschedule keeps the request id of the build.
            condition = sa.and_(condition,
                                inc.c.request_id == resolution.request_id)
        result = conn.execute(inc.update().where(condition).values(
            resolved=True))
        if result.rowcount:
            LOG.info('Instance %s was built after all (%s): its open build '
                     'failure is a reschedule',
                     logsafe.escape(resolution.instance_uuid),
                     logsafe.escape(resolution.event_type))
        return None

    # -- routing: called periodically ---------------------------------------

    def route_due(self, limit=200):
        """Route the incidents and digests whose window is over.

        :returns: the number of deliveries written.
        """
        written = self.store.write(lambda conn: self._route(conn, limit))
        written += self.store.write(self._close_digests)
        if written:
            self.work_available.set()
        return written

    def _route(self, conn, limit):
        now = self.clock()
        inc = outbox.incidents
        rows = conn.execute(sa.select(inc).where(
            inc.c.state == 'open', inc.c.due_at <= now)
            .order_by(inc.c.due_at).limit(limit)).all()
        written = 0
        for row in rows:
            written += self._route_one(conn, row, now)
        return written

    def _finish(self, conn, row, state, note=None):
        inc = outbox.incidents
        result = conn.execute(inc.update().where(
            inc.c.id == row.id, inc.c.state == 'open').values(
                state=state, note=note, updated_at=self.clock()))
        return result.rowcount == 1

    def _route_one(self, conn, row, now):
        records = [rec.from_dict(r) for r in outbox.loads(row.records)]
        incident = Incident(records)
        # A reschedule that succeeded: only build failures, none of which
        # put the instance into ERROR.
        creation_only = (
            all(rec.CREATE_FAILED in r.synthetic_events for r in records) and
            not any(rec.ERROR_STATE in r.synthetic_events for r in records))
        if (row.resolved and creation_only and
                not self.conf[GROUP].alert_on_rescheduled):
            if self._finish(conn, row, 'suppressed',
                            'rescheduled build succeeded'):
                LOG.info('Incident %s: the build of instance %s was '
                         'rescheduled and succeeded: no alert', row.id,
                         logsafe.escape(row.instance_uuid))
            return 0
        match = self.settings.ruleset.match(incident)
        if not match.routes:
            self._finish(conn, row, 'suppressed',
                         'muted' if match.matched else 'no rule matched')
            return 0
        if not self._finish(conn, row, 'routed'):
            return 0      # another replica routed it
        full = alert_mod.from_records(records, receiver='', rule=None,
                                      include_details=True, incident=row.id)
        full = alert_mod.with_count(full, row.message_count)
        written = 0
        for route in match.routes:
            alert = alert_mod.for_receiver(full, route.receiver, True)
            alert = alert_mod.with_rule(alert, route.rule)
            if self._over_limit(conn, route.receiver, now):
                self._add_to_digest(conn, route, alert, now)
                continue
            written += self._insert_delivery(conn, row.id, route.receiver,
                                             route.rule, 'single', alert,
                                             now)
        return written

    def _over_limit(self, conn, receiver, now):
        options = self.conf[outbox.GROUP]
        limit = options.max_alerts_per_interval
        if not limit:
            return False
        dl = outbox.deliveries
        sent = conn.execute(sa.select(sa.func.count()).select_from(dl).where(
            dl.c.receiver == receiver, dl.c.kind == 'single',
            dl.c.created_at >= now - options.group_interval)).scalar()
        return sent >= limit

    def _insert_delivery(self, conn, incident_id, receiver, rule, kind,
                         alert, now):
        try:
            with conn.begin_nested():
                conn.execute(outbox.deliveries.insert().values(
                    incident_id=incident_id, receiver=receiver, rule=rule,
                    kind=kind, alert=outbox.dumps(alert_mod.to_dict(alert)),
                    state='pending', attempts=0, created_at=now,
                    next_attempt_at=now))
        except sa_exc.IntegrityError:
            return 0          # this receiver has it already
        return 1

    def _add_to_digest(self, conn, route, alert, now):
        dg = outbox.digests
        row = conn.execute(sa.select(dg).where(
            dg.c.receiver == route.receiver, dg.c.state == 'collecting')
        ).first()
        member = alert_mod.to_dict(alert)
        if row is None:
            conn.execute(dg.insert().values(
                id=str(uuid.uuid4()), receiver=route.receiver,
                rule=route.rule, state='collecting',
                members=outbox.dumps([member]), count=1, opened_at=now,
                due_at=now + self.conf[outbox.GROUP].group_interval))
            return
        members = outbox.loads(row.members)
        if len(members) < self.conf[outbox.GROUP].digest_max_items:
            members.append(member)
        conn.execute(dg.update().where(dg.c.id == row.id).values(
            members=outbox.dumps(members), count=row.count + 1))

    def _close_digests(self, conn):
        now = self.clock()
        dg = outbox.digests
        written = 0
        interval = self.conf[outbox.GROUP].group_interval
        for row in conn.execute(sa.select(dg).where(
                dg.c.state == 'collecting', dg.c.due_at <= now)).all():
            members = tuple(alert_mod.from_dict(m)
                            for m in outbox.loads(row.members))
            digest = alert_mod.digest(row.id, row.receiver, row.rule,
                                      members, row.count,
                                      summarise(members, row.count,
                                                interval))
            conn.execute(dg.update().where(dg.c.id == row.id).values(
                state='closed'))
            written += self._insert_delivery(conn, row.id, row.receiver,
                                             row.rule, 'digest', digest,
                                             now)
            LOG.warning('Receiver %s got more than %d alerts in %d s: %d '
                        'incidents folded into digest %s', row.receiver,
                        self.conf[outbox.GROUP].max_alerts_per_interval,
                        interval, row.count, row.id)
        return written
