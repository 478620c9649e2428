"""Staff users from a real Keystone: who gets mail, who does not."""

import collections
import itertools
import logging

from oslo_config import cfg
import pytest

from nova_error_notifier import opts
from nova_error_notifier import staff as staff_mod

Cloud = collections.namedtuple('Cloud', 'keystone prefix service_conf '
                                        'expected_any expected_ops')
_seq = itertools.count(1)
SERVICE_PASSWORD = 'Svc-Pw-Keystone-42'


@pytest.fixture(scope='module')
def cloud(keystone):
    """Users of every kind; returns what staff should be found."""
    p = 'st%d' % next(_seq)
    ks = keystone
    ops = ks.create_project(p + '-ops')
    other = ks.create_project(p + '-other')

    def user(name, email=True, **kwargs):
        return ks.create_user(p + name, 'pw-' + name,
                              email='%s%s@example.com' % (p, name)
                              if email else None, **kwargs)

    direct = user('direct')
    ks.grant_project('admin', ops, user_id=direct)
    via_group = user('viagroup')
    group = ks.create_group(p + '-admins')
    ks.add_user_to_group(via_group, group)
    ks.grant_project('admin', ops, group_id=group)
    disabled = user('disabled')
    ks.grant_project('admin', ops, user_id=disabled)
    ks.disable_user(disabled)
    member = user('member')
    ks.grant_project('member', ops, user_id=member)
    no_email = user('noemail', email=False)
    ks.grant_project('admin', ops, user_id=no_email)
    system = user('system')
    ks.grant_system('admin', user_id=system)
    sys_group_user = user('sysgroup')
    sys_group = ks.create_group(p + '-sysadmins')
    ks.add_user_to_group(sys_group_user, sys_group)
    ks.grant_system('admin', group_id=sys_group)
    elsewhere = user('elsewhere')
    ks.grant_project('admin', other, user_id=elsewhere)
    # The service's own user, least privilege: reader on the system, with
    # a system-scoped token.
    service = ks.create_user(p + 'svc', SERVICE_PASSWORD)
    ks.grant_system('reader', user_id=service)
    service_conf = system_credentials(ks, p + 'svc', SERVICE_PASSWORD)
    mail = '{}{}@example.com'.format
    # The bootstrap admin (no e-mail) and users of earlier modules may
    # hold admin too: expectations are checked on this module's users.
    return Cloud(ks, p, service_conf,
                 {mail(p, n) for n in ('direct', 'viagroup', 'system',
                                       'sysgroup', 'elsewhere')},
                 {mail(p, n) for n in ('direct', 'viagroup', 'system',
                                       'sysgroup')})


def system_credentials(ks, username, password):
    return '\n'.join([
        '[service_credentials]', 'auth_type = password',
        'auth_url = %s' % ks.auth_url, 'username = %s' % username,
        'password = %s' % password, 'user_domain_name = Default',
        'system_scope = all', ''])


def directory(tmp_path, cloud, staff_section='', credentials=None):
    path = tmp_path / 'staff.conf'
    path.write_text((credentials or cloud.service_conf) + '\n[staff]\n' +
                    staff_section)
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(['--config-file', str(path)], project='nova_error_notifier',
         default_config_files=[])
    return staff_mod.StaffDirectory(conf), conf


def mine(cloud, emails):
    return {e for e in emails or () if e.startswith(cloud.prefix)}


def test_staff_anywhere(tmp_path, cloud):
    found, _ = directory(tmp_path, cloud)
    emails = found.emails()
    assert mine(cloud, emails) == cloud.expected_any
    assert len(emails) == len(set(e.lower() for e in emails))


def test_project_admin_credentials_work_too(tmp_path, cloud):
    ks = cloud.keystone
    project = ks.create_project(cloud.prefix + '-service')
    svc = ks.create_user(cloud.prefix + 'padmin', 'Padmin-Pw-1')
    ks.grant_project('admin', project, user_id=svc)
    found, _ = directory(tmp_path, cloud, credentials=ks.
                         service_credentials_conf(cloud.prefix + 'padmin',
                                                  'Padmin-Pw-1',
                                                  cloud.prefix + '-service'))
    assert mine(cloud, found.emails()) == cloud.expected_any


def test_staff_of_one_project(tmp_path, cloud):
    found, _ = directory(tmp_path, cloud, 'project = %s-ops\n' % cloud.prefix)
    assert mine(cloud, found.emails()) == cloud.expected_ops


def test_staff_of_another_role(tmp_path, cloud):
    found, _ = directory(tmp_path, cloud, 'role = member\n'
                         'project = %s-ops\n' % cloud.prefix)
    emails = mine(cloud, found.emails())
    # Admins imply member in Keystone; the plain member counts too, the
    # disabled admin and the admin without e-mail still do not.
    assert '%smember@example.com' % cloud.prefix in emails
    assert '%sdisabled@example.com' % cloud.prefix not in emails


def test_list_is_cached(tmp_path, cloud):
    now = [1000.0]
    found, conf = directory(tmp_path, cloud, 'cache_ttl = 60\n')
    found.clock = lambda: now[0]
    first = found.emails()
    user = cloud.keystone.create_user(cloud.prefix + 'late', 'pw',
                                      email=cloud.prefix + 'late@example.com')
    cloud.keystone.grant_system('admin', user_id=user)
    now[0] += 30
    assert found.emails() == first           # still cached
    now[0] += 31
    assert cloud.prefix + 'late@example.com' in found.emails()


def test_outage_uses_the_last_good_list_and_logs_once(tmp_path, cloud,
                                                      caplog):
    now = [1000.0]
    found, conf = directory(tmp_path, cloud, 'cache_ttl = 10\n'
                            'retry_interval = 5\n')
    found.clock = lambda: now[0]
    good = found.emails()
    assert good
    conf.set_override('auth_url', 'http://127.0.0.1:9/v3',
                      group='service_credentials')
    found.reset_session()
    with caplog.at_level(logging.INFO, logger='nova_error_notifier.staff'):
        for _ in range(6):
            now[0] += 11
            assert found.emails() == good
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert 'last good list of %d address' % len(good) in \
        errors[0].getMessage()
    conf.clear_override('auth_url', group='service_credentials')
    found.reset_session()
    now[0] += 11
    with caplog.at_level(logging.INFO, logger='nova_error_notifier.staff'):
        assert found.emails() == good
    assert any('Keystone answers again' in r.getMessage()
               for r in caplog.records)


def test_forbidden_credentials_give_no_list(tmp_path, cloud, caplog):
    ks = cloud.keystone
    weak = ks.create_user(cloud.prefix + 'weak', 'Weak-Pw-1')
    ks.grant_project('member', ks.create_project(cloud.prefix + '-weak'),
                     user_id=weak)
    found, _ = directory(tmp_path, cloud, credentials=ks.
                         service_credentials_conf(cloud.prefix + 'weak',
                                                  'Weak-Pw-1',
                                                  cloud.prefix + '-weak'))
    with caplog.at_level(logging.ERROR, logger='nova_error_notifier.staff'):
        assert found.emails() is None
    [error] = [r.getMessage() for r in caplog.records]
    assert '403' in error or 'Forbidden' in error
    assert 'Weak-Pw-1' not in error
