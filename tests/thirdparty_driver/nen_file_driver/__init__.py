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
"""A third-party notifier driver: each alert as one JSON line in a file.

Installed next to nova-error-notifier, it is found through its entry point
in the ``nova_error_notifier.drivers`` namespace and used like any shipped
driver::

    [receiver:jsonl]
    driver = file
    path = /var/log/nova-error-notifier/alerts.jsonl
    fsync = true
"""

import json
import os
import threading

from oslo_config import cfg

from nova_error_notifier import alert as alert_mod
from nova_error_notifier.drivers import base

#: Registered by the service in each receiver's own ``[receiver:NAME]``.
OPTS = [
    cfg.StrOpt('path',
               help='File the alerts are appended to, one JSON document '
                    'per line. Its directory must exist. Required.'),
    cfg.BoolOpt('fsync',
                default=False,
                help='Flush each line to disk (fsync) before the delivery '
                     'counts as done.'),
]

# Delivery workers are threads: one write at a time per process, so that
# long lines never interleave.
_LOCK = threading.Lock()


class FileDriver(base.Driver):
    """Appends each alert to a file as one line of JSON."""

    OPTS = OPTS

    def check(self):
        path = self.options.path
        if not path:
            raise base.DriverConfigError('path is required')
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise base.DriverConfigError(
                'path %s: directory %s does not exist' % (path, directory))

    def notify(self, alert):
        # One attempt; the service retries retryable failures.
        data = (json.dumps(alert_mod.to_dict(alert), sort_keys=True) +
                '\n').encode('utf-8')
        path = self.options.path
        try:
            with _LOCK:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                             0o640)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    if self.options.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise base.DriverError('could not append the alert to %s: %s'
                                   % (path, exc.strerror or exc),
                                   retryable=True)


def list_opts():
    """The driver's options, for oslo-config-generator."""
    return [('receiver:<name>', list(OPTS))]
