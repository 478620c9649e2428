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
"""``nova-error-notifier``: run the notification listener."""

import logging
import sys

from oslo_config import cfg
from oslo_log import log

from nova_error_notifier import logsafe
from nova_error_notifier import opts
from nova_error_notifier import redact
from nova_error_notifier import service
from nova_error_notifier import version
from nova_error_notifier import workers

LOG = log.getLogger(__name__)

PROJECT = service.PROJECT


def build_conf():
    """A ConfigOpts with every option of the service registered."""
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    workers.register_cli_opts(conf)
    log.register_options(conf)
    return conf


def main(argv=None):
    conf = build_conf()
    args = sys.argv[1:] if argv is None else argv
    try:
        conf(args, project=PROJECT,
             version=version.version_string(),
             description='Listens to Nova\'s notifications and sends one '
                         'alert per failure to the configured receivers.')
    except cfg.Error as exc:
        sys.stderr.write('nova-error-notifier: configuration error: %s\n'
                         % exc)
        return 2
    log.setup(conf, PROJECT)
    logsafe.protect_handlers()
    redact.protect_logs(conf)
    LOG.info('nova-error-notifier %s starting (config files: %s)',
             version.version_string(),
             ', '.join(conf.config_file) or 'none')
    try:
        workers.roles_of(conf)
    except service.StartupError as exc:
        LOG.error('Configuration error: %s', exc)
        LOG.error('nova-error-notifier did not start')
        return 2
    settings = service.load_checked(conf)
    if settings is None:
        LOG.error('nova-error-notifier did not start: fix the configuration '
                  'errors above')
        return 2
    # After the transport registered its options. Options declared
    # secret=True (passwords, the transport URL) are masked.
    conf.log_opt_values(LOG, logging.DEBUG)
    return workers.run(conf, settings, args, build_conf)


if __name__ == '__main__':
    sys.exit(main())
