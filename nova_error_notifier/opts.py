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

from nova_error_notifier import bus
from nova_error_notifier.drivers import base as driver_base
from nova_error_notifier.drivers import email as email_driver
from nova_error_notifier import enrich
from nova_error_notifier import ingest
from nova_error_notifier import listener
from nova_error_notifier import outbox
from nova_error_notifier import receivers
from nova_error_notifier import routing
from nova_error_notifier import rules
from nova_error_notifier import staff
from nova_error_notifier import storm


def register_opts(conf):
    """Register every static option of the service on ``conf``, once.

    The options are those of :func:`list_opts` (what the sample file
    shows), on the ConfigOpts the service, a command or a test builds for
    itself: no module registers options of its own on the way. Only the
    groups standing for the operator's named sections (``rule:NAME``,
    ``receiver:NAME``, ``bus:NAME``) are left out: they are registered when
    those sections are read.
    """
    for group, options in list_opts():
        if group is not None and ':' in group:
            continue
        if group == staff.CREDENTIALS_GROUP:
            staff.register_credentials(conf)
            continue
        conf.register_opts(options, group=group)


def list_opts():
    """Options for oslo-config-generator (entry point oslo.config.opts).

    The ``rule:<name>``, ``receiver:<name>`` and ``bus:<name>`` groups
    stand for the operator's own ``[rule:NAME]``, ``[receiver:NAME]`` and
    ``[bus:NAME]`` sections.
    """
    return [
        (None, rules.DEFAULT_OPTS + driver_base.COMMON_OPTS),
        ('listener', listener.LISTENER_OPTS),
    ] + list(itertools.chain(bus.list_opts(), rules.list_opts()[1:],
                             receivers.list_opts(),
                             email_driver.list_opts(), staff.list_opts(),
                             _correlation_opts(), _delivery_opts(),
                             [(group, options) for group, options
                              in outbox.list_opts() if group != outbox.GROUP],
                             enrich.list_opts()))


def _correlation_opts():
    """[correlation]: grouping's and routing's options."""
    return [(ingest.GROUP, ingest.INGEST_OPTS + routing.ROUTING_OPTS)]


def _delivery_opts():
    """[delivery]: the outbox's, the workers' and storm control's options.

    Storm control's come before ``lease``, where the sample file has always
    shown them.
    """
    options = outbox.DELIVERY_OPTS
    at = [o.dest for o in options].index('lease')
    return [(outbox.GROUP, options[:at] + storm.STORM_OPTS + options[at:])]
