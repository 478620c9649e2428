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

from oslo_config import cfg

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


def check_values(conf):
    """Read every option registered so far; list the invalid values.

    oslo.config validates a value (type, choices, bounds) only when it is
    read, so a typo in a rarely used option would otherwise surface long
    after start-up.
    """
    problems = []
    for name in sorted(conf):
        try:
            value = conf[name]
        except (cfg.ConfigFileValueError, ValueError) as exc:
            problems.append(rules_mod.value_problem('DEFAULT', name, exc))
            continue
        if isinstance(value, cfg.ConfigOpts.GroupAttr):
            for opt_name in sorted(value):
                rules_mod.option_value(conf, name, opt_name, problems)
    return problems


def load(conf):
    """Build :class:`Settings` from ``conf``, reporting every problem.

    :raises ConfigError: with one line per problem.
    """
    problems = check_values(conf)
    warnings = []
    implicit = not [n for n in conf.rules if n.strip()]
    try:
        ruleset, warnings = rules_mod.load(
            conf, default_receiver=receivers_mod.DEFAULT_RECEIVER)
        names = ruleset.receivers
    except rules_mod.RuleError as exc:
        ruleset = None
        problems.extend(exc.problems)
        names = exc.receivers
    receivers = {}
    try:
        receivers = receivers_mod.load(conf, names, implicit=implicit)
    except receivers_mod.ReceiverError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return Settings(ruleset, receivers, warnings)
