"""Reliability of the real service: one alert per failure, nothing lost.

Real RabbitMQ, the real ``nova-error-notifier`` process, a real SMTP server
and a real HTTP receiver. Notifications are published the way Nova does
(oslo.messaging Notifier, messagingv2, exchange ``nova``), shaped like the
shared Nova samples: legacy and versioned twins, the seven messages of a
failed build, reschedules that succeed.

The outbox is read back from the SQLite file in the service's work
directory.
"""

import collections
import contextlib
import math
import os
import re
import signal
import sqlite3
import threading
import time
import uuid

import pytest

from tests.functional import rabbitmq as rq
from tests.functional import service_process

POOL = 'nova-error-notifier'
PROJECT = '9a8b7c6d5e4f40312a1b2c3d4e5f6a7b'
USER = '3e1f4c1b9d2a4c6e8f0a1b2c3d4e5f60'
OUTBOX = 'nova_error_notifier.sqlite'
DIGEST_MARK = 'nova-error-notifier digest '
AUDIT_SENT_RE = re.compile(r'nova_error_notifier\.audit .*delivery id=\S+ '
                           r'incident=\S+ receiver=(\S+) attempt=\d+ '
                           r'outcome="?sent')

#: The seven event types of a failed build (see build_chain()).
BUILD_CHAIN_EVENTS = {
    'compute.instance.create.error', 'instance.create.error',
    'build_and_run_instance', 'compute.exception',
    'compute_task.build_instances', 'compute_task.build_instances.error',
    'instance.update',
}

Failure = collections.namedtuple('Failure', 'request_id uuid name host')
Msg = collections.namedtuple('Msg', 'topic publisher_id event_type priority '
                                    'payload request_id')


# --------------------------------------------------------------------------
# Nova-shaped messages
# --------------------------------------------------------------------------

def failure(tag, number=0, host='compute-1'):
    """A failure: its own request id, instance uuid and name."""
    return Failure('req-' + str(uuid.uuid4()), str(uuid.uuid4()),
                   '%s-%d' % (tag, number), host)


def context(request_id):
    """What Nova's RequestContext puts on the wire (no token)."""
    return {'request_id': request_id, 'global_request_id': None,
            'project_id': PROJECT, 'user_id': USER,
            'project_name': 'web-prod', 'user_name': 'alice',
            'user_domain': 'default', 'project_domain': 'default',
            'auth_token': None, 'is_admin': False,
            'roles': ['member', 'reader'], 'read_deleted': 'no',
            'service_catalog': []}


def nova_exception(cls, message, **kwargs):
    """The legacy ``exception`` string (repr of exception_to_dict)."""
    kwargs.setdefault('code', 500)
    return repr({'kwargs': kwargs, 'message': message, 'class': cls})


def nova_object(name, data, version='1.0'):
    return {'nova_object.name': name, 'nova_object.namespace': 'nova',
            'nova_object.version': version, 'nova_object.data': data}


def exception_payload(cls, message, function, module='nova.compute.manager'):
    return nova_object('ExceptionPayload', {
        'module_name': module, 'function_name': function, 'exception': cls,
        'exception_message': message,
        'traceback': 'Traceback (most recent call last):\n,  File "/usr/lib/'
                     'python3/dist-packages/%s.py", line 1, in %s\n,%s: %s\n'
                     % (module.replace('.', '/'), function, cls, message)},
        '1.1')


def legacy_instance(f, state, **extra):
    """A legacy instance usage payload."""
    payload = {'tenant_id': PROJECT, 'user_id': USER, 'instance_id': f.uuid,
               'display_name': f.name, 'hostname': f.name, 'host': f.host,
               'node': f.host, 'availability_zone': 'nova', 'state': state,
               'state_description': '', 'instance_type': 'm1.small',
               'memory_mb': 2048, 'vcpus': 1, 'metadata': {}}
    payload.update(extra)
    return payload


def versioned_instance(f, state, **extra):
    """The data of a versioned instance payload."""
    data = {'uuid': f.uuid, 'display_name': f.name, 'host_name': f.name,
            'host': f.host, 'node': f.host, 'tenant_id': PROJECT,
            'user_id': USER, 'request_id': f.request_id, 'state': state,
            'power_state': 'pending', 'task_state': None,
            'availability_zone': 'nova', 'metadata': {}, 'tags': [],
            'locked': False, 'reservation_id': 'r-' + f.uuid[:8]}
    data.update(extra)
    return data


def legacy_instance_error(f, action, cls, message, state):
    """``compute.instance.<action>.error`` (legacy, from the compute host)."""
    return Msg('notifications', 'compute.' + f.host,
               'compute.instance.%s.error' % action, 'ERROR',
               legacy_instance(f, state, exception=nova_exception(
                   cls, message), message=message, code=500), f.request_id)


def versioned_instance_error(f, action, cls, message, state,
                             name='InstanceActionPayload'):
    """``instance.<action>.error`` (versioned, with its fault)."""
    data = versioned_instance(f, state, fault=exception_payload(
        cls, message, '_%s_instance' % action))
    return Msg('versioned_notifications', 'nova-compute:' + f.host,
               'instance.%s.error' % action, 'ERROR',
               nova_object(name, data, '1.8'), f.request_id)


def versioned_update(f, old_state, state):
    """``instance.update`` at INFO priority (state change)."""
    data = versioned_instance(f, state, state_update=nova_object(
        'InstanceStateUpdatePayload', {
            'old_state': old_state, 'state': state,
            'old_task_state': 'spawning', 'new_task_state': None}))
    return Msg('versioned_notifications', 'nova-compute:' + f.host,
               'instance.update', 'INFO',
               nova_object('InstanceUpdatePayload', data, '2.1'),
               f.request_id)


def build_failure_pair(f):
    """A build failing on its compute host: the legacy/versioned twins."""
    message = ('Binding failed for port %s, please check neutron logs for '
               'more information.' % f.uuid)
    return [
        legacy_instance_error(f, 'create', 'PortBindingFailed', message,
                              'building'),
        versioned_instance_error(f, 'create', 'PortBindingFailed', message,
                                 'building', name='InstanceCreatePayload'),
    ]


def build_chain(f):
    """The seven messages of one failed build: one request, one instance.

    The compute host fails (create.error twins, wrap_exception's
    build_and_run_instance, compute.exception without an instance), the
    conductor finds no other host (compute_task.build_instances twins) and
    the instance goes to ERROR (instance.update).
    """
    rescheduled = ('Build of instance %s was re-scheduled: Binding failed '
                   'for port' % f.uuid)
    no_host = ('No valid host was found. There are not enough hosts '
               'available.')
    return build_failure_pair(f) + [
        Msg('notifications', 'compute.' + f.host, 'build_and_run_instance',
            'ERROR', {
                'exception': nova_exception('RescheduledException',
                                            rescheduled,
                                            instance_uuid=f.uuid),
                'args': {'instance': {
                    'uuid': f.uuid, 'display_name': f.name,
                    'host': f.host, 'project_id': PROJECT,
                    'user_id': USER, 'vm_state': 'building',
                    'task_state': 'spawning'}}}, f.request_id),
        Msg('versioned_notifications', 'nova-compute:' + f.host,
            'compute.exception', 'ERROR',
            exception_payload('RescheduledException', rescheduled,
                              'build_and_run_instance'), f.request_id),
        Msg('notifications', 'compute_task.ctl-01',
            'compute_task.build_instances', 'ERROR', {
                'instance_id': f.uuid, 'state': 'error',
                'method': 'build_instances',
                'reason': nova_exception('NoValidHost_Remote', no_host,
                                         reason=''),
                'request_spec': {'num_instances': 1, 'instance_properties': {
                    'uuid': f.uuid, 'project_id': PROJECT,
                    'user_id': USER, 'display_name': f.name}}},
            f.request_id),
        Msg('versioned_notifications', 'nova-conductor:ctl-01',
            'compute_task.build_instances.error', 'ERROR',
            nova_object('ComputeTaskPayload', {
                'instance_uuid': f.uuid, 'state': 'error',
                'reason': exception_payload(
                    'NoValidHost_Remote', no_host, 'select_destinations',
                    'nova.scheduler.manager'),
                'request_spec': nova_object('RequestSpecPayload', {
                    'instance_uuid': f.uuid, 'project_id': PROJECT,
                    'user_id': USER, 'num_instances': 1}, '1.1')}),
            f.request_id),
        versioned_update(f, 'building', 'error'),
    ]


def reboot_twins(f):
    message = 'Failed to reboot instance: libvirt error'
    return [
        legacy_instance_error(f, 'reboot', 'InstanceRebootFailure', message,
                              'active'),
        versioned_instance_error(f, 'reboot', 'InstanceRebootFailure',
                                 message, 'active'),
    ]


def resize_twins(f):
    """wrap_exception's resize_instance and compute.exception (no instance).

    The versioned twin carries no instance: it joins the request's open
    incident.
    """
    message = 'Resize error: Unable to resize disk down.'
    return [
        Msg('notifications', 'compute.' + f.host, 'resize_instance', 'ERROR',
            {'exception': nova_exception('ResizeError', message,
                                         reason='Unable to resize disk '
                                                'down.'),
             'args': {'instance': {
                 'uuid': f.uuid, 'display_name': f.name, 'host': f.host,
                 'project_id': PROJECT, 'vm_state': 'active',
                 'task_state': 'resize_migrating'}}}, f.request_id),
        Msg('versioned_notifications', 'nova-compute:' + f.host,
            'compute.exception', 'ERROR',
            exception_payload('ResizeError', message,
                              '_error_out_instance_on_exception'),
            f.request_id),
    ]


def legacy_create_end(f):
    return Msg('notifications', 'compute.' + f.host,
               'compute.instance.create.end', 'INFO',
               legacy_instance(f, 'active', message='Success',
                               launched_at='2026-09-14T09:12:40.000000'),
               f.request_id)


def single_error(f, number):
    """One message, one failure; legacy and versioned in turn."""
    message = 'Failed to reboot instance %d' % number
    if number % 2:
        return versioned_instance_error(f, 'reboot', 'InstanceRebootFailure',
                                        message, 'active')
    return legacy_instance_error(f, 'reboot', 'InstanceRebootFailure',
                                 message, 'active')


def publish(pub, messages):
    for m in messages:
        pub.publish(context(m.request_id), m.publisher_id, m.event_type,
                    m.priority, m.payload, topics=(m.topic,))


# --------------------------------------------------------------------------
# Service, outbox and receivers
# --------------------------------------------------------------------------

def service_config(transport_url, workdir, receivers, delivery=(),
                   correlation=(), smtp_port=None):
    """Rule ``*`` to every receiver in ``receivers`` ({name: [lines]})."""
    lines = ['[DEFAULT]', 'transport_url = %s' % transport_url,
             'region_name = RegionOne', 'rules = everything',
             '[rule:everything]', 'events = *',
             'receivers = %s' % ', '.join(receivers)]
    for name, options in receivers.items():
        lines += ['[receiver:%s]' % name] + list(options)
    if smtp_port is not None:
        lines += ['[email]', 'smtp_host = 127.0.0.1',
                  'smtp_port = %d' % smtp_port, 'smtp_security = none',
                  'from_address = nova-alerts@example.org', 'timeout = 5']
    lines += ['[delivery]', 'state_dir = %s' % workdir] + list(delivery)
    lines += ['[correlation]'] + list(correlation or [
        'group_wait = %s' % service_process.GROUP_WAIT])
    return '\n'.join(lines) + '\n'


def webhook_receiver(server):
    return ['driver = webhook', 'url = %s' % server.url, 'timeout = 10']


def email_receiver():
    return ['driver = email', 'to = ops@example.com']


@pytest.fixture
def services():
    """Start ``ServiceProcess``es; kill whatever still runs at teardown."""
    started = []

    def start(workdir, config_text, **kwargs):
        proc = service_process.ServiceProcess(workdir, config_text)
        started.append(proc)
        return proc.start(**kwargs)

    yield start
    for proc in started:
        proc.kill()
        with contextlib.suppress(Exception):
            proc._output.close()


def query(workdir, sql, *args):
    """Rows of ``sql`` on the outbox SQLite file of a work directory."""
    path = os.path.join(str(workdir), OUTBOX)
    assert os.path.isfile(path), 'no outbox at %s' % path
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
        return conn.execute(sql, args).fetchall()


def outbox_summary(workdir):
    """{'deliveries.done': n, 'incidents.routed': n, 'dead_letters': n...}"""
    counts = {}
    for table in ('deliveries', 'incidents'):
        for state, count in query(workdir, 'SELECT state, count(*) FROM %s '
                                  'GROUP BY state' % table):
            counts['%s.%s' % (table, state)] = count
    counts['dead_letters'] = query(
        workdir, 'SELECT count(*) FROM dead_letters')[0][0]
    return counts


def wait_until(predicate, timeout, describe):
    """Poll ``predicate`` until true; fail with ``describe()`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError('timed out after %ss: %s' % (timeout,
                                                              describe()))
        time.sleep(0.1)


def answered(server):
    """The requests the webhook server answered 2xx, oldest first."""
    return [r for r in server.requests if r.status and 200 <= r.status < 300]


def single_alerts(requests):
    """The alerts of the requests that are not digests."""
    return [r.json['alerts'][0] for r in requests
            if r.json and 'digest' not in r.json]


def mail_alert_ids(server):
    return [m.message['X-Nova-Error-Notifier-Alert-Id']
            for m in server.messages]


def log_alert_ids(proc):
    ids = []
    for line in proc.alert_lines():
        match = re.search(r' id=(\S+)', line)
        ids.append(match.group(1) if match else line)
    return ids


def sent_audit_lines(proc, receiver=None):
    return [ln for ln in proc.log().splitlines()
            if (m := AUDIT_SENT_RE.search(ln)) and
            (receiver is None or m.group(1) == receiver)]


# --------------------------------------------------------------------------
# 1. One alert per failure and receiver
# --------------------------------------------------------------------------

def test_twins_and_build_chain_give_one_alert_per_receiver(
        tmp_path, rabbitmq_vhost, services, webhook_server, smtp_server):
    hook = webhook_server()
    smtp = smtp_server(mode='plain')
    config = service_config(
        rabbitmq_vhost.url, tmp_path,
        {'log': ['driver = log'], 'hook': webhook_receiver(hook),
         'mail': email_receiver()},
        smtp_port=smtp.port,
        # The eleven messages must all land in their incidents' windows.
        correlation=['group_wait = 3'])
    svc = services(tmp_path, config)
    build = failure('build')
    reboot = failure('reboot')
    resize = failure('resize')
    with rq.Publisher(rabbitmq_vhost.url) as pub:
        publish(pub, build_chain(build) + reboot_twins(reboot) +
                resize_twins(resize))

    requests = hook.wait_for_requests(3, timeout=30)
    smtp.wait_for_messages(3, timeout=30)
    svc.wait_for_alerts(3, timeout=30)
    # Nothing more comes once the windows are over.
    time.sleep(3 + 2)
    assert len(hook.requests) == 3, hook.requests
    assert len(smtp.messages) == 3, smtp.messages
    assert len(svc.alert_lines()) == 3, svc.alert_lines()
    assert DIGEST_MARK not in svc.log()

    alerts = {a['request_id']: a for a in single_alerts(requests)}
    assert set(alerts) == {build.request_id, reboot.request_id,
                           resize.request_id}, alerts
    chain = alerts[build.request_id]
    assert set(chain['event_types']) == BUILD_CHAIN_EVENTS, chain
    assert chain['count'] == 7, chain
    assert chain['instance']['uuid'] == build.uuid
    assert set(chain['synthetic_events']) == {
        'notifier.instance.create_failed', 'notifier.instance.error_state'}
    assert chain['error']['exception'], chain
    for twin, expected in ((reboot, {'compute.instance.reboot.error',
                                     'instance.reboot.error'}),
                           (resize, {'resize_instance',
                                     'compute.exception'})):
        alert = alerts[twin.request_id]
        assert set(alert['event_types']) == expected, alert
        assert alert['count'] == 2, alert
        assert alert['instance']['uuid'] == twin.uuid, alert

    # The same incident ids reach the three receivers, once each.
    ids = {a['id'] for a in alerts.values()}
    assert len(ids) == 3
    assert sorted(mail_alert_ids(smtp)) == sorted(ids)
    assert sorted(log_alert_ids(svc)) == sorted(ids)
    assert len({r.idempotency_key for r in requests}) == 3
    assert all(r.schema_errors == [] for r in requests)
    for receiver in ('log', 'hook', 'mail'):
        assert len(sent_audit_lines(svc, receiver)) == 3, receiver
    counts = outbox_summary(tmp_path)
    assert counts == {'deliveries.done': 9, 'incidents.routed': 3,
                      'dead_letters': 0}, counts
    assert svc.stop() == 0


# --------------------------------------------------------------------------
# 2. A rescheduled build that succeeded is no failure
# --------------------------------------------------------------------------

@pytest.mark.parametrize('alert_on_rescheduled', [False, True],
                         ids=['default', 'alert_on_rescheduled'])
def test_rescheduled_build_that_succeeded(tmp_path, rabbitmq_vhost, services,
                                          webhook_server,
                                          alert_on_rescheduled):
    hook = webhook_server()
    group_wait = 3
    config = service_config(
        rabbitmq_vhost.url, tmp_path,
        {'log': ['driver = log'], 'hook': webhook_receiver(hook)},
        correlation=['group_wait = %d' % group_wait,
                     'alert_on_rescheduled = %s' %
                     str(alert_on_rescheduled).lower()])
    svc = services(tmp_path, config)
    # Built elsewhere after all: create.end, or an update building->active,
    # with the request id of the failed attempt.
    by_create_end = failure('resched-end')
    by_update = failure('resched-update')
    # Built, but by another request: the failure stands.
    other_request = failure('other-request')
    # Never built.
    failed = failure('failed')
    errors = (build_failure_pair(by_create_end) +
              build_failure_pair(by_update)[::-1] +
              build_failure_pair(other_request) +
              build_failure_pair(failed))
    resolutions = [
        legacy_create_end(by_create_end._replace(host='compute-2')),
        versioned_update(by_update._replace(host='compute-2'), 'building',
                         'active'),
        legacy_create_end(other_request._replace(
            host='compute-2', request_id='req-' + str(uuid.uuid4()))),
    ]
    with rq.Publisher(rabbitmq_vhost.url) as pub:
        publish(pub, errors)
        # The success follows the failure, well within group_wait.
        time.sleep(0.5)
        publish(pub, resolutions)

    rescheduled = {by_create_end.request_id, by_update.request_id}
    expected = {other_request.request_id, failed.request_id}
    if alert_on_rescheduled:
        expected |= rescheduled
    hook.wait_for_requests(len(expected), timeout=30)
    time.sleep(group_wait + 2)
    requests = hook.requests
    alerted = [a['request_id'] for a in single_alerts(requests)]
    assert sorted(alerted) == sorted(expected), (
        'alert_on_rescheduled=%s: expected alerts for %s, got %s' % (
            alert_on_rescheduled, sorted(expected), alerted))
    assert len(svc.alert_lines()) == len(expected), svc.alert_lines()
    rows = {request_id: '%s/%s' % (state, note or '')
            for request_id, state, note in query(
                tmp_path, 'SELECT request_id, state, note FROM incidents')}
    for request_id in rescheduled:
        if alert_on_rescheduled:
            assert rows[request_id] == 'routed/', rows
        else:
            assert rows[request_id] == 'suppressed/rescheduled build ' \
                                       'succeeded', rows
    assert rows[other_request.request_id] == 'routed/', rows
    assert rows[failed.request_id] == 'routed/', rows
    assert svc.stop() == 0


# --------------------------------------------------------------------------
# 3. Receivers down for a while: retried until they are back
# --------------------------------------------------------------------------

def test_receivers_down_then_back_get_every_incident_once(
        tmp_path, rabbitmq_vhost, services, webhook_server, smtp_server):
    outage = 15.0
    max_delay = 2.0
    hook = webhook_server()
    hook.respond_next(500, count=100000)
    smtp_port = rq._free_ports(1)[0]     # nothing listens there yet
    config = service_config(
        rabbitmq_vhost.url, tmp_path,
        {'hook': webhook_receiver(hook), 'mail': email_receiver()},
        smtp_port=smtp_port,
        delivery=['retry_initial_delay = 0.5',
                  'retry_max_delay = %s' % max_delay,
                  'max_alerts_per_interval = 0'])
    svc = services(tmp_path, config)
    early = [failure('early', n) for n in range(6)]
    late = [failure('late', n) for n in range(4)]
    outage_start = time.monotonic()
    with rq.Publisher(rabbitmq_vhost.url) as pub:
        for f in early:
            publish(pub, reboot_twins(f))
        svc.wait_for(r'Receiver hook \(driver webhook\) could not deliver',
                     timeout=30)
        svc.wait_for(r'Receiver mail \(driver email\) could not deliver',
                     timeout=30)
        time.sleep(outage / 2)
        for f in late:
            publish(pub, build_failure_pair(f))
    time.sleep(max(0.0, outage - (time.monotonic() - outage_start)))

    # Recovery: the webhook answers 200 again, the SMTP server comes up.
    hook.reset_failures()
    recovered = time.time()
    smtp = smtp_server(mode='plain', port=smtp_port)
    everyone = {f.request_id for f in early + late}

    def delivered():
        return {a['request_id'] for a in single_alerts(answered(hook))}

    wait_until(lambda: delivered() == everyone, 30,
               lambda: 'webhook has %d of %d incidents' % (
                   len(delivered()), len(everyone)))
    smtp.wait_for_messages(len(everyone), timeout=30)
    time.sleep(max_delay + 2)          # no late duplicate
    assert len(smtp.messages) == len(everyone), smtp.messages

    ok = answered(hook)
    assert len(ok) == len(everyone), ok
    by_alert = collections.defaultdict(list)
    for request in hook.requests:
        by_alert[request.json['alerts'][0]['id']].append(request)
    assert len(by_alert) == len(everyone)
    keys = set()
    for alert_id, attempts in by_alert.items():
        assert [r.status for r in attempts].count(200) == 1, attempts
        # Every retry of one alert carries the same key.
        assert len({r.idempotency_key for r in attempts}) == 1, attempts
        keys.add(attempts[0].idempotency_key)
        assert len(attempts) >= 2, 'alert %s was never retried' % alert_id
        stamps = [r.received_at for r in attempts]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert max(gaps) <= max_delay + 2, (
            'alert %s: %.1f s between two attempts with retry_max_delay = '
            '%s' % (alert_id, max(gaps), max_delay))
        assert attempts[-1].received_at - recovered <= max_delay + 3, (
            'alert %s arrived %.1f s after the receiver was back' % (
                alert_id, attempts[-1].received_at - recovered))
    assert len(keys) == len(everyone)
    assert sorted(mail_alert_ids(smtp)) == sorted(by_alert)

    assert query(tmp_path, 'SELECT count(*) FROM dead_letters') == [(0,)]
    counts = outbox_summary(tmp_path)
    assert counts == {'deliveries.done': 2 * len(everyone),
                      'incidents.routed': len(everyone),
                      'dead_letters': 0}, counts
    [(min_attempts,)] = query(tmp_path, 'SELECT min(attempts) FROM '
                              'deliveries')
    assert min_attempts >= 2
    assert svc.process.poll() is None
    assert svc.stop() == 0


# --------------------------------------------------------------------------
# 4. kill -9 in the middle of a burst
# --------------------------------------------------------------------------

class BurstPublisher(threading.Thread):
    """Publishes ``failures`` (one message each) at a steady pace."""

    def __init__(self, url, failures, pause=0.006):
        super().__init__(daemon=True, name='burst')
        self.url = url
        self.failures = failures
        self.pause = pause
        self.published = []
        self.error = None

    def run(self):
        try:
            with rq.Publisher(self.url) as pub:
                for number, f in enumerate(self.failures):
                    publish(pub, [single_error(f, number)])
                    self.published.append(f.request_id)
                    time.sleep(self.pause)
        except Exception as exc:   # reported by the test
            self.error = exc


def test_kill_9_during_a_burst_loses_nothing(tmp_path, rabbitmq_vhost,
                                             services, webhook_server):
    total = 1000
    workers = 4
    hook = webhook_server(validate=False)
    config = service_config(
        rabbitmq_vhost.url, tmp_path, {'hook': webhook_receiver(hook)},
        delivery=['workers = %d' % workers, 'max_alerts_per_interval = 0',
                  'retry_initial_delay = 0.5', 'retry_max_delay = 2'])
    svc = services(tmp_path, config)
    burst = BurstPublisher(rabbitmq_vhost.url,
                           [failure('burst', n) for n in range(total)])
    started = time.monotonic()
    burst.start()
    wait_until(lambda: len(hook.requests) >= 100, 60,
               lambda: '%d webhook requests' % len(hook.requests))
    # Hold the next answer of every worker: exactly these deliveries are
    # in flight when the service dies.
    hook.delay_next(120, count=workers)
    wait_until(lambda: sum(1 for r in hook.requests if r.delay) == workers,
               30, lambda: 'held requests: %r' % [
                   r for r in hook.requests if r.delay])
    assert svc.stop(signal.SIGKILL) == -signal.SIGKILL
    killed_at = time.monotonic() - started
    in_flight = {r.idempotency_key for r in hook.requests if r.delay}
    before_kill = len(hook.requests)
    assert burst.is_alive(), (
        'the burst was over before the kill (%d requests): not a kill in '
        'the middle of it' % before_kill)
    burst.join(60)
    assert burst.error is None, burst.error
    assert len(burst.published) == total
    log_offset = len(svc.log())

    svc = services(tmp_path, config)
    everyone = set(burst.published)

    def delivered():
        return {r.json['alerts'][0]['request_id'] for r in hook.requests}

    wait_until(lambda: delivered() == everyone, 120,
               lambda: '%d of %d incidents delivered; outbox %r' % (
                   len(delivered()), total, outbox_summary(tmp_path)))
    done_at = time.monotonic() - started
    time.sleep(3)                       # anything twice would come now
    requests = hook.requests
    by_key = collections.defaultdict(list)
    for request in requests:
        by_key[request.idempotency_key].append(request)
    assert len(by_key) == total, len(by_key)
    twice = {key for key, rs in by_key.items() if len(rs) > 1}
    # Only the deliveries in flight at the kill came twice, with the same
    # key and the same incident; each of them did (it was never answered).
    assert twice == in_flight, (
        'delivered twice: %s; in flight at the kill: %s' % (
            sorted(twice), sorted(in_flight)))
    for key in twice:
        assert len(by_key[key]) == 2, by_key[key]
        assert len({r.json['alerts'][0]['id'] for r in by_key[key]}) == 1
    assert len(requests) == total + len(in_flight)
    assert len({r.json['alerts'][0]['id'] for r in requests}) == total
    counts = outbox_summary(tmp_path)
    assert counts == {'deliveries.done': total, 'incidents.routed': total,
                      'dead_letters': 0}, counts
    assert re.search(r'%d delivery\(ies\) were in flight when the service '
                     r'stopped' % len(in_flight), svc.log()[log_offset:])
    assert svc.stop() == 0
    print('\nkill -9 burst: %d requests before the kill at %.1f s, every '
          'incident delivered at %.1f s' % (before_kill, killed_at, done_at))


# --------------------------------------------------------------------------
# 5. RabbitMQ restarts under traffic
# --------------------------------------------------------------------------

class RestartableBroker(rq.RabbitMQBroker):
    """A private broker whose node can stop and start again on its port.

    ``RabbitMQBroker.stop()`` tears everything down (epmd, directory,
    ports); here only the node goes, and it comes back with the same node
    name, data directory, epmd and AMQP port.
    """

    def stop_node(self):
        server, self._server = self._server, None
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        finally:
            with contextlib.suppress(OSError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=5)

    def start_node(self):
        self._start_server()
        self._wait_until_ready(time.monotonic() + self.start_timeout)


@pytest.fixture
def own_broker():
    broker = RestartableBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


class Traffic(threading.Thread):
    """Publishes one error every ``pause`` s until stopped, come what may."""

    def __init__(self, url, pause=0.05):
        super().__init__(daemon=True, name='traffic')
        self.url = url
        self.pause = pause
        self.stopping = threading.Event()
        #: (request id, time.time() once published) of each message sent.
        self.published = []
        self.failed = 0

    def run(self):
        number = 0
        pub = None
        while not self.stopping.is_set():
            f = failure('during', number)
            try:
                if pub is None:
                    pub = rq.Publisher(self.url, retry=0)
                publish(pub, [single_error(f, number)])
                self.published.append((f.request_id, time.time()))
            except Exception:
                self.failed += 1
                with contextlib.suppress(Exception):
                    pub.close()
                pub = None
                self.stopping.wait(0.5)
            number += 1
            self.stopping.wait(self.pause)
        if pub is not None:
            pub.close()


def pool_consumers(broker):
    try:
        queues = broker.list_queues('/')
    except rq.RabbitMQCtlError:
        return 0
    return sum(int(q['consumers']) for q in queues if q['name'] == POOL)


def test_listener_reconnects_after_a_broker_restart(tmp_path, own_broker,
                                                    services,
                                                    webhook_server):
    broker = own_broker
    hook = webhook_server(validate=False)
    config = service_config(broker.url, tmp_path,
                            {'hook': webhook_receiver(hook)},
                            delivery=['max_alerts_per_interval = 0'])
    svc = services(tmp_path, config)
    before = [failure('before', n) for n in range(10)]
    with rq.Publisher(broker.url) as pub:
        for number, f in enumerate(before):
            publish(pub, [single_error(f, number)])
    hook.wait_for_requests(len(before), timeout=30)

    traffic = Traffic(broker.url)
    traffic.start()
    try:
        wait_until(lambda: len(traffic.published) >= 20, 30,
                   lambda: 'traffic published %d' % len(traffic.published))
        port = broker.port
        stopped = time.time()
        broker.stop_node()
        assert not rq._port_open(port)
        time.sleep(2)
        broker.start_node()
        assert broker.port == port
        back = time.time()
        wait_until(lambda: pool_consumers(broker) >= 1, 90,
                   lambda: 'the listener did not reconnect; log tail:\n%s'
                   % svc.log()[-3000:])
        reconnected = time.time()
    finally:
        traffic.stopping.set()
        traffic.join(30)
    assert svc.process.poll() is None, 'the service died with the broker'

    after = [failure('after', n) for n in range(20)]
    with rq.Publisher(broker.url) as pub:
        for number, f in enumerate(after):
            publish(pub, [single_error(f, number)])

    def delivered():
        return collections.Counter(
            r.json['alerts'][0]['request_id'] for r in answered(hook))

    wanted = {f.request_id for f in before + after}
    wait_until(lambda: wanted <= set(delivered()), 60,
               lambda: 'missing: %s' % sorted(wanted - set(delivered())))
    # What the service had taken before the broker went away was
    # delivered too (incidents still in their group_wait included), and
    # deliveries went on while the broker was down.
    settled = {r for r, at in traffic.published if at < stopped - 0.5}
    wait_until(lambda: settled <= set(delivered()), 30,
               lambda: 'lost from before the stop: %s' % sorted(
                   settled - set(delivered())))
    time.sleep(3)
    counts = delivered()
    assert all(counts[r] == 1 for r in wanted), counts
    assert max(counts.values()) == 1, [r for r, n in counts.items() if n > 1]
    assert any(stopped < r.received_at < back for r in answered(hook)), (
        'no delivery while the broker was down')
    lost = [(r, at) for r, at in traffic.published if r not in counts]
    assert query(tmp_path, 'SELECT count(*) FROM dead_letters') == [(0,)]
    assert 'Traceback' not in svc.log()
    assert svc.stop() == 0
    print('\nbroker restart: node down for %.1f s, listener consuming '
          '%.1f s after the node was up; traffic published %d (%d refused), '
          '%d not alerted, published at %s s from the node being up' % (
              back - stopped, reconnected - back, len(traffic.published),
              traffic.failed, len(lost),
              ['%+.2f' % (at - back) for _, at in lost]))


# --------------------------------------------------------------------------
# 6. A storm: bounded alerts, every incident counted
# --------------------------------------------------------------------------

def test_storm_is_folded_into_digests(tmp_path, rabbitmq_vhost, services,
                                      webhook_server):
    total = 5000
    limit = 5
    interval = 5
    hook = webhook_server()
    config = service_config(
        rabbitmq_vhost.url, tmp_path, {'hook': webhook_receiver(hook)},
        delivery=['max_alerts_per_interval = %d' % limit,
                  'group_interval = %d' % interval])
    svc = services(tmp_path, config)
    failures = [failure('storm', n) for n in range(total)]
    started = time.monotonic()
    with rq.Publisher(rabbitmq_vhost.url) as pub:
        for number, f in enumerate(failures):
            publish(pub, [single_error(f, number)])
    published = time.monotonic() - started

    def accounted():
        count = 0
        for request in answered(hook):
            digest = request.json.get('digest')
            count += digest['count'] if digest else 1
        return count

    wait_until(lambda: accounted() >= total, 120,
               lambda: '%d of %d incidents accounted for; outbox %r' % (
                   accounted(), total, outbox_summary(tmp_path)))
    accounted_at = time.monotonic() - started
    time.sleep(interval + 2)            # a stray digest would come now
    requests = hook.requests
    assert accounted() == total, accounted()
    singles = [r for r in requests if 'digest' not in r.json]
    digests = [r for r in requests if 'digest' in r.json]
    assert all(r.status == 200 for r in requests)
    assert all(r.schema_errors == [] for r in requests), [
        r.schema_errors for r in requests if r.schema_errors]

    # The limiter: never more than `limit` singles in one group_interval.
    created = sorted(c for (c,) in query(
        tmp_path, "SELECT created_at FROM deliveries WHERE kind = 'single'"))
    for i, start in enumerate(created):
        in_window = [c for c in created[i:] if c < start + interval]
        assert len(in_window) <= limit, (
            '%d single alerts within %d s' % (len(in_window), interval))
    # Bounded: `limit` singles and one digest per interval the storm
    # lasted (from the first message taken to the last incident routed).
    [(first, last)] = query(tmp_path, 'SELECT min(opened_at), '
                            'max(updated_at) FROM incidents')
    windows = math.ceil((last - first) / interval) + 1
    assert len(singles) <= limit * windows, (len(singles), windows)
    assert 1 <= len(digests) <= windows, (len(digests), windows)
    assert len(requests) <= (limit + 1) * windows, (len(requests), windows)
    # Each digest lists what it counts, up to digest_max_items.
    for request in digests:
        digest = request.json['digest']
        assert digest['listed'] == len(request.json['alerts']) <= 50
        assert digest['count'] >= digest['listed']
    ids = [a['id'] for r in requests for a in r.json['alerts']]
    assert len(ids) == len(set(ids)), 'an incident was alerted twice'
    counts = outbox_summary(tmp_path)
    assert counts.get('incidents.routed') == total, counts
    assert counts.get('dead_letters') == 0, counts
    [(digested,)] = query(tmp_path, "SELECT sum(count) FROM digests")
    assert digested + len(singles) == total
    assert svc.stop() == 0
    print('\nstorm: %d errors published in %.1f s, all accounted for at '
          '%.1f s; routing spanned %.1f s; %d single POSTs + %d digests '
          '(counts %s)' % (total, published, accounted_at, last - first,
                           len(singles), len(digests),
                           [r.json['digest']['count'] for r in digests]))
