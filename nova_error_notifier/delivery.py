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
"""Delivery: a worker pool hands each pending delivery to its driver.

Each (incident or digest, receiver) pair is delivered on its own: a worker
claims the row (``claimed_by``, ``claimed_until``), makes one attempt
through the receiver's driver and records the outcome:

* success: ``done``; that receiver is never sent the alert again;
* retryable failure: retried later with exponential backoff and jitter
  (``Retry-After`` honoured) until ``[delivery] retry_deadline``;
* non-retryable failure, or the deadline passed: ``dead``, with a row in
  ``dead_letters``; ``[delivery] fallback_receiver`` then gets the alert.

A restart resumes pending deliveries; one that was in flight when the
process died is taken over when its claim expires (at once for the default
SQLite outbox, which only one process uses). Every attempt writes one audit
line to the log.
"""

import dataclasses
import random
import threading
import time
import typing

from oslo_log import log

from nova_error_notifier import alert as alert_mod
from nova_error_notifier.drivers import base
from nova_error_notifier import logsafe
from nova_error_notifier import outbox
from nova_error_notifier import redact

LOG = log.getLogger(__name__)
AUDIT = log.getLogger('nova_error_notifier.audit')

#: The alert reached the receiver.
SENT = 'sent'
#: The attempt failed; a later one may succeed.
RETRYABLE = 'retryable'
#: The attempt failed; no later one can succeed.
PERMANENT = 'permanent'
#: Characters of an error text an outcome keeps (then "..."), before
#: escaping.
MAX_ERROR = 500


def safe_error(text, secrets=()):
    """``text`` as one line safe to log, print and store.

    URL credentials and query values are masked, and ``secrets`` wherever
    they appear; controls are escaped and the length bounded
    (:data:`MAX_ERROR`).
    """
    return logsafe.escape(redact.text(text, secrets), MAX_ERROR)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one delivery attempt came to.

    ``status`` is :data:`SENT`, :data:`RETRYABLE` or :data:`PERMANENT`;
    ``error`` (None when sent) says why, already made safe
    (:func:`safe_error`); ``retry_after`` is the number of seconds the
    receiver asked to wait before the next attempt, or None.
    """

    status: str
    error: typing.Optional[str] = None
    retry_after: typing.Optional[float] = None

    @property
    def sent(self):
        return self.status == SENT

    @property
    def retryable(self):
        return self.status == RETRYABLE

    @classmethod
    def failure(cls, text, retryable, retry_after=None, secrets=()):
        """A failed attempt; ``text`` is made safe here."""
        return cls(RETRYABLE if retryable else PERMANENT,
                   safe_error(text, secrets), retry_after)


class DriverCrashed(Exception):
    """Stands for a driver's unexpected exception in the log.

    The traceback is the driver's; the message is the outcome's (secrets
    masked, on one line), and no chained exception is shown, so that the
    log line holds no more than the outcome does.
    """


def _secrets(driver):
    try:
        return list(driver.secrets())
    except Exception:   # a third-party driver's own secrets(): no outcome
        return []       # is lost over it


def send(target, alert):
    """Make one attempt to deliver ``alert``; return its :class:`Outcome`.

    The one place that calls a driver's ``notify``: the delivery workers,
    ``nova-error-notifier-manage send-test`` and
    ``nova-error-notifier-replay`` all go through it. A
    :class:`~nova_error_notifier.drivers.base.DriverError` becomes a
    retryable or permanent failure as it says; any other exception is
    logged with its traceback (see :class:`DriverCrashed`) and becomes a
    retryable failure. The error
    text never holds the receiver's secrets (:meth:`Driver.secrets`) nor a
    URL's credentials, and is safe to log::

        outcome = delivery.send(receiver, alert)
        if not outcome.sent:
            LOG.error('not sent (retryable=%s): %s', outcome.retryable,
                      outcome.error)

    :param target: a :class:`~nova_error_notifier.receivers.Receiver`, or
        a driver.
    """
    if isinstance(target, base.Driver):
        driver, name, driver_name = target, target.receiver, \
            type(target).__name__
    else:
        driver, name, driver_name = target.driver, target.name, \
            target.driver_name
    try:
        driver.notify(alert)
    except base.DriverError as exc:
        return Outcome.failure(exc, exc.retryable, exc.retry_after,
                               _secrets(driver))
    except Exception as exc:
        outcome = Outcome.failure('%s: %s' % (type(exc).__name__, exc), True,
                                  secrets=_secrets(driver))
        shown = DriverCrashed(outcome.error)
        LOG.error('Driver %s of receiver %s raised on alert %s', driver_name,
                  name, alert.id,
                  exc_info=(DriverCrashed, shown, exc.__traceback__))
        return outcome
    return Outcome(SENT)


class DeliveryPool:
    """Worker threads delivering the outbox's pending rows."""

    def __init__(self, conf, store, settings, wakeup=None, clock=time.time,
                 enricher=None):
        self.conf = conf
        self.enricher = enricher
        self.store = store
        self.settings = settings
        self.clock = clock
        self.wakeup = wakeup or threading.Event()
        self._stop = threading.Event()
        self._threads = []
        self._random = random.Random()
        self._down_lock = threading.Lock()
        self._down_logged = -self.DOWN_LOG_INTERVAL

    @property
    def options(self):
        return self.conf[outbox.GROUP]

    # -- life cycle ----------------------------------------------------------

    def start(self):
        self.reclaim(all_owners=self.store.is_sqlite)
        for number in range(self.options.workers):
            thread = threading.Thread(target=self._run, daemon=True,
                                      name='delivery-%d' % number)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout=10):
        self._stop.set()
        self.wakeup.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def reclaim(self, all_owners=False):
        """Hand deliveries left in flight by a dead process back."""
        now = self.clock()
        count = self.store.write(
            lambda tx: tx.hand_back_claims(now, all_owners=all_owners))
        if count:
            LOG.warning('%d delivery(ies) were in flight when the service '
                        'stopped: they are retried (a receiver may see one '
                        'of them twice; webhooks carry the same '
                        'Idempotency-Key)', count)
        return count

    def _run(self):
        while not self._stop.is_set():
            try:
                row = self.claim()
            except (outbox.StoreUnavailable, outbox.StoreError) as exc:
                self._store_down(exc)
                self._stop.wait(1.0)
                continue
            if row is None:
                self.wakeup.wait(0.5)
                self.wakeup.clear()
                continue
            try:
                self.deliver(row)
            except (outbox.StoreUnavailable, outbox.StoreError) as exc:
                # The outcome could not be written: the claim runs out and
                # the delivery is made again (same Idempotency-Key).
                self._store_down(exc)
                self._release(row, quiet=True)
            except Exception:
                LOG.exception('Delivery %s failed unexpectedly', row.id)
                self._release(row)

    # -- one delivery --------------------------------------------------------

    def claim(self):
        """Claim the next due pending delivery, or return None."""
        now = self.clock()
        return self.store.write(lambda tx: tx.claim_delivery(
            now, now + self.options.lease))

    #: Seconds between two "outbox unavailable" lines of the workers.
    DOWN_LOG_INTERVAL = 30.0

    def _store_down(self, exc):
        """Log an outbox outage once per DOWN_LOG_INTERVAL for all workers."""
        now = time.monotonic()
        with self._down_lock:
            if now - self._down_logged < self.DOWN_LOG_INTERVAL:
                return
            self._down_logged = now
        LOG.error('Outbox unavailable, deliveries wait: %s', exc)

    def deliver(self, row):
        """Make one attempt for a claimed delivery and record the outcome."""
        attempt = row.attempts + 1
        receiver = self.settings.receivers.get(row.receiver)
        if receiver is None:
            return self._dead(row, attempt, 'receiver %r is not configured '
                              'any more' % row.receiver)
        try:
            alert = alert_mod.from_dict(outbox.loads(row.alert))
        except Exception as exc:
            # Nothing later can read it either: one attempt, and dead.
            return self._failed(row, attempt, Outcome.failure(
                'the stored alert cannot be read: %s: %s' % (
                    type(exc).__name__, exc), retryable=False))
        try:
            if self.enricher is not None:
                alert = self.enricher.enrich(alert)
            alert = alert_mod.for_receiver(alert, receiver.name,
                                           receiver.include_details)
        except Exception as exc:
            LOG.exception('Preparing %s %s for receiver %s failed',
                          row.kind, row.incident_id, row.receiver)
            return self._failed(row, attempt, Outcome.failure(
                'preparing the alert failed: %s: %s' % (
                    type(exc).__name__, exc), retryable=True))
        outcome = send(receiver, alert)
        if not outcome.sent:
            return self._failed(row, attempt, outcome)
        now = self.clock()
        self._update(row, state='done', attempts=attempt, finished_at=now,
                     claimed_by=None, claimed_until=None, last_error=None)
        self._audit(row, attempt, 'sent')
        return 'sent'

    def _release(self, row, quiet=False):
        """Hand a claimed delivery back after an unexpected failure.

        It counts as an attempt and waits its backoff; if even that cannot
        be written, the claim runs out after ``[delivery] lease`` and the
        housekeeping hands it back.
        """
        attempt = row.attempts + 1
        try:
            self.store.write(lambda tx: tx.update_claimed_delivery(
                row.id, state='pending', attempts=attempt, claimed_by=None,
                claimed_until=None,
                next_attempt_at=self.clock() + self.backoff(attempt)))
        except Exception as exc:
            (LOG.debug if quiet else LOG.error)(
                'Delivery %s stays claimed until its lease ends: %s',
                row.id, logsafe.escape(exc, 300))

    def backoff(self, attempt, retry_after=None):
        """Seconds before attempt ``attempt + 1`` (exponential, jittered)."""
        options = self.options
        delay = min(options.retry_max_delay,
                    options.retry_initial_delay * (2 ** (attempt - 1)))
        delay *= self._random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, float(retry_after))
        return delay

    def _failed(self, row, attempt, outcome):
        now = self.clock()
        # Made safe by the Outcome: a URL's password or query token masked
        # before it reaches the log, the audit line and the dead letters.
        reason = outcome.error
        deadline = row.created_at + self.options.retry_deadline
        if outcome.retryable:
            delay = self.backoff(attempt, outcome.retry_after)
            if now + delay <= deadline:
                self._update(row, state='pending', attempts=attempt,
                             next_attempt_at=now + delay, claimed_by=None,
                             claimed_until=None, last_error=reason)
                LOG.error('Receiver %s (driver %s) could not deliver %s %s '
                          '(request_id=%s, retryable=True): %s; attempt %d, '
                          'next in %.1f s', row.receiver,
                          self._driver_name(row), row.kind, row.incident_id,
                          self._request_id(row), reason, attempt, delay)
                self._audit(row, attempt, 'retry in %.1fs: %s' % (delay,
                                                                  reason))
                return 'retry'
            reason = 'retry deadline passed: ' + reason
        LOG.error('Receiver %s (driver %s) could not deliver %s %s '
                  '(request_id=%s, retryable=%s): %s', row.receiver,
                  self._driver_name(row), row.kind, row.incident_id,
                  self._request_id(row), outcome.retryable, reason)
        return self._dead(row, attempt, reason)

    def _dead(self, row, attempt, reason):
        now = self.clock()
        fallback = self.options.fallback_receiver

        def work(tx):
            # Every outcome is a compare-and-swap on the claim: a worker
            # whose lease ran out (and whose delivery another replica took
            # over) records nothing.
            if not tx.update_claimed_delivery(
                    row.id, state='dead', attempts=attempt, finished_at=now,
                    claimed_by=None, claimed_until=None, last_error=reason):
                self._lost(row)
                return False
            tx.add_dead_letter(row.id, row.incident_id, row.receiver,
                               reason, now)
            if fallback and fallback != row.receiver and \
                    fallback in self.settings.receivers:
                if not tx.delivery_exists(row.incident_id, fallback):
                    tx.insert_delivery(row.incident_id, fallback, row.rule,
                                       row.kind, row.alert, now)
                    return True
            return False
        to_fallback = self.store.write(work)
        self._audit(row, attempt, 'dead: %s%s' % (
            reason, '; sent to fallback receiver %s' % fallback
            if to_fallback else ''))
        if to_fallback:
            self.wakeup.set()
        return 'dead'

    def _lost(self, row):
        LOG.warning('Delivery %s to receiver %s was taken over by another '
                    'worker (this one\'s claim ran out): the outcome of this '
                    'attempt is not recorded', row.id, row.receiver)

    def _update(self, row, **values):
        if not self.store.write(lambda tx: tx.update_claimed_delivery(
                row.id, **values)):
            self._lost(row)

    def _driver_name(self, row):
        receiver = self.settings.receivers.get(row.receiver)
        return receiver.driver_name if receiver else '-'

    @staticmethod
    def _request_id(row):
        try:
            return logsafe.escape(outbox.loads(row.alert).get('request_id'))
        except ValueError:
            return '-'

    def _audit(self, row, attempt, outcome):
        AUDIT.info('delivery id=%s %s=%s receiver=%s attempt=%d outcome=%s',
                   row.id, 'digest' if row.kind == 'digest' else 'incident',
                   row.incident_id, row.receiver, attempt,
                   logsafe.quote(outcome, 600))
