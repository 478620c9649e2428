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

import random
import threading
import time

from oslo_log import log
import sqlalchemy as sa

from nova_error_notifier import alert as alert_mod
from nova_error_notifier.drivers import base
from nova_error_notifier import logsafe
from nova_error_notifier import outbox
from nova_error_notifier import redact

LOG = log.getLogger(__name__)
AUDIT = log.getLogger('nova_error_notifier.audit')


class DeliveryPool:
    """Worker threads delivering the outbox's pending rows."""

    def __init__(self, conf, store, settings, wakeup=None, clock=time.time,
                 enricher=None):
        outbox.register_opts(conf)
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
        dl = outbox.deliveries

        def work(conn):
            condition = dl.c.state == 'in_flight'
            if not all_owners:
                condition = sa.and_(condition, dl.c.claimed_until < now)
            return conn.execute(dl.update().where(condition).values(
                state='pending', claimed_by=None, claimed_until=None,
                next_attempt_at=now)).rowcount
        count = self.store.write(work)
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
        dl = outbox.deliveries

        def work(conn):
            row = conn.execute(sa.select(dl).where(
                dl.c.state == 'pending', dl.c.next_attempt_at <= now)
                .order_by(dl.c.next_attempt_at, dl.c.id).limit(1)).first()
            if row is None:
                return None
            claimed = conn.execute(dl.update().where(
                dl.c.id == row.id, dl.c.state == 'pending').values(
                    state='in_flight', claimed_by=self.store.owner,
                    claimed_until=now + self.options.lease)).rowcount
            return row if claimed == 1 else None
        return self.store.write(work)

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
            return self._failed(row, attempt, base.DriverError(
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
            return self._failed(row, attempt, base.DriverError(
                'preparing the alert failed: %s: %s' % (
                    type(exc).__name__, exc), retryable=True))
        try:
            receiver.driver.notify(alert)
        except base.DriverError as exc:
            return self._failed(row, attempt, exc)
        except Exception as exc:
            LOG.exception('Driver %s of receiver %s raised', receiver
                          .driver_name, receiver.name)
            return self._failed(row, attempt, base.DriverError(
                '%s: %s' % (type(exc).__name__, exc), retryable=True))
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
        dl = outbox.deliveries
        try:
            self.store.write(lambda conn: conn.execute(dl.update().where(
                *self._claimed(row)).values(
                    state='pending', attempts=attempt, claimed_by=None,
                    claimed_until=None,
                    next_attempt_at=self.clock() + self.backoff(attempt))))
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

    def _failed(self, row, attempt, error):
        now = self.clock()
        # Any driver's message: a URL's password or query token masked
        # before it reaches the log, the audit line and the dead letters.
        reason = logsafe.escape(redact.text(error), 500)
        deadline = row.created_at + self.options.retry_deadline
        if error.retryable:
            delay = self.backoff(attempt, error.retry_after)
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
                  self._request_id(row), error.retryable, reason)
        return self._dead(row, attempt, reason)

    def _dead(self, row, attempt, reason):
        now = self.clock()
        fallback = self.options.fallback_receiver
        dl = outbox.deliveries

        def work(conn):
            if not conn.execute(dl.update().where(*self._claimed(row)).values(
                    state='dead', attempts=attempt, finished_at=now,
                    claimed_by=None, claimed_until=None,
                    last_error=reason)).rowcount:
                self._lost(row)
                return False
            conn.execute(outbox.dead_letters.insert().values(
                delivery_id=row.id, incident_id=row.incident_id,
                receiver=row.receiver, reason=reason, created_at=now))
            if fallback and fallback != row.receiver and \
                    fallback in self.settings.receivers:
                exists = conn.execute(sa.select(dl.c.id).where(
                    dl.c.incident_id == row.incident_id,
                    dl.c.receiver == fallback)).first()
                if exists is None:
                    conn.execute(dl.insert().values(
                        incident_id=row.incident_id, receiver=fallback,
                        rule=row.rule, kind=row.kind, alert=row.alert,
                        state='pending', attempts=0, created_at=now,
                        next_attempt_at=now))
                    return True
            return False
        to_fallback = self.store.write(work)
        self._audit(row, attempt, 'dead: %s%s' % (
            reason, '; sent to fallback receiver %s' % fallback
            if to_fallback else ''))
        if to_fallback:
            self.wakeup.set()
        return 'dead'

    def _claimed(self, row):
        """The row, as long as this worker's claim on it holds.

        Every outcome is a compare-and-swap on the claim: a worker whose
        lease ran out (and whose delivery another replica took over)
        records nothing.
        """
        dl = outbox.deliveries
        return (dl.c.id == row.id, dl.c.state == 'in_flight',
                dl.c.claimed_by == self.store.owner)

    def _lost(self, row):
        LOG.warning('Delivery %s to receiver %s was taken over by another '
                    'worker (this one\'s claim ran out): the outcome of this '
                    'attempt is not recorded', row.id, row.receiver)

    def _update(self, row, **values):
        dl = outbox.deliveries
        if not self.store.write(lambda conn: conn.execute(
                dl.update().where(*self._claimed(row)).values(
                    **values)).rowcount):
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
