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
"""The store process of a listener: parsing and storing beside the bus.

A listener process spends most of its time in oslo.messaging (reading
the socket, decoding JSON, acknowledging); parsing the messages and
writing them to the outbox in the same process takes a quarter of its one
core (the GIL) on top. With ``[listener] store_process`` (the default)
each listener process starts a process of its own, the *store process*,
and only screens the messages: routine INFO traffic (event types no
plugin reads, state changes neither into ERROR nor ending a build) is
acknowledged at once, the rest of a batch is handed over a pipe to the
store process, which runs the endpoint plugins and the outbox transaction
(:class:`nova_error_notifier.listener.BatchEndpoint`, unchanged) and
answers before oslo.messaging acknowledges the batch. Nothing is
acknowledged unstored:

* a store process that died (or whose pipe broke) answers nothing: the
  batch goes back to the queue, and a new store process is started;
* a listener process that died leaves its store process reading the end
  of the pipe: it finishes the transaction in progress and exits (the
  unacknowledged messages come again, and are recognised by their ids).

The store process is started fresh (``multiprocessing``'s *spawn*: a
new interpreter, not a fork of a process running threads) from the
configuration generation in force, and logs as the service does.
"""

import multiprocessing
import os
import pickle
import signal
import threading
import time

from oslo_log import log
import oslo_messaging

from nova_error_notifier import logsafe

LOG = log.getLogger(__name__)

#: Seconds a new store process has to open the outbox and say it is ready.
START_TIMEOUT = 120.0
#: Seconds between two starts of a store process that keeps dying.
RESTART_DELAY = 1.0
#: Seconds the store process has to finish when the listener stops.
STOP_TIMEOUT = 10.0
#: oslo.messaging's answer that hands a batch back.
REQUEUE = oslo_messaging.NotificationResult.REQUEUE


#: Signals meant for the service's processes, not for a store process.
_GROUP_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)


class StoreProcessError(RuntimeError):
    """The store process could not be started."""


def _dumps(value):
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


class StoreProcess:
    """The listener's side of its store process (one pipe, one lock).

    :param build_conf: returns a ConfigOpts with every option registered
        (a module-level function: it is pickled for the new process).
    :param args: the command-line arguments of the configuration in force.
    :param worker_id: the listener's number (the store process's title).
    :param wakeup: notified with the due time of the incidents stored.
    :param sleep: how to wait before a batch is handed back.
    """

    def __init__(self, build_conf, args, worker_id, wakeup=None,
                 sleep=time.sleep, generation=0):
        self.build_conf = build_conf
        self.args = list(args)
        self.worker_id = worker_id
        #: The configuration generation the store process runs.
        self.generation = generation
        self.wakeup = wakeup
        self.sleep = sleep
        self._context = multiprocessing.get_context('spawn')
        self._lock = threading.Lock()
        self._process = None
        self._conn = None
        self._started_at = None
        self._stopping = False

    # -- life cycle --------------------------------------------------------

    @property
    def pid(self):
        return self._process.pid if self._process is not None else None

    def start(self, timeout=START_TIMEOUT):
        """Start the store process and wait until it is ready.

        :raises StoreProcessError: it could not start (its reason).
        """
        with self._lock:
            self._start(timeout)

    def _start(self, timeout):
        self._started_at = time.monotonic()
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=main, name='store-%d' % self.worker_id,
            args=(child, self.build_conf, self.args, self.worker_id,
                  self.generation))
        process.daemon = True
        # The signals of the process group (a SIGHUP reload, Ctrl-C) would
        # kill the new interpreter before it can ignore them: it starts
        # with them blocked (the mask is inherited), and ignores them
        # first thing.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _GROUP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child.close()
        self._process, self._conn = process, parent
        try:
            if not parent.poll(timeout):
                raise StoreProcessError('the store process did not get '
                                        'ready within %.0f s' % timeout)
            answer = parent.recv()
        except (EOFError, OSError) as exc:
            self._discard()
            raise StoreProcessError('the store process exited while '
                                    'starting (%s)' % type(exc).__name__)
        except StoreProcessError:
            self._discard()
            raise
        if answer != ('ready',):
            self._discard()
            reason = answer[1] if isinstance(answer, tuple) and \
                len(answer) == 2 else repr(answer)
            raise StoreProcessError(reason)
        LOG.info('Store process of listener %d started (pid %d)',
                 self.worker_id, process.pid)

    def _discard(self):
        """Forget the process and its pipe (killing it if still there)."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join(5)

    def stop(self, timeout=STOP_TIMEOUT):
        """Ask the store process to exit; kill it after ``timeout``."""
        self._stopping = True
        with self._lock:
            self._stop(timeout)

    def _stop(self, timeout):
        process, conn = self._process, self._conn
        if process is None:
            return
        try:
            conn.send(('stop',))
        except (OSError, ValueError):
            pass
        process.join(timeout)
        if process.is_alive():
            LOG.warning('The store process of listener %d did not stop '
                        'within %.0f s: killed', self.worker_id, timeout)
        self._discard()

    def renew(self, args, generation):
        """Replace the store process by one of configuration ``generation``.

        The batches that arrive meanwhile wait for the new one.
        """
        with self._lock:
            if self._stopping:
                return
            self._stop(STOP_TIMEOUT)
            self.args, self.generation = list(args), generation
            self._started_at = None
            if not self._restart():
                LOG.error('Store process of listener %d: generation %d of '
                          'the configuration could not start; a start is '
                          'tried again with the next batch', self.worker_id,
                          generation)

    # -- batches -----------------------------------------------------------

    def handle(self, bus_index, priority, messages):
        """Have the store process read and store ``messages``.

        Returns the endpoint's answer: None (acknowledge them) or
        ``REQUEUE`` (hand them back), also when the store process is gone.
        """
        payload = self._pack(bus_index, priority, messages)
        if payload is None:
            return None
        with self._lock:
            if self._stopping and self._process is None:
                return REQUEUE
            if self._process is None and not self._restart():
                return self._requeue()
            try:
                self._conn.send_bytes(payload)
                answer, due = self._conn.recv()
            except (EOFError, OSError, ValueError, pickle.PickleError) as exc:
                self._lost(exc)
                return self._requeue()
        if due is not None and self.wakeup is not None:
            self.wakeup.notify(due)
        return answer

    def _pack(self, bus_index, priority, messages):
        """The batch as bytes for the pipe; what cannot be is dropped.

        A message that cannot be pickled (nested deeper than Python
        recurses) is logged and acknowledged: it would fail again every
        time it came back.
        """
        try:
            return _dumps(('batch', bus_index, priority, messages))
        except (RecursionError, pickle.PicklingError, TypeError,
                ValueError, MemoryError):
            pass
        kept = []
        for message in messages:
            try:
                _dumps(message)
            except (RecursionError, pickle.PicklingError, TypeError,
                    ValueError, MemoryError) as exc:
                metadata = (message.get('metadata')
                            if isinstance(message, dict) else None)
                mid = (metadata.get('message_id')
                       if isinstance(metadata, dict) else None)
                LOG.warning('Dropped unreadable notification message_id=%s: '
                            'it cannot be handed to the store process (%s)',
                            logsafe.escape(mid, 128), type(exc).__name__)
                continue
            kept.append(message)
        if not kept:
            return None
        return _dumps(('batch', bus_index, priority, kept))

    def _lost(self, exc):
        process = self._process
        status = None
        if process is not None:
            process.join(1)
            status = process.exitcode
        if status is not None and status < 0:
            how = 'was killed by signal %d' % -status
        elif status is not None:
            how = 'exited with status %d' % status
        else:
            how = 'stopped answering (%s)' % type(exc).__name__
        LOG.error('The store process of listener %d %s: the batch in '
                  'progress goes back to the queue, and a new store '
                  'process is started', self.worker_id, how)
        self._discard()

    def _restart(self):
        if self._stopping:
            return False
        waited = time.monotonic() - (self._started_at or 0.0)
        if waited < RESTART_DELAY:
            self.sleep(RESTART_DELAY - waited)
        try:
            self._start(START_TIMEOUT)
        except StoreProcessError as exc:
            LOG.error('The store process of listener %d could not be '
                      'started again: %s', self.worker_id,
                      logsafe.escape(exc, 500))
            return False
        return True

    def _requeue(self):
        # oslo.messaging redelivers at once: a pause spares the broker a
        # loop while the store process is away.
        self.sleep(RESTART_DELAY)
        return REQUEUE


# --------------------------------------------------------------------------
# The store process
# --------------------------------------------------------------------------

class _Due:
    """The wake-up of the store process: remembers the earliest due time."""

    def __init__(self):
        self.due = None

    def notify(self, due=None):
        if due is None:
            due = time.time()
        if self.due is None or due < self.due:
            self.due = due

    def take(self):
        due, self.due = self.due, None
        return due


def _title(worker_id):
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle('nova-error-notifier: store worker(%d)'
                              % worker_id)


def main(conn, build_conf, args, worker_id, generation=0):
    """The store process: read batches from ``conn`` until it closes."""
    # The supervisor stops the listener, which stops this process through
    # the pipe: signals meant for the process group are not for it.
    for sig in _GROUP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _GROUP_SIGNALS)
    _title(worker_id)
    try:
        endpoints = _setup(build_conf, args)
    except Exception as exc:
        try:
            conn.send(('failed', '%s: %s' % (type(exc).__name__,
                                             logsafe.escape(exc, 500))))
        except (OSError, ValueError):
            pass
        return
    wakeup, endpoints = endpoints
    if generation:
        LOG.info('store %d: configuration generation %d in force',
                 worker_id, generation)
    conn.send(('ready',))
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            # The listener is gone: its messages come back to another.
            return
        if message[0] == 'stop':
            return
        _, bus_index, priority, messages = message
        try:
            method = getattr(endpoints[bus_index], priority)
            answer = method(messages)
        except Exception:
            LOG.exception('The store process could not handle a batch of '
                          '%d message(s): it goes back to the queue',
                          len(messages))
            answer = REQUEUE
        conn.send((None if answer is None else REQUEUE, wakeup.take()))


def _setup(build_conf, args):
    """Configuration, logs, outbox and endpoints, as a listener has them."""
    from nova_error_notifier import bus as bus_mod
    from nova_error_notifier import ingest
    from nova_error_notifier import listener as listener_mod
    from nova_error_notifier import redact
    from nova_error_notifier import service

    conf = build_conf()
    conf(args, project=service.PROJECT)
    log.setup(conf, service.PROJECT)
    logsafe.protect_handlers()
    redact.protect_logs(conf)
    redact.refresh(conf)
    store = service.open_store(conf)
    wakeup = _Due()
    sink = ingest.Ingest(conf, store, wakeup=wakeup)
    options = conf[listener_mod.GROUP]
    endpoints = []
    for bus in bus_mod.buses(conf):
        plugins = service.load_endpoints(
            conf, listener_mod.stamping(sink.add, bus.region))
        endpoints.append(listener_mod.BatchEndpoint(
            plugins, sink.add_many, reject=listener_mod.rejecter(store),
            healthy=store.ping, max_attempts=options.max_store_attempts,
            region=bus.region))
    LOG.debug('Store process ready (pid %d)', os.getpid())
    return wakeup, endpoints
