"""Builders of Nova-shaped notifications for the unit tests.

Our own fixtures, modelled on what Nova's notification code emits
(nova/compute/utils.py, nova/scheduler/utils.py, nova/exception_wrapper.py,
nova/notifications/objects/*).
"""

import copy

PROJECT = '0b2d4f6a8c0e42a4b6c8d0e2f4a6b8c0'
USER = '1c3e5a7b9d1f43b5c7d9e1f3a5b7c9d1'
INSTANCE = 'd4c3b2a1-9e8f-4d7c-8b6a-5f4e3d2c1b0a'
REQUEST = 'req-0f1e2d3c-4b5a-4697-8877-665544332211'
TOKEN = 'gAAAAAB-UNIT-TEST-TOKEN-NOT-FOR-LOGS'


def context(request_id=REQUEST, **overrides):
    ctxt = {
        'user': USER, 'user_id': USER, 'project_id': PROJECT,
        'project': PROJECT, 'request_id': request_id,
        'global_request_id': None, 'user_name': 'erin',
        'project_name': 'billing', 'roles': ['member'],
        'auth_token': None, 'is_admin': False,
    }
    ctxt.update(overrides)
    return ctxt


def metadata(message_id='5e0c7a1d-2b3f-4c5d-9e6f-7a8b9c0d1e2f',
             timestamp='2026-10-05 08:30:00.123456'):
    return {'message_id': message_id, 'timestamp': timestamp}


def nova_object(name, data, version='1.0'):
    return {'nova_object.name': name, 'nova_object.namespace': 'nova',
            'nova_object.version': version, 'nova_object.data': data}


def exception_payload(exception='FlavorDiskTooSmall',
                      message='Flavor\'s disk is too small for requested '
                              'image.',
                      module='nova.compute.manager',
                      function='_build_resources',
                      traceback='Traceback (most recent call last):\n,'
                                '  File "nova/compute/manager.py", line 1, '
                                'in _build_resources\n,nova.exception.X\n'):
    return nova_object('ExceptionPayload', {
        'module_name': module, 'function_name': function,
        'exception': exception, 'exception_message': message,
        'traceback': traceback}, '1.1')


def legacy_usage(state='building', **extra):
    payload = {
        'tenant_id': PROJECT, 'user_id': USER, 'instance_id': INSTANCE,
        'display_name': 'batch-1', 'hostname': 'batch-1',
        'host': 'hv-12', 'node': 'hv-12', 'state': state,
        'state_description': '', 'instance_type': 'm1.large',
        'memory_mb': 8192, 'vcpus': 4, 'metadata': {},
    }
    payload.update(extra)
    return payload


def versioned_instance(state='building', **extra):
    data = {
        'uuid': INSTANCE, 'user_id': USER, 'tenant_id': PROJECT,
        'display_name': 'batch-1', 'host': 'hv-12', 'node': 'hv-12',
        'state': state, 'task_state': None, 'power_state': 'pending',
        'request_id': REQUEST, 'flavor': nova_object('FlavorPayload', {
            'name': 'm1.large', 'memory_mb': 8192}),
        'ip_addresses': [], 'metadata': {},
    }
    data.update(extra)
    return data


def versioned_update(old_state, state, **extra):
    data = versioned_instance(state=state, **extra)
    data['state_update'] = nova_object('InstanceStateUpdatePayload', {
        'old_state': old_state, 'state': state, 'old_task_state': None,
        'new_task_state': None})
    return nova_object('InstanceUpdatePayload', data, '2.1')


def request_spec_with_token():
    """A legacy request_spec as set_vm_state_and_notify sends it."""
    return {
        'num_instances': 1,
        'image': {'id': 'e1d2c3b4-a596-4877-8695-a4b3c2d1e0f9'},
        'instance_properties': {
            'uuid': INSTANCE, 'project_id': PROJECT, 'user_id': USER,
            'pci_requests': {
                '_context': dict(context(), auth_token=TOKEN),
                '_obj_instance_uuid': INSTANCE,
            },
        },
    }


def deep(obj):
    return copy.deepcopy(obj)
