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
"""The value handed to notifier drivers: one alert for one failure.

An :class:`Alert` describes an *incident*: one or more error records that
belong to the same failure, for one rule and one receiver. It is shaped for
several messages from the start (event types, message count, first and last
seen) so that correlating messages into one failure changes no driver.
"""

import dataclasses
import datetime
import typing
import uuid

from nova_error_notifier import record as rec

#: Namespace of the stable incident ids (uuid5).
_ID_NAMESPACE = uuid.UUID('0f6d1c1e-5a34-4bb4-9d43-5e1f0c3a9b27')


@dataclasses.dataclass(frozen=True)
class Alert:
    """One alert, for one receiver. Drivers must not modify it."""

    #: Stable id of the incident (the same for every receiver).
    id: str
    #: Name of the receiver the alert is for.
    receiver: str
    #: Name of the rule that routed it there.
    rule: typing.Optional[str]
    #: Nova event types seen, in order of arrival.
    event_types: typing.Tuple[str, ...]
    #: Synthetic events derived by the service.
    synthetic_events: typing.Tuple[str, ...] = ()
    request_id: typing.Optional[str] = None
    global_request_id: typing.Optional[str] = None
    instance_uuid: typing.Optional[str] = None
    instance_name: typing.Optional[str] = None
    instance_state: typing.Optional[str] = None
    host: typing.Optional[str] = None
    project_id: typing.Optional[str] = None
    project_name: typing.Optional[str] = None
    user_id: typing.Optional[str] = None
    user_name: typing.Optional[str] = None
    exception: typing.Optional[str] = None
    message: typing.Optional[str] = None
    reason: typing.Optional[str] = None
    code: typing.Optional[int] = None
    #: Traceback / details; only set for receivers that opt in.
    details: typing.Optional[str] = None
    #: Publishers that reported the failure (``nova-compute:compute-01``).
    publishers: typing.Tuple[str, ...] = ()
    #: Nova message ids of the notifications behind the alert.
    message_ids: typing.Tuple[str, ...] = ()
    #: Number of notifications behind the alert.
    count: int = 1
    first_seen: typing.Optional[datetime.datetime] = None
    last_seen: typing.Optional[datetime.datetime] = None
    #: True for the test alerts sent by operators' commands.
    test: bool = False
    #: None without enrichment; else whether Nova's API could be asked.
    enriched: typing.Optional[bool] = None
    #: ``server``, ``fault`` and ``action`` from Nova's API (see
    #: :mod:`nova_error_notifier.enrich`).
    enrichment: typing.Optional[dict] = None
    #: Why the enrichment is missing or partial.
    enrichment_note: typing.Optional[str] = None
    #: For a digest: the alerts it folds together (possibly capped).
    members: typing.Tuple['Alert', ...] = ()
    #: For a digest: how many incidents it stands for (members may be
    #: fewer when capped), and its one-line summary.
    digest_count: int = 0
    summary: typing.Optional[str] = None
    #: Region of the bus the failure was reported on (``[bus:NAME]
    #: region_name``, ``[listener] region_name``), None without one. A
    #: digest has the region of every incident it folds when they share
    #: it, else None.
    region: typing.Optional[str] = None

    @property
    def is_digest(self):
        return self.digest_count > 0

    @property
    def events(self):
        return tuple(self.event_types) + tuple(self.synthetic_events)


def incident_id(records):
    """A stable id for the failure the records describe.

    Records of one failure share the request id, the instance and the
    region; without a request id the first message id (or the content)
    stands in.
    """
    first = records[0]
    key = '|'.join((first.request_id or first.message_id or
                    '%s/%s' % (first.event_type, first.timestamp),
                    first.instance_uuid or ''))
    return str(uuid.uuid5(_ID_NAMESPACE, rec.scoped(first.region, key)))


def informativeness(record):
    """Rank records by how much their error says (higher is better)."""
    score = 0
    if record.exception:
        score += 1
    if record.message and record.message != record.exception:
        score += 2
    if record.details:
        score += 1
    if record.format == 'versioned':
        score += 0.5   # faults: full message, location and traceback
    return score


def _unique(values):
    seen = []
    for value in values:
        if value and value not in seen:
            seen.append(value)
    return tuple(seen)


def _first(records, attr):
    for record in records:
        value = getattr(record, attr)
        if value:
            return value
    return None


def _state_message(records):
    for record in records:
        if record.state == 'error':
            return 'Instance entered ERROR state (from %s)' % (
                record.old_state or 'unknown state')
    return None


def from_records(records, receiver, rule, include_details=False,
                 incident=None):
    """Build the :class:`Alert` of an incident for one receiver.

    :param incident: the incident's id; by default derived from the records.
    """
    records = list(records)
    if not records:
        raise ValueError('an alert needs at least one record')
    best = max(records, key=informativeness)
    stamps = [r.timestamp for r in records if r.timestamp]
    now = datetime.datetime.now(datetime.timezone.utc)
    last = records[-1]
    return Alert(
        id=incident or incident_id(records),
        receiver=receiver,
        rule=rule,
        event_types=_unique(r.event_type for r in records),
        synthetic_events=_unique(e for r in records
                                 for e in r.synthetic_events),
        request_id=_first(records, 'request_id'),
        global_request_id=_first(records, 'global_request_id'),
        instance_uuid=_first(records, 'instance_uuid'),
        instance_name=_first(records, 'instance_name'),
        instance_state=last.state or _first(records, 'state'),
        host=best.host or _first(records, 'host'),
        project_id=(_first(records, 'instance_project_id') or
                    _first(records, 'project_id')),
        project_name=_first(records, 'project_name'),
        user_id=_first(records, 'user_id'),
        user_name=_first(records, 'user_name'),
        exception=best.exception or _first(records, 'exception'),
        message=(best.message or _first(records, 'message') or
                 _state_message(records)),
        reason=best.reason or _first(records, 'reason'),
        code=best.code if best.code is not None else _first(records, 'code'),
        details=(best.details or _first(records, 'details')
                 if include_details else None),
        publishers=_unique(r.publisher_id for r in records),
        message_ids=_unique(r.message_id for r in records),
        count=len(records),
        first_seen=min(stamps) if stamps else now,
        last_seen=max(stamps) if stamps else now,
        region=_first(records, 'region'),
    )


def sample(receiver='check'):
    """A complete alert, with hostile characters, to check templates with.

    Drivers render it at start-up so that a broken template stops the
    service there rather than at the first real alert.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    return Alert(
        id='00000000-0000-4000-8000-000000000000', receiver=receiver,
        rule='check', event_types=('compute_task.build_instances',),
        synthetic_events=('notifier.instance.create_failed',),
        request_id='req-check', global_request_id=None,
        instance_uuid='00000000-0000-4000-8000-000000000001',
        instance_name='check <&> "quotes" \\ \u00e9', instance_state='error',
        host='compute-0', project_id='p', project_name='project',
        user_id='u', user_name='user', exception='NoValidHost',
        message='No valid host was found.', code=500,
        details='Traceback (most recent call last):\n  ...',
        publishers=('nova-conductor:controller',), message_ids=('m',),
        first_seen=now, last_seen=now, enriched=True,
        enrichment={
            'server': {'status': 'ERROR', 'name': 'check', 'flavor': 'f',
                       'host': 'compute-0', 'updated': 'now'},
            'fault': {'code': 500, 'message': 'No valid host <&>',
                      'details': 'Traceback ...', 'created': 'now'},
            'action': {'action': 'create', 'request_id': 'req-check',
                       'start_time': 'now', 'message': None,
                       'events': [{'event': 'conductor_schedule',
                                   'result': 'Error', 'start_time': 'now',
                                   'finish_time': 'now', 'host': 'c',
                                   'details': 'd', 'traceback': 't'}]}})


def to_dict(alert):
    """A JSON-friendly dict of an alert (digest members included)."""
    data = {}
    for field in dataclasses.fields(alert):
        value = getattr(alert, field.name)
        if field.name == 'members':
            value = [to_dict(member) for member in value]
        elif isinstance(value, datetime.datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = list(value)
        data[field.name] = value
    return data


def from_dict(data):
    """The inverse of :func:`to_dict`; unknown keys are ignored."""
    values = {}
    for field in dataclasses.fields(Alert):
        if field.name not in data:
            continue
        value = data[field.name]
        if field.name == 'members':
            value = tuple(from_dict(member) for member in value)
        elif field.name in ('first_seen', 'last_seen') and value:
            value = datetime.datetime.fromisoformat(value)
        elif isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    return Alert(**values)


def for_receiver(alert, receiver, include_details):
    """The same alert, addressed to ``receiver``.

    Without ``include_details``, tracebacks and details are left out: the
    alert's own, the fault's and the action events'.
    """
    members = tuple(for_receiver(m, receiver, include_details)
                    for m in alert.members)
    enrichment = alert.enrichment
    if enrichment and not include_details:
        enrichment = dict(enrichment)
        if enrichment.get('fault'):
            enrichment['fault'] = dict(enrichment['fault'], details=None)
        if enrichment.get('action'):
            enrichment['action'] = dict(enrichment['action'], events=[
                dict(e, traceback=None, details=None)
                for e in enrichment['action'].get('events') or []])
    return dataclasses.replace(
        alert, receiver=receiver, members=members, enrichment=enrichment,
        details=alert.details if include_details else None)


def with_count(alert, count):
    """The alert standing for ``count`` notifications."""
    return dataclasses.replace(alert, count=max(count, alert.count))


def with_rule(alert, rule):
    return dataclasses.replace(alert, rule=rule)


def digest(digest_id, receiver, rule, members, count, summary):
    """One alert folding ``count`` incidents (``members`` may be fewer).

    The digest has a region when every incident it folds is listed and
    they all share that region.
    """
    regions = {m.region for m in members}
    region = (regions.pop() if len(regions) == 1 and
              count <= len(members) else None)
    stamps = [m.first_seen for m in members if m.first_seen]
    lasts = [m.last_seen for m in members if m.last_seen]
    event_types = []
    for member in members:
        for event in member.event_types:
            if event not in event_types:
                event_types.append(event)
    return Alert(
        id=digest_id, receiver=receiver, rule=rule,
        event_types=tuple(event_types), members=tuple(members),
        digest_count=count, summary=summary,
        count=sum(m.count for m in members) or count,
        first_seen=min(stamps) if stamps else None,
        last_seen=max(lasts) if lasts else None, region=region)
