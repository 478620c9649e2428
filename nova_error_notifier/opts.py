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
"""Configuration options, for the service and for oslo-config-generator."""

import itertools

from nova_error_notifier import correlate
from nova_error_notifier.drivers import base as driver_base
from nova_error_notifier.drivers import email as email_driver
from nova_error_notifier import enrich
from nova_error_notifier import outbox
from nova_error_notifier import receivers
from nova_error_notifier import rules
from nova_error_notifier import service
from nova_error_notifier import staff


def register_opts(conf):
    """Register the static options of the service on ``conf``."""
    rules.register_opts(conf)
    service.register_opts(conf)
    driver_base.register_opts(conf)
    email_driver.register_opts(conf)
    staff.register_opts(conf)
    correlate.register_opts(conf)
    outbox.register_opts(conf)
    enrich.register_opts(conf)


def list_opts():
    """Options for oslo-config-generator (entry point oslo.config.opts).

    The ``rule:<name>`` and ``receiver:<name>`` groups stand for the
    operator's own ``[rule:NAME]`` and ``[receiver:NAME]`` sections.
    """
    return [
        (None, rules.DEFAULT_OPTS + driver_base.COMMON_OPTS),
        ('listener', service.LISTENER_OPTS),
    ] + list(itertools.chain(rules.list_opts()[1:], receivers.list_opts(),
                             email_driver.list_opts(), staff.list_opts(),
                             correlate.list_opts(), outbox.list_opts(),
                             enrich.list_opts()))
