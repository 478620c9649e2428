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

from nova_error_notifier import config
from nova_error_notifier import logsafe
from nova_error_notifier import opts
from nova_error_notifier import redact
from nova_error_notifier import service
from nova_error_notifier import version

LOG = log.getLogger(__name__)

PROJECT = 'nova_error_notifier'


def build_conf():
    """A ConfigOpts with every option of the service registered."""
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    log.register_options(conf)
    return conf


def reloader(args):
    """A function returning checked Settings from the files as they are."""
    def _reload():
        conf = build_conf()
        try:
            conf(args, project=PROJECT, version=version.version_string())
        except cfg.Error as exc:
            raise config.ConfigError([str(exc)])
        settings, problems, _ = service.check(conf, transport=False)
        if problems:
            raise config.ConfigError(problems)
        return settings
    return _reload


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
    settings = service.load_checked(conf)
    if settings is None:
        LOG.error('nova-error-notifier did not start: fix the configuration '
                  'errors above')
        return 2
    try:
        svc = service.Service(conf, settings, reloader=reloader(args))
        error = None
    except service.StartupError as exc:
        svc, error = None, exc
    if error is not None:
        LOG.error('Configuration error: %s', error)
        LOG.error('nova-error-notifier did not start')
        return 2
    # After the transport registered its options. Options declared
    # secret=True (passwords, the transport URL) are masked.
    conf.log_opt_values(LOG, logging.DEBUG)
    return svc.run()


if __name__ == '__main__':
    sys.exit(main())
