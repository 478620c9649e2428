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
"""The contract every notifier driver follows.

A driver is a class registered under the entry point namespace
``nova_error_notifier.drivers``; the name of the entry point is what
operators write in ``[receiver:NAME] driver = ...``. For example, in a
third-party package's ``setup.cfg``::

    [entry_points]
    nova_error_notifier.drivers =
        pager = my_pager.driver:PagerDriver

and the class::

    from oslo_config import cfg
    from nova_error_notifier.drivers import base

    class PagerDriver(base.Driver):
        OPTS = [cfg.URIOpt('endpoint', help='Where pages are sent.')]

        def check(self):
            if not self.options.endpoint:
                raise base.DriverConfigError('endpoint is required')

        def notify(self, alert):
            try:
                send_page(self.options.endpoint, alert.message)
            except TimeoutError as exc:
                raise base.DriverError(str(exc), retryable=True)

Rules of the contract:

* The service builds one driver object per receiver, passing the service's
  ``ConfigOpts`` and the receiver's name. The driver's ``OPTS`` are
  registered in the receiver's own group, ``[receiver:NAME]``, and read
  through :attr:`Driver.options`.
* :meth:`Driver.check` validates the options and raises
  :class:`DriverConfigError` for bad ones, which stops start-up.
* :meth:`Driver.notify` makes exactly one delivery attempt. On failure it
  raises :class:`DriverError`, saying whether a retry could help. The
  service owns retries.
* A driver never modifies the alert it is given and never logs secrets
  (options declared with ``secret=True``; :meth:`Driver.secrets` lists
  their values, which the service masks in the outcome of an attempt).
* A driver imports from nova-error-notifier only this module,
  :mod:`nova_error_notifier.alert` and :mod:`nova_error_notifier.formatting`
  (summaries, escaping, timestamps, the sandboxed template environment).
  What it needs from the rest of the service is given to it: a driver
  whose :meth:`Driver.wants_staff` is true gets the staff directory as
  :attr:`Driver.staff` before :meth:`Driver.check`.
"""

import abc

from oslo_config import cfg

#: Options every driver may use, in [DEFAULT].
COMMON_OPTS = [
    cfg.StrOpt('region_name',
               help='Name of the region the service watches, shown in '
                    'alerts (e-mail subjects, webhook bodies) and used to '
                    'pick endpoints from the Keystone catalog.'),
]


def register_opts(conf):
    conf.register_opts(COMMON_OPTS)


def option_value(conf, group, name, problems):
    """Read one option, adding a readable problem if its value is invalid.

    For an invalid value a problem line goes to ``problems`` and None is
    returned. oslo.config validates a value when it is read; the error it
    raises names the option's location, which is noise in a problem line.
    """
    try:
        return conf[group][name]
    except (cfg.ConfigFileValueError, ValueError) as exc:
        problems.append(value_problem(group, name, exc))
        return None


def value_problem(group, name, exc):
    """A problem line for an invalid option value, without its location."""
    detail = str(exc)
    if 'is not valid: ' in detail:
        detail = detail.split('is not valid: ', 1)[1]
    return '[%s] %s: invalid value: %s' % (group, name, detail)


def _strings(value):
    """The strings of an option value (a string, a list or a dict)."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, str) and v]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str) and v]
    return []


class DriverError(Exception):
    """A delivery attempt failed.

    :param retryable: True when trying again later could succeed (a timeout,
        a 5xx answer, a refused connection); False when it cannot (a
        rejected address, a 4xx answer).
    :param retry_after: seconds the receiver asked to wait before the next
        attempt (an HTTP ``Retry-After``), or None.
    """

    def __init__(self, message, retryable=False, retry_after=None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class DriverConfigError(ValueError):
    """A receiver's options are wrong; start-up stops."""


class Driver(metaclass=abc.ABCMeta):
    """Base class of notifier drivers."""

    #: Options of the driver, registered in the ``[receiver:NAME]`` group.
    OPTS = []

    #: The staff directory, set by the service before :meth:`check` when
    #: :meth:`wants_staff` is true, else None. ``emails()`` returns the
    #: staff users' addresses (None while they were never known),
    #: ``check()`` a list of configuration problems.
    staff = None

    def __init__(self, conf, receiver):
        self.conf = conf
        self.receiver = receiver
        self.group = 'receiver:' + receiver

    @property
    def options(self):
        """The receiver's own option group."""
        return self.conf[self.group]

    @classmethod
    def list_opts(cls):
        return list(cls.OPTS)

    def check(self):
        """Validate the receiver's options; raise DriverConfigError."""

    def wants_staff(self):
        """True if the receiver's alerts go to the staff users too.

        The service then gives the driver the staff directory
        (:attr:`staff`) before calling :meth:`check`.
        """
        return False

    def secrets(self):
        """Values that must never be shown, longest first.

        By default the values of the receiver's options declared
        ``secret=True``; a driver with secrets elsewhere adds them.
        """
        found = set()
        for opt in self.list_opts():
            if getattr(opt, 'secret', False):
                try:
                    found.update(_strings(self.options[opt.dest]))
                except Exception:   # unregistered or invalid: not shown
                    continue
        return sorted(found, key=len, reverse=True)

    @abc.abstractmethod
    def notify(self, alert):
        """Make one delivery attempt for ``alert``.

        :raises DriverError: when the attempt failed.
        """
