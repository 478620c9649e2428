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

What a batch of bus messages changes is one transaction in the outbox
(:mod:`outbox`), committed before the messages are acknowledged; routing is
another, run by the router thread when incidents or digests are due.
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
    """The record's message id, or a stable stand-in without one.

    It fits the outbox's key column: a long id is hashed, never cut (two
    ids sharing a prefix must not be taken for one message).
    """
    if record.message_id:
        return outbox.fit_key(record.message_id)
    material = '|'.join(str(x) for x in (
        record.event_type, record.timestamp, record.request_id,
        record.publisher_id, record.instance_uuid, record.exception))
    return 'sha256:' + hashlib.sha256(material.encode('utf-8')).hexdigest()


def incident_key(request_id, instance_uuid):
    return outbox.fit_key('%s|%s' % (request_id, instance_uuid or ''))


def _ids(item):
    """(request id, instance uuid) of a record, as the outbox keeps them."""
    return outbox.fit_key(item.request_id), outbox.fit_key(
        item.instance_uuid)


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


_inc = outbox.incidents
_SEEN = sa.select(outbox.messages.c.message_id).where(
    outbox.messages.c.message_id.in_(sa.bindparam('keys', expanding=True)))
_BY_KEY = sa.select(_inc).where(_inc.c.key == sa.bindparam('key'))
_BY_REQUEST = sa.select(_inc).where(
    _inc.c.request_id == sa.bindparam('request_id')).limit(2)
_OPEN_OF_INSTANCES = sa.select(
    _inc.c.id, _inc.c.instance_uuid, _inc.c.request_id).where(
        _inc.c.instance_uuid.in_(sa.bindparam('uuids', expanding=True)),
        _inc.c.state == 'open')
_RESOLVE_IDS = _inc.update().where(
    _inc.c.id.in_(sa.bindparam('ids', expanding=True)),
    _inc.c.state == 'open').values(resolved=True)
# Compare-and-swap on the message count: another replica that added to the
# incident meanwhile makes this update change nothing, and the batch is
# stored again on what that replica wrote (no lost records).
_UPDATE_INCIDENT = _inc.update().where(
    _inc.c.id == sa.bindparam('b_id'),
    _inc.c.message_count == sa.bindparam('b_old_count')).values(
        key=sa.bindparam('b_key'),
        instance_uuid=sa.bindparam('b_instance_uuid'),
        records=sa.bindparam('b_records'),
        message_count=sa.bindparam('b_message_count'),
        resolved=sa.bindparam('b_resolved'),
        updated_at=sa.bindparam('b_updated_at'))
_INSERT_INCIDENT = _inc.insert()
_SAME_REQUEST = sa.select(_inc).where(
    _inc.c.request_id == sa.bindparam('b_request_id'),
    _inc.c.id != sa.bindparam('b_id')).limit(20)
_MERGE_INTO = _inc.update().where(
    _inc.c.id == sa.bindparam('b_id'),
    _inc.c.message_count == sa.bindparam('b_old_count')).values(
        records=sa.bindparam('b_records'),
        message_count=sa.bindparam('b_message_count'),
        updated_at=sa.bindparam('b_updated_at'))
_dg = outbox.digests
_COLLECTING_DIGEST = sa.select(_dg.c.id, _dg.c.count).where(
    _dg.c.receiver == sa.bindparam('b_receiver'),
    _dg.c.state == 'collecting')
_DIGEST_MEMBERS = sa.select(_dg.c.members).where(
    _dg.c.id == sa.bindparam('b_id'))
_COUNT_IN_DIGEST = _dg.update().where(_dg.c.id == sa.bindparam('b_id')).values(
    count=_dg.c.count + 1)
_ADD_TO_DIGEST = _dg.update().where(_dg.c.id == sa.bindparam('b_id')).values(
    count=_dg.c.count + 1, members=sa.bindparam('b_members'))
_DUE = sa.select(_inc).where(
    _inc.c.state == 'open', _inc.c.due_at <= sa.bindparam('b_now')).order_by(
        _inc.c.due_at).limit(sa.bindparam('b_limit'))
_FINISH = _inc.update().where(
    _inc.c.id == sa.bindparam('b_id'), _inc.c.state == 'open').values(
        state=sa.bindparam('b_state'), note=sa.bindparam('b_note'),
        updated_at=sa.bindparam('b_updated_at'))
_dl = outbox.deliveries
_SENT = sa.select(sa.func.count()).select_from(_dl).where(
    _dl.c.receiver == sa.bindparam('b_receiver'), _dl.c.kind == 'single',
    _dl.c.created_at >= sa.bindparam('b_since'))
_INSERT_DELIVERY = _dl.insert()
_NEXT_INCIDENT = sa.select(sa.func.min(_inc.c.due_at)).where(
    _inc.c.state == 'open')
_NEXT_DIGEST = sa.select(sa.func.min(_dg.c.due_at)).where(
    _dg.c.state == 'collecting')
_INSERT_MESSAGE = outbox.messages.insert()


def _due_times(conn):
    """(earliest open incident, earliest collecting digest) due times."""
    return (conn.execute(_NEXT_INCIDENT).scalar(),
            conn.execute(_NEXT_DIGEST).scalar())


class _IncidentState:
    """One incident as a batch of messages changes it, before it is written."""

    def __init__(self, id, key, request_id, instance_uuid, state, records,
                 message_count, resolved, new=False, due_at=None):
        self.id = id
        self.key = key
        self.request_id = request_id
        self.instance_uuid = instance_uuid
        self.state = state
        self._records = records   # JSON text until first needed
        self.message_count = message_count
        #: The count as read: the compare-and-swap of the update.
        self.stored_count = message_count
        self.resolved = resolved
        self.new = new
        self.due_at = due_at
        self.dirty = new

    @classmethod
    def from_row(cls, row):
        return cls(row.id, row.key, row.request_id, row.instance_uuid,
                   row.state, row.records, row.message_count,
                   bool(row.resolved))

    @property
    def records(self):
        if isinstance(self._records, str):
            self._records = outbox.loads(self._records)
        return self._records

    def add(self, record):
        records = self.records
        if len(records) < MAX_RECORDS:
            records.append(rec.to_dict(record))
        self.message_count += 1
        self.dirty = True


class _Batch:
    """The incidents and message ids one outbox transaction writes."""

    def __init__(self, now):
        self.now = now
        self.by_id = {}
        self.by_key = {}
        self.messages = []
        #: When the first incident this batch opened is due, if any.
        self.earliest_due = None

    @property
    def states(self):
        return self.by_id.values()

    def track(self, row):
        """The batch's state of a database row (None for None)."""
        if row is None:
            return None
        state = self.by_id.get(row.id)
        if state is None:
            state = _IncidentState.from_row(row)
            self.by_id[state.id] = state
            self.by_key.setdefault(state.key, state)
        return state

    def of_request(self, request_id):
        return [state for state in self.by_id.values()
                if state.request_id == request_id]

    def open(self, key, record, group_wait):
        request_id, instance_uuid = _ids(record)
        state = _IncidentState(
            str(uuid.uuid4()), key, request_id, instance_uuid, 'open',
            [rec.to_dict(record)], 1, False, new=True,
            due_at=self.now + group_wait)
        self.by_id[state.id] = state
        self.by_key[key] = state
        if self.earliest_due is None or state.due_at < self.earliest_due:
            self.earliest_due = state.due_at
        return state

    def rekey(self, state, key, instance_uuid):
        if self.by_key.get(state.key) is state:
            del self.by_key[state.key]
        state.key = key
        state.instance_uuid = instance_uuid
        state.dirty = True
        self.by_key[key] = state

    def flush(self, conn):
        new, changed = [], []
        for state in self.by_id.values():
            if state.new:
                new.append({
                    'id': state.id, 'key': state.key,
                    'request_id': state.request_id,
                    'instance_uuid': state.instance_uuid, 'state': 'open',
                    'records': outbox.dumps(state.records),
                    'message_count': state.message_count,
                    'resolved': state.resolved, 'opened_at': self.now,
                    'updated_at': self.now, 'due_at': state.due_at})
            elif state.dirty:
                changed.append({
                    'b_id': state.id, 'b_old_count': state.stored_count,
                    'b_key': state.key,
                    'b_instance_uuid': state.instance_uuid,
                    'b_records': outbox.dumps(state.records),
                    'b_message_count': state.message_count,
                    'b_resolved': state.resolved,
                    'b_updated_at': self.now})
        # Changed first: a re-keyed incident frees its old key.
        for values in changed:
            if conn.execute(_UPDATE_INCIDENT, values).rowcount != 1:
                raise outbox.StoreError(
                    'incident %s was changed by another writer meanwhile'
                    % values['b_id'], retryable=True)
        if new:
            conn.execute(_INSERT_INCIDENT, new)
        if self.messages:
            conn.execute(_INSERT_MESSAGE, self.messages)


class _Conflict(Exception):
    """A listener changed an incident while the router read it."""


class Correlator:
    """Turns records into incidents and incidents into deliveries."""

    #: Transactions a batch may take when other replicas write the same
    #: incidents at the same time.
    WRITE_ATTEMPTS = 4

    def __init__(self, conf, store, settings, clock=time.time):
        register_opts(conf)
        outbox.register_opts(conf)
        self.conf = conf
        self.store = store
        self.settings = settings
        self.clock = clock
        #: Set when deliveries were written, to wake the delivery workers.
        self.work_available = threading.Event()
        #: Set when an incident was opened that is due before the router
        #: means to wake up (``router_wakes_at``; None while it plans).
        self.incident_opened = threading.Event()
        self.router_wakes_at = None
        self.next_due_at = None
        self._digest_due = None

    # -- the sink -------------------------------------------------------------

    def add(self, item):
        """Record one ErrorRecord or Resolution durably.

        :raises outbox.StoreUnavailable: the message must be requeued.
        """
        return self.add_many([item])[0]

    def add_many(self, items):
        """Record ErrorRecords and Resolutions durably, in one transaction.

        Records are applied in order, then the resolutions (a build that
        succeeded resolves the open incidents of its instance, in this
        batch too). Returns, per item, the incident id it went to (None for
        a resolution or a message seen before).

        :raises outbox.StoreUnavailable: the messages must be requeued.
        """
        if not items:
            return []
        for attempt in range(1, self.WRITE_ATTEMPTS + 1):
            try:
                results, due = self.store.write(
                    lambda conn: self._add_many(conn, items))
                break
            except outbox.StoreError as exc:
                # Another replica opened or changed the same incident at
                # the same instant: a new transaction sees what it wrote.
                if not exc.retryable or attempt == self.WRITE_ATTEMPTS:
                    raise
                LOG.debug('Storing a batch again (%s)', exc)
        if due is not None:
            wakes_at = self.router_wakes_at
            if wakes_at is None or due < wakes_at:
                self.incident_opened.set()
        return results

    def _add_many(self, conn, items):
        now = self.clock()
        keys = [None if isinstance(item, rec.Resolution)
                else message_key(item) for item in items]
        seen = self._seen_before(conn, [k for k in keys if k is not None])
        batch = _Batch(now)
        results = []
        resolutions = []
        for item, mkey in zip(items, keys):
            if mkey is None:
                resolutions.append(item)
                results.append(None)
                continue
            if mkey in seen:
                LOG.debug('Message %s was seen before: nothing to do',
                          logsafe.escape(mkey))
                results.append(None)
                continue
            seen.add(mkey)
            results.append(self._attach(conn, item, mkey, batch))
        if resolutions:
            self._resolve(conn, resolutions, batch)
        batch.flush(conn)
        return results, batch.earliest_due

    @staticmethod
    def _seen_before(conn, keys):
        """The message ids among ``keys`` that the outbox knows already."""
        seen = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            seen.update(conn.execute(_SEEN, {'keys': chunk}).scalars())
        return seen

    def _find(self, conn, record, batch):
        request_id, instance_uuid = _ids(record)
        key = incident_key(request_id, instance_uuid)
        state = batch.by_key.get(key)
        if state is not None:
            return state, key
        row = conn.execute(_BY_KEY, {'key': key}).first()
        if row is not None or not request_id:
            return batch.track(row), key
        if instance_uuid is None:
            # compute.exception has no instance: join the incident of the
            # request, if there is exactly one, open or already routed: a
            # twin that arrives late must not make a second alert.
            found = {state.id: state
                     for state in batch.of_request(request_id)}
            for row in conn.execute(_BY_REQUEST,
                                    {'request_id': request_id}):
                state = batch.track(row)
                found[state.id] = state
            if len(found) == 1:
                return next(iter(found.values())), key
            return None, key
        # An instance-less incident of the same request learns its instance.
        bare_key = incident_key(request_id, None)
        bare = batch.by_key.get(bare_key)
        if bare is None:
            row = conn.execute(_BY_KEY, {'key': bare_key}).first()
            bare = batch.track(row)
        if bare is not None:
            batch.rekey(bare, key, instance_uuid)
            return bare, key
        return None, key

    def _attach(self, conn, record, mkey, batch):
        if not record.request_id:
            state, key = None, outbox.fit_key('message|' + mkey)
        else:
            state, key = self._find(conn, record, batch)
        if state is None:
            state = batch.open(key, record,
                               self.conf[GROUP].group_wait)
        else:
            state.add(record)
            if state.state != 'open':
                LOG.debug('Late message %s folded into incident %s (%s)',
                          logsafe.escape(mkey), state.id, state.state)
        batch.messages.append({'message_id': mkey, 'received_at': batch.now,
                               'incident_id': state.id})
        return state.id

    def _resolve(self, conn, resolutions, batch):
        """Mark the open incidents of builds that succeeded after all.

        A build that Nova rescheduled keeps its request id: a resolution
        with a request id only resolves the incidents of that request. One
        query for the whole batch, since most builds never failed.
        """
        by_instance = collections.defaultdict(list)
        for resolution in resolutions:
            request_id, instance_uuid = _ids(resolution)
            by_instance[instance_uuid].append((request_id, resolution))

        def match(instance_uuid, request_id):
            for resolved_request, resolution in by_instance.get(
                    instance_uuid, ()):
                if not resolved_request or resolved_request == request_id:
                    return resolution
            return None

        found = []
        for state in batch.states:
            if state.state == 'open':
                found.append((state, match(state.instance_uuid,
                                           state.request_id)))
        uuids = sorted(by_instance)
        for start in range(0, len(uuids), 500):
            for row in conn.execute(_OPEN_OF_INSTANCES,
                                    {'uuids': uuids[start:start + 500]}):
                if row.id not in batch.by_id:
                    found.append((row, match(row.instance_uuid,
                                             row.request_id)))
        untracked = []
        for target, resolution in found:
            if resolution is None:
                continue
            if isinstance(target, _IncidentState):
                target.resolved = target.dirty = True
            else:
                untracked.append(target.id)
            LOG.info('Instance %s was built after all (%s): its open build '
                     'failure is a reschedule',
                     logsafe.escape(resolution.instance_uuid),
                     logsafe.escape(resolution.event_type))
        if untracked:
            conn.execute(_RESOLVE_IDS, {'ids': untracked})

    # -- routing: called periodically ---------------------------------------

    def route_due(self, limit=200):
        """Route the incidents and digests whose window is over.

        :returns: the number of deliveries written.
        """
        try:
            written, incident_due, digest_due = self.store.write(
                lambda conn: self._route_cycle(conn, limit))
        except Exception:
            # A lease renewed in the rolled back transaction is not held.
            self.store.forget_leases()
            raise
        self._digest_due = digest_due
        times = [t for t in (incident_due, digest_due) if t is not None]
        #: When the next incident or digest is due, as routing last saw it.
        self.next_due_at = min(times) if times else None
        if written:
            self.work_available.set()
        return written

    #: Seconds the routing lease lasts without renewal: another replica
    #: takes routing over that long after the router stopped.
    ROUTER_LEASE = 10.0

    def _route_cycle(self, conn, limit):
        """One transaction: route, close digests, see what is due next.

        Only the replica holding the ``router`` lease routes, so that storm
        limits and digests are counted once for all replicas.
        """
        if not self.store.take_lease(conn, 'router', self.ROUTER_LEASE):
            return (0, None, None)
        written = self._route(conn, limit)
        due = self._digest_due
        if due is None or due <= self.clock():
            written += self._close_digests(conn)
        return (written,) + _due_times(conn)

    def next_due(self):
        """When the earliest open incident or collecting digest is due."""
        times = [t for t in self.store.read(_due_times) if t is not None]
        return min(times) if times else None

    def _route(self, conn, limit):
        now = self.clock()
        rows = conn.execute(_DUE, {'b_now': now, 'b_limit': limit}).all()
        written = 0
        sent = {}       # receiver: single alerts in the current interval
        for row in rows:
            # One incident that cannot be routed (a bug, a value the
            # database refuses) must not hold back the others, cycle after
            # cycle: it is set aside as "unroutable", with the reason.
            try:
                with conn.begin_nested():
                    row = self._gather(conn, row, now)
                    if row is not None:
                        written += self._route_one(conn, row, now, sent)
            except _Conflict as exc:
                LOG.debug('Incident %s: %s; routed at the next cycle',
                          row.id, exc)
            except Exception as exc:
                LOG.exception('Incident %s (request %s) could not be '
                              'routed', row.id, logsafe.escape(
                                  row.request_id))
                self._finish(conn, row, 'unroutable', outbox.fit_text(
                    '%s: %s' % (type(exc).__name__, exc), 255))
        return written

    def _gather(self, conn, row, now):
        """Join the twins of one failure that other replicas opened apart.

        Two replicas that receive the legacy and the versioned twin at the
        same instant cannot see each other's new incident: an instance-less
        one (``compute.exception``) and one with the instance, of the same
        request. The router brings them together: an instance-less incident
        is folded into the one incident of its request that has an
        instance (open, or already routed: then no new alert); an incident
        with an instance takes in the open instance-less ones. Returns the
        row to route, or None when it was folded into another.
        """
        if not row.request_id:
            return row
        others = conn.execute(_SAME_REQUEST, {
            'b_request_id': row.request_id, 'b_id': row.id}).all()
        if not others:
            return row
        if row.instance_uuid is None:
            targets = [o for o in others if o.instance_uuid is not None and
                       o.state in ('open', 'routed')]
            if len(targets) != 1:
                return row
            self._merge(conn, targets[0], [row], now)
            return None
        bare = [o for o in others if o.instance_uuid is None and
                o.state == 'open']
        if not bare:
            return row
        self._merge(conn, row, bare, now)
        return conn.execute(_BY_KEY, {'key': row.key}).first()

    def _merge(self, conn, target, sources, now):
        """Fold the records of ``sources`` into ``target``.

        Compare-and-swap on both: raises _Conflict when a listener changed
        one of them meanwhile (the savepoint is then rolled back).
        """
        records = outbox.loads(target.records)
        count = target.message_count
        for source in sources:
            if not self._finish(conn, source, 'merged',
                                'merged into incident %s' % target.id):
                raise _Conflict('incident %s changed meanwhile' % source.id)
            for item in outbox.loads(source.records):
                if len(records) < MAX_RECORDS:
                    records.append(item)
            count += source.message_count
        if conn.execute(_MERGE_INTO, {
                'b_id': target.id, 'b_old_count': target.message_count,
                'b_records': outbox.dumps(records), 'b_message_count': count,
                'b_updated_at': now}).rowcount != 1:
            raise _Conflict('incident %s changed meanwhile' % target.id)
        LOG.info('Incident(s) %s of request %s folded into incident %s',
                 ', '.join(s.id for s in sources),
                 logsafe.escape(target.request_id), target.id)

    def _finish(self, conn, row, state, note=None):
        result = conn.execute(_FINISH, {
            'b_id': row.id, 'b_state': state, 'b_note': note,
            'b_updated_at': self.clock()})
        return result.rowcount == 1

    def _route_one(self, conn, row, now, sent):
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
            if self._over_limit(conn, route.receiver, now, sent):
                self._add_to_digest(conn, route, alert_for, now)
                continue
            added = self._insert_delivery(conn, row.id, route.receiver,
                                          route.rule, 'single',
                                          alert_for(route), now)
            sent[route.receiver] += added
            written += added
        return written

    def _over_limit(self, conn, receiver, now, sent):
        """Whether the receiver had its single alerts of the interval.

        ``sent`` counts them per receiver during one routing transaction,
        read from the outbox once per receiver.
        """
        options = self.conf[outbox.GROUP]
        limit = options.max_alerts_per_interval
        if receiver not in sent:
            sent[receiver] = 0 if not limit else conn.execute(_SENT, {
                'b_receiver': receiver,
                'b_since': now - options.group_interval}).scalar()
        return bool(limit) and sent[receiver] >= limit

    def _insert_delivery(self, conn, incident_id, receiver, rule, kind,
                         alert, now):
        try:
            with conn.begin_nested():
                conn.execute(_INSERT_DELIVERY, {
                    'incident_id': incident_id, 'receiver': receiver,
                    'rule': rule, 'kind': kind,
                    'alert': outbox.dumps(alert_mod.to_dict(alert)),
                    'state': 'pending', 'attempts': 0, 'created_at': now,
                    'next_attempt_at': now})
        except sa_exc.IntegrityError:
            return 0          # this receiver has it already
        return 1

    def _add_to_digest(self, conn, route, alert_for, now):
        dg = outbox.digests
        row = conn.execute(_COLLECTING_DIGEST,
                           {'b_receiver': route.receiver}).first()
        if row is None:
            conn.execute(dg.insert().values(
                id=str(uuid.uuid4()), receiver=route.receiver,
                rule=route.rule, state='collecting',
                members=outbox.dumps([alert_mod.to_dict(alert_for(route))]),
                count=1,
                opened_at=now,
                due_at=now + self.conf[outbox.GROUP].group_interval))
            return
        if row.count >= self.conf[outbox.GROUP].digest_max_items:
            # The digest lists enough incidents already: only count this
            # one, without reading and rewriting the list.
            conn.execute(_COUNT_IN_DIGEST, {'b_id': row.id})
            return
        members = outbox.loads(conn.execute(
            _DIGEST_MEMBERS, {'b_id': row.id}).scalar())
        if len(members) < self.conf[outbox.GROUP].digest_max_items:
            members.append(alert_mod.to_dict(alert_for(route)))
        conn.execute(_ADD_TO_DIGEST, {'b_id': row.id,
                                      'b_members': outbox.dumps(members)})

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
