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
"""Realistic Nova notification traffic for the benchmark.

The messages are built from the Nova samples shipped with the package
(``nova_error_notifier/samples``), as Nova sends them with
``notification_format = both`` and ``notify_on_state_change =
vm_and_task_state``: every operation comes as a legacy and a versioned twin
with the same request id, and instance state changes come as
``instance.update`` / ``compute.instance.update``.

* Info operations: a successful boot (create.start, four task-state
  updates, the update into ACTIVE, create.end), power off, reboot, delete,
  and the periodic ``exists`` audit.
* Failures: a build with no valid host, a failed spawn, a failed resize, a
  key pair that already exists, a libvirt connection error, a failed
  migration pre-check and a failed volume attachment, each with its twin,
  and the updates into ERROR where Nova sends them.

Identities (instance uuids, request ids, hosts, projects) are new for every
operation; several operations are in progress at once, so their messages
interleave. Each message is padded to a size drawn from 2 to 8 KB (wire
size, as the oslo.messaging v2 envelope carries it) with instance metadata
or, for payloads without metadata, the context's service catalog, both of
which Nova sends. Everything is drawn from a seeded random generator: the
same seed gives the same traffic.
"""

import collections
import copy
import json
import os
import random
import re
import uuid

import nova_error_notifier

SAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(
    nova_error_notifier.__file__)), 'samples')

LEGACY_TOPIC = 'notifications'
VERSIONED_TOPIC = 'versioned_notifications'
TOPICS = (LEGACY_TOPIC, VERSIONED_TOPIC)

MIN_SIZE = 2048
MAX_SIZE = 8192
#: Share of ERROR-priority messages in the mixed traffic.
ERROR_SHARE = 0.05
#: Operations in progress at once (their messages interleave).
CONCURRENT_OPERATIONS = 8

#: One notification: what ``Publisher.publish`` takes, plus bookkeeping.
#: ``kind``: ``info``; ``error`` (ERROR priority); ``state-error`` (an INFO
#: update into ERROR). ``group``: the operation (failure) it belongs to.
Message = collections.namedtuple(
    'Message', 'ctxt publisher_id event_type priority payload topic '
               'request_id kind group size')

_UUID_RE = re.compile(
    r'(req-)?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})')
#: The instances of the samples: all become the operation's instance.
_SAMPLE_INSTANCES = frozenset((
    '3f9a1c2e-7b4d-4e8f-a1c2-9d8e7f6a5b4c',
    '8a7b6c5d-4e3f-4a2b-9c1d-0e9f8a7b6c5d',
    'c4d5e6f7-a8b9-4c0d-9e1f-2a3b4c5d6e7f'))
_COMPUTE_RE = re.compile(r'\bcmp-[0-9]+\b')
_CONTROLLER_RE = re.compile(r'\bctl-[a-z]\b')
_SAMPLE_PROJECT = '4c1d7e2f8a9b40c3b5d6e7f8091a2b3c'
_SAMPLE_USER = '7d2e9f3a1b4c45d6a8e9f0a1b2c3d4e5'
_NAME_KEYS = ('display_name', 'hostname', 'host_name')

_METADATA_WORDS = (
    'backup', 'daily', 'weekly', 'owner', 'team-web', 'team-db', 'billing',
    'cost-center', 'ansible', 'group', 'frontend', 'backend', 'canary',
    'release', '2026.2', 'ha', 'zone-a', 'zone-b', 'monitoring', 'enabled',
    'description', 'managed-by', 'terraform', 'heat', 'stack', 'kubernetes',
    'node-pool', 'workers', 'environment', 'production', 'staging')
_CATALOG_SERVICES = (
    ('compute', 'nova', 'https://nova.example.org:8774/v2.1'),
    ('volumev3', 'cinderv3', 'https://cinder.example.org:8776/v3/%s'),
    ('image', 'glance', 'https://glance.example.org:9292'),
    ('network', 'neutron', 'https://neutron.example.org:9696'),
    ('placement', 'placement', 'https://placement.example.org:8778'),
    ('identity', 'keystone', 'https://keystone.example.org:5000/v3'),
)


def _load(name):
    path = os.path.join(SAMPLES_DIR, name + '.json')
    with open(path, 'rb') as handle:
        body = json.loads(handle.read().decode('utf-8'))
    message = json.loads(body['oslo.message'])
    ctxt = {key[len('_context_'):]: value for key, value in message.items()
            if key.startswith('_context_')}
    return {'ctxt': ctxt, 'publisher_id': message['publisher_id'],
            'event_type': message['event_type'],
            'priority': message['priority'], 'payload': message['payload']}


def wire_size(ctxt, publisher_id, event_type, priority, payload):
    """Bytes of the AMQP body oslo.messaging's messagingv2 driver sends."""
    inner = {'message_id': '00000000-0000-4000-8000-000000000000',
             'publisher_id': publisher_id, 'event_type': event_type,
             'priority': priority, 'payload': payload,
             'timestamp': '2026-10-02 16:05:00.000000',
             '_unique_id': '0' * 32}
    for key, value in ctxt.items():
        inner['_context_' + key] = value
    return len(json.dumps({'oslo.version': '2.0',
                           'oslo.message': json.dumps(inner)}))


class _Templates:
    """The samples, and the variants derived from them, loaded once."""

    def __init__(self):
        self.v_update = _load('10-versioned-instance.update-active')
        self.v_update_error = _load('06-versioned-instance.update-error')
        self.v_create_error = _load('02-versioned-instance.create.error')
        self.v_build_error = _load(
            '04-versioned-compute_task.build_instances.error')
        self.v_exception = _load(
            '08-versioned-compute.exception-create_key_pair')
        self.v_migrate_error = _load(
            '11-versioned-compute_task.migrate_server.error')
        self.v_volume_error = _load(
            '12-versioned-instance.volume_attach.error')
        self.l_instance = _load('01-legacy-compute.instance.create.start')
        self.l_create_error = _load('03-legacy-compute.instance.create.error')
        self.l_build = _load('05-legacy-compute_task.build_instances')
        self.l_resize = _load('07-legacy-resize_instance')
        self.l_libvirt = _load('09-legacy-compute.libvirt.error')
        # The versioned action payload (start/end events): a create.error
        # without its fault.
        self.v_action = copy.deepcopy(self.v_create_error)
        self.v_action['payload']['nova_object.name'] = 'InstanceActionPayload'
        self.v_action['payload']['nova_object.data']['fault'] = None
        self.v_action['priority'] = 'INFO'


def _exception_payload(exception, message, module, function):
    return {'nova_object.name': 'ExceptionPayload',
            'nova_object.namespace': 'nova',
            'nova_object.version': '1.1',
            'nova_object.data': {
                'module_name': module, 'function_name': function,
                'exception': exception, 'exception_message': message,
                'traceback': ('Traceback (most recent call last):\n,  File '
                              '"/usr/lib/python3/dist-packages/%s.py", line '
                              '1234, in %s\n,%s.%s: %s\n' % (
                                  module.replace('.', '/'), function,
                                  'nova.exception', exception, message))}}


def _legacy_exception(exception, message, **kwargs):
    return repr({'kwargs': kwargs, 'message': message, 'class': exception})


class Traffic:
    """Seeded generator of Nova notifications."""

    def __init__(self, seed=1, projects=40, computes=200):
        self.rng = random.Random(seed)
        self.templates = _Templates()
        self.projects = [(self._hex(), self._hex()) for _ in range(projects)]
        self.computes = ['cmp-%03d' % n for n in range(1, computes + 1)]
        self.controllers = ['ctl-%s' % c for c in 'abc']
        self.counter = 0
        #: Words to cut metadata values from.
        self.prose = ' '.join(self.rng.choice(_METADATA_WORDS)
                              for _ in range(600))

    # -- identities ----------------------------------------------------------

    def _hex(self):
        return '%032x' % self.rng.getrandbits(128)

    def _uuid(self):
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _identity(self):
        """The identities of one operation (one instance, one request)."""
        project, user = self.rng.choice(self.projects)
        self.counter += 1
        return {'uuids': {}, 'project': project, 'user': user,
                'instance': self._uuid(), 'request': 'req-' + self._uuid(),
                'compute': self.rng.choice(self.computes),
                'controller': self.rng.choice(self.controllers),
                'name': '%s-%d' % (self.rng.choice(
                    ('web', 'db', 'api', 'worker', 'cache', 'batch')),
                    self.counter)}

    def _retarget(self, template, identity):
        """A deep copy of ``template`` carrying the operation's identities.

        The samples' instances become the operation's instance, their
        request ids its request id, and every other uuid (image, volume...)
        a new one, the same within the operation, so that twins agree.
        """
        text = json.dumps(template)

        def new_uuid(match):
            prefix, old = match.groups()
            if prefix:
                return identity['request']
            if old in _SAMPLE_INSTANCES:
                return identity['instance']
            if old not in identity['uuids']:
                identity['uuids'][old] = self._uuid()
            return identity['uuids'][old]
        text = _UUID_RE.sub(new_uuid, text)
        text = _COMPUTE_RE.sub(identity['compute'], text)
        text = _CONTROLLER_RE.sub(identity['controller'], text)
        text = text.replace(_SAMPLE_PROJECT, identity['project'])
        text = text.replace(_SAMPLE_USER, identity['user'])
        message = json.loads(text)
        message['ctxt']['request_id'] = identity['request']
        self._rename(message['payload'], identity['name'], 0)
        return message

    def _rename(self, value, name, depth):
        if depth > 8:
            return
        if isinstance(value, dict):
            for key in list(value):
                if key in _NAME_KEYS and isinstance(value[key], str):
                    value[key] = name
                else:
                    self._rename(value[key], name, depth + 1)
        elif isinstance(value, list):
            for item in value:
                self._rename(item, name, depth + 1)

    # -- padding -------------------------------------------------------------

    def _pad(self, message, target):
        """Grow the message to about ``target`` wire bytes; return its size.

        Instance payloads get metadata items (at most 255 characters each,
        as Nova allows), others a longer service catalog in the context.
        """
        payload = message['payload']
        data = payload.get('nova_object.data', payload)
        metadata = data.get('metadata') if isinstance(data, dict) else None
        size = wire_size(message['ctxt'], message['publisher_id'],
                         message['event_type'], message['priority'], payload)
        for _ in range(3):
            missing = target - size
            if missing < 40:
                break
            if isinstance(metadata, dict):
                while missing > 40:
                    key = '%s-%d' % (self.rng.choice(_METADATA_WORDS),
                                     len(metadata))
                    length = max(1, min(255, missing - len(key) - 12))
                    start = self.rng.randrange(len(self.prose) - 256)
                    value = self.prose[start:start + length]
                    metadata[key] = value
                    missing -= len(key) + len(value) + 12
            else:
                catalog = message['ctxt'].setdefault('service_catalog', [])
                while missing > 40:
                    kind, name, url = self.rng.choice(_CATALOG_SERVICES)
                    if '%s' in url:
                        url = url % message['ctxt'].get('project_id', '')
                    entry = {'type': kind, 'name': name, 'endpoints': [
                        {'region': 'RegionOne', 'interface': interface,
                         'url': url} for interface in
                        ('public', 'internal', 'admin')]}
                    cost = len(json.dumps(json.dumps(entry))) + 2
                    if cost > missing + 40:
                        break
                    catalog.append(entry)
                    missing -= cost
            size = wire_size(message['ctxt'], message['publisher_id'],
                             message['event_type'], message['priority'],
                             payload)
        return size

    def _finish(self, message, topic, kind, group):
        # The padding stops up to ~60 bytes short of its target.
        target = self.rng.randint(MIN_SIZE + 64, MAX_SIZE)
        size = self._pad(message, target)
        return Message(message['ctxt'], message['publisher_id'],
                       message['event_type'], message['priority'],
                       message['payload'], topic,
                       message['ctxt'].get('request_id'), kind, group, size)

    # -- info operations -----------------------------------------------------

    def _versioned(self, template, identity, event_type, state, task_state,
                   old_state=None, old_task_state=None, update=False):
        message = self._retarget(template, identity)
        message['event_type'] = event_type
        message['priority'] = 'INFO'
        message['publisher_id'] = 'nova-compute:%s' % identity['compute']
        data = message['payload']['nova_object.data']
        data['state'] = state
        data['task_state'] = task_state
        data['power_state'] = 'running' if state == 'active' else 'pending'
        data['host'] = data['node'] = identity['compute']
        if update:
            data['state_update']['nova_object.data'].update(
                old_state=old_state or state, state=state,
                old_task_state=old_task_state, new_task_state=task_state)
        else:
            data.pop('state_update', None)
        return message

    def _legacy(self, identity, event_type, state, task_state,
                old_state=None, old_task_state=None, update=False):
        message = self._retarget(self.templates.l_instance, identity)
        message['event_type'] = event_type
        message['priority'] = 'INFO'
        message['publisher_id'] = 'compute.%s' % identity['compute']
        payload = message['payload']
        payload['state'] = state
        payload['state_description'] = task_state or ''
        payload['host'] = payload['node'] = identity['compute']
        if update:
            payload.update(old_state=old_state or state,
                           old_task_state=old_task_state,
                           new_task_state=task_state,
                           audit_period_beginning='2026-10-01T00:00:00.000000',
                           audit_period_ending='2026-10-02T16:05:00.000000',
                           bandwidth={}, old_display_name=None)
        return message

    def _twin(self, identity, v_event, l_event, state, task_state,
              old_state=None, old_task_state=None, update=False):
        """(legacy, versioned) messages of one step."""
        t = self.templates
        template = t.v_update if update else t.v_action
        return [
            (self._legacy(identity, l_event, state, task_state, old_state,
                          old_task_state, update), LEGACY_TOPIC, 'info'),
            (self._versioned(template, identity, v_event, state, task_state,
                             old_state, old_task_state, update),
             VERSIONED_TOPIC, 'info'),
        ]

    def _action(self, identity, action, state, steps, final_state=None):
        """start, task-state updates, the final update, end."""
        out = self._twin(identity, 'instance.%s.start' % action,
                         'compute.instance.%s.start' % action, state, None)
        previous = None
        for task in steps:
            out += self._twin(identity, 'instance.update',
                              'compute.instance.update', state, task,
                              state, previous, update=True)
            previous = task
        end_state = final_state or state
        out += self._twin(identity, 'instance.update',
                          'compute.instance.update', end_state, None, state,
                          previous, update=True)
        out += self._twin(identity, 'instance.%s.end' % action,
                          'compute.instance.%s.end' % action, end_state, None)
        return out

    def _op_boot(self, identity):
        return self._action(identity, 'create', 'building',
                            ('scheduling', 'networking',
                             'block_device_mapping', 'spawning'), 'active')

    def _op_power_off(self, identity):
        return self._action(identity, 'power_off', 'active',
                            ('powering-off',), 'stopped')

    def _op_reboot(self, identity):
        return self._action(identity, 'reboot', 'active',
                            ('reboot_started',))

    def _op_delete(self, identity):
        return self._action(identity, 'delete', 'active', ('deleting',),
                            'deleted')

    def _op_exists(self, identity):
        return self._twin(identity, 'instance.exists',
                          'compute.instance.exists', 'active', None)

    # -- failures ------------------------------------------------------------

    def _updates_into_error(self, identity, old_state, publisher):
        t = self.templates
        versioned = self._retarget(t.v_update_error, identity)
        versioned['publisher_id'] = publisher
        legacy = self._legacy(identity, 'compute.instance.update', 'error',
                              None, old_state, 'scheduling', update=True)
        legacy['publisher_id'] = publisher.replace(
            'nova-conductor:', 'conductor.').replace('nova-compute:',
                                                     'compute.')
        return [(legacy, LEGACY_TOPIC, 'state-error'),
                (versioned, VERSIONED_TOPIC, 'state-error')]

    def _fail_no_valid_host(self, identity):
        t = self.templates
        return ([(self._retarget(t.l_build, identity), LEGACY_TOPIC,
                  'error'),
                 (self._retarget(t.v_build_error, identity), VERSIONED_TOPIC,
                  'error')] +
                self._updates_into_error(
                    identity, 'building',
                    'nova-conductor:%s' % identity['controller']))

    def _fail_spawn(self, identity):
        t = self.templates
        return ([(self._retarget(t.l_create_error, identity), LEGACY_TOPIC,
                  'error'),
                 (self._retarget(t.v_create_error, identity), VERSIONED_TOPIC,
                  'error')] +
                self._updates_into_error(
                    identity, 'building',
                    'nova-compute:%s' % identity['compute']))

    def _fail_resize(self, identity):
        t = self.templates
        versioned = self._retarget(t.v_exception, identity)
        versioned['publisher_id'] = 'nova-compute:%s' % identity['compute']
        versioned['payload'] = _exception_payload(
            'ResizeError', 'Resize error: Unable to resize disk down.',
            'nova.compute.manager', 'resize_instance')
        return [(self._retarget(t.l_resize, identity), LEGACY_TOPIC, 'error'),
                (versioned, VERSIONED_TOPIC, 'error')]

    def _fail_key_pair(self, identity):
        t = self.templates
        versioned = self._retarget(t.v_exception, identity)
        legacy = self._retarget(t.v_exception, identity)
        legacy['event_type'] = 'create_key_pair'
        legacy['publisher_id'] = 'api.%s' % identity['controller']
        legacy['payload'] = {
            'exception': _legacy_exception(
                'KeyPairExists', "Key pair 'dana-key' already exists.",
                key_name='dana-key'),
            'args': {'user_id': identity['user'], 'key_name': 'dana-key',
                     'key_type': 'ssh'}}
        return [(legacy, LEGACY_TOPIC, 'error'),
                (versioned, VERSIONED_TOPIC, 'error')]

    def _fail_libvirt(self, identity):
        t = self.templates
        legacy = self._retarget(t.l_libvirt, identity)
        versioned = self._retarget(t.l_libvirt, identity)
        versioned['event_type'] = 'libvirt.connect.error'
        versioned['publisher_id'] = 'nova-compute:%s' % identity['compute']
        versioned['payload'] = {
            'nova_object.name': 'LibvirtErrorPayload',
            'nova_object.namespace': 'nova', 'nova_object.version': '1.0',
            'nova_object.data': {
                'ip': legacy['payload']['ip'],
                'reason': _exception_payload(
                    'libvirtError', "Failed to connect socket to "
                    "'/var/run/libvirt/libvirt-sock': Connection refused",
                    'nova.virt.libvirt.host', '_connect')}}
        return [(legacy, LEGACY_TOPIC, 'error'),
                (versioned, VERSIONED_TOPIC, 'error')]

    def _fail_migrate(self, identity):
        t = self.templates
        legacy = self._retarget(t.l_build, identity)
        legacy['event_type'] = 'compute_task.migrate_server'
        legacy['payload']['method'] = 'migrate_server'
        legacy['payload']['state'] = 'active'
        legacy['payload']['reason'] = _legacy_exception(
            'MigrationPreCheckError', 'Migration pre-check error: Unable to '
            'migrate: the instance has a PCI device.',
            reason='the instance has a PCI device')
        return [(legacy, LEGACY_TOPIC, 'error'),
                (self._retarget(t.v_migrate_error, identity), VERSIONED_TOPIC,
                 'error')]

    def _fail_volume_attach(self, identity):
        t = self.templates
        legacy = self._retarget(t.l_resize, identity)
        legacy['event_type'] = 'attach_volume'
        legacy['payload']['exception'] = _legacy_exception(
            'VolumeAttachFailed', 'Volume could not be attached: the '
            'device is busy.', volume_id=self._uuid())
        return [(legacy, LEGACY_TOPIC, 'error'),
                (self._retarget(t.v_volume_error, identity), VERSIONED_TOPIC,
                 'error')]

    INFO_OPERATIONS = (('_op_boot', 30), ('_op_power_off', 15),
                       ('_op_reboot', 15), ('_op_delete', 20),
                       ('_op_exists', 20))
    FAILURES = (('_fail_no_valid_host', 35), ('_fail_spawn', 20),
                ('_fail_resize', 10), ('_fail_key_pair', 15),
                ('_fail_libvirt', 5), ('_fail_migrate', 5),
                ('_fail_volume_attach', 10))
    #: A storm: a cell out of capacity, and some of everything else.
    STORM_FAILURES = (('_fail_no_valid_host', 70), ('_fail_spawn', 15),
                      ('_fail_volume_attach', 5), ('_fail_resize', 4),
                      ('_fail_migrate', 3), ('_fail_libvirt', 3))

    def _pick(self, table):
        names = [name for name, _ in table]
        weights = [weight for _, weight in table]
        return self.rng.choices(names, weights)[0]

    def _operation(self, failure, table=None):
        identity = self._identity()
        table = table or (self.FAILURES if failure else self.INFO_OPERATIONS)
        steps = getattr(self, self._pick(table))(identity)
        return [self._finish(message, topic, kind, identity['request'])
                for message, topic, kind in steps]

    # -- streams -------------------------------------------------------------

    def mixed(self, count, error_share=ERROR_SHARE):
        """``count`` messages: ``error_share`` of them at ERROR priority."""
        out = []
        active = []
        planned = errors = 0
        guard = count * 4 + 1000
        while len(out) < count and guard > 0:
            guard -= 1
            while len(active) < CONCURRENT_OPERATIONS:
                failure = errors < error_share * (planned + 2)
                steps = self._operation(failure)
                planned += len(steps)
                errors += sum(1 for m in steps if m.kind == 'error')
                active.append(steps)
            steps = self.rng.choice(active)
            out.append(steps.pop(0))
            if not steps:
                active.remove(steps)
        return out

    def failures(self, count, table=None):
        """``count`` messages of failures only (a storm)."""
        out = []
        guard = count + 1000
        while len(out) < count and guard > 0:
            guard -= 1
            out.extend(self._operation(True, table or self.STORM_FAILURES))
        return out[:count]

    def sentinel(self, name):
        """A versioned compute.exception with its own request id."""
        identity = self._identity()
        message = self._retarget(self.templates.v_exception, identity)
        request_id = 'req-bench-%s-%s' % (name, self._uuid())
        message['ctxt']['request_id'] = request_id
        return self._finish(message, VERSIONED_TOPIC, 'error', request_id)

    def fillers(self, count):
        """``count`` periodic ``exists`` messages (no error)."""
        out = []
        while len(out) < count:
            out.extend(self._operation(False, (('_op_exists', 1),)))
        return out[:count]


def describe(messages):
    """Counts and sizes of a list of messages, for the report."""
    sizes = sorted(m.size for m in messages) or [0]
    count = len(messages)
    kinds = collections.Counter(m.kind for m in messages)
    formats = collections.Counter(m.topic for m in messages)
    updates = sum(1 for m in messages
                  if m.event_type in ('instance.update',
                                      'compute.instance.update'))
    return {
        'count': count,
        'error_priority': kinds['error'],
        'error_share': kinds['error'] / count if count else 0.0,
        'updates_into_error': kinds['state-error'],
        'instance_updates': updates,
        'legacy': formats[LEGACY_TOPIC],
        'versioned': formats[VERSIONED_TOPIC],
        'failures': len({m.group for m in messages
                         if m.kind != 'info'}),
        'size_min': sizes[0], 'size_max': sizes[-1],
        'size_mean': sum(sizes) / max(1, count),
    }
