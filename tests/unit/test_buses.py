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
"""Several buses: which are found, their defaults, what start-up refuses,
and one listener per bus in a listener process (oslo.messaging's fake
transport, a real SQLite outbox)."""

import logging
import threading
import time

from oslo_config import cfg
import oslo_messaging
import pytest

from nova_error_notifier import bus as bus_mod
from nova_error_notifier.cmd import service as cmd_service
from nova_error_notifier import config
from nova_error_notifier import listener
from nova_error_notifier import opts
from nova_error_notifier import outbox
from nova_error_notifier import record as rec
from nova_error_notifier import redact
from nova_error_notifier import service
from nova_error_notifier import workers
from tests.functional import service_process
from tests.unit import nova_messages as nm
from tests.unit import outbox_fixtures as fx

PASSWORD = 'Bus-Pw-Never-Shown-4c1'
R2_URL = 'rabbit://nen:%s@r2-ctl:5672/' % PASSWORD
R3_URL = 'rabbit://nen:%s@r3-ctl:5672/three' % PASSWORD


def make_conf(tmp_path, text):
    path = tmp_path / 'buses.conf'
    path.write_text(text)
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(['--config-file', str(path)], project='nova_error_notifier',
         default_config_files=[])
    return conf


def load(tmp_path, text):
    return bus_mod.load(make_conf(tmp_path, text))


def problems_of(tmp_path, text):
    conf = make_conf(tmp_path, text + '\n[delivery]\nstate_dir = %s\n'
                     % tmp_path)
    with pytest.raises(config.ConfigError) as info:
        config.load(conf)
    return info.value.problems


# -- which buses, with what defaults -----------------------------------------

def test_without_bus_sections_the_default_bus_is_the_only_one(tmp_path):
    buses, problems, warnings = load(
        tmp_path, '[DEFAULT]\ntransport_url = %s\n' % R2_URL)
    assert (problems, warnings) == ([], [])
    [default] = buses
    assert default.name is None and default.transport_url is None
    assert default.region is None              # no region by default
    assert default.pool == 'nova-error-notifier'
    assert default.exchange == 'nova'
    assert default.topics == ('notifications', 'versioned_notifications')
    assert default.label == 'the default bus'


def test_the_default_bus_without_any_url_is_still_listened_to(tmp_path):
    [default], problems, _ = load(tmp_path, '')
    assert problems == [] and default.name is None


def test_the_default_bus_region_is_listener_region_name(tmp_path):
    [default], _, _ = load(tmp_path, '[listener]\nregion_name = RegionOne\n')
    assert default.region == 'RegionOne'


def test_named_buses_take_listener_defaults(tmp_path):
    buses, problems, _ = load(tmp_path, '\n'.join([
        '[listener]', 'pool = nen-pool', 'exchange = nova-cells',
        'topics = notifications',
        '[bus:region-two]', 'transport_url = %s' % R2_URL,
        '[bus:cell3]', 'transport_url = %s' % R3_URL,
        'region_name = RegionThree', 'pool = other-pool',
        'exchange = nova3', 'topics = versioned_notifications, extra', '']))
    assert problems == []
    # Without [DEFAULT] transport_url, only the named buses; by name.
    assert [b.name for b in buses] == ['cell3', 'region-two']
    cell3, two = buses
    assert two.region == 'region-two'          # the bus name
    assert two.transport_url == R2_URL
    assert (two.pool, two.exchange, two.topics) == (
        'nen-pool', 'nova-cells', ('notifications',))
    assert cell3.region == 'RegionThree'
    assert (cell3.pool, cell3.exchange, cell3.topics) == (
        'other-pool', 'nova3', ('versioned_notifications', 'extra'))
    assert two.label == '[bus:region-two]'


@pytest.mark.parametrize('where', ['DEFAULT', 'oslo_messaging_notifications'])
def test_an_explicit_default_url_adds_the_default_bus(tmp_path, where):
    buses, problems, _ = load(tmp_path, '\n'.join([
        '[%s]' % where, 'transport_url = rabbit://u:p@r1-ctl:5672/',
        '[listener]', 'region_name = RegionOne',
        '[bus:region-two]', 'transport_url = %s' % R2_URL, '']))
    assert problems == []
    assert [(b.name, b.region) for b in buses] == [
        (None, 'RegionOne'), ('region-two', 'region-two')]


def test_an_empty_region_name_means_the_bus_name(tmp_path):
    [two], _, _ = load(tmp_path, '[bus:two]\ntransport_url = %s\n'
                                 'region_name =\n' % R2_URL)
    assert two.region == 'two'


def test_a_section_copied_from_the_sample_is_not_a_bus(tmp_path):
    [default], problems, _ = load(tmp_path, '[bus:<name>]\n'
                                            '#transport_url = <None>\n')
    assert problems == [] and default.name is None


def test_settings_carry_the_buses(tmp_path):
    conf = make_conf(tmp_path, '\n'.join([
        '[bus:two]', 'transport_url = %s' % R2_URL,
        '[delivery]', 'state_dir = %s' % tmp_path, '']))
    settings = config.load(conf)
    assert [b.name for b in settings.buses] == ['two']


# -- refusals -----------------------------------------------------------------

def test_a_bus_without_transport_url_is_refused(tmp_path):
    problems = problems_of(tmp_path, '[bus:two]\nregion_name = RegionTwo\n')
    assert problems == ['[bus:two] transport_url is not set: every bus '
                        'needs the URL of its broker']


def test_two_named_buses_with_one_region_are_refused(tmp_path):
    problems = problems_of(tmp_path, '\n'.join([
        '[bus:a]', 'transport_url = %s' % R2_URL, 'region_name = Same',
        '[bus:b]', 'transport_url = %s' % R3_URL, 'region_name = Same', '']))
    [problem] = problems
    assert problem.startswith('[bus:a] and [bus:b] have the same region '
                              'Same: ')
    assert PASSWORD not in problem


def test_a_bus_with_the_default_bus_region_is_refused(tmp_path):
    problems = problems_of(tmp_path, '\n'.join([
        '[DEFAULT]', 'transport_url = rabbit://u:p@r1:5672/',
        '[listener]', 'region_name = RegionTwo',
        '[bus:two]', 'transport_url = %s' % R2_URL,
        'region_name = RegionTwo', '']))
    assert problems == [
        'the default bus and [bus:two] have the same region RegionTwo: give '
        'each bus a region_name of its own ([listener] region_name for the '
        'default bus), so that their incidents are told apart']


@pytest.mark.parametrize('url, expected', [
    ('rabbit://nen:%s@host:notaport/' % PASSWORD,
     '[bus:two] transport_url does not parse: ValueError: '),
    ('rabbit://nen:%s@[::1/' % PASSWORD,
     '[bus:two] transport_url does not parse: ValueError: '),
    ('no-scheme-%s' % PASSWORD,
     '[bus:two] transport_url does not parse: InvalidTransportURL: '),
    ('rabbit://nen:%s@host:99999/' % PASSWORD,
     '[bus:two] transport_url: port 99999 of host host is out of range'),
])
def test_a_url_that_does_not_parse_is_refused_unshown(tmp_path, url,
                                                      expected):
    [problem] = problems_of(tmp_path, '[bus:two]\ntransport_url = %s\n'
                            % url)
    assert problem.startswith(expected)
    assert PASSWORD not in problem


def test_a_misspelt_bus_option_is_a_problem(tmp_path):
    [problem] = problems_of(tmp_path, '[bus:two]\ntransport_url = %s\n'
                                      'regoin_name = RegionTwo\n' % R2_URL)
    assert problem.startswith('[bus:two] regoin_name: unknown option')


def test_a_bus_without_topics_is_refused(tmp_path):
    [problem] = problems_of(tmp_path, '[bus:two]\ntransport_url = %s\n'
                                      'topics =\n' % R2_URL)
    assert problem.startswith('[bus:two] topics is empty')


def test_every_problem_at_once(tmp_path):
    problems = problems_of(tmp_path, '\n'.join([
        '[bus:a]', 'region_name = A',
        '[bus:b]', 'transport_url = rabbit://u:%s@h:x/' % PASSWORD,
        '[bus:c]', 'transport_url = %s' % R2_URL, 'region_name = R',
        '[bus:d]', 'transport_url = %s' % R3_URL, 'region_name = R', '']))
    assert len(problems) == 3
    assert PASSWORD not in '\n'.join(problems)


def test_two_buses_on_one_pool_queue_are_a_warning(tmp_path):
    _, problems, warnings = load(tmp_path, '\n'.join([
        '[bus:a]', 'transport_url = %s' % R2_URL,
        '[bus:b]', 'transport_url = %s' % R2_URL, '']))
    assert problems == []
    assert warnings == ['[bus:a] and [bus:b] consume the same pool queue of '
                        'the same broker: each gets part of the messages, '
                        'under its own region']


def test_the_service_refuses_to_start_with_one_line_each(tmp_path):
    """The real console script: exit status 2, no password anywhere."""
    text = '\n'.join([
        '[bus:a]', 'region_name = A',
        '[bus:b]', 'transport_url = rabbit://nen:%s@[::1/' % PASSWORD,
        '[bus:c]', 'transport_url = %s' % R2_URL, 'region_name = R',
        '[bus:d]', 'transport_url = %s' % R3_URL, 'region_name = R', ''])
    proc = service_process.ServiceProcess(tmp_path, text)
    assert proc.run_to_exit(timeout=60) == 2
    log = proc.log() + proc.output()
    lines = [ln for ln in log.splitlines() if 'Configuration error: ' in ln]
    assert any('[bus:a] transport_url is not set' in ln for ln in lines)
    assert any('[bus:b] transport_url does not parse' in ln for ln in lines)
    assert any('[bus:c] and [bus:d] have the same region R' in ln
               for ln in lines)
    assert 'did not start' in log
    assert 'Traceback' not in log
    assert PASSWORD not in log


def test_a_bus_password_is_masked_in_every_log_line(tmp_path, caplog):
    conf = make_conf(tmp_path, '[bus:two]\ntransport_url = %s\n' % R2_URL)
    bus_mod.register_opts(conf)
    assert PASSWORD in redact.conf_secrets(conf)
    scrubber = redact.LogFilter()
    caplog.handler.addFilter(scrubber)
    root = logging.getLogger()
    root.addHandler(caplog.handler)
    try:
        redact.refresh(conf)
        logging.getLogger('kombu').error('auth failed for %s', PASSWORD)
    finally:
        root.removeHandler(caplog.handler)
        caplog.handler.removeFilter(scrubber)
    assert 'auth failed for ***' in caplog.text
    assert PASSWORD not in caplog.text


def test_a_bus_is_described_without_credentials(tmp_path):
    conf = make_conf(tmp_path, '[bus:two]\ntransport_url = %s\n'
                               'region_name = RegionTwo\n' % R3_URL)
    [two] = bus_mod.buses(conf)
    text = service.describe_listener(conf, two)
    assert text.startswith('bus two: topics notifications,'
                           'versioned_notifications on exchange nova of '
                           'rabbit://r3-ctl:5672/three, pool ')
    assert text.endswith(', region RegionTwo')
    assert PASSWORD not in text and 'nen' not in text


def test_no_broker_to_ask_no_warning_for_any_bus(tmp_path):
    conf = make_conf(tmp_path, '\n'.join([
        '[bus:a]', 'transport_url = rabbit://u:p@127.0.0.1:1/',
        '[bus:b]', 'transport_url = rabbit://u:p@127.0.0.1:1/b', '']))
    assert bus_mod.pool_queue_warnings(conf) == []


# -- one listener per bus -----------------------------------------------------

def test_the_endpoint_stamps_its_region_on_records_and_resolutions():
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], project='nova_error_notifier', default_config_files=[])
    stored = []
    endpoint = listener.BatchEndpoint(
        service.load_endpoints(conf, lambda item: None), stored.extend,
        region='RegionTwo')
    endpoint.handle('error', [{
        'ctxt': nm.context(), 'publisher_id': 'compute.hv-1',
        'event_type': 'compute.instance.create.error',
        'payload': nm.legacy_usage(exception="NoValidHost('x')"),
        'metadata': {'message_id': 'm-1', 'timestamp': None}}])
    endpoint.handle('info', [{
        'ctxt': nm.context(), 'publisher_id': 'compute.hv-1',
        'event_type': 'compute.instance.create.end',
        'payload': nm.legacy_usage(state='active'),
        'metadata': {'message_id': 'm-2', 'timestamp': None}}])
    assert [type(i).__name__ for i in stored] == ['ErrorRecord',
                                                  'Resolution']
    assert {i.region for i in stored} == {'RegionTwo'}


def test_a_one_message_plugin_sink_stamps_the_region_too():
    seen = []

    def sink(item):
        seen.append(item)
    sink.on_drop = object()
    stamped = listener.stamping(sink, 'RegionTwo')
    assert stamped.on_drop is sink.on_drop
    stamped(rec.Resolution('instance.create.end', 'u-1'))
    assert seen[0].region == 'RegionTwo'
    assert listener.stamping(sink, None) is sink


def test_the_reject_key_is_the_region_s():
    item = rec.ErrorRecord('e', 'ERROR', 'legacy', message_id='m-1')
    two = rec.with_region(item, 'RegionTwo')
    assert listener.message_key({}, item) == 'm-1'
    assert listener.message_key({}, two) != 'm-1'


class _Parent(workers.Context):
    def __init__(self, conf, settings, args=()):
        super().__init__(conf, settings, list(args), cmd_service.build_conf,
                         shared=False)


class _Context(dict):
    """A request context as Nova's: oslo.messaging sends its copy."""

    def redacted_copy(self):
        return dict(self)

    def to_dict(self):
        return dict(self)


def _publish(transport, topic, request_id, instance=fx.UUID):
    notifier = oslo_messaging.Notifier(
        transport, publisher_id='compute.hv-1', driver='messagingv2',
        topics=[topic])
    notifier.error(_Context(nm.context(request_id=request_id)),
                   'compute.instance.create.error',
                   nm.legacy_usage(instance_id=instance,
                                   exception="NoValidHost('x')"))


@pytest.mark.parametrize('store_process', [True, False])
def test_a_listener_process_listens_to_every_bus(tmp_path, store_process):
    """Two buses, two regions, two incidents of one failure.

    oslo.messaging's fake driver, a transport per bus (the fake driver's
    exchanges are shared by every transport of the process: the buses'
    topics tell them apart here). Stopping stops both listeners. With its
    store process, or storing in the listener process.
    """
    conf = make_conf(tmp_path, '\n'.join([
        '[DEFAULT]', 'transport_url = fake:///one',
        '[listener]', 'region_name = RegionOne', 'batch_timeout = 0.02',
        'exchange = openstack', 'stop_timeout = 5',
        'store_process = %s' % store_process,
        '[bus:two]', 'transport_url = fake:///two',
        'region_name = RegionTwo', 'topics = two',
        '[delivery]', 'state_dir = %s' % tmp_path, '']))
    settings = config.load(conf)
    assert [b.region for b in settings.buses] == ['RegionOne', 'RegionTwo']
    # The store process reads the same file (the fake driver's messages
    # stay in this process; only the batches cross the pipe).
    context = _Parent(conf, settings,
                      ['--config-file', str(tmp_path / 'buses.conf')])
    svc = workers.ListenerService(0, context)
    store = outbox.Store.from_conf(conf)
    runner = threading.Thread(target=svc.run, daemon=True)
    runner.start()
    try:
        runner.join(30)
        assert not runner.is_alive()
        assert [one.started.is_set() for one in svc.buses] == [True, True]
        assert svc.buses[0].transport is not svc.buses[1].transport
        for one in svc.buses:
            _publish(one.transport, one.bus.topics[0], fx.REQ)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = fx.rows(store, 'incidents')
            if len(found) == 2:
                break
            time.sleep(0.05)
        assert sorted(r['region'] for r in found) == ['RegionOne',
                                                      'RegionTwo']
        assert {r['request_id'] for r in found} == {fx.REQ}
        for row in found:
            [item] = outbox.loads(row['records'])
            assert item['region'] == row['region']
        assert len(fx.rows(store, 'messages')) == 2
        svc.terminate()
        # Both listeners stopped: what comes now waits in the bus.
        for one in svc.buses:
            _publish(oslo_messaging.get_notification_transport(
                conf, url=one.bus.transport_url or 'fake:///one'),
                one.bus.topics[0], 'req-after')
        time.sleep(0.5)
        assert len(fx.rows(store, 'incidents')) == 2
    finally:
        svc.terminate()
        context.generations.cleanup()
