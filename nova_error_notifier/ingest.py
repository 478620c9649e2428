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
"""Grouping: the messages of one failure become one incident.

Nova reports one failure several times (legacy and versioned twins, the
steps of a failed build). Messages with the same request id, and the same
instance where there is one, are gathered in one incident, which is due
for routing (:mod:`nova_error_notifier.routing`) ``[correlation]
group_wait`` seconds after its first message. Messages arriving later for
the same failure are folded into the incident without a new alert.

A build that Nova rescheduled and that then succeeded (a
:class:`~nova_error_notifier.record.Resolution`: a ``create.end``, or an
update from building to active, for the same instance) marks the open
incidents of its instance as resolved; routing decides what that means.

Every key is the region's (:func:`nova_error_notifier.record.scoped`):
messages of two buses (two Nova deployments or cells) never share an
incident, not even with the same request id and instance, and a message
id seen on one bus does not hide the same id on another.

What a batch of bus messages changes is one transaction in the outbox
(:mod:`nova_error_notifier.outbox`), committed before the messages are
acknowledged.
"""

import collections
import hashlib
import time
import uuid

from oslo_config import cfg
from oslo_log import log

from nova_error_notifier import logsafe
from nova_error_notifier import outbox
from nova_error_notifier import record as rec
from nova_error_notifier import wakeup as wakeup_mod

LOG = log.getLogger(__name__)

GROUP = 'correlation'

INGEST_OPTS = [
    cfg.FloatOpt('group_wait',
                 default=5.0,
                 min=0.0,
                 help='Seconds the messages of one failure (same request '
                      'id and instance) are gathered before its alert is '
                      'routed.'),
]


def register_opts(conf):
    conf.register_opts(INGEST_OPTS, group=GROUP)


def list_opts():
    return [(GROUP, INGEST_OPTS)]


def message_key(record):
    """The record's message id, or a stable stand-in without one.

    It fits the outbox's key column: a long id is hashed, never cut (two
    ids sharing a prefix must not be taken for one message). The key is
    the record's region's: the same id on two buses is two messages.
    """
    region = record.region
    if record.message_id:
        return outbox.fit_key(rec.scoped(region, record.message_id))
    material = rec.scoped(region, '|'.join(str(x) for x in (
        record.event_type, record.timestamp, record.request_id,
        record.publisher_id, record.instance_uuid, record.exception)))
    return 'sha256:' + hashlib.sha256(material.encode('utf-8')).hexdigest()


def incident_key(request_id, instance_uuid, region=None):
    """The key of the incident of a request and instance, in a region."""
    return outbox.fit_key(rec.scoped(region, '%s|%s' % (
        request_id, instance_uuid or '')))


def _ids(item):
    """(request id, instance uuid) of a record, as the outbox keeps them."""
    return outbox.fit_key(item.request_id), outbox.fit_key(
        item.instance_uuid)


def _region(item):
    """The region of a record or resolution, as the outbox keeps it."""
    return outbox.fit_key(item.region or None)


class _IncidentState:
    """One incident as a batch of messages changes it, before it is written."""

    def __init__(self, id, key, request_id, instance_uuid, state, records,
                 message_count, resolved, new=False, due_at=None,
                 region=None):
        self.id = id
        self.key = key
        self.request_id = request_id
        self.instance_uuid = instance_uuid
        self.region = region
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
                   bool(row.resolved), region=row.region)

    @property
    def records(self):
        if isinstance(self._records, str):
            self._records = outbox.loads(self._records)
        return self._records

    def add(self, record):
        records = self.records
        if len(records) < outbox.MAX_RECORDS:
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
        #: The rows of the keys the batch may look up, read in one query
        #: before any record is applied (the batch writes nothing until
        #: :meth:`flush`, so they stay what the database holds).
        self.stored = {}

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

    def of_request(self, request_id, region):
        return [state for state in self.by_id.values()
                if state.request_id == request_id and
                state.region == region]

    def open(self, key, record, group_wait):
        request_id, instance_uuid = _ids(record)
        state = _IncidentState(
            str(uuid.uuid4()), key, request_id, instance_uuid, 'open',
            [rec.to_dict(record)], 1, False, new=True,
            due_at=self.now + group_wait, region=_region(record))
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

    def flush(self, tx):
        """Write the batch in the outbox transaction ``tx``.

        :raises outbox.StoreError: (retryable) when another writer changed
            one of its incidents since it was read.
        """
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
                    'updated_at': self.now, 'due_at': state.due_at,
                    'region': state.region})
            elif state.dirty:
                changed.append(state)
        # Changed first: a re-keyed incident frees its old key.
        for state in changed:
            if not tx.update_incident(
                    state.id, state.stored_count, state.key,
                    state.instance_uuid, outbox.dumps(state.records),
                    state.message_count, state.resolved, self.now):
                raise outbox.StoreError(
                    'incident %s was changed by another writer meanwhile'
                    % state.id, retryable=True)
        tx.insert_incidents(new)
        tx.insert_messages(self.messages)


class Ingest:
    """Turns error records (and resolutions) into incidents in the outbox.

    :param wakeup: the router's :class:`~nova_error_notifier.wakeup.Wakeup`,
        notified with the due time of the incidents a batch opened.
    """

    #: Transactions a batch may take when other replicas write the same
    #: incidents at the same time.
    WRITE_ATTEMPTS = 4

    def __init__(self, conf, store, wakeup=None, clock=time.time):
        self.conf = conf
        self.store = store
        self.clock = clock
        self.wakeup = wakeup if wakeup is not None else wakeup_mod.Wakeup()

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
                    lambda tx: self._add_many(tx, items))
                break
            except outbox.StoreError as exc:
                # Another replica opened or changed the same incident at
                # the same instant: a new transaction sees what it wrote.
                if not exc.retryable or attempt == self.WRITE_ATTEMPTS:
                    raise
                LOG.debug('Storing a batch again (%s)', exc)
        if due is not None:
            self.wakeup.notify(due)
        return results

    def _add_many(self, tx, items):
        now = self.clock()
        keys = [None if isinstance(item, rec.Resolution)
                else message_key(item) for item in items]
        seen = tx.seen_message_ids([k for k in keys if k is not None])
        batch = _Batch(now)
        batch.stored = tx.incidents_by_keys(self._lookups(items, keys, seen))
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
            results.append(self._attach(tx, item, mkey, batch))
        if resolutions:
            self._resolve(tx, resolutions, batch)
        batch.flush(tx)
        return results, batch.earliest_due

    @staticmethod
    def _lookups(items, keys, seen):
        """The incident keys :meth:`_find` may look up for ``items``."""
        wanted = set()
        for item, mkey in zip(items, keys):
            if mkey is None or mkey in seen or not item.request_id:
                continue
            request_id, instance_uuid = _ids(item)
            wanted.add(incident_key(request_id, instance_uuid, item.region))
            if instance_uuid is not None:
                wanted.add(incident_key(request_id, None, item.region))
        return wanted

    def _find(self, tx, record, batch):
        request_id, instance_uuid = _ids(record)
        region = _region(record)
        key = incident_key(request_id, instance_uuid, record.region)
        state = batch.by_key.get(key)
        if state is not None:
            return state, key
        row = batch.stored.get(key)
        if row is not None or not request_id:
            return batch.track(row), key
        if instance_uuid is None:
            # compute.exception has no instance: join the incident of the
            # request, if there is exactly one, open or already routed: a
            # twin that arrives late must not make a second alert.
            found = {state.id: state
                     for state in batch.of_request(request_id, region)}
            for row in tx.incidents_of_request(request_id, region):
                state = batch.track(row)
                found[state.id] = state
            if len(found) == 1:
                return next(iter(found.values())), key
            return None, key
        # An instance-less incident of the same request learns its instance.
        bare_key = incident_key(request_id, None, record.region)
        bare = batch.by_key.get(bare_key)
        if bare is None:
            bare = batch.track(batch.stored.get(bare_key))
        if bare is not None:
            batch.rekey(bare, key, instance_uuid)
            return bare, key
        return None, key

    def _attach(self, tx, record, mkey, batch):
        if not record.request_id:
            state, key = None, outbox.fit_key('message|' + mkey)
        else:
            state, key = self._find(tx, record, batch)
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

    def _resolve(self, tx, resolutions, batch):
        """Mark the open incidents of builds that succeeded after all.

        A build that Nova rescheduled keeps its request id: a resolution
        with a request id only resolves the incidents of that request. One
        query for the whole batch, since most builds never failed.
        """
        by_instance = collections.defaultdict(list)
        for resolution in resolutions:
            request_id, instance_uuid = _ids(resolution)
            by_instance[_region(resolution), instance_uuid].append(
                (request_id, resolution))

        def match(region, instance_uuid, request_id):
            # Only a build of the same region: two deployments may know
            # one instance uuid (the same request replayed on both).
            for resolved_request, resolution in by_instance.get(
                    (region, instance_uuid), ()):
                if not resolved_request or resolved_request == request_id:
                    return resolution
            return None

        found = []
        for state in batch.states:
            if state.state == 'open':
                found.append((state, match(state.region, state.instance_uuid,
                                           state.request_id)))
        regions = collections.defaultdict(set)
        for region, instance_uuid in by_instance:
            regions[region].add(instance_uuid)
        for region, uuids in regions.items():
            for row in tx.open_incidents_of_instances(sorted(uuids), region):
                if row.id not in batch.by_id:
                    found.append((row, match(region, row.instance_uuid,
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
            tx.resolve_open_incidents(untracked)
