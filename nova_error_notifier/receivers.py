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
"""Receivers: named destinations, each with a driver and its options.

::

    [receiver:ops_log]
    driver = log
    level = error

The driver is looked up by name in the entry point namespace
``nova_error_notifier.drivers`` (stevedore); its options are registered in
the receiver's own group. A missing or broken driver stops start-up with the
receiver's and the driver's name in the message. A driver that sends to the
staff users (:meth:`~nova_error_notifier.drivers.base.Driver.wants_staff`)
is given a :class:`~nova_error_notifier.staff.StaffDirectory`.
"""

from oslo_config import cfg
from oslo_log import log
import stevedore

from nova_error_notifier.drivers import base
from nova_error_notifier import rules
from nova_error_notifier import staff as staff_mod

LOG = log.getLogger(__name__)

DRIVER_NAMESPACE = 'nova_error_notifier.drivers'
GROUP_PREFIX = 'receiver:'

#: Receiver used when no rules are configured.
DEFAULT_RECEIVER = 'log'
DEFAULT_DRIVER = 'log'

RECEIVER_OPTS = [
    cfg.StrOpt('driver',
               help='Name of the notifier driver of this receiver: "log", '
                    'or any driver installed under the entry point '
                    'namespace "nova_error_notifier.drivers". Required.'),
    cfg.BoolOpt('include_details',
                default=False,
                help='Include tracebacks and other details in the alerts '
                     'sent to this receiver.'),
]


class ReceiverError(ValueError):
    """Problems with the receivers; ``problems`` lists every one."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__('; '.join(self.problems))


class Receiver:
    """A named receiver with its driver object."""

    def __init__(self, name, driver_name, driver, include_details):
        self.name = name
        self.driver_name = driver_name
        self.driver = driver
        self.include_details = include_details

    def __repr__(self):
        return '<Receiver %s driver=%s>' % (self.name, self.driver_name)


class _LoadFailure(Exception):
    pass


def _raise_load_failure(manager, entrypoint, exc):
    raise _LoadFailure('%s: %s' % (type(exc).__name__, exc)) from exc


def _raise_missing(names):
    raise _Missing()


class _Missing(Exception):
    pass


def load_driver_class(name):
    """Return the driver class registered as ``name``.

    :raises ValueError: with a clear message when the driver is not
        installed or cannot be imported.
    """
    try:
        manager = stevedore.NamedExtensionManager(
            DRIVER_NAMESPACE, [name], invoke_on_load=False,
            on_load_failure_callback=_raise_load_failure,
            on_missing_entrypoints_callback=_raise_missing)
    except _Missing:
        raise ValueError('driver %r is not installed (no entry point %r in '
                         'namespace %s)' % (name, name, DRIVER_NAMESPACE))
    except _LoadFailure as exc:
        raise ValueError('driver %r failed to load: %s' % (name, exc))
    plugins = [ext.plugin for ext in manager]
    if len(plugins) != 1:
        raise ValueError('driver %r is registered by %d packages'
                         % (name, len(plugins)))
    driver_class = plugins[0]
    if not (isinstance(driver_class, type) and
            issubclass(driver_class, base.Driver)):
        raise ValueError('driver %r is not a subclass of %s.Driver'
                         % (name, base.__name__))
    return driver_class


def load(conf, names, implicit=False):
    """Build the receivers ``names`` from ``conf``.

    :param implicit: the receivers are the service's default; a missing
        ``driver`` option then means the ``log`` driver.
    :raises ReceiverError: listing every problem found.
    """
    problems = []
    receivers = {}
    sections = set(conf.list_all_sections())
    for name in names:
        group = GROUP_PREFIX + name
        default = implicit and name == DEFAULT_RECEIVER
        if group not in sections and not default:
            problems.append('receiver %r has no [%s] section'
                            % (name, group))
            continue
        conf.register_opts(RECEIVER_OPTS, group=group)
        own = []
        driver_name = rules.option_value(conf, group, 'driver', own)
        include_details = rules.option_value(conf, group, 'include_details',
                                             own)
        if own:
            problems.extend(own)
            continue
        if not driver_name and default:
            driver_name = DEFAULT_DRIVER
        if not driver_name:
            problems.append('[%s] driver is not set' % group)
            continue
        try:
            driver_class = load_driver_class(driver_name)
        except ValueError as exc:
            problems.append('[%s]: %s' % (group, exc))
            continue
        try:
            driver_opts = driver_class.list_opts()
            conf.register_opts(driver_opts, group=group)
        except Exception as exc:
            problems.append('[%s]: the options of driver %r cannot be '
                            'registered: %s' % (group, driver_name, exc))
            continue
        # oslo.config checks a value (type, choices, bounds) when it is
        # read: read them all now, so that a bad one stops start-up instead
        # of failing the first alert.
        own = []
        for opt in driver_opts:
            rules.option_value(conf, group, opt.dest, own)
        if own:
            problems.extend(own)
            continue
        try:
            driver = driver_class(conf, name)
            if driver.wants_staff():
                # Drivers do not look staff up themselves: they are given
                # the directory (one per receiver, with its own cache).
                driver.staff = staff_mod.StaffDirectory(conf)
            driver.check()
        except ValueError as exc:
            # DriverConfigError, or oslo.config's value errors.
            problems.append('[%s] (driver %s): %s' % (group, driver_name,
                                                      exc))
            continue
        except Exception as exc:
            problems.append('[%s]: driver %r failed to start: %s: %s'
                            % (group, driver_name, type(exc).__name__, exc))
            continue
        receivers[name] = Receiver(name, driver_name, driver,
                                   include_details)
    if problems:
        raise ReceiverError(problems)
    return receivers


def list_opts():
    """The receiver options, with those of the drivers shipped here."""
    from nova_error_notifier.drivers import email as email_driver
    from nova_error_notifier.drivers import log as log_driver
    from nova_error_notifier.drivers import webhook as webhook_driver
    return [(GROUP_PREFIX + '<name>',
             RECEIVER_OPTS + log_driver.LogDriver.list_opts() +
             email_driver.EmailDriver.list_opts() +
             webhook_driver.WebhookDriver.list_opts())]
