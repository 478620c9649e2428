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
"""Versioned Nova notifications -> :class:`ErrorRecord`.

Versioned payloads are serialized Nova objects (``nova_object.data``). An
error carries an ``ExceptionPayload`` (``exception``, ``exception_message``,
``module_name``, ``function_name``, ``traceback``):

* at the top of the payload for ``compute.exception``;
* under ``reason`` for ``compute_task.*.error`` and ``libvirt.connect.error``;
* under ``fault`` for ``instance.*.error``.

``instance.update`` at INFO priority whose ``state_update.state`` is
``error`` (and was not before) means the instance entered ERROR.
"""

from nova_error_notifier.parse import common
from nova_error_notifier import record as rec

FORMAT = 'versioned'

UPDATE_EVENT = 'instance.update'

#: Versioned event types that mean an instance creation failed.
CREATE_FAILURE_EVENTS = frozenset((
    'instance.create.error',
    'compute_task.build_instances.error',
))


def is_versioned(payload):
    """True for a payload that is a serialized versioned Nova object."""
    return isinstance(payload, dict) and 'nova_object.data' in payload


def routine_update(event_type, payload):
    """True for an INFO ``instance.update`` with nothing to read.

    A look at the two states before any parsing: most INFO traffic is
    such updates. Whatever is not shaped as Nova sends it answers False,
    and the parser reads (or refuses) the message.
    """
    if event_type != UPDATE_EVENT:
        return False
    try:
        update = payload['nova_object.data']['state_update'][
            'nova_object.data']
        return common.routine_change(update['state'], update['old_state'])
    except (TypeError, KeyError, IndexError):
        return False


def _exception_payload(data):
    if 'exception' in data or 'exception_message' in data:
        return data
    for key in ('fault', 'reason'):
        candidate = common.unwrap(data.get(key))
        if isinstance(candidate, dict):
            return candidate
    return {}


#: Versioned event types that mean an instance was built after all.
CREATE_END_EVENTS = frozenset(('instance.create.end',))


def _resolution(event_type, state, old_state, data, ctxt, metadata):
    """A Resolution for a build that succeeded, else None."""
    built = (event_type in CREATE_END_EVENTS or
             (event_type == UPDATE_EVENT and old_state == 'building' and
              state == 'active'))
    if not built:
        return None
    uuid = common.ident(data.get('uuid'))
    if not uuid:
        return None
    metadata = metadata if isinstance(metadata, dict) else {}
    return rec.Resolution(
        event_type=event_type, instance_uuid=uuid,
        request_id=(common.context_fields(ctxt)['request_id'] or
                    common.ident(data.get('request_id'))),
        message_id=common.ident(metadata.get('message_id')),
        timestamp=common.parse_timestamp(metadata.get('timestamp')))


def parse(priority, ctxt, publisher_id, event_type, payload, metadata):
    """Return an :class:`ErrorRecord` for an error notification, else None.

    :raises MalformedNotification: when the message cannot be read.
    """
    common.check_envelope(event_type, payload, publisher_id)
    data = common.unwrap(payload)
    if not isinstance(data, dict):
        raise common.MalformedNotification(
            'nova_object.data is not an object')
    priority = (priority or '').upper()
    state = common.first_text(common.dig(data, 'state_update', 'state'),
                              data.get('state'))
    old_state = common.text(common.dig(data, 'state_update', 'old_state'))

    is_error = (priority in common.ERROR_PRIORITIES or
                event_type.endswith('.error'))
    entered_error = (event_type == UPDATE_EVENT and
                     state == common.ERROR_STATE and
                     old_state != common.ERROR_STATE)
    if not (is_error or entered_error):
        return _resolution(event_type, state, old_state, data, ctxt,
                           metadata)

    exc = _exception_payload(data)
    exception, remote = common.class_name(exc.get('exception'))
    message, remote_tb = common.split_traceback(
        common.text(exc.get('exception_message'), common.MAX_MESSAGE))
    details = common.clean_traceback(exc.get('traceback'))
    if remote_tb:
        remote_tb = common.text(remote_tb, common.MAX_DETAILS)
        details = (details + '\nRemote traceback:\n' + remote_tb
                   if details else remote_tb)
    module = common.text(exc.get('module_name'))
    function = common.text(exc.get('function_name'))
    location = '.'.join(p for p in (module, function) if p) or None

    spec = common.unwrap(data.get('request_spec'))
    spec = spec if isinstance(spec, dict) else {}
    uuid = common.first_ident(data.get('uuid'), data.get('instance_uuid'),
                              spec.get('instance_uuid'))
    tenant = common.first_text(data.get('tenant_id'), spec.get('project_id'))
    service, pub_host = common.split_publisher(publisher_id)
    ctx = common.context_fields(ctxt)
    metadata = metadata if isinstance(metadata, dict) else {}
    is_create_failure = (event_type in CREATE_FAILURE_EVENTS or
                         (entered_error and old_state == 'building'))

    return rec.ErrorRecord(
        event_type=common.text(event_type),
        priority=priority or 'INFO',
        format=FORMAT,
        synthetic_events=common.synthetic_events(
            event_type, state, old_state, is_create_failure),
        publisher_id=common.text(publisher_id),
        publisher_service=service,
        publisher_host=pub_host,
        timestamp=common.parse_timestamp(metadata.get('timestamp')),
        message_id=common.ident(metadata.get('message_id')),
        request_id=ctx['request_id'] or common.ident(data.get('request_id')),
        global_request_id=ctx['global_request_id'],
        project_id=ctx['project_id'] or tenant,
        project_name=ctx['project_name'],
        user_id=ctx['user_id'] or common.first_text(
            data.get('user_id'), spec.get('user_id')),
        user_name=ctx['user_name'],
        instance_uuid=uuid,
        instance_name=common.text(data.get('display_name')),
        instance_project_id=tenant,
        instance_host=common.text(data.get('host')),
        state=state,
        old_state=old_state,
        exception=exception,
        remote=remote,
        message=common.mask(message) or None,
        code=None,
        location=location,
        details=common.mask(details),
    )
