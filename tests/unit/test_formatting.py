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
"""What every driver shares to turn an alert into text."""

import dataclasses
import datetime
import json
import unicodedata

import jinja2
from jinja2 import sandbox
import markupsafe
import pytest

from nova_error_notifier import alert as alert_mod
from nova_error_notifier import formatting
from nova_error_notifier import record as rec
from nova_error_notifier import version
from tests.unit import test_email as email_tests

UUID = email_tests.UUID
STAMP = datetime.datetime(2026, 10, 2, 14, 6, 15, 220000,
                          tzinfo=datetime.timezone.utc)


# -- summaries and next steps ------------------------------------------------

@pytest.mark.parametrize('event_types,synthetic,name,expected', [
    (('instance.resize.error',), (), 'db', 'resize of db (b5e2c3f4\u2026) '
     'failed'),
    (('compute.instance.update',), (rec.ERROR_STATE,), 'db',
     'db (b5e2c3f4\u2026) entered ERROR'),
    (('compute.libvirt.error',), (), None, None),
])
def test_summaries(event_types, synthetic, name, expected):
    alert = email_tests.make_alert(name=name, event_type=event_types[0],
                                   synthetic_events=synthetic,
                                   instance_uuid=UUID if expected else None)
    if expected is None:
        assert formatting.summary(alert) == 'libvirt failed on ctl-01'
    else:
        assert formatting.summary(alert) == expected


def test_summary_of_a_build_failure_and_of_a_nameless_instance():
    alert = email_tests.make_alert(name='web-01')
    assert formatting.summary(alert) == 'build of web-01 (b5e2c3f4\u2026) ' \
        'failed'
    alert = email_tests.make_alert(name=None, event_type='compute.exception',
                                   synthetic_events=())
    assert formatting.summary(alert) == 'request of instance ' \
        'b5e2c3f4\u2026 failed'


def test_next_steps():
    alert = email_tests.make_alert()
    assert formatting.next_steps(alert) == [
        'openstack server event show %s req-8e4f2a1c' % UUID,
        'openstack server show %s -c status -c fault' % UUID,
        'openstack server event list %s' % UUID,
        'openstack compute service list --host ctl-01']
    no_instance = dataclasses.replace(alert, instance_uuid=None)
    assert formatting.next_steps(no_instance) == [
        'grep req-8e4f2a1c in the logs of the nova services on ctl-01',
        'openstack compute service list --host ctl-01']
    bare = dataclasses.replace(no_instance, host=None)
    assert formatting.next_steps(bare) == [
        'grep req-8e4f2a1c in the logs of the nova services on the '
        'controllers']
    assert formatting.next_steps(dataclasses.replace(
        bare, request_id=None)) == []


# -- timestamps --------------------------------------------------------------

def test_timestamps():
    assert formatting.iso_timestamp(STAMP) == '2026-10-02T14:06:15.220000Z'
    assert formatting.iso_timestamp(None) is None
    assert formatting.readable_timestamp(STAMP) == '2026-10-02 14:06:15 UTC'
    assert formatting.readable_timestamp(None) == '-'


# -- escaping ----------------------------------------------------------------

@pytest.mark.parametrize('value', list(email_tests.HOSTILE_VALUES.values()),
                         ids=list(email_tests.HOSTILE_VALUES))
def test_clean_header_leaves_nothing_a_header_could_break_on(value):
    out = formatting.clean_header(value)
    assert len(out) <= formatting.MAX_SUBJECT
    assert '=?' not in out and '?=' not in out
    assert out == ' '.join(out.split())
    for char in out:
        assert unicodedata.category(char) not in (
            'Cc', 'Cf', 'Zl', 'Zp', 'Cs'), 'U+%04X in %r' % (ord(char), out)
    out.encode('utf-8')      # no lone surrogate left
    assert formatting.header_safe(out)


def test_clean_header_keeps_ordinary_text():
    assert formatting.clean_header('  web-01  caf\xe9 \u65e5\u672c ') == \
        'web-01 caf\xe9 \u65e5\u672c'
    assert formatting.clean_header('a=b ?x? =y') == 'a=b ?x? =y'
    assert formatting.clean_header('x' * 300) == 'x' * 199 + '\u2026'
    assert formatting.clean_header(None) == ''


def test_header_safe():
    assert formatting.header_safe('web-01 caf\xe9')
    for bad in ('a\nb', 'a\rb', 'a\u202eb', 'a\u200bb', 'a\ud800b',
                'a\x00b'):
        assert not formatting.header_safe(bad), repr(bad)


def test_encodable_replaces_lone_surrogates():
    assert formatting.encodable('vm\udc80x \u00e9') == 'vm?x \u00e9'


def test_text_block_prefixes_every_line():
    value = 'Traceback:\r\n  File "x"\u2028forged\x0bvt\n\n  \n'
    assert formatting.text_block(value) == '\n'.join([
        '  | Traceback:', '  |   File "x"', '  | forged', '  | vt'])
    assert formatting.text_block('one \x1b[2J') == '  | one \\x1b[2J'


def test_html_block_is_one_source_line():
    block = formatting.html_block('<b>x</b>\nline 2\r\n')
    assert isinstance(block, markupsafe.Markup)
    assert block == '&lt;b&gt;x&lt;/b&gt;&#10;line 2'
    assert '\n' not in block


def test_display_copy_escapes_every_text_field():
    alert = dataclasses.replace(
        email_tests.base_alert(), instance_name='a\nb',
        event_types=('x\ny',), details='d1\nd2',
        enrichment=email_tests.enrichment('e\x1b'))
    copy = formatting.display_copy(alert)
    assert copy.instance_name == 'a\\nb'
    assert copy.event_types == ('x\\ny',)
    assert copy.details == '  | d1\n  | d2'
    assert copy.enrichment['server']['name'] == 'e\\x1b'
    assert copy.enrichment['fault']['details'] == '  | e\\x1b'
    assert copy.enrichment['action']['events'][0]['traceback'] == \
        '  | e\\x1b'
    assert copy.enrichment['fault']['code'] == 500
    assert copy.count == alert.count and copy.code == alert.code
    # The alert itself is left as it was.
    assert alert.instance_name == 'a\nb'
    digest = alert_mod.digest('d-1', 'mail', 'r', (alert,), 1, 'x\ny')
    copied = formatting.display_copy(digest, formatting.clean_header,
                                     formatting.clean_header)
    assert copied.summary == 'x y'
    assert copied.members == (alert,)     # members: copy each one


def test_json_string_content_escapes_what_could_break_out():
    text = formatting.json_string_content(
        'a"b\\c{d}e[f]g,h:i\nj\u202ek \u00e9')
    assert text == ('a\\u0022b\\u005cc\\u007bd\\u007de\\u005bf\\u005dg'
                    '\\u002ch\\u003ai\\u000aj\\u202ek \u00e9')
    assert not set(text) & set('"{}[],:\n')
    assert json.loads('"%s"' % text) == 'a"b\\c{d}e[f]g,h:i\nj\u202ek \u00e9'


def test_json_string_content_of_astral_and_lone_surrogates():
    assert formatting.json_string_content('\U000e0041') == \
        '\\udb40\\udc41'
    assert formatting.json_string_content('x\ud800') == 'x?'


@pytest.mark.parametrize('value,expected', [
    (None, 'null'), (True, 'true'), (False, 'false'), (7, '7'),
    (1.5, '1.5'), (float('nan'), 'null'), ('a"b', '"a\\u0022b"'),
    ({'k"': [1, None]}, '{"k\\u0022": [1, null]}'), ((1, 'x'), '[1, "x"]'),
    (formatting.JSONText('{"raw": 1}'), '{"raw": 1}'),
])
def test_json_value(value, expected):
    assert formatting.json_value(value) == expected


# -- templates ---------------------------------------------------------------

def environment(tmp_path, kind, text, name='t'):
    (tmp_path / name).write_text(text, encoding='utf-8')
    return formatting.Environment(kind, [str(tmp_path)]).get_template(name)


def test_environment_kinds(tmp_path):
    with pytest.raises(ValueError):
        formatting.Environment('xml', [str(tmp_path)])
    for kind in formatting.KINDS:
        env = formatting.Environment(kind, [str(tmp_path)])
        assert isinstance(env, sandbox.SandboxedEnvironment)
        assert env.undefined is jinja2.StrictUndefined
        assert env.kind == kind


def test_text_keeps_the_trailing_newline_and_has_upper_first(tmp_path):
    template = environment(tmp_path, formatting.TEXT,
                           '{{ x | upper_first }} <{{ y }}>\n')
    assert template.render(x='build failed', y='b') == 'Build failed <b>\n'


def test_html_is_autoescaped(tmp_path):
    template = environment(tmp_path, formatting.HTML,
                           '<p>{{ x | upper_first }}</p>\n')
    assert template.render(x='a<b>&') == '<p>A&lt;b&gt;&amp;</p>'


@pytest.mark.parametrize('kind', formatting.KINDS)
def test_every_kind_is_sandboxed_and_strict(tmp_path, kind):
    template = environment(tmp_path, kind,
                           '{{ x.__class__.__init__.__globals__ }}')
    with pytest.raises(jinja2.exceptions.SecurityError):
        template.render(x=alert_mod.sample())
    template = environment(tmp_path, kind, '{{ nope.deeper }}', 'u')
    with pytest.raises(jinja2.UndefinedError):
        template.render()


def test_json_values_are_encoded_whatever_the_filter(tmp_path):
    hostile = '", "evil": "x'
    template = environment(tmp_path, formatting.JSON, (
        '{"a": "{{ v }}", "b": "{{ v | safe }}", "c": {{ v | tojson }}, '
        '"d": {{ n }}, "e": {{ obj }}, "f": "{{ v ~ "" }}", '
        '"g": {{ v | tojson | safe }}}'))
    body = json.loads(template.render(v=hostile, n=3,
                                      obj={'k': [True, None]}))
    assert body == {'a': hostile, 'b': hostile, 'c': hostile, 'd': 3,
                    'e': {'k': [True, None]}, 'f': hostile, 'g': hostile}


def test_json_has_no_upper_first(tmp_path):
    with pytest.raises(jinja2.TemplateError):
        environment(tmp_path, formatting.JSON, '{{ x | upper_first }}')


def test_first_directory_wins(tmp_path):
    first, second = tmp_path / 'a', tmp_path / 'b'
    first.mkdir()
    second.mkdir()
    (first / 'one.txt').write_text('from a')
    (second / 'one.txt').write_text('from b')
    (second / 'two.txt').write_text('only b')
    env = formatting.Environment(formatting.TEXT, [str(first), str(second)])
    assert env.get_template('one.txt').render() == 'from a'
    assert env.get_template('two.txt').render() == 'only b'


def test_load_template(tmp_path):
    path = tmp_path / 'body.json.j2'
    path.write_text('{"name": "{{ name }}"}')
    template = formatting.load_template(str(path), formatting.JSON)
    assert json.loads(template.render(name='a"b')) == {'name': 'a"b'}
    with pytest.raises(jinja2.TemplateNotFound):
        formatting.load_template(str(tmp_path / 'missing'), formatting.JSON)


def test_template_context():
    alert = dataclasses.replace(email_tests.make_alert(name='web-01'),
                                first_seen=STAMP, last_seen=None)
    context = formatting.template_context(alert, 'Region\nOne')
    assert context == {
        'alert': alert, 'region': 'Region One',
        'summary': 'build of web-01 (b5e2c3f4\u2026) failed',
        'first_seen': '2026-10-02 14:06:15 UTC', 'last_seen': '-',
        'next_steps': formatting.next_steps(alert),
        'version': version.version_string()}
    digest = alert_mod.digest('d-1', 'mail', 'r', (alert,), 3, '3 failed')
    assert formatting.template_context(digest, None)['summary'] == '3 failed'
    assert formatting.template_context(digest, None)['region'] == ''


def test_user_agent():
    assert formatting.user_agent() == 'nova-error-notifier/%s' % (
        version.version_string())


def test_hostile_sample_is_hostile_in_every_text():
    sample = formatting.hostile_sample('hook')
    plain = alert_mod.sample('hook')
    assert sample.receiver == 'hook' and sample.count == plain.count
    assert sample.first_seen is not None and sample.test is plain.test
    for name in ('instance_name', 'message', 'exception', 'request_id',
                 'host', 'id', 'rule'):
        assert getattr(sample, name) == formatting.HOSTILE_TEXT, name
    assert sample.event_types == (formatting.HOSTILE_TEXT,)
    assert sample.enrichment['fault']['message'] == formatting.HOSTILE_TEXT
    assert sample.enrichment['fault']['code'] == 500
    assert formatting.HOSTILE_MARK in formatting.HOSTILE_TEXT
    for char in '"\\{}[],:\n\r\x00\u2028\u202e':
        assert char in formatting.HOSTILE_TEXT
