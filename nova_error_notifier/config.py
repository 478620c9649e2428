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
"""Load and check the rules and receivers of a configuration at once."""

from nova_error_notifier import receivers as receivers_mod
from nova_error_notifier import rules as rules_mod


class ConfigError(ValueError):
    """The configuration is broken; ``problems`` lists every problem."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__('\n'.join(self.problems))


class Settings:
    """The rules and receivers in force."""

    def __init__(self, ruleset, receivers, warnings=()):
        self.ruleset = ruleset
        self.receivers = receivers
        self.warnings = list(warnings)


def load(conf):
    """Build :class:`Settings` from ``conf``, reporting every problem.

    :raises ConfigError: with one line per problem.
    """
    problems = []
    warnings = []
    implicit = not [n for n in conf.rules if n.strip()]
    ruleset = None
    try:
        ruleset, warnings = rules_mod.load(
            conf, default_receiver=receivers_mod.DEFAULT_RECEIVER)
    except rules_mod.RuleError as exc:
        problems.extend(exc.problems)
    names = ruleset.receivers if ruleset is not None else []
    receivers = {}
    try:
        receivers = receivers_mod.load(conf, names, implicit=implicit)
    except receivers_mod.ReceiverError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return Settings(ruleset, receivers, warnings)
