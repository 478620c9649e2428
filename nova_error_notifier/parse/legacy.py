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
"""Legacy (unversioned) Nova notifications -> :class:`ErrorRecord`.

The shapes Nova uses for errors (topic ``notifications``):

* ``compute.instance.<action>.error``: an instance usage payload
  (``instance_id``, ``display_name``, ``host``, ``state``...) with
  ``exception`` (repr), ``message`` and ``code`` added from the fault;
* ``compute_task.<method>``: ``scheduler.utils.set_vm_state_and_notify``,
  with ``instance_id``, ``state``, ``method``, ``reason`` (repr) and the
  whole ``request_spec`` (which can carry a keystone token);
* ``<method name>`` from ``exception_wrapper.wrap_exception``: ``exception``
  (repr) and the call's ``args`` (which can carry a keystone token);
* ``compute.libvirt.error``: ``ip``, ``method`` and ``reason`` (repr);
* ``compute.instance.update`` at INFO priority whose ``state`` is
  ``error``: the instance entered ERROR.

Only named fields are read; ``args`` and ``request_spec`` are looked into
for the instance's uuid, name and host and never copied.
"""

from nova_error_notifier.parse import common
from nova_error_notifier import record as rec

FORMAT = 'legacy'

UPDATE_EVENT = 'compute.instance.update'

#: Legacy event types that mean an instance creation failed.
CREATE_FAILURE_EVENTS = frozenset((
    'compute.instance.create.error',
    'compute_task.build_instances',
    'compute_task.schedule_and_build_instances',
    'build_and_run_instance',
))


def _instance_sources(payload):
    """Dicts that may describe the instance, best first."""
    sources = [payload]
    args = payload.get('args')
    if isinstance(args, dict):
        instance = common.unwrap(args.get('instance'))
        if isinstance(instance, dict):
            sources.append(instance)
        sources.append({'uuid': args.get('instance_uuid')})
    for spec_path in (('request_spec', 'instance_properties'),
                      ('instance_properties',)):
        props = common.dig(payload, *spec_path)
        if isinstance(props, dict):
            sources.append(props)
    return sources


def _instance_fields(payload):
    sources = _instance_sources(payload)
    uuid = common.first_ident(*(
        value for src in sources
        for value in (src.get('instance_id'), src.get('instance_uuid'),
                      src.get('uuid'))))
    name = common.first_text(*(src.get('display_name') for src in sources))
    host = common.first_text(*(src.get('host') for src in sources))
    tenant = common.first_text(*(
        value for src in sources
        for value in (src.get('tenant_id'), src.get('project_id'))))
    return uuid, name, host, tenant


#: Legacy event types that mean an instance was built after all.
CREATE_END_EVENTS = frozenset(('compute.instance.create.end',))


def routine_update(event_type, payload):
    """True for an INFO ``compute.instance.update`` with nothing to read.

    A look at the two states before any parsing (see
    :func:`nova_error_notifier.parse.versioned.routine_update`).
    """
    if event_type != UPDATE_EVENT or type(payload) is not dict:
        return False
    return common.routine_change(payload.get('state'),
                                 payload.get('old_state'))


def _resolution(event_type, state, old_state, payload, ctxt, metadata):
    """A Resolution for a build that succeeded, else None."""
    built = (event_type in CREATE_END_EVENTS or
             (event_type == UPDATE_EVENT and old_state == 'building' and
              state == 'active'))
    if not built:
        return None
    uuid = common.first_ident(payload.get('instance_id'),
                              payload.get('instance_uuid'))
    if not uuid:
        return None
    metadata = metadata if isinstance(metadata, dict) else {}
    return rec.Resolution(
        event_type=event_type, instance_uuid=uuid,
        request_id=common.context_fields(ctxt)['request_id'],
        message_id=common.ident(metadata.get('message_id')),
        timestamp=common.parse_timestamp(metadata.get('timestamp')))


def parse(priority, ctxt, publisher_id, event_type, payload, metadata):
    """Return an :class:`ErrorRecord` for an error notification, else None.

    :raises MalformedNotification: when the message cannot be read.
    """
    common.check_envelope(event_type, payload, publisher_id)
    priority = (priority or '').upper()
    state = common.text(payload.get('state'))
    old_state = common.text(payload.get('old_state'))

    is_error = (priority in common.ERROR_PRIORITIES or
                event_type.endswith('.error'))
    entered_error = (event_type == UPDATE_EVENT and
                     state == common.ERROR_STATE and
                     old_state != common.ERROR_STATE)
    if not (is_error or entered_error):
        return _resolution(event_type, state, old_state, payload, ctxt,
                           metadata)

    raw_exception = payload.get('exception')
    if raw_exception is None:
        raw_exception = payload.get('reason')
    parsed = common.parse_exception(raw_exception)

    # compute.instance.*.error payloads carry Nova's own message and code
    # (exception_to_dict: format_message() for Nova's exceptions, the class
    # name for others); they win over what the repr says.
    message, remote_tb = common.split_traceback(
        common.first_text(payload.get('message'), parsed.message,
                          limit=common.MAX_MESSAGE))
    reason = parsed.reason
    if message and parsed.exception and message == parsed.exception:
        # A non-Nova exception: the repr holds the real text.
        reason = parsed.message
    code = common.integer(payload.get('code'))
    if code is None:
        code = parsed.code

    uuid, name, host, tenant = _instance_fields(payload)
    service, pub_host = common.split_publisher(publisher_id)
    ctx = common.context_fields(ctxt)
    metadata = metadata if isinstance(metadata, dict) else {}
    is_create_failure = (event_type in CREATE_FAILURE_EVENTS or
                         (entered_error and old_state == 'building'))
    details = common.text(remote_tb, common.MAX_DETAILS)

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
        request_id=ctx['request_id'],
        global_request_id=ctx['global_request_id'],
        project_id=ctx['project_id'] or tenant,
        project_name=ctx['project_name'],
        user_id=ctx['user_id'] or common.text(payload.get('user_id')),
        user_name=ctx['user_name'],
        instance_uuid=uuid,
        instance_name=name,
        instance_project_id=tenant,
        instance_host=host,
        state=state,
        old_state=old_state,
        exception=parsed.exception,
        remote=parsed.remote,
        message=common.mask(message) or None,
        reason=common.mask(common.useful_reason(reason, message)),
        code=code,
        arguments=parsed.arguments,
        location=common.text(payload.get('method')),
        details=common.mask(details),
    )
