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
"""Load and check the rules, receivers and buses of a configuration at once."""

import os

from oslo_config import cfg

from nova_error_notifier import bus as bus_mod
from nova_error_notifier import receivers as receivers_mod
from nova_error_notifier import rules as rules_mod


class ConfigError(ValueError):
    """The configuration is broken; ``problems`` lists every problem."""

    def __init__(self, problems, warnings=()):
        self.problems = list(problems)
        self.warnings = list(warnings)
        super().__init__('\n'.join(self.problems))


#: The service's own static option groups (besides rule:* / receiver:*).
OWN_GROUPS = ('listener', 'email', 'staff', 'correlation', 'delivery',
              'enrichment')


class Settings:
    """The rules and receivers in force, and the buses listened to."""

    def __init__(self, ruleset, receivers, warnings=(), buses=()):
        self.ruleset = ruleset
        self.receivers = receivers
        self.warnings = list(warnings)
        #: The :class:`nova_error_notifier.bus.Bus` es, default bus first.
        self.buses = tuple(buses)


def _fallback_receiver(conf):
    try:
        return conf.delivery.fallback_receiver
    except (cfg.NoSuchOptError, AttributeError):
        return None


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
    # The [bus:NAME] groups first: check_values reads their options too.
    buses, bus_problems, bus_warnings = bus_mod.load(conf)
    problems = check_values(conf)
    warnings = []
    implicit = not [n for n in conf.rules if n.strip()]
    try:
        ruleset, warnings = rules_mod.load(
            conf, default_receiver=receivers_mod.DEFAULT_RECEIVER)
        names = list(ruleset.receivers)
    except rules_mod.RuleError as exc:
        ruleset = None
        problems.extend(exc.problems)
        names = list(exc.receivers)
    fallback = _fallback_receiver(conf)
    if fallback and fallback not in names:
        names.append(fallback)
    receivers = {}
    try:
        receivers = receivers_mod.load(conf, names, implicit=implicit)
    except receivers_mod.ReceiverError as exc:
        problems.extend(exc.problems)
    section_problems, section_warnings = check_sections(conf, names,
                                                        set(receivers))
    problems.extend(section_problems)
    problems.extend(bus_problems)
    warnings = list(warnings) + section_warnings + bus_warnings
    if problems:
        raise ConfigError(problems, warnings)
    return Settings(ruleset, receivers, warnings, buses)


def _config_files(conf):
    files = list(conf.config_file or [])
    for directory in conf.config_dir or []:
        if os.path.isdir(directory):
            files.extend(sorted(
                os.path.join(directory, name) for name in os.listdir(directory)
                if name.endswith('.conf')))
    return files


def _file_sections(conf):
    """{section: set of option names} as written in the config files."""
    sections = {}
    for path in _config_files(conf):
        parsed = {}
        try:
            cfg.ConfigParser(path, parsed).parse()
        except Exception:   # oslo.config already reported unreadable files
            continue
        for section, values in parsed.items():
            sections.setdefault(section, set()).update(
                key.replace('-', '_') for key in values)
    return sections


#: Groups of libraries that register their options only when used.
_LIBRARY_PREFIXES = ('oslo_', 'keystone', 'ssl', 'profiler', 'matchmaker')


def check_sections(conf, receiver_names, loaded=None):
    """Misspelled options are problems; unknown sections are warnings.

    Only the service's own groups are checked for unknown options: a typo
    such as ``exclude_exception`` would otherwise silently change what is
    alerted. Library groups register their options lazily and are left
    alone.
    """
    problems, warnings = [], []
    listed_rules = {n.strip() for n in conf.rules if n.strip()}
    for section, keys in sorted(_file_sections(conf).items()):
        if section == 'DEFAULT' or '<' in section:
            continue
        own = (section.startswith(rules_mod.RULE_GROUP_PREFIX) or
               section.startswith(receivers_mod.GROUP_PREFIX) or
               section.startswith(bus_mod.GROUP_PREFIX) or
               section in OWN_GROUPS)
        if section.startswith(receivers_mod.GROUP_PREFIX):
            name = section[len(receivers_mod.GROUP_PREFIX):]
            if name not in receiver_names:
                warnings.append('[%s] is not used by any rule' % section)
                continue
            if loaded is not None and name not in loaded:
                continue      # its driver failed: its options are unknown
        if section.startswith(rules_mod.RULE_GROUP_PREFIX):
            if section[len(rules_mod.RULE_GROUP_PREFIX):] not in \
                    listed_rules:
                continue          # rules.load warned already
        try:
            group = conf[section]
        except cfg.NoSuchOptError:
            if not section.startswith(_LIBRARY_PREFIXES):
                warnings.append('unknown section [%s] is ignored' % section)
            continue
        if not own:
            continue
        known = set(group)
        for key in sorted(keys - known):
            problems.append('[%s] %s: unknown option (known: %s)'
                            % (section, key, ', '.join(sorted(known))))
    return problems, warnings
