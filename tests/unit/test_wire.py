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
"""Reading notifications from files as they travel on the wire (wire.py).

The files are what an operator hands to the replay command: anything may be
in them.
"""

import json
import sys

import pytest

from nova_error_notifier import wire

INNER = {
    'message_id': 'm-1',
    'publisher_id': 'compute.cmp-1',
    'event_type': 'compute.instance.create.error',
    'priority': 'ERROR',
    'payload': {'instance_id': 'i-1'},
    'timestamp': '2026-12-04 18:00:00.000000',
    '_context_request_id': 'req-1',
    '_context_auth_token': 'tok-secret',
}


def envelope(inner=INNER):
    return {'oslo.version': '2.0', 'oslo.message': json.dumps(inner)}


def read(path):
    return list(wire.read_file(str(path)))


def test_unwrap_accepts_both_wire_versions():
    assert wire.unwrap(envelope()) == INNER
    assert wire.unwrap(INNER) is INNER
    # An envelope whose message is already an object.
    assert wire.unwrap({'oslo.version': '2.0', 'oslo.message': INNER}) == \
        INNER


@pytest.mark.parametrize('body, expected', [
    ({'oslo.message': '{not json'}, 'oslo.message is not JSON'),
    ({'oslo.message': '[1, 2]'}, 'must be a JSON object, not list'),
    ({'oslo.message': 7}, 'must be a JSON object, not int'),
    ('a string', 'must be a JSON object, not str'),
    (None, 'must be a JSON object, not NoneType'),
    ([INNER], 'must be a JSON object, not list'),
])
def test_unwrap_refuses_what_is_no_notification(body, expected):
    with pytest.raises(wire.WireError) as info:
        wire.unwrap(body)
    assert expected in str(info.value)


def test_split_context_is_oslo_messagings():
    inner = dict(INNER)
    inner.update({5: 'a non-string key', '_context_': 'empty name'})
    ctxt, message = wire.split_context(inner)
    assert ctxt == {'request_id': 'req-1', 'auth_token': 'tok-secret',
                    '': 'empty name'}
    assert '_context_request_id' not in message
    assert message[5] == 'a non-string key'
    assert message['payload'] == {'instance_id': 'i-1'}


def test_to_message_splits_the_context(tmp_path):
    message = wire.to_message(envelope(), 'src', str(tmp_path))
    assert message.source == 'src'
    assert message.ctxt['request_id'] == 'req-1'
    assert message.message['event_type'] == INNER['event_type']
    assert not any(k.startswith('_context_') for k in message.message)


def test_refs_are_resolved_relative_to_the_file(tmp_path):
    (tmp_path / 'common').mkdir()
    (tmp_path / 'common' / 'Flavor.json').write_text(json.dumps(
        {'nova_object.name': 'FlavorPayload',
         'nova_object.data': {'flavorid': 'f1', 'vcpus': 1}}))
    # A reference inside the referenced file, relative to *its* directory.
    (tmp_path / 'common' / 'Instance.json').write_text(json.dumps(
        {'nova_object.data': {'uuid': 'i-1', 'flavor': {
            '$ref': 'Flavor.json#'}}}))
    sample = {'event_type': 'instance.create.error', 'priority': 'ERROR',
              'publisher_id': 'nova-compute:cmp-1',
              'payload': {'$ref': 'common/Instance.json#',
                          'nova_object.data': {'host': 'cmp-1'}}}
    path = tmp_path / 'sample.json'
    path.write_text(json.dumps(sample))
    [message] = read(path)
    data = message.message['payload']['nova_object.data']
    # The sample's own keys are merged over the referenced ones.
    assert data['host'] == 'cmp-1'
    assert data['uuid'] == 'i-1'
    assert data['flavor']['nova_object.data']['flavorid'] == 'f1'


def test_a_missing_ref_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / 'sample.json'
    path.write_text(json.dumps({'event_type': 'e', 'payload': {
        '$ref': '../../etc/passwd-not-there.json#'}}))
    [error] = read(path)
    assert isinstance(error, wire.WireError)
    assert 'cannot resolve $ref' in str(error)
    assert str(path) in str(error)


def test_a_ref_loop_stops(tmp_path):
    (tmp_path / 'a.json').write_text(json.dumps({'$ref': 'b.json#'}))
    (tmp_path / 'b.json').write_text(json.dumps({'$ref': 'a.json#'}))
    path = tmp_path / 'sample.json'
    path.write_text(json.dumps({'event_type': 'e',
                                'payload': {'$ref': 'a.json#'}}))
    [error] = read(path)
    assert isinstance(error, wire.WireError)
    assert 'nesting deeper than %d' % wire.MAX_REF_DEPTH in str(error)


def test_a_non_string_ref_is_left_alone(tmp_path):
    message = wire.to_message({'event_type': 'e', 'payload': {'$ref': 7}},
                              'src', str(tmp_path))
    assert message.message['payload'] == {'$ref': 7}


def test_json_lines_one_error_hides_nothing(tmp_path):
    path = tmp_path / 'capture.jsonl'
    path.write_text('\n'.join([
        json.dumps(envelope()),
        '',
        '{broken',
        json.dumps(dict(INNER, message_id='m-2')),
        '"just a string"',
    ]) + '\n')
    items = read(path)
    assert len(items) == 4
    first, broken, second, string = items
    assert first.source == '%s:1' % path
    assert first.message['message_id'] == 'm-1'
    assert isinstance(broken, wire.WireError)
    assert str(broken).startswith('%s:3: not JSON' % path)
    assert second.source == '%s:4' % path
    assert second.message['message_id'] == 'm-2'
    assert isinstance(string, wire.WireError)
    assert str(string).startswith('%s:5: ' % path)


def test_a_json_list_labels_each_item(tmp_path):
    path = tmp_path / 'list.json'
    path.write_text(json.dumps([envelope(), 42, INNER]))
    first, bad, last = read(path)
    assert first.source == '%s[0]' % path
    assert isinstance(bad, wire.WireError)
    assert str(bad).startswith('%s[1]: ' % path)
    assert last.source == '%s[2]' % path


def test_one_document_keeps_the_plain_file_name(tmp_path):
    path = tmp_path / 'one.json'
    path.write_text(json.dumps(envelope(), indent=2))
    [message] = read(path)
    assert message.source == str(path)


def test_an_unreadable_file_is_one_error(tmp_path):
    [error] = read(tmp_path / 'missing.json')
    assert isinstance(error, wire.WireError)
    assert 'missing.json' in str(error)
    [error] = read(tmp_path)          # a directory
    assert isinstance(error, wire.WireError)


def test_invalid_utf8_is_replaced_not_fatal(tmp_path):
    path = tmp_path / 'bytes.json'
    path.write_bytes(b'{"event_type": "compute.instance.create.error", '
                     b'"message_id": "m-\xff\xfe"}')
    [message] = read(path)
    assert message.message['event_type'] == 'compute.instance.create.error'
    assert message.message['message_id'] == 'm-\ufffd\ufffd'


@pytest.mark.parametrize('name, text', [
    ('deep.json', '[' * 100000 + ']' * 100000),
    ('deep.jsonl', '{}\n' + '[' * 100000 + ']' * 100000 + '\n{}\n'),
])
def test_deeply_nested_json_is_an_error(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    items = read(path)
    assert any(isinstance(i, wire.WireError) for i in items)


def test_nesting_json_reads_but_the_walk_cannot_is_an_error(tmp_path):
    path = tmp_path / 'deep.json'
    depth = 700
    path.write_text('{"event_type": "e", "payload": %s}' % (
        '[' * depth + ']' * depth))
    # Python's default limit: json reads 700 levels, the walk over them
    # (two frames a level) does not get through.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        [error] = read(path)
    finally:
        sys.setrecursionlimit(limit)
    assert isinstance(error, wire.WireError)
    assert str(error) == '%s: nested too deeply' % path
