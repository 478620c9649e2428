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
"""The operator's rules: which errors go to which receivers.

A rule names events and receivers::

    [DEFAULT]
    rules = build_failures, everything_else

    [rule:build_failures]
    events = compute_task.build_instances, notifier.instance.create_failed
    receivers = ops_log

    [rule:everything_else]
    events = *
    exclude_exceptions = KeyPairExists, AggregateNameExists
    receivers = ops_log

Events are Nova's event types as sent, shell-style globs, ``*`` (the
catch-all) or the service's synthetic events (``notifier.*``). A record
matches a rule when any of its events matches any of the rule's patterns and
its exception passes the rule's include/exclude lists.

Precedence: the matching rule with the most specific pattern wins (an exact
name beats a glob, a glob beats ``*``); ties go by the order of ``rules``.
The winner's receivers replace those of less specific rules, unless the
winner sets ``continue = true``, in which case the next matching rule adds
its receivers too, and so on.

:func:`RuleSet.match` is a pure function of the record.
"""

import collections
import fnmatch
import re

from oslo_config import cfg

from nova_error_notifier.drivers import base as driver_base
from nova_error_notifier import record as rec

RULE_GROUP_PREFIX = 'rule:'

#: Name of the implicit rule used when no rules are configured.
DEFAULT_RULE = 'default'

CATCH_ALL = '*'

DEFAULT_OPTS = [
    cfg.ListOpt('rules',
                default=[],
                help='Names of the rules to apply, in order. Each name '
                     'refers to a [rule:NAME] section. Order breaks ties '
                     'between rules of equal specificity. With no rules, '
                     'every recognised error goes to the log driver.'),
]

RULE_OPTS = [
    cfg.ListOpt('events',
                help='Events the rule matches: Nova event types as sent '
                     '(legacy "compute_task.build_instances", '
                     '"resize_instance", "compute.instance.create.error"; '
                     'versioned "instance.create.error", '
                     '"compute.exception"), shell-style globs '
                     '("instance.*.error"), "*" for every error, or the '
                     'synthetic events "notifier.instance.create_failed" '
                     '(an instance creation failed, however Nova reported '
                     'it) and "notifier.instance.error_state" (an instance '
                     'entered ERROR). Required.'),
    cfg.ListOpt('receivers',
                help='Receivers ([receiver:NAME] sections) that get the '
                     'alerts of this rule. Required; set it to an empty '
                     'value to mute the matched errors (the rule still '
                     'takes precedence over less specific ones).'),
    cfg.ListOpt('include_exceptions',
                default=[],
                help='If set, the rule only matches errors whose exception '
                     'class (without module and "_Remote") matches one of '
                     'these names or globs.'),
    cfg.ListOpt('exclude_exceptions',
                default=[],
                help='The rule does not match errors whose exception class '
                     'matches one of these names or globs, e.g. user '
                     'mistakes such as KeyPairExists.'),
    cfg.BoolOpt('continue',
                default=False,
                help='When this rule matches, also apply the next matching '
                     'rule of lower or equal precedence, instead of '
                     'replacing its receivers.'),
]

_PATTERN_RE = re.compile(r'\A[A-Za-z0-9_.*?\[\]!:-]+\Z')
_GLOB_CHARS = frozenset('*?[')

# Specificity levels of a pattern.
EXACT, GLOB, ANY = 2, 1, 0

Route = collections.namedtuple('Route', 'rule receiver')


class RuleError(ValueError):
    """A problem with the rules; ``problems`` lists every one.

    ``receivers`` names every receiver the rules refer to, broken rules
    included, so that the receivers can be checked in the same pass.
    """

    def __init__(self, problems, receivers=()):
        self.problems = list(problems)
        self.receivers = list(receivers)
        super().__init__('; '.join(self.problems))


def _specificity(pattern):
    if pattern == CATCH_ALL:
        return ANY
    if _GLOB_CHARS.intersection(pattern):
        return GLOB
    return EXACT


def check_pattern(pattern):
    """Return a problem description for a bad pattern, else None."""
    if not pattern:
        return 'empty event pattern'
    if not _PATTERN_RE.match(pattern):
        return ('%r is not a valid event name or glob (letters, digits, '
                '"_.-:" and the glob characters "*?[]!")' % pattern)
    if pattern.count('[') != pattern.count(']'):
        return '%r has unbalanced brackets' % pattern
    if (pattern.startswith(rec.SYNTHETIC_PREFIX) and
            _specificity(pattern) == EXACT and
            pattern not in rec.SYNTHETIC_EVENTS):
        return ('%r is not a synthetic event; known: %s'
                % (pattern, ', '.join(rec.SYNTHETIC_EVENTS)))
    return None


class Rule:
    """One rule, compiled for matching."""

    def __init__(self, name, events, receivers, include_exceptions=(),
                 exclude_exceptions=(), cont=False, order=0):
        self.name = name
        self.events = tuple(events)
        self.receivers = tuple(receivers)
        self.include_exceptions = tuple(include_exceptions)
        self.exclude_exceptions = tuple(exclude_exceptions)
        self.cont = bool(cont)
        self.order = order
        self.exact = frozenset(p for p in self.events
                               if _specificity(p) == EXACT)
        self.catch_all = CATCH_ALL in self.events
        globs = [p for p in self.events if _specificity(p) == GLOB]
        self.glob_re = (re.compile('|'.join(fnmatch.translate(p)
                                            for p in globs))
                        if globs else None)
        self._include = self._compile(self.include_exceptions)
        self._exclude = self._compile(self.exclude_exceptions)

    @staticmethod
    def _compile(names):
        if not names:
            return None
        return re.compile('|'.join(fnmatch.translate(n) for n in names))

    def specificity(self, events):
        """The specificity of the best pattern matching any of ``events``.

        ``None`` when no pattern matches.
        """
        if self.exact and not self.exact.isdisjoint(events):
            return EXACT
        if self.glob_re is not None:
            for event in events:
                if self.glob_re.match(event):
                    return GLOB
        if self.catch_all:
            return ANY
        return None

    def accepts_exception(self, exception):
        if self._include is not None:
            if not exception or not self._include.match(exception):
                return False
        if self._exclude is not None and exception:
            if self._exclude.match(exception):
                return False
        return True

    def __repr__(self):
        return '<Rule %s events=%s receivers=%s>' % (
            self.name, ','.join(self.events), ','.join(self.receivers))


class Match:
    """The outcome of matching one record: which rules, which receivers."""

    __slots__ = ('matched', 'applied', 'routes')

    def __init__(self, matched, applied, routes):
        #: Every matching rule, most specific first.
        self.matched = matched
        #: The rules whose receivers were used.
        self.applied = applied
        #: (rule name, receiver name) pairs, each receiver once.
        self.routes = routes


class RuleSet:
    """An ordered set of rules; :meth:`match` is pure."""

    def __init__(self, rules):
        self.rules = tuple(rules)
        self._by_event = collections.defaultdict(list)
        self._others = []
        self._cache = {}
        for rule in self.rules:
            for name in rule.exact:
                self._by_event[name].append(rule)
            if rule.glob_re is not None or rule.catch_all:
                self._others.append(rule)

    def __len__(self):
        return len(self.rules)

    #: Distinct (events, exception) outcomes remembered; the cache starts
    #: over when full. Real traffic has few: event types times exceptions.
    CACHE_SIZE = 4096

    def match(self, record):
        """Rules and receivers for an incident or record.

        The outcome depends only on the set of events and the exception,
        and the rules never change (a reload makes a new RuleSet): it is
        remembered, so that a storm of alike failures costs one match
        against a thousand rules, not one per incident.
        """
        key = (frozenset(record.events), record.exception)
        cache = self._cache
        found = cache.get(key)
        if found is None:
            found = self._match(record.events, record.exception)
            if len(cache) >= self.CACHE_SIZE:
                cache.clear()
            cache[key] = found
        return found

    def _match(self, events, exception):
        candidates = {}
        for event in events:
            for rule in self._by_event.get(event, ()):
                candidates[rule.name] = rule
        for rule in self._others:
            candidates.setdefault(rule.name, rule)
        scored = []
        for rule in candidates.values():
            level = rule.specificity(events)
            if level is None or not rule.accepts_exception(exception):
                continue
            scored.append((-level, rule.order, rule))
        scored.sort(key=lambda item: item[:2])
        matched = tuple(item[2] for item in scored)
        applied = []
        routes = []
        seen = set()
        for rule in matched:
            applied.append(rule)
            for receiver in rule.receivers:
                if receiver not in seen:
                    seen.add(receiver)
                    routes.append(Route(rule.name, receiver))
            if not rule.cont:
                break
        return Match(matched, tuple(applied), tuple(routes))

    @property
    def receivers(self):
        """Every receiver name the rules refer to."""
        names = []
        for rule in self.rules:
            for name in rule.receivers:
                if name not in names:
                    names.append(name)
        return names


def register_opts(conf):
    conf.register_opts(DEFAULT_OPTS)


def _rule_section_names(conf):
    try:
        sections = conf.list_all_sections()
    except Exception:
        return []
    return [s[len(RULE_GROUP_PREFIX):] for s in sections
            if s.startswith(RULE_GROUP_PREFIX)]


def _clean(values):
    return [v.strip() for v in values or () if v.strip()]


#: Read one option, adding a readable problem if its value is invalid (one
#: implementation, in the driver contract that drivers use too).
option_value = driver_base.option_value
value_problem = driver_base.value_problem


def load(conf, default_receiver=None):
    """Build the :class:`RuleSet` from ``conf``.

    With no rules configured, one implicit ``*`` rule sends everything to
    ``default_receiver``.

    :returns: (ruleset, warnings)
    :raises RuleError: listing every problem found.
    """
    problems = []
    warnings = []
    names = [n.strip() for n in conf.rules if n.strip()]
    present = set(_rule_section_names(conf))
    for name in sorted(present - set(names)):
        if '<' not in name:
            warnings.append('[%s%s] is not listed in [DEFAULT] rules and is '
                            'ignored' % (RULE_GROUP_PREFIX, name))
    if not names:
        if default_receiver is None:
            return RuleSet(()), warnings
        return RuleSet((Rule(DEFAULT_RULE, (CATCH_ALL,),
                             (default_receiver,)),)), warnings
    duplicates = sorted({n for n in names if names.count(n) > 1})
    for name in duplicates:
        problems.append('rule %r is listed more than once in [DEFAULT] rules'
                        % name)
    rules = []
    referenced = []
    for order, name in enumerate(dict.fromkeys(names)):
        group = RULE_GROUP_PREFIX + name
        if name not in present:
            problems.append('rule %r is listed in [DEFAULT] rules but has no '
                            '[%s] section' % (name, group))
            continue
        conf.register_opts(RULE_OPTS, group=group)
        rule_problems = []
        values = {}
        for opt in RULE_OPTS:
            values[opt.dest] = option_value(conf, group, opt.dest,
                                            rule_problems)
        events = _clean(values['events'])
        receivers = values['receivers']
        include = _clean(values['include_exceptions'])
        exclude = _clean(values['exclude_exceptions'])
        cont = bool(values['continue'])
        if not events:
            rule_problems.append('[%s] events is empty: name at least one '
                                 'event, glob or "*"' % group)
        for pattern in events:
            problem = check_pattern(pattern)
            if problem:
                rule_problems.append('[%s] events: %s' % (group, problem))
        for pattern in include + exclude:
            if not _PATTERN_RE.match(pattern):
                rule_problems.append('[%s]: %r is not a valid exception '
                                     'class name or glob' % (group, pattern))
        if receivers is None:
            rule_problems.append('[%s] receivers is not set (set it to an '
                                 'empty value to mute the matched errors)'
                                 % group)
            receivers = []
        receivers = [r.strip() for r in receivers if r.strip()]
        referenced.extend(r for r in receivers if r not in referenced)
        problems.extend(rule_problems)
        if not rule_problems:
            rules.append(Rule(name, events, receivers, include, exclude,
                              cont, order))
    if problems:
        raise RuleError(problems, referenced)
    return RuleSet(rules), warnings


def list_opts():
    return [
        (None, DEFAULT_OPTS),
        (RULE_GROUP_PREFIX + '<name>', RULE_OPTS),
    ]
