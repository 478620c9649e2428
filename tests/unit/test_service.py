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
"""Start-up checks and descriptions of the service (service.py).

Endpoint loading is in test_endpoints.py and test_listener.py; the console
script (exit status, one line per problem) in test_service_cli.py.  Here:
what start-up says about the broker and the outbox never shows a password,
and every problem is found in one go.
"""

import logging
import os

import pytest

from nova_error_notifier import service
from tests.unit import conf_fixtures

PASSWORD = 'Secr3t-Never-Shown'


make_conf = conf_fixtures.conf_from_text


def with_transport(conf):
    """*conf*, its transport made (and its options registered).

    As at start-up, where the listener is described once it is made.
    """
    service.make_transport(conf).cleanup()
    return conf


def state_dir(tmp_path):
    directory = tmp_path / 'state'
    directory.mkdir(mode=0o700)
    return '[delivery]\nstate_dir = %s\n' % directory


def test_describe_transport_shows_hosts_not_credentials(tmp_path):
    conf = make_conf(tmp_path, '[DEFAULT]\ntransport_url = rabbit://nen:%s'
                               '@ctl-1:5672,nen:%s@ctl-2:5671/nova\n' % (
                                   PASSWORD, PASSWORD))
    text = service.describe_transport(with_transport(conf), None)
    assert text == 'rabbit://ctl-1:5672,ctl-2:5671/nova'
    assert PASSWORD not in text and 'nen' not in text


def test_the_notifications_transport_url_wins(tmp_path):
    conf = make_conf(tmp_path, '\n'.join([
        '[DEFAULT]', 'transport_url = rabbit://rpc-host:5672/',
        '[oslo_messaging_notifications]',
        'transport_url = rabbit://u:%s@notify-host:5672/n' % PASSWORD, '']))
    assert service.describe_transport(with_transport(conf), None) == \
        'rabbit://notify-host:5672/n'


def test_an_unparsable_url_is_not_shown(tmp_path):
    conf = make_conf(tmp_path, '[DEFAULT]\ntransport_url = rabbit://nen:%s'
                               '@[::1/\n' % PASSWORD)
    assert service.describe_transport(conf, None) == \
        '(transport URL not shown)'


def test_describe_listener(tmp_path):
    conf = make_conf(tmp_path, '[DEFAULT]\ntransport_url = rabbit://nen:%s'
                               '@ctl:5672/\n' % PASSWORD)
    text = service.describe_listener(with_transport(conf))
    assert text.startswith('topics notifications,versioned_notifications '
                           'on exchange nova of rabbit://ctl:5672/, pool ')
    assert PASSWORD not in text


def test_describe_store_masks_the_password(tmp_path):
    conf = make_conf(tmp_path, '[database]\nconnection = mysql+pymysql://'
                               'nen:%s@db-1/nen?charset=utf8\n' % PASSWORD)
    text = service.describe_store(conf)
    assert PASSWORD not in text
    assert text.startswith('mysql+pymysql://nen:')
    assert 'db-1/nen?charset=utf8' in text


@pytest.mark.parametrize('url', [
    'rabbit://nen:%s@host:notaport/' % PASSWORD,
    'rabbit://nen:%s@[::1/' % PASSWORD,
    'nosuchdriver://nen:%s@host/' % PASSWORD,
])
def test_a_bad_transport_url_is_a_startup_error(tmp_path, url):
    conf = make_conf(tmp_path, '[DEFAULT]\ntransport_url = %s\n' % url)
    with pytest.raises(service.StartupError) as info:
        service.make_transport(conf)
    assert str(info.value).startswith('transport_url is not usable: ')
    assert PASSWORD not in str(info.value)


def test_open_store_brings_sqlite_to_the_newest_schema(tmp_path, caplog):
    conf = make_conf(tmp_path, state_dir(tmp_path))
    with caplog.at_level(logging.INFO, logger='nova_error_notifier'):
        store = service.open_store(conf)
    try:
        assert store.is_sqlite
        assert store.schema_problem() is None
    finally:
        store.engine.dispose()
    assert os.path.exists(str(tmp_path / 'state' /
                              'nova_error_notifier.sqlite'))


def test_open_store_refuses_a_shared_directory(tmp_path):
    shared = tmp_path / 'shared'
    shared.mkdir()
    os.chmod(str(shared), 0o777)
    conf = make_conf(tmp_path, '[delivery]\nstate_dir = %s\n' % shared)
    with pytest.raises(service.StartupError) as info:
        service.open_store(conf)
    assert str(info.value).startswith('[delivery] ')
    assert str(shared) in str(info.value)


def test_an_unreachable_database_hides_its_password(tmp_path):
    # Port 1 on the loopback address: the connection is refused at once;
    # oslo.db tries once.
    conf = make_conf(tmp_path, '[database]\nconnection = mysql+pymysql://'
                               'nen:%s@127.0.0.1:1/nen\nmax_retries = 1\n'
                               'retry_interval = 0\n' % PASSWORD)
    with pytest.raises(service.StartupError) as info:
        service.open_store(conf, upgrade_sqlite=False)
    text = str(info.value)
    assert text.startswith('[delivery] ')
    assert PASSWORD not in text
    assert '\n' not in text


def test_the_deprecated_delivery_connection_warns(tmp_path, caplog):
    url = 'sqlite:///%s' % (tmp_path / 'old.sqlite')
    conf = make_conf(tmp_path, '[delivery]\nconnection = %s\n' % url)
    with caplog.at_level(logging.WARNING, logger='nova_error_notifier'):
        service.open_store(conf).engine.dispose()
    assert any('[delivery] connection is deprecated' in r.getMessage()
               for r in caplog.records)


def test_check_reports_every_problem_at_once(tmp_path):
    conf = make_conf(tmp_path, '\n'.join([
        '[DEFAULT]', 'rules = r',
        '[rule:r]', 'events = *', 'receivers = missing',
        '[listener]', 'endpoints = versioned, no-such-endpoint', '']))
    settings, problems, warnings = service.check(conf, transport=False)
    assert settings is None
    assert any("receiver 'missing'" in p for p in problems)
    assert any('no-such-endpoint' in p for p in problems)


def test_check_without_problems_gives_the_settings(tmp_path):
    conf = make_conf(tmp_path, state_dir(tmp_path))
    settings, problems, warnings = service.check(conf, transport=False)
    assert problems == []
    assert list(settings.receivers) == ['log']


def test_load_checked_logs_one_escaped_line_per_problem(tmp_path, caplog):
    conf = make_conf(tmp_path, '\n'.join([
        '[DEFAULT]', 'rules = r',
        '[rule:r]', 'events = *', 'receivers = x',
        '[receiver:x]', 'driver = no\x1b[2Jsuch', '']))
    with caplog.at_level(logging.WARNING, logger='nova_error_notifier'):
        assert service.load_checked(conf, transport=False) is None
    errors = [r.getMessage() for r in caplog.records
              if r.levelno == logging.ERROR]
    assert errors
    assert all(e.startswith('Configuration error: ') for e in errors)
    assert not any('\x1b' in e for e in errors)
    # Logged outside an except block: no traceback appended to a line.
    assert not any(r.exc_info for r in caplog.records)
