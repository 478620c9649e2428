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
"""Common machinery of the Nova endpoint plugins.

The service hands the plugins to :class:`nova_error_notifier.listener.
BatchEndpoint`, which calls their ``collect`` for each message of a batch;
the per-message methods (``error``, ``critical``, ``info``) say which
priorities a plugin reads, and serve callers that want one message at a
time (oslo.messaging's plain listener).

An endpoint subscribes to the ``error`` and ``critical`` priorities, and to
``info`` when ``[listener] watch_state_changes`` is on (for
``instance.update`` into ERROR). Its ``filter_rule`` cheaply sends each
message to the one endpoint that understands its format. Each message is
handled in its own ``try``: a malformed or unexpected message is logged with
its message id and dropped, and the listener keeps running.
"""

import threading
import time

from oslo_log import log
import oslo_messaging

from nova_error_notifier import logsafe
from nova_error_notifier.parse import common
from nova_error_notifier.parse import versioned
from nova_error_notifier import record as rec

LOG = log.getLogger(__name__)

HANDLED = oslo_messaging.NotificationResult.HANDLED
REQUEUE = oslo_messaging.NotificationResult.REQUEUE

#: Seconds a listener thread waits before handing a message back, so that
#: a broken store does not spin the CPU on redeliveries.
REQUEUE_DELAY = 1.0
#: Seconds between two log lines about requeued messages.
REQUEUE_LOG_INTERVAL = 30.0


class FormatFilter:
    """An oslo.messaging filter rule: versioned payloads or the others."""

    def __init__(self, want_versioned):
        self.want_versioned = want_versioned

    def match(self, ctxt, publisher_id, event_type, metadata, payload):
        return versioned.is_versioned(payload) == self.want_versioned


def _message_id(metadata):
    if isinstance(metadata, dict):
        return logsafe.escape(metadata.get('message_id'), 128)
    return '-'


class NovaEndpoint:
    """Base of the versioned and legacy Nova endpoints."""

    #: ``versioned`` or ``legacy``.
    FORMAT = None
    #: Event types worth reading at INFO priority.
    INFO_EVENTS = frozenset()
    #: True for the endpoint of versioned payloads.
    VERSIONED = False
    #: The parser: a pure function returning an ErrorRecord or None.
    parse = None
    #: ``routine(event_type, payload)``: True for an INFO message with
    #: nothing to read, told without parsing (None: parse them all).
    routine = None

    def __init__(self, conf, sink):
        self.sink = sink
        # Optional: a callable told why a message was dropped (replay).
        self.on_drop = getattr(sink, 'on_drop', None)
        self.filter_rule = FormatFilter(self.VERSIONED)
        if conf.listener.watch_state_changes:
            # oslo.messaging subscribes to the priorities an endpoint has a
            # method for: only define ``info`` when it is wanted.
            self.info = self._info

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        return self.process('ERROR', ctxt, publisher_id, event_type,
                            payload, metadata)

    def critical(self, ctxt, publisher_id, event_type, payload, metadata):
        return self.process('CRITICAL', ctxt, publisher_id, event_type,
                            payload, metadata)

    @staticmethod
    def _requeue(metadata, exc):
        requeue_log(metadata, exc)
        time.sleep(REQUEUE_DELAY)
        return REQUEUE

    def _skipped(self, event_type, payload):
        """True for INFO traffic not worth parsing."""
        if event_type not in self.INFO_EVENTS:
            return True
        return self.routine is not None and self.routine(event_type, payload)

    def _info(self, ctxt, publisher_id, event_type, payload, metadata):
        if self._skipped(event_type, payload):
            return HANDLED
        return self.process('INFO', ctxt, publisher_id, event_type,
                            payload, metadata)

    def collect(self, priority, ctxt, publisher_id, event_type, payload,
                metadata):
        """The record or resolution of one message, or None.

        ``priority`` is oslo.messaging's lower-case priority. INFO traffic
        other than the few event types worth reading, and their routine
        state changes, is skipped before any parsing. A message that cannot
        be read is logged and dropped (None).
        """
        if priority == 'info' and self._skipped(event_type, payload):
            return None
        return self._parse(priority.upper(), ctxt, publisher_id, event_type,
                           payload, metadata)

    def _parse(self, priority, ctxt, publisher_id, event_type, payload,
               metadata):
        problem = None
        try:
            return self.parse(priority, ctxt, publisher_id, event_type,
                              payload, metadata)
        except common.MalformedNotification as exc:
            problem = ('malformed', str(exc))
        except Exception as exc:
            problem = ('unreadable', '%s: %s' % (type(exc).__name__,
                                                 logsafe.escape(exc, 512)))
        # Logged outside the except block: oslo.log would append the
        # exception to the line a second time.
        LOG.warning('Dropped %s %s notification message_id=%s '
                    'event_type=%s priority=%s: %s', problem[0],
                    self.FORMAT, _message_id(metadata),
                    logsafe.escape(event_type, 255), priority, problem[1])
        if self.on_drop is not None:
            self.on_drop('%s: %s' % problem)
        return None

    def process(self, priority, ctxt, publisher_id, event_type, payload,
                metadata):
        """Parse one notification and pass any error record on."""
        record = self._parse(priority, ctxt, publisher_id, event_type,
                             payload, metadata)
        if record is None:
            return HANDLED
        try:
            self.sink(record)
        except rec.RetryLater as exc:
            return self._requeue(metadata, exc)
        except Exception:
            _log_unprocessed(metadata, record)
        return HANDLED


def _log_unprocessed(metadata, record):
    LOG.exception('Could not process the error in notification '
                  'message_id=%s event_type=%s request_id=%s '
                  'instance=%s exception=%s',
                  _message_id(metadata),
                  logsafe.escape(record.event_type),
                  logsafe.escape(record.request_id),
                  logsafe.escape(record.instance_uuid),
                  logsafe.escape(getattr(record, 'exception', None)))


_requeue_lock = threading.Lock()
_requeue_state = {'logged_at': 0.0, 'count': 0}


def requeue_log(metadata, exc, count=1):
    """One log line per REQUEUE_LOG_INTERVAL, counting the others.

    One limiter per process, shared by the listener's batch endpoint and
    the plugins' per-message methods.
    """
    now = time.monotonic()
    with _requeue_lock:
        _requeue_state['count'] += count
        if now - _requeue_state['logged_at'] < REQUEUE_LOG_INTERVAL:
            return
        count, _requeue_state['count'] = _requeue_state['count'], 0
        _requeue_state['logged_at'] = now
    LOG.error('Could not store notification message_id=%s: %s; it goes back '
              'to the queue (%d message(s) requeued since the last line)',
              _message_id(metadata), logsafe.escape(exc, 300), count)
