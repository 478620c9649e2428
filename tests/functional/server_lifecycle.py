"""Life cycle shared by the in-process test servers.

Used by ``smtp.py`` and ``webhook_server.py``.

``ServerLifecycle`` is a mixin for a server that runs on background threads
of the test process, starts once, records errors in its own code and reports
them loudly at ``stop()``.  The class using it sets ``error_class`` (the
exception stop() and start() raise) and ``runs_once_name`` (for the message
of a second start()), and provides, from its ``__init__``::

    self.errors = []            # recorded error lines
    self._cond = threading.Condition()
    self._thread = None         # the serving thread, once started
    self._started = self._stopped = False
    self._errors_reported = 0

and the methods ``_start()`` (listen and serve; raise on failure) and
``_stop()`` (close everything, join the threads; runs once).
"""

import logging
import time


class ServerLifecycle:

    error_class = RuntimeError
    runs_once_name = 'a server'

    def _log(self):
        return logging.getLogger(type(self).__module__)

    # -- errors ---------------------------------------------------------------

    def _add_error(self, what, error):
        self._log().error('%r: %s: %r', self, what, error, exc_info=error)
        with self._cond:
            self.errors.append('%s: %s: %s' % (what, type(error).__name__,
                                               error))

    def _error_summary(self):
        with self._cond:
            errors = list(self.errors)
        if not errors:
            return ''
        return '\nserver errors:\n  ' + '\n  '.join(errors)

    def _wait_for_count(self, items, n, timeout):
        """Wait until the list *items* (guarded by _cond) holds *n* entries.

        Returns a copy of it, taken when it holds *n* or more, or when
        *timeout* seconds have passed.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(items) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(items)

    def _wait_for_exactly(self, items, n, timeout, what, show=repr):
        """_wait_for_count(), then AssertionError unless *n* arrived.

        The message names the *what* (``message``, ``request``) and lists
        what did arrive, each shown by *show* (the list), and the errors
        the server recorded.
        """
        got = self._wait_for_count(items, n, timeout)
        if len(got) != n:
            raise AssertionError(
                '%r: expected %d %s(s) within %ss, %d arrived: %s%s' % (
                    self, n, what, timeout, len(got), show(got),
                    self._error_summary()))
        return got

    # -- start / stop ---------------------------------------------------------

    def start(self):
        """Listen and serve; returns once the port accepts connections."""
        if self._started:
            raise self.error_class('%r was already started; %s runs once' % (
                self, self.runs_once_name))
        self._started = True
        try:
            self._start()
        except BaseException:
            self._shutdown_after_failed_start()
            raise
        return self

    def _shutdown_after_failed_start(self):
        try:
            self.stop(check=False)
        except Exception:
            self._log().exception('%r: clean-up after a failed start failed',
                                  self)

    def stop(self, check=True):
        """Close every connection, join every thread, remove the temp dir.

        Idempotent.  With *check* (the default) raises ``error_class`` when
        the server recorded errors that no earlier stop() reported.
        """
        if not self._stopped:
            self._stopped = True
            self._stop()
        with self._cond:
            new_errors = self.errors[self._errors_reported:]
            self._errors_reported = len(self.errors)
        if check and new_errors:
            raise self.error_class('%r recorded errors:\n  %s' % (
                self, '\n  '.join(new_errors)))

    @property
    def running(self):
        return (self._thread is not None and self._thread.is_alive()
                and not self._stopped)

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        # A failing test's own exception wins over server errors.
        self.stop(check=exc_type is None)
