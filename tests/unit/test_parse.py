"""Unit tests of the legacy and versioned parsers on our own fixtures."""

import dataclasses
import datetime

import pytest

from nova_error_notifier.parse import common
from nova_error_notifier.parse import legacy
from nova_error_notifier.parse import versioned
from nova_error_notifier import record as rec
from tests.unit import nova_messages as nm


def _legacy(event_type, payload, priority='ERROR', ctxt=None,
            publisher='compute.hv-12'):
    return legacy.parse(priority, nm.context() if ctxt is None else ctxt,
                        publisher, event_type, payload, nm.metadata())


def _versioned(event_type, payload, priority='ERROR', ctxt=None,
               publisher='nova-compute:hv-12'):
    return versioned.parse(priority, nm.context() if ctxt is None else ctxt,
                           publisher, event_type, payload, nm.metadata())


def _all_text(record):
    return repr(dataclasses.asdict(record))


class TestLegacy:

    def test_instance_create_error_with_nova_exception(self):
        payload = nm.legacy_usage(
            exception=repr({'kwargs': {'flavor_id': '7', 'code': 400},
                            'message': 'Flavor 7 is too small.',
                            'class': 'FlavorDiskTooSmall'}),
            message='Flavor 7 is too small.', code=400)
        record = _legacy('compute.instance.create.error', payload)
        assert record.event_type == 'compute.instance.create.error'
        assert record.format == 'legacy'
        assert record.priority == 'ERROR'
        assert record.exception == 'FlavorDiskTooSmall'
        assert record.remote is False
        assert record.message == 'Flavor 7 is too small.'
        assert record.code == 400
        assert dict(record.arguments) == {'flavor_id': '7'}
        assert record.instance_uuid == nm.INSTANCE
        assert record.instance_name == 'batch-1'
        assert record.instance_host == 'hv-12'
        assert record.instance_project_id == nm.PROJECT
        assert record.state == 'building'
        assert record.request_id == nm.REQUEST
        assert record.project_id == nm.PROJECT
        assert record.user_id == nm.USER
        assert record.user_name == 'erin'
        assert record.project_name == 'billing'
        assert record.publisher_service == 'compute'
        assert record.publisher_host == 'hv-12'
        assert record.message_id == nm.metadata()['message_id']
        assert record.timestamp == datetime.datetime(
            2026, 10, 5, 8, 30, 0, 123456, tzinfo=datetime.timezone.utc)
        assert record.synthetic_events == (rec.CREATE_FAILED,)

    def test_non_nova_exception_keeps_message_and_reads_reason(self):
        # exception_to_dict() puts the class name in "message" for
        # exceptions that are not Nova's; the repr holds the real text.
        payload = nm.legacy_usage(
            exception='OSError("[Errno 28] No space left on device")',
            message='OSError', code=500)
        record = _legacy('compute.instance.create.error', payload)
        assert record.exception == 'OSError'
        assert record.message == 'OSError'
        assert record.reason == '[Errno 28] No space left on device'
        assert record.code == 500

    def test_conductor_failure_with_remote_exception(self):
        payload = {
            'request_spec': nm.request_spec_with_token(),
            'instance_properties': {'uuid': nm.INSTANCE},
            'instance_id': nm.INSTANCE, 'state': 'error',
            'method': 'build_instances',
            'reason': repr({'kwargs': {'reason': 'All hosts are full.',
                                       'code': 500},
                            'message': 'No valid host was found. All hosts '
                                       'are full.',
                            'class': 'NoValidHost_Remote'}),
        }
        record = _legacy('compute_task.build_instances', payload,
                         publisher='compute_task.cond-1')
        assert record.exception == 'NoValidHost'
        assert record.remote is True
        assert record.message == 'No valid host was found. All hosts are ' \
                                 'full.'
        assert record.reason is None     # already part of the message
        assert record.code == 500
        assert record.state == 'error'
        assert record.instance_uuid == nm.INSTANCE
        assert record.location == 'build_instances'
        assert record.publisher_service == 'compute_task'
        assert record.publisher_host == 'cond-1'
        assert set(record.synthetic_events) == {rec.CREATE_FAILED,
                                                rec.ERROR_STATE}
        assert nm.TOKEN not in _all_text(record)

    def test_wrap_exception_reads_instance_from_args_only(self):
        instance = {'uuid': nm.INSTANCE, 'display_name': 'db-old',
                    'host': 'hv-3', 'project_id': nm.PROJECT,
                    'info_cache': {'_context': {'auth_token': nm.TOKEN}}}
        payload = {
            'exception': repr({'kwargs': {'reason': 'disk', 'code': 500},
                               'message': 'Resize error: disk',
                               'class': 'ResizeError'}),
            'args': {'instance': instance, 'clean_shutdown': True,
                     'request_spec': {'_context': {'auth_token': nm.TOKEN}}},
        }
        record = _legacy('resize_instance', payload)
        assert record.event_type == 'resize_instance'
        assert record.exception == 'ResizeError'
        assert record.instance_uuid == nm.INSTANCE
        assert record.instance_name == 'db-old'
        assert record.instance_host == 'hv-3'
        assert nm.TOKEN not in _all_text(record)

    def test_wrap_exception_with_serialized_instance_object(self):
        payload = {
            'exception': repr({'kwargs': {'code': 500}, 'message': 'boom',
                               'class': 'InstanceFaultRollback'}),
            'args': {'instance': nm.nova_object('Instance', {
                'uuid': nm.INSTANCE, 'display_name': 'obj-form'})},
        }
        record = _legacy('live_migration', payload)
        assert record.instance_uuid == nm.INSTANCE
        assert record.instance_name == 'obj-form'

    def test_libvirt_error_repr_reason(self):
        payload = {'ip': '203.0.113.5', 'method': '_connect',
                   'reason': "libvirtError('Cannot recv data: Connection "
                             "reset by peer')"}
        record = _legacy('compute.libvirt.error', payload,
                         ctxt={'request_id': 'req-x'})
        assert record.exception == 'libvirtError'
        assert record.message == 'Cannot recv data: Connection reset by peer'
        assert record.project_id is None
        assert record.instance_uuid is None
        assert record.synthetic_events == ()

    @pytest.mark.parametrize('old_state,expected', [
        ('building', (rec.CREATE_FAILED, rec.ERROR_STATE)),
        ('active', (rec.ERROR_STATE,)),
        (None, (rec.ERROR_STATE,)),
    ])
    def test_update_into_error(self, old_state, expected):
        payload = nm.legacy_usage(state='error', old_state=old_state)
        record = _legacy('compute.instance.update', payload, priority='INFO')
        assert record is not None
        assert record.state == 'error'
        assert record.synthetic_events == expected
        assert record.exception is None

    @pytest.mark.parametrize('event_type,payload', [
        ('compute.instance.update',
         nm.legacy_usage(state='error', old_state='error')),
        ('compute.instance.update',
         nm.legacy_usage(state='active', old_state='building')),
        ('compute.instance.create.end', nm.legacy_usage(state='active')),
        ('compute.instance.delete.start', nm.legacy_usage(state='error')),
    ])
    def test_info_noise_is_not_an_error(self, event_type, payload):
        result = _legacy(event_type, payload, priority='INFO')
        assert not isinstance(result, rec.ErrorRecord)
        if result is not None:        # a build that succeeded
            assert isinstance(result, rec.Resolution)
            assert event_type in ('compute.instance.update',
                                  'compute.instance.create.end')
            assert result.instance_uuid == nm.INSTANCE

    def test_error_priority_with_unknown_shape_is_still_an_error(self):
        record = _legacy('compute.something_new', {'foo': 1})
        assert record is not None
        assert record.exception is None
        assert record.event_type == 'compute.something_new'

    def test_dot_error_event_at_other_priority(self):
        record = _legacy('compute.instance.shelve.error', nm.legacy_usage(),
                         priority='WARN')
        assert record is not None

    def test_fields_of_wrong_types_are_ignored(self):
        payload = nm.legacy_usage(display_name=['not', 'a', 'string'],
                                  state=42, code='five hundred',
                                  exception={'class': 7})
        record = _legacy('compute.instance.create.error', payload,
                         ctxt={'request_id': 12345, 'user_name': {}})
        assert record.instance_name is None
        assert record.state == '42'
        assert record.code is None
        assert record.exception is None
        assert record.request_id == '12345'
        assert record.user_name is None


class TestVersioned:

    def test_instance_error_with_fault(self):
        data = nm.versioned_instance(fault=nm.exception_payload())
        record = _versioned('instance.create.error', nm.nova_object(
            'InstanceCreatePayload', data, '1.13'))
        assert record.format == 'versioned'
        assert record.exception == 'FlavorDiskTooSmall'
        assert record.message.startswith('Flavor\'s disk is too small')
        assert record.location == 'nova.compute.manager._build_resources'
        assert record.details.startswith('Traceback (most recent call last)')
        assert '\n,' not in record.details
        assert record.instance_uuid == nm.INSTANCE
        assert record.instance_name == 'batch-1'
        assert record.instance_host == 'hv-12'
        assert record.publisher_service == 'nova-compute'
        assert record.publisher_host == 'hv-12'
        assert record.synthetic_events == (rec.CREATE_FAILED,)

    def test_compute_task_error_cuts_remote_traceback(self):
        remote_msg = ('No valid host was found. \nTraceback (most recent '
                      'call last):\n\n  File "x.py", line 1, in f\n\n'
                      'nova.exception.NoValidHost: No valid host\n')
        payload = nm.nova_object('ComputeTaskPayload', {
            'instance_uuid': nm.INSTANCE, 'state': 'error',
            'request_spec': nm.nova_object('RequestSpecPayload', {
                'instance_uuid': nm.INSTANCE, 'project_id': nm.PROJECT}),
            'reason': nm.exception_payload('NoValidHost_Remote', remote_msg,
                                           traceback=None)})
        record = _versioned('compute_task.build_instances.error', payload,
                            publisher='nova-conductor:cond-1')
        assert record.exception == 'NoValidHost'
        assert record.remote is True
        assert record.message == 'No valid host was found. '
        assert 'Traceback' not in record.message
        assert 'nova.exception.NoValidHost' in record.details
        assert record.instance_uuid == nm.INSTANCE
        assert record.instance_project_id == nm.PROJECT
        assert set(record.synthetic_events) == {rec.CREATE_FAILED,
                                                rec.ERROR_STATE}

    def test_compute_exception_has_no_instance(self):
        payload = nm.exception_payload('KeyPairExists',
                                       "Key pair 'k' already exists.",
                                       module='nova.compute.api',
                                       function='_create_key_pair')
        record = _versioned('compute.exception', payload,
                            publisher='nova-api:api-1')
        assert record.exception == 'KeyPairExists'
        assert record.instance_uuid is None
        assert record.publisher_service == 'nova-api'

    def test_request_id_falls_back_to_payload(self):
        data = nm.versioned_instance(fault=nm.exception_payload())
        record = _versioned('instance.reboot.error',
                            nm.nova_object('InstanceActionPayload', data),
                            ctxt={})
        assert record.request_id == nm.REQUEST
        assert record.project_id == nm.PROJECT

    @pytest.mark.parametrize('old_state,is_error', [
        ('building', True), ('active', True), ('error', False)])
    def test_update_into_error(self, old_state, is_error):
        record = _versioned('instance.update',
                            nm.versioned_update(old_state, 'error'),
                            priority='INFO')
        assert (record is not None) == is_error
        if is_error:
            assert rec.ERROR_STATE in record.synthetic_events
            assert ((rec.CREATE_FAILED in record.synthetic_events) ==
                    (old_state == 'building'))

    def test_update_to_active_is_a_resolution(self):
        result = _versioned('instance.update',
                            nm.versioned_update('building', 'active'),
                            priority='INFO')
        assert isinstance(result, rec.Resolution)
        assert result.instance_uuid == nm.INSTANCE
        assert _versioned('instance.update',
                          nm.versioned_update('active', 'active'),
                          priority='INFO') is None

    def test_nova_object_data_not_a_dict_is_malformed(self):
        with pytest.raises(common.MalformedNotification):
            _versioned('instance.create.error',
                       {'nova_object.data': 'nope'})


class TestEnvelope:

    @pytest.mark.parametrize('event_type,payload,publisher', [
        (None, {}, 'compute.h'),
        (42, {}, 'compute.h'),
        ('', {}, 'compute.h'),
        ('x' * 1000, {}, 'compute.h'),
        ('compute.instance.create.error', None, 'compute.h'),
        ('compute.instance.create.error', ['a'], 'compute.h'),
        ('compute.instance.create.error', 'text', 'compute.h'),
        ('compute.instance.create.error', {}, 12),
    ])
    def test_malformed(self, event_type, payload, publisher):
        with pytest.raises(common.MalformedNotification):
            legacy.parse('ERROR', {}, publisher, event_type, payload, {})


class TestExceptionStrings:

    def test_dict_literal(self):
        parsed = common.parse_exception(repr({
            'kwargs': {'host': 'hv-9', 'code': 404, 'auth_token': 'tok'},
            'message': 'Compute host hv-9 could not be found.',
            'class': 'nova.exception.ComputeHostNotFound'}))
        assert parsed.exception == 'ComputeHostNotFound'
        assert parsed.code == 404
        # A credential is not kept at all, not even masked.
        assert dict(parsed.arguments) == {'host': 'hv-9'}

    @pytest.mark.parametrize('key', [
        'adminPass', 'admin_password', 'password', 'private_key',
        'ssh_key', 'token', 'auth_token', 'secret', 'encryption_key',
        'key_data', 'key', 'new_pass', 'credentials', 'client_secret'])
    def test_secret_arguments_are_never_kept(self, key):
        parsed = common.parse_exception(repr({
            'kwargs': {key: 'S3cr3t-value', 'reason': 'bad'},
            'message': 'Failed.', 'class': 'nova.exception.Invalid'}))
        assert 'S3cr3t-value' not in repr(parsed.arguments)
        assert key not in dict(parsed.arguments)

    def test_harmless_arguments_are_kept(self):
        parsed = common.parse_exception(repr({
            'kwargs': {'key_name': 'mykey', 'host': 'h', 'flavor_id': 3},
            'message': 'x', 'class': 'nova.exception.KeypairNotFound'}))
        assert dict(parsed.arguments) == {'key_name': 'mykey', 'host': 'h',
                                          'flavor_id': 3}

    def test_credentials_in_messages_are_masked(self):
        record = _legacy('compute.instance.create.error', {
            'instance_id': 'i-1', 'state': 'building',
            'exception': "InstancePasswordSetFailed('x')",
            'message': "Failed: {'adminPass': 'Top-S3cret-1'} and "
                       "password=Top-S3cret-2"})
        text = _all_text(record)
        assert 'Top-S3cret-1' not in text and 'Top-S3cret-2' not in text
        assert 'Failed:' in record.message

    @pytest.mark.parametrize('text,cls,message', [
        ("libvirtError('a')", 'libvirtError', 'a'),
        ('libvirtError("it\'s")', 'libvirtError', "it's"),
        ('TimeoutError()', 'TimeoutError', None),
        ('Exception(\'x\', 3)', 'Exception', 'x'),
        ('oslo_messaging.exceptions.MessagingTimeout("t")',
         'MessagingTimeout', 't'),
        ('plain words here', None, 'plain words here'),
        ('{not a literal', None, '{not a literal'),
        ('Broken(unclosed', None, 'Broken(unclosed'),
    ])
    def test_forms(self, text, cls, message):
        parsed = common.parse_exception(text)
        assert parsed.exception == cls
        assert parsed.message == message

    def test_eval_is_never_used(self):
        parsed = common.parse_exception(
            "{'class': __import__('os').system('false')}")
        assert parsed.exception is None

    def test_huge_and_deep_literals_do_not_blow_up(self):
        deep = '{' * 5000 + '}' * 5000
        assert common.parse_exception(deep).exception is None
        huge = repr({'class': 'X', 'message': 'm' * 200000})
        parsed = common.parse_exception(huge)
        assert len(parsed.message) <= common.MAX_MESSAGE + 20

    def test_non_string_non_dict(self):
        assert common.parse_exception(12).exception is None
        assert common.parse_exception(None).message is None


class TestHelpers:

    @pytest.mark.parametrize('publisher,expected', [
        ('nova-compute:hv-1.example.org',
         ('nova-compute', 'hv-1.example.org')),
        ('compute.hv-1.example.org', ('compute', 'hv-1.example.org')),
        ('scheduler', ('scheduler', None)),
        (None, (None, None)),
        (5, (None, None)),
    ])
    def test_split_publisher(self, publisher, expected):
        assert common.split_publisher(publisher) == expected

    @pytest.mark.parametrize('value,expected', [
        ('2026-10-05 08:30:00.123456',
         datetime.datetime(2026, 10, 5, 8, 30, 0, 123456,
                           tzinfo=datetime.timezone.utc)),
        ('2026-10-05T08:30:00Z',
         datetime.datetime(2026, 10, 5, 8, 30, tzinfo=datetime.timezone.utc)),
        ('yesterday', None),
        (None, None),
        (1700000000, None),
        # Out of Python's range once in UTC: the nearest time it has.
        ('9999-12-31T23:59:59.999999-23:59',
         datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)),
        ('0001-01-01T00:00:00+23:59',
         datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)),
        ('9999-12-31 23:59:59', datetime.datetime(
            9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)),
        ('2026-13-45 99:99:99', None),
        ('2026-10-05T08:30:00+05:00', datetime.datetime(
            2026, 10, 5, 3, 30, tzinfo=datetime.timezone.utc)),
    ])
    def test_parse_timestamp(self, value, expected):
        assert common.parse_timestamp(value) == expected

    def test_year_9999_keeps_the_error(self):
        metadata = dict(nm.metadata(),
                        timestamp='9999-12-31 23:59:59.999999-23:59')
        record = legacy.parse(
            'ERROR', nm.context(), 'compute.hv-1',
            'compute.instance.create.error',
            {'instance_id': 'i-9', 'state': 'building',
             'exception': "X('y')", 'message': 'X'}, metadata)
        assert record.timestamp.year == 9999
        assert rec.from_dict(rec.to_dict(record)) == record

    def test_long_ids_stay_apart(self):
        first = 'req-' + 'a' * 296
        second = 'req-' + 'a' * 295 + 'b'
        one, two = common.ident(first), common.ident(second)
        assert one != two
        assert len(one) <= common.MAX_SHORT and len(two) <= common.MAX_SHORT
        assert one.startswith('req-aaaa')
        assert common.ident('req-short') == 'req-short'
        assert common.ident(None) is None and common.ident(True) is None

    def test_text_bounds_and_surrogates(self):
        assert common.text('a' * 300).endswith('...[truncated]')
        cleaned = common.text('bad \ud800 surrogate')
        cleaned.encode('utf-8')          # must not raise
        assert common.text(True) is None
        assert common.text({'a': 1}) is None
        assert common.text(3) == '3'

    def test_class_name(self):
        assert common.class_name('nova.exception_Remote.NoValidHost_Remote') \
            == ('NoValidHost', True)
        assert common.class_name('X') == ('X', False)
        assert common.class_name(None) == (None, False)
