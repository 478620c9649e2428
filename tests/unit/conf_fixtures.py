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
"""Shared test helper: a ``ConfigOpts`` read from a configuration file.

``conf_from_text(tmp_path, text)`` writes *text* to a file in *tmp_path*
and parses it as the service does (project ``nova_error_notifier``, no
default files from /etc or ~), the service's options registered first
(:func:`nova_error_notifier.opts.register_opts`, or the *register*
function given).
"""

from oslo_config import cfg

from nova_error_notifier import opts


def conf_from_text(tmp_path, text='', register=opts.register_opts,
                   name='c.conf'):
    path = tmp_path / name
    path.write_text(text)
    conf = cfg.ConfigOpts()
    if register is not None:
        register(conf)
    conf(['--config-file', str(path)], project='nova_error_notifier',
         default_config_files=[])
    return conf
