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
  (options declared with ``secret=True``).
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

    def __init__(self, conf, receiver):
        register_opts(conf)
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

    @abc.abstractmethod
    def notify(self, alert):
        """Make one delivery attempt for ``alert``.

        :raises DriverError: when the attempt failed.
        """
