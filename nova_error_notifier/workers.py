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
"""The process model: one supervisor, one process per stage and worker.

``nova-error-notifier`` starts a cotyledon ``ServiceManager`` (as
Ceilometer's notification agent and Aodh do) with these services, each in
processes of its own:

``listener`` (``[listener] workers`` processes)
    oslo.messaging's batch listener on the pool queue, one per bus
    (:mod:`nova_error_notifier.bus`), each with its own transport; stores
    error records (:mod:`nova_error_notifier.listener`,
    :mod:`nova_error_notifier.ingest`).
``router`` (one process)
    routes the incidents whose ``group_wait`` is over, digests included
    (:mod:`nova_error_notifier.routing`); one router at a time works across
    every replica (a lease in the database).
``delivery`` (one process, ``[delivery] workers`` threads)
    delivers what the router wrote (:mod:`nova_error_notifier.delivery`).
``housekeeping`` (one process)
    hands expired delivery claims back and purges finished work.

``--role ROLE`` (repeatable) starts only some of them, so that a deployment
can scale them apart; every role of every host shares the database.

The supervisor (the parent) restarts a process that dies, and logs it.
SIGTERM stops every process within ``[listener] stop_timeout``. SIGHUP
reloads the rules and receivers: the parent reads the configuration files
once, checks them as at start-up and, only when they are sound, keeps a
copy of what it read (a *generation*); every process then loads that very
copy, so that they all run the same rules once the reload is done, and a
broken file changes nothing anywhere. A router or delivery process swaps
its settings in one assignment: no incident or delivery is lost or doubled.

Within one ``nova-error-notifier`` command the stages wake each other up
(:mod:`nova_error_notifier.wakeup`); started apart, they find the work in
the database within a second.
"""

import os
import shutil
import signal
import tempfile
import threading
import time

import cotyledon
from oslo_config import cfg
from oslo_log import log

from nova_error_notifier import bus as bus_mod
from nova_error_notifier import config as config_mod
from nova_error_notifier import delivery
from nova_error_notifier import enrich
from nova_error_notifier import handoff
from nova_error_notifier import ingest
from nova_error_notifier import listener as listener_mod
from nova_error_notifier import logsafe
from nova_error_notifier import outbox
from nova_error_notifier import routing
from nova_error_notifier import service
from nova_error_notifier import wakeup

LOG = log.getLogger(__name__)

ROLES = ('listener', 'router', 'delivery', 'housekeeping')

CLI_OPTS = [
    cfg.MultiStrOpt('role',
                    default=[],
                    help='Start only this stage of the service (listener, '
                         'router, delivery, housekeeping); repeat it for '
                         'several. By default every stage starts.'),
]

#: Seconds the supervisor adds to [listener] stop_timeout before it kills
#: the processes that did not stop.
STOP_MARGIN = 5


def register_cli_opts(conf):
    conf.register_cli_opts(CLI_OPTS)


def roles_of(conf):
    """The roles to start; raises StartupError on an unknown one."""
    wanted = [r.strip() for r in conf.role if r.strip()] or list(ROLES)
    unknown = sorted(set(wanted) - set(ROLES))
    if unknown:
        raise service.StartupError(
            '--role %s: not a role (listener, router, delivery, '
            'housekeeping)' % ', '.join(logsafe.escape(r) for r in unknown))
    return [r for r in ROLES if r in wanted]


# --------------------------------------------------------------------------
# Reloads: what the parent read, the same for every process
# --------------------------------------------------------------------------

def _strip_config_args(args):
    """``args`` without their --config-file and --config-dir options."""
    kept = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ('--config-file', '--config-dir'):
            skip = True
            continue
        if arg.startswith(('--config-file=', '--config-dir=')):
            continue
        kept.append(arg)
    return kept


#: Generations whose copies are kept (the newest ones).
KEEP_GENERATIONS = 4


class Generations:
    """Copies of the configuration files, one directory per reload.

    Generation 0 is what the processes were forked with (their settings are
    inherited); a reload the parent accepted becomes generation N + 1, a
    private directory holding a copy of every file it read, in order.
    """

    def __init__(self, args, shared=True):
        self.args = list(args)
        self.root = tempfile.mkdtemp(prefix='nova-error-notifier-config-')
        os.chmod(self.root, 0o700)
        if shared:
            import multiprocessing
            self._current = multiprocessing.Value('i', 0, lock=False)
        else:
            self._current = _Box(0)

    @property
    def current(self):
        return self._current.value

    def cleanup(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def files_of(self, conf):
        """The files ``conf`` was read from, in the order it read them."""
        files = [f for f in (conf.config_file or []) if os.path.isfile(f)]
        for directory in conf.config_dir or []:
            if os.path.isdir(directory):
                files.extend(os.path.join(directory, name)
                             for name in sorted(os.listdir(directory))
                             if name.endswith('.conf'))
        return files

    def args_of(self, generation):
        """The arguments of ``generation`` (0: the command's own)."""
        return list(self.args) if generation == 0 else \
            self.args_for(generation)

    def args_for(self, generation):
        directory = os.path.join(self.root, str(generation))
        copies = sorted(os.listdir(directory))
        args = _strip_config_args(self.args)
        for name in copies:
            args += ['--config-file', os.path.join(directory, name)]
        return args

    def offer(self, build_conf):
        """Read and check the files; keep them as a new generation.

        Returns (generation, settings) or raises config.ConfigError.
        """
        conf = build_conf()
        try:
            conf(self.args, project=service.PROJECT)
        except cfg.Error as exc:
            raise config_mod.ConfigError([str(exc)])
        generation = self.current + 1
        directory = os.path.join(self.root, str(generation))
        os.makedirs(directory, mode=0o700)
        for number, path in enumerate(self.files_of(conf)):
            with open(path, 'rb') as source:
                data = source.read()
            target = os.path.join(directory, '%04d-%s' % (
                number, os.path.basename(path)))
            with open(target, 'wb') as handle:
                handle.write(data)
            os.chmod(target, 0o600)
        try:
            settings = self.load(build_conf, generation)
        except config_mod.ConfigError:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._current.value = generation
        # A process may still be reading an older copy (a store process
        # starting takes a second; reloads can come faster).
        previous = os.path.join(self.root, str(generation - KEEP_GENERATIONS))
        shutil.rmtree(previous, ignore_errors=True)
        return generation, settings

    def load(self, build_conf, generation):
        """The checked settings of ``generation``'s copies."""
        conf = build_conf()
        try:
            conf(self.args_for(generation), project=service.PROJECT)
        except cfg.Error as exc:
            raise config_mod.ConfigError([str(exc)])
        settings, problems, _ = service.check(conf, transport=False)
        if problems:
            raise config_mod.ConfigError(problems)
        return settings


class _Box:
    __slots__ = ('value',)

    def __init__(self, value):
        self.value = value


class Context:
    """What the parent prepares before it forks the processes."""

    def __init__(self, conf, settings, args, build_conf, shared=True):
        self.conf = conf
        self.settings = settings
        #: The generation of ``settings`` (the supervisor's, for the
        #: processes it starts again).
        self.generation = 0
        self.build_conf = build_conf
        self.generations = Generations(args, shared=shared)
        #: The listeners wake the router up; the router the deliveries.
        self.router_wakeup = wakeup.Wakeup(shared=shared)
        self.delivery_wakeup = wakeup.Wakeup(shared=shared)


# --------------------------------------------------------------------------
# The services
# --------------------------------------------------------------------------

class _Stage(cotyledon.Service):
    """A process of one stage: settings that follow the generations."""

    role = None

    def __init__(self, worker_id, context):
        super().__init__(worker_id)
        # Ctrl-C in a terminal reaches every process of the group: only the
        # supervisor acts on it, stopping them all as SIGTERM does.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.context = context
        self.conf = context.conf
        # A process started again after a reload is forked with the
        # generation in force (the supervisor keeps it in the context).
        self.settings = context.settings
        self.generation = context.generation
        self._stop = threading.Event()
        self._reload_lock = threading.Lock()

    @property
    def label(self):
        return '%s %d' % (self.role, self.worker_id)

    def reload(self):
        """Load the newest generation, if this process does not have it."""
        with self._reload_lock:
            # A SIGHUP that arrives while a reload runs is dropped by
            # cotyledon: look again until the generation stays put.
            while self.context.generations.current != self.generation:
                generation = self.context.generations.current
                try:
                    settings = self.context.generations.load(
                        self.context.build_conf, generation)
                except config_mod.ConfigError as exc:
                    # The parent checked these very files: only a change of
                    # something else (a template file) makes it fail here.
                    LOG.error('%s: generation %d of the configuration '
                              'refused here, the one in force is kept: %s',
                              self.label, generation,
                              '; '.join(logsafe.escape(p)
                                        for p in exc.problems))
                    self.generation = generation
                    return
                self.settings = settings
                self.apply(settings)
                self.generation = generation
                LOG.info('%s: configuration generation %d in force',
                         self.label, generation)

    def apply(self, settings):
        """Switch to new settings (one assignment per consumer)."""

    def terminate(self):
        self._stop.set()


class _BusListener:
    """The listener of one bus in a listener process."""

    def __init__(self, bus, description):
        self.bus = bus
        self.description = description
        self.transport = None
        self.listener = None
        #: Set once ``start()`` returned: the listener consumes.
        self.started = threading.Event()


class ListenerService(_Stage):
    """Listens to every bus: one batch listener and transport per bus.

    A bus whose broker is unreachable does not hold the others back: each
    listener connects in a thread of its own (oslo.messaging retries inside
    ``start()``).
    """

    name = 'listener'
    role = 'listener'

    def __init__(self, worker_id, context):
        super().__init__(worker_id, context)
        self.buses = []
        self.store_process = None
        self._failed = []
        self._changed = threading.Event()

    def run(self):
        conf = self.conf
        listener_mod.set_messaging_defaults(conf)
        options = conf[listener_mod.GROUP]
        if options.store_process:
            self.store_process = handoff.StoreProcess(
                self.context.build_conf,
                self.context.generations.args_of(self.generation),
                self.worker_id, wakeup=self.context.router_wakeup,
                generation=self.generation)
            try:
                self.store_process.start()
            except handoff.StoreProcessError as exc:
                raise service.StartupError(
                    'the store process of listener %d did not start: %s'
                    % (self.worker_id, exc))
        else:
            self.store = service.open_store(conf)
            self.ingest = ingest.Ingest(conf, self.store,
                                        wakeup=self.context.router_wakeup)
        buses = self.settings.buses or tuple(bus_mod.buses(conf))
        for index, bus in enumerate(buses):
            if not bus.pool:
                LOG.warning('%s pool is empty: the service shares Nova\'s '
                            'default notification queues and takes messages '
                            'away from their other consumers',
                            '[listener]' if bus.name is None else bus.label)
            one = _BusListener(bus, service.describe_listener(conf, bus))
            one.transport = service.make_transport(
                conf, bus if bus.transport_url else None)
            if self.store_process is not None:
                # Loaded here only to screen the messages and to subscribe
                # to their priorities; the store process runs them.
                screen = listener_mod.BatchEndpoint(
                    service.load_endpoints(conf, listener_mod.screen_only),
                    None)
                endpoint = listener_mod.Handoff(screen, self.store_process,
                                                index)
            else:
                plugins = service.load_endpoints(
                    conf, listener_mod.stamping(self.ingest.add, bus.region))
                endpoint = listener_mod.BatchEndpoint(
                    plugins, self.ingest.add_many,
                    reject=listener_mod.rejecter(self.store),
                    healthy=self.store.ping,
                    max_attempts=options.max_store_attempts,
                    region=bus.region)
            one.listener = listener_mod.make_listener(
                conf, one.transport, endpoint, bus=bus)
            self.buses.append(one)
        threads = []
        for one in self.buses:
            if self._stop.is_set():
                return
            LOG.info('Connecting to %s', one.description)
            thread = threading.Thread(target=self._start, args=(one,),
                                      daemon=True, name='listener-start')
            threads.append(thread)
            thread.start()
        # A listener that cannot start fails the process, as with one bus
        # (the supervisor starts it again); the others may still connect.
        while any(thread.is_alive() for thread in threads):
            self._changed.wait(1.0)
            self._changed.clear()
            if self._failed:
                raise self._failed[0]
        if self._failed:
            raise self._failed[0]

    def _start(self, one):
        # The broker may be unreachable: oslo.messaging then logs and
        # retries inside start().
        try:
            one.listener.start()
        except Exception as exc:
            self._failed.append(exc)
            self._changed.set()
            return
        one.started.set()
        self._changed.set()
        if self._stop.is_set():
            return
        LOG.info('Listening to %s (listener %d)', one.description,
                 self.worker_id)

    def reload(self):
        generations = self.context.generations
        while True:
            super().reload()
            store_process = self.store_process
            if store_process is None or \
                    store_process.generation == self.generation:
                return
            # The store process reads the configuration itself: one of the
            # generation in force takes its place. Starting it takes a
            # moment, in which more reloads may come (and their SIGHUP be
            # dropped): look again until the generation stays put.
            try:
                args = generations.args_of(self.generation)
            except OSError:
                # Already replaced by two newer generations: load those.
                continue
            store_process.renew(args, self.generation)
            if generations.current == self.generation:
                return

    def apply(self, settings):
        if self.buses and settings.buses and \
                tuple(settings.buses) != tuple(b.bus for b in self.buses):
            LOG.warning('%s: the buses changed in the configuration; they '
                        'are listened to as they were until the service is '
                        'restarted', self.label)

    def terminate(self):
        super().terminate()
        started = [one for one in self.buses if one.started.is_set()]
        if not started:
            # Still connecting (the broker is unreachable): nothing was
            # received, nothing to finish.
            LOG.info('Stopped before the listener was connected')
            self._stop_store_process()
            return
        timeout = self.conf[listener_mod.GROUP].stop_timeout
        done = threading.Event()

        def _stop():
            # Every listener stops taking messages first, then each
            # finishes the ones in progress.
            for one in started:
                try:
                    one.listener.stop()
                except Exception:
                    LOG.exception('Error while stopping the listener of %s',
                                  one.description)
            for one in started:
                try:
                    one.listener.wait()
                    one.transport.cleanup()
                except Exception:
                    LOG.exception('Error while stopping the listener of %s',
                                  one.description)
            done.set()
        threading.Thread(target=_stop, daemon=True,
                         name='listener-stop').start()
        if not done.wait(timeout):
            LOG.warning('The listener did not stop within %d s; exiting '
                        'anyway', timeout)
        # After the batches in progress: they wait for its answers.
        self._stop_store_process()

    def _stop_store_process(self):
        if self.store_process is not None:
            self.store_process.stop()


class RouterService(_Stage):
    name = 'router'
    role = 'router'

    #: Longest sleep of the router: it also picks up incidents opened by a
    #: listener it shares no wake-up with (another host, --role).
    IDLE = 1.0

    def run(self):
        self.store = service.open_store(self.conf)
        self.router = routing.Router(self.conf, self.store, self.settings,
                                     wakeup=self.context.delivery_wakeup)
        self._thread = threading.Thread(target=self._loop, name='router',
                                        daemon=True)
        self._thread.start()

    def apply(self, settings):
        router = getattr(self, 'router', None)
        if router is not None:
            router.settings = settings

    def _loop(self):
        last_error = 0.0
        router = self.router
        woken = self.context.router_wakeup
        while not self._stop.is_set():
            # Planning: a listener that opens an incident meanwhile wakes
            # the router up again.
            woken.plan(None)
            woken.clear()
            delay = self.IDLE
            try:
                router.route_due()
                due = router.next_due_at
                if due is not None:
                    delay = min(delay, max(0.0, due - router.clock()))
            except (outbox.StoreUnavailable, outbox.StoreError) as exc:
                if time.monotonic() - last_error > 30:
                    LOG.error('Outbox unavailable, incidents wait: %s', exc)
                    last_error = time.monotonic()
            except Exception:
                LOG.exception('Routing incidents failed')
            if self._stop.is_set():
                break
            woken.plan(router.clock() + delay)
            woken.wait(delay)

    def terminate(self):
        super().terminate()
        self.context.router_wakeup.set()
        thread = getattr(self, '_thread', None)
        if thread is not None:
            thread.join(self.conf[listener_mod.GROUP].stop_timeout)


class DeliveryService(_Stage):
    name = 'delivery'
    role = 'delivery'

    def run(self):
        conf = self.conf
        self.store = service.open_store(conf)
        self.pool = delivery.DeliveryPool(
            conf, self.store, self.settings,
            wakeup=self.context.delivery_wakeup,
            enricher=(enrich.Enricher(conf) if conf.enrichment.enabled
                      else None))
        self.pool.start()

    def apply(self, settings):
        pool = getattr(self, 'pool', None)
        if pool is not None:
            pool.settings = settings

    def terminate(self):
        super().terminate()
        pool = getattr(self, 'pool', None)
        timeout = self.conf[listener_mod.GROUP].stop_timeout
        if pool is not None and not pool.stop(timeout):
            LOG.warning('Deliveries still in progress after %d s; they are '
                        'resumed at the next start', timeout)


class HousekeepingService(_Stage):
    name = 'housekeeping'
    role = 'housekeeping'

    #: Seconds between two hand-backs of expired delivery claims (at most:
    #: as often as claims run out, so that a killed replica's deliveries
    #: are taken over about one lease after it died).
    RECLAIM_PERIOD = 30.0
    #: Seconds between two purges of finished work.
    PURGE_PERIOD = 3600.0
    #: Seconds after start-up before the first purge.
    FIRST_PURGE = 60.0

    def run(self):
        self.store = service.open_store(self.conf)
        self.pool = delivery.DeliveryPool(self.conf, self.store,
                                          self.settings)
        self._thread = threading.Thread(target=self._loop,
                                        name='housekeeping', daemon=True)
        self._thread.start()

    def _loop(self):
        options = self.conf[outbox.GROUP]
        period = min(self.RECLAIM_PERIOD, options.lease)
        next_reclaim = time.monotonic() + period
        next_purge = time.monotonic() + self.FIRST_PURGE
        last_error = 0.0
        while not self._stop.wait(max(0.0, min(next_reclaim, next_purge) -
                                      time.monotonic())):
            now = time.monotonic()
            try:
                if now >= next_reclaim:
                    next_reclaim = now + period
                    self.pool.reclaim()
                if now >= next_purge:
                    next_purge = now + self.PURGE_PERIOD
                    counts = self.store.purge(options.retention)
                    if any(counts.values()):
                        LOG.info('Outbox purged: %s', ', '.join(
                            '%d %s' % (v, k)
                            for k, v in sorted(counts.items())))
            except (outbox.StoreUnavailable, outbox.StoreError) as exc:
                if time.monotonic() - last_error > 30:
                    LOG.error('Outbox unavailable, housekeeping waits: %s',
                              exc)
                    last_error = time.monotonic()
            except Exception:
                LOG.exception('Housekeeping failed')

    def terminate(self):
        super().terminate()
        thread = getattr(self, '_thread', None)
        if thread is not None:
            thread.join(self.conf[listener_mod.GROUP].stop_timeout)


SERVICES = {'listener': ListenerService, 'router': RouterService,
            'delivery': DeliveryService,
            'housekeeping': HousekeepingService}


# --------------------------------------------------------------------------
# The supervisor
# --------------------------------------------------------------------------

class Supervisor(cotyledon.ServiceManager):
    """The parent process: starts, restarts, stops and reloads."""

    def __init__(self, context, roles):
        conf = context.conf
        super().__init__(graceful_shutdown_timeout=(
            conf[listener_mod.GROUP].stop_timeout + STOP_MARGIN))
        self.context = context
        self.roles = roles
        self._by_id = {}
        for role in roles:
            workers = (conf[listener_mod.GROUP].workers
                       if role == 'listener' else 1)
            service_id = self.add(SERVICES[role], workers=workers,
                                  args=(context,))
            self._by_id[service_id] = role
        self.register_hooks(on_reload=self._on_reload,
                            on_dead_worker=self._on_dead_worker,
                            on_terminate=self._on_terminate)

    def _on_signal_received(self, sig):
        # SIGINT (Ctrl-C) stops as SIGTERM does, gracefully, rather than
        # cotyledon's immediate exit.
        if sig == signal.SIGINT:
            LOG.info('Received SIGINT, stopping as for SIGTERM')
            sig = signal.SIGTERM
        super()._on_signal_received(sig)

    def _on_reload(self):
        LOG.info('SIGHUP: reloading the rules and receivers')
        try:
            generation, settings = self.context.generations.offer(
                self.context.build_conf)
        except config_mod.ConfigError as exc:
            for problem in exc.problems:
                LOG.error('Reload refused: %s', logsafe.escape(problem))
            LOG.error('Reload refused: the configuration in force is kept')
            return
        except OSError as exc:
            LOG.error('Reload refused: the configuration could not be '
                      'read: %s', logsafe.escape(exc))
            return
        self.context.settings = settings
        self.context.generation = generation
        LOG.info('Reloaded: %d rule(s), receivers %s (configuration '
                 'generation %d, every process switches to it)',
                 len(settings.ruleset),
                 ', '.join(sorted(settings.receivers)), generation)

    def _on_dead_worker(self, service_id, worker_id, exit_code):
        role = self._by_id.get(service_id, '?')
        if exit_code and exit_code < 0:
            how = 'was killed by signal %d' % -exit_code
        else:
            how = 'exited with status %s' % exit_code
        LOG.warning('The %s process %d %s: it is started again', role,
                    worker_id, how)

    def _on_terminate(self):
        LOG.info('Stopping: every process has %d s to finish',
                 self.context.conf[listener_mod.GROUP].stop_timeout)


def run(conf, settings, args, build_conf):
    """Start the stages of ``conf.role`` and supervise them until SIGTERM."""
    roles = roles_of(conf)
    context = Context(conf, settings, args, build_conf)
    LOG.info('Outbox: %s; starting %s', service.describe_store(conf),
             ', '.join('%s x%d' % (r, conf[listener_mod.GROUP].workers)
                       if r == 'listener' else r for r in roles))
    try:
        supervisor = Supervisor(context, roles)
        supervisor.run()
    finally:
        context.generations.cleanup()
        LOG.info('nova-error-notifier stopped')
    return 0
