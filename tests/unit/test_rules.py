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
"""RuleSet semantics: precedence, continue, exception filters, muting."""

import textwrap

from oslo_config import cfg
import pytest

from nova_error_notifier import opts
from nova_error_notifier import record as rec
from nova_error_notifier import rules


def load_rules(tmp_path, text, default_receiver='log'):
    """Load the rules of an INI text the way the service does."""
    path = tmp_path / 'rules.conf'
    path.write_text(textwrap.dedent(text))
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(['--config-file', str(path)], project='nova_error_notifier')
    ruleset, warnings = rules.load(conf, default_receiver=default_receiver)
    assert warnings == []
    return ruleset


def record(event_type='instance.create.error', synthetic=(),
           exception=None):
    return rec.ErrorRecord(event_type=event_type, priority='ERROR',
                           format='versioned',
                           synthetic_events=tuple(synthetic),
                           exception=exception)


def routes(match):
    return [(r.rule, r.receiver) for r in match.routes]


def names(rule_list):
    return [r.name for r in rule_list]


# The catch-all and the glob come first in `rules`: the exact rule must win
# by specificity, not by order.
PRECEDENCE = '''\
    [DEFAULT]
    rules = any, glob, exact

    [rule:any]
    events = *
    receivers = r_any

    [rule:glob]
    events = instance.*.error
    receivers = r_glob

    [rule:exact]
    events = instance.create.error
    receivers = r_exact
    '''


def test_exact_beats_glob_beats_catch_all(tmp_path):
    ruleset = load_rules(tmp_path, PRECEDENCE)
    match = ruleset.match(record('instance.create.error'))
    assert names(match.matched) == ['exact', 'glob', 'any']
    assert names(match.applied) == ['exact']
    assert routes(match) == [('exact', 'r_exact')]

    match = ruleset.match(record('instance.delete.error'))
    assert names(match.matched) == ['glob', 'any']
    assert routes(match) == [('glob', 'r_glob')]

    match = ruleset.match(record('compute.exception'))
    assert names(match.matched) == ['any']
    assert routes(match) == [('any', 'r_any')]


def test_match_is_pure(tmp_path):
    ruleset = load_rules(tmp_path, PRECEDENCE)
    first = ruleset.match(record('instance.create.error'))
    ruleset.match(record('compute.exception'))
    again = ruleset.match(record('instance.create.error'))
    assert routes(first) == routes(again) == [('exact', 'r_exact')]


def test_specific_rule_replaces_catch_all_receivers(tmp_path):
    ruleset = load_rules(tmp_path, '''\
        [DEFAULT]
        rules = everything, builds

        [rule:everything]
        events = *
        receivers = ops_log, pager

        [rule:builds]
        events = compute_task.build_instances
        receivers = build_team
        ''')
    match = ruleset.match(record('compute_task.build_instances'))
    assert routes(match) == [('builds', 'build_team')]
    assert names(match.matched) == ['builds', 'everything']


def test_continue_adds_next_matching_rule(tmp_path):
    ruleset = load_rules(tmp_path, '''\
        [DEFAULT]
        rules = everything, builds

        [rule:everything]
        events = *
        receivers = ops_log

        [rule:builds]
        events = compute_task.build_instances
        receivers = build_team
        continue = true
        ''')
    match = ruleset.match(record('compute_task.build_instances'))
    assert names(match.applied) == ['builds', 'everything']
    assert routes(match) == [('builds', 'build_team'),
                             ('everything', 'ops_log')]
    # A record only the catch-all matches is unaffected.
    assert routes(ruleset.match(record('resize_instance'))) == [
        ('everything', 'ops_log')]


def test_continue_chain_stops_at_first_rule_without_continue(tmp_path):
    ruleset = load_rules(tmp_path, '''\
        [DEFAULT]
        rules = exact, glob, any

        [rule:exact]
        events = instance.create.error
        receivers = a
        continue = true

        [rule:glob]
        events = instance.*
        receivers = b

        [rule:any]
        events = *
        receivers = c
        continue = true
        ''')
    match = ruleset.match(record('instance.create.error'))
    assert names(match.matched) == ['exact', 'glob', 'any']
    assert names(match.applied) == ['exact', 'glob']
    assert routes(match) == [('exact', 'a'), ('glob', 'b')]


def test_continue_through_every_level(tmp_path):
    ruleset = load_rules(tmp_path, '''\
        [DEFAULT]
        rules = any, glob, exact

        [rule:any]
        events = *
        receivers = c

        [rule:glob]
        events = instance.*
        receivers = b
        continue = yes

        [rule:exact]
        events = instance.create.error
        receivers = a
        continue = 1
        ''')
    match = ruleset.match(record('instance.create.error'))
    assert names(match.applied) == ['exact', 'glob', 'any']
    assert routes(match) == [('exact', 'a'), ('glob', 'b'), ('any', 'c')]


@pytest.mark.parametrize('order, winner', [
    ('first, second', 'first'),
    ('second, first', 'second'),
])
def test_ties_go_by_order_of_rules(tmp_path, order, winner):
    ruleset = load_rules(tmp_path, '''\
        [DEFAULT]
        rules = %s

        [rule:first]
        events = resize_instance
        receivers = r_first

        [rule:second]
        events = resize_instance, instance.create.error
        receivers = r_second
        ''' % order)
    match = ruleset.match(record('resize_instance'))
    assert names(match.applied) == [winner]
    assert routes(match) == [(winner, 'r_' + winner)]


@pytest.mark.parametrize('order, winner', [
    ('g1, g2, star', 'g1'),
    ('star, g2, g1', 'g2'),
])
def test_glob_ties_go_by_order_of_rules(tmp_path, order, winner):
    ruleset = load_rules(tmp_path, '''\
        [DEFAULT]
        rules = %s

        [rule:g1]
        events = instance.*
        receivers = r_g1

        [rule:g2]
        events = *.error
        receivers = r_g2

        [rule:star]
        events = *
        receivers = r_star
        ''' % order)
    match = ruleset.match(record('instance.create.error'))
    assert routes(match) == [(winner, 'r_' + winner)]


def test_tie_between_exact_matches_on_different_events(tmp_path):
    # 'late' is exact on the event type, 'early' on a synthetic event: both
    # are exact matches, so the order of `rules` decides.
    ruleset = load_rules(tmp_path, '''\
        [DEFAULT]
        rules = early, late

        [rule:early]
        events = notifier.instance.create_failed
        receivers = r_early

        [rule:late]
        events = compute_task.build_instances
        receivers = r_late
        ''')
    match = ruleset.match(record('compute_task.build_instances',
                                 synthetic=[rec.CREATE_FAILED]))
    assert names(match.matched) == ['early', 'late']
    assert routes(match) == [('early', 'r_early')]


INCLUDE = '''\
    [DEFAULT]
    rules = scheduling, rest

    [rule:scheduling]
    events = *
    include_exceptions = NoValidHost, Build*Exception
    receivers = capacity

    [rule:rest]
    events = *
    receivers = ops
    '''


@pytest.mark.parametrize('exception, expected', [
    ('NoValidHost', 'capacity'),
    ('BuildAbortException', 'capacity'),
    ('BuildException', 'capacity'),
    ('NoValidHostX', 'ops'),
    ('noValidHost', 'ops'),
    ('KeyPairExists', 'ops'),
    (None, 'ops'),
])
def test_include_exceptions(tmp_path, exception, expected):
    ruleset = load_rules(tmp_path, INCLUDE)
    match = ruleset.match(record('compute_task.build_instances',
                                 exception=exception))
    assert [r.receiver for r in match.routes] == [expected]
    if expected == 'ops':
        assert names(match.matched) == ['rest']


EXCLUDE = '''\
    [DEFAULT]
    rules = everything

    [rule:everything]
    events = *
    exclude_exceptions = KeyPair*, AggregateNameExists
    receivers = ops
    '''


@pytest.mark.parametrize('exception, matches', [
    ('KeyPairExists', False),
    ('KeyPairNotFound', False),
    ('AggregateNameExists', False),
    ('AggregateNameExistsNot', True),
    ('NoValidHost', True),
    (None, True),
])
def test_exclude_exceptions(tmp_path, exception, matches):
    ruleset = load_rules(tmp_path, EXCLUDE)
    match = ruleset.match(record('compute.exception', exception=exception))
    if matches:
        assert routes(match) == [('everything', 'ops')]
    else:
        assert match.matched == ()
        assert match.routes == ()


def test_excluded_exception_falls_to_next_rule(tmp_path):
    ruleset = load_rules(tmp_path, '''\
        [DEFAULT]
        rules = builds, everything

        [rule:builds]
        events = compute_task.build_instances
        exclude_exceptions = NoValidHost
        receivers = build_team

        [rule:everything]
        events = *
        receivers = ops
        ''')
    match = ruleset.match(record('compute_task.build_instances',
                                 exception='NoValidHost'))
    assert routes(match) == [('everything', 'ops')]
    match = ruleset.match(record('compute_task.build_instances',
                                 exception='BuildAbortException'))
    assert routes(match) == [('builds', 'build_team')]


SYNTHETIC = '''\
    [DEFAULT]
    rules = created, errored, notifier_glob

    [rule:created]
    events = notifier.instance.create_failed
    receivers = r_create

    [rule:errored]
    events = notifier.instance.error_state
    receivers = r_error

    [rule:notifier_glob]
    events = notifier.*
    receivers = r_glob
    '''


def test_synthetic_create_failed(tmp_path):
    ruleset = load_rules(tmp_path, SYNTHETIC)
    match = ruleset.match(record('instance.create.error',
                                 synthetic=[rec.CREATE_FAILED]))
    assert names(match.matched) == ['created', 'notifier_glob']
    assert routes(match) == [('created', 'r_create')]


def test_synthetic_error_state(tmp_path):
    ruleset = load_rules(tmp_path, SYNTHETIC)
    match = ruleset.match(record('instance.update',
                                 synthetic=[rec.ERROR_STATE]))
    assert names(match.matched) == ['errored', 'notifier_glob']
    assert routes(match) == [('errored', 'r_error')]


def test_both_synthetic_events(tmp_path):
    ruleset = load_rules(tmp_path, SYNTHETIC)
    match = ruleset.match(record('compute_task.build_instances',
                                 synthetic=[rec.CREATE_FAILED,
                                            rec.ERROR_STATE]))
    assert names(match.matched) == ['created', 'errored', 'notifier_glob']
    assert routes(match) == [('created', 'r_create')]


def test_synthetic_rules_ignore_records_without_them(tmp_path):
    ruleset = load_rules(tmp_path, SYNTHETIC)
    match = ruleset.match(record('instance.create.error'))
    assert match.matched == ()
    assert match.routes == ()


def test_synthetic_event_beats_glob_on_event_type(tmp_path):
    ruleset = load_rules(tmp_path, '''\
        [DEFAULT]
        rules = instance_errors, created

        [rule:instance_errors]
        events = instance.*.error
        receivers = r_glob

        [rule:created]
        events = notifier.instance.create_failed
        receivers = r_create
        ''')
    match = ruleset.match(record('instance.create.error',
                                 synthetic=[rec.CREATE_FAILED]))
    assert routes(match) == [('created', 'r_create')]


def test_muting_rule_wins_and_yields_no_routes(tmp_path):
    ruleset = load_rules(tmp_path, '''\
        [DEFAULT]
        rules = everything, keypairs

        [rule:everything]
        events = *
        receivers = ops

        [rule:keypairs]
        events = compute.exception
        include_exceptions = KeyPair*
        receivers =
        ''')
    match = ruleset.match(record('compute.exception',
                                 exception='KeyPairExists'))
    assert names(match.matched) == ['keypairs', 'everything']
    assert names(match.applied) == ['keypairs']
    assert match.routes == ()
    # Other exceptions of the same event still reach the catch-all.
    match = ruleset.match(record('compute.exception',
                                 exception='FlavorNotFound'))
    assert routes(match) == [('everything', 'ops')]


def test_each_receiver_once(tmp_path):
    ruleset = load_rules(tmp_path, '''\
        [DEFAULT]
        rules = builds, everything

        [rule:builds]
        events = compute_task.build_instances
        receivers = pager, ops, pager
        continue = true

        [rule:everything]
        events = *
        receivers = ops, mail
        ''')
    match = ruleset.match(record('compute_task.build_instances'))
    assert routes(match) == [('builds', 'pager'), ('builds', 'ops'),
                             ('everything', 'mail')]
    assert ruleset.receivers == ['pager', 'ops', 'mail']


def test_no_rules_means_default_rule_to_log(tmp_path):
    ruleset = load_rules(tmp_path, '''\
        [DEFAULT]
        ''')
    assert len(ruleset) == 1
    assert ruleset.rules[0].name == rules.DEFAULT_RULE == 'default'
    assert ruleset.receivers == ['log']
    for rec_ in (record('instance.create.error', exception='NoValidHost'),
                 record('compute.exception', exception='KeyPairExists'),
                 record('instance.update', synthetic=[rec.ERROR_STATE])):
        match = ruleset.match(rec_)
        assert routes(match) == [('default', 'log')]


def test_rules_built_directly():
    ruleset = rules.RuleSet([
        rules.Rule('any', ['*'], ['r_any'], order=0),
        rules.Rule('exact', ['resize_instance'], ['r_exact'], order=1),
        rules.Rule('mute', ['compute.exception'], [], order=2),
    ])
    assert len(ruleset) == 3
    assert routes(ruleset.match(record('resize_instance'))) == [
        ('exact', 'r_exact')]
    assert routes(ruleset.match(record('compute.exception'))) == []
    assert routes(ruleset.match(record('anything.else'))) == [
        ('any', 'r_any')]


def test_rule_with_exact_and_glob_patterns():
    rule = rules.Rule('mixed', ['resize_instance', 'instance.*'], ['r'])
    assert rule.specificity(('resize_instance',)) == rules.EXACT
    assert rule.specificity(('instance.create.error',)) == rules.GLOB
    assert rule.specificity(('compute.exception',)) is None
    ruleset = rules.RuleSet([rule])
    assert routes(ruleset.match(record('instance.x'))) == [('mixed', 'r')]
    assert routes(ruleset.match(record('resize_instance'))) == [
        ('mixed', 'r')]
    assert ruleset.match(record('resize_instancex')).matched == ()


def test_thousand_rules_pick_the_right_winner():
    generated = []
    order = 0
    # 1,000 rules: 900 exact, 80 globs, 19 exception filters, 1 catch-all
    # placed in the middle of the order.
    for i in range(450):
        generated.append(rules.Rule('exact%d' % i, ['event.%d.error' % i],
                                    ['recv%d' % i], order=order))
        order += 1
    generated.append(rules.Rule('catch_all', ['*'], ['everyone'],
                                order=order))
    order += 1
    for i in range(80):
        generated.append(rules.Rule('glob%d' % i, ['glob%d.*' % i],
                                    ['g%d' % i], order=order))
        order += 1
    for i in range(19):
        generated.append(rules.Rule(
            'filtered%d' % i, ['event.%d.error' % i], ['f%d' % i],
            include_exceptions=['Exc%d' % i], order=order))
        order += 1
    for i in range(450):
        # Duplicates of the first exact rules, later in order: never win.
        generated.append(rules.Rule('late%d' % i, ['event.%d.error' % i],
                                    ['late%d' % i], order=order))
        order += 1
    ruleset = rules.RuleSet(generated)
    assert len(ruleset) == 1000

    match = ruleset.match(record('event.321.error'))
    assert names(match.matched) == ['exact321', 'late321', 'catch_all']
    assert routes(match) == [('exact321', 'recv321')]

    match = ruleset.match(record('event.7.error', exception='Exc7'))
    assert names(match.matched) == ['exact7', 'filtered7', 'late7',
                                    'catch_all']
    assert routes(match) == [('exact7', 'recv7')]

    match = ruleset.match(record('glob42.instance.create'))
    assert names(match.matched) == ['glob42', 'catch_all']
    assert routes(match) == [('glob42', 'g42')]

    match = ruleset.match(record('event.999.error'))
    assert routes(match) == [('catch_all', 'everyone')]

    match = ruleset.match(record('x', synthetic=['event.449.error',
                                                 'glob0.y']))
    assert routes(match) == [('exact449', 'recv449')]


def test_thousand_rules_from_configuration(tmp_path):
    sections = ['[DEFAULT]', 'rules = %s' % ', '.join(
        'r%d' % i for i in range(1000))]
    for i in range(1000):
        event = '*' if i == 0 else ('instance.%d.*' % i if i % 2
                                    else 'event.%d' % i)
        sections += ['[rule:r%d]' % i, 'events = %s' % event,
                     'receivers = recv%d' % i]
    ruleset = load_rules(tmp_path, '\n'.join(sections) + '\n')
    assert len(ruleset) == 1000
    assert routes(ruleset.match(record('event.998'))) == [('r998', 'recv998')]
    assert routes(ruleset.match(record('instance.777.x'))) == [
        ('r777', 'recv777')]
    assert routes(ruleset.match(record('event.999'))) == [('r0', 'recv0')]


class _Seen:
    def __init__(self, events, exception):
        self.events = events
        self.exception = exception


def test_match_outcomes_are_remembered_by_events_and_exception(monkeypatch):
    ruleset = rules.RuleSet([
        rules.Rule('create', ['instance.create.error'], ['ops']),
        rules.Rule('quota', ['*'], ['billing'],
                   include_exceptions=['*Quota*']),
        rules.Rule('rest', ['*'], ['oncall'], order=2)])
    calls = []
    real = ruleset._match

    def counting(events, exception):
        calls.append((tuple(events), exception))
        return real(events, exception)
    monkeypatch.setattr(ruleset, '_match', counting)
    first = ruleset.match(_Seen(('instance.create.error', 'x'), 'NoValidHost'))
    again = ruleset.match(_Seen(('x', 'instance.create.error'), 'NoValidHost'))
    assert again is first and len(calls) == 1
    assert [r.receiver for r in first.routes] == ['ops']
    quota = ruleset.match(_Seen(('resize_instance',), 'OverQuota'))
    other = ruleset.match(_Seen(('resize_instance',), 'MigrationError'))
    assert [r.receiver for r in quota.routes] == ['billing']
    assert [r.receiver for r in other.routes] == ['oncall']
    assert len(calls) == 3
    monkeypatch.setattr(rules.RuleSet, 'CACHE_SIZE', 3)
    ruleset.match(_Seen(('a',), None))        # full: starts over
    assert ruleset.match(_Seen(('resize_instance',), 'OverQuota')) \
        is not quota
    assert len(calls) == 5
