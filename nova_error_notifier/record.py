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
"""The one value every stage of the pipeline passes on: an error record.

An :class:`ErrorRecord` is what an endpoint plugin makes of one Nova
notification that signals an error. It holds only the fields picked out of
the message (never the legacy ``args``, ``request_spec`` or the request
context as a whole, which can carry keystone tokens), every string already
cleaned and bounded in length.

This module imports nothing from the package.
"""

import dataclasses
import datetime
import typing

#: Prefix of the event names the service derives itself. Nova never sends an
#: event type starting with it.
SYNTHETIC_PREFIX = 'notifier.'

#: An instance creation failed, however Nova reported it (compute host build
#: failure, scheduling failure in the conductor, update into ERROR while
#: building, ...).
CREATE_FAILED = 'notifier.instance.create_failed'

#: An instance entered the ERROR state.
ERROR_STATE = 'notifier.instance.error_state'

SYNTHETIC_EVENTS = (CREATE_FAILED, ERROR_STATE)


class RetryLater(Exception):
    """Raised by a sink that cannot take a record now (its store is down).

    The endpoint then hands the message back to the queue instead of
    acknowledging it, so that nothing is lost.
    """


@dataclasses.dataclass(frozen=True)
class ErrorRecord:
    """One error signalled by one Nova notification.

    Every attribute but ``event_type``, ``priority`` and ``format`` may be
    ``None`` when the notification does not carry it.
    """

    #: The event type as Nova sent it, e.g. ``compute.instance.create.error``.
    event_type: str
    #: Upper-case priority of the notification (``ERROR``, ``INFO``, ...).
    priority: str
    #: ``versioned`` or ``legacy``.
    format: str
    #: Event names derived by the service (see ``SYNTHETIC_EVENTS``).
    synthetic_events: typing.Tuple[str, ...] = ()
    publisher_id: typing.Optional[str] = None
    #: Service part of the publisher id (``compute``, ``nova-conductor``).
    publisher_service: typing.Optional[str] = None
    #: Host part of the publisher id.
    publisher_host: typing.Optional[str] = None
    #: When Nova emitted the notification (timezone-aware, UTC).
    timestamp: typing.Optional[datetime.datetime] = None
    message_id: typing.Optional[str] = None
    request_id: typing.Optional[str] = None
    global_request_id: typing.Optional[str] = None
    #: Project of the request context (who asked), else the instance owner.
    project_id: typing.Optional[str] = None
    project_name: typing.Optional[str] = None
    user_id: typing.Optional[str] = None
    user_name: typing.Optional[str] = None
    instance_uuid: typing.Optional[str] = None
    instance_name: typing.Optional[str] = None
    #: Project that owns the instance (``tenant_id`` in Nova's payloads).
    instance_project_id: typing.Optional[str] = None
    #: Compute host the instance is on, as the payload says.
    instance_host: typing.Optional[str] = None
    #: The instance's vm state in the payload, e.g. ``error``.
    state: typing.Optional[str] = None
    old_state: typing.Optional[str] = None
    #: Exception class name, without module and without ``_Remote``.
    exception: typing.Optional[str] = None
    #: True when the exception crossed RPC (``_Remote`` suffix).
    remote: bool = False
    #: The error message, any appended remote traceback cut off.
    message: typing.Optional[str] = None
    #: The exception's own reason, when it says more than ``message``.
    reason: typing.Optional[str] = None
    code: typing.Optional[int] = None
    #: Scalar arguments of the exception (Nova's ``kwargs``), as pairs.
    arguments: typing.Tuple[typing.Tuple[str, typing.Any], ...] = ()
    #: ``module.function`` where the exception was raised, if known.
    location: typing.Optional[str] = None
    #: Traceback or other details (bounded).
    details: typing.Optional[str] = None
    #: Region of the bus the notification came from (``[bus:NAME]
    #: region_name``), None for the default bus without a region.
    region: typing.Optional[str] = None

    @property
    def events(self):
        """The event type followed by the synthetic events."""
        return (self.event_type,) + tuple(self.synthetic_events)

    @property
    def host(self):
        """The most useful host: the instance's, else the publisher's."""
        return self.instance_host or self.publisher_host


@dataclasses.dataclass(frozen=True)
class Resolution:
    """A notification saying an instance build succeeded after all.

    ``instance.create.end`` / ``compute.instance.create.end``, or an update
    from building to active. A build failure that Nova rescheduled and that
    then succeeded is not worth an alert.
    """

    event_type: str
    instance_uuid: str
    request_id: typing.Optional[str] = None
    message_id: typing.Optional[str] = None
    timestamp: typing.Optional[datetime.datetime] = None
    #: Region of the bus it came from, as for :class:`ErrorRecord`.
    region: typing.Optional[str] = None


#: Start of every key :func:`scoped` puts in a region.
REGION_SCOPE = 'region:'


def scoped(region, text):
    """``text`` made distinct per region: a key of one bus's messages.

    Without a region ``text`` stays as it is (the keys the service made
    before there were several buses), unless it starts with
    :data:`REGION_SCOPE`; otherwise the region, length first, comes
    before it. No two (region, text) pairs give one key, whatever the
    texts (Nova's values) hold: a key of a region starts with the prefix,
    a key without one does not, and the length says where the region
    ends.
    """
    if not region and not text.startswith(REGION_SCOPE):
        return text
    region = region or ''
    return '%s%d:%s|%s' % (REGION_SCOPE, len(region), region, text)


def with_region(item, region):
    """The record or resolution ``item`` coming from ``region``.

    ``item`` itself without a region, or when it is of another kind.
    """
    if not region or not isinstance(item, (ErrorRecord, Resolution)) or \
            item.region == region:
        return item
    return dataclasses.replace(item, region=region)


def to_dict(value):
    """A JSON-friendly dict of an ErrorRecord or Resolution."""
    data = {}
    for field in dataclasses.fields(value):
        item = getattr(value, field.name)
        if isinstance(item, datetime.datetime):
            item = item.isoformat()
        elif isinstance(item, tuple):
            item = [list(i) if isinstance(i, tuple) else i for i in item]
        data[field.name] = item
    return data


def from_dict(data, cls=ErrorRecord):
    """The inverse of :func:`to_dict`; unknown keys are ignored."""
    values = {}
    for field in dataclasses.fields(cls):
        if field.name not in data:
            continue
        item = data[field.name]
        if field.name == 'timestamp' and item:
            item = datetime.datetime.fromisoformat(item)
        elif isinstance(item, list):
            item = tuple(tuple(i) if isinstance(i, list) else i
                         for i in item)
        values[field.name] = item
    return cls(**values)
