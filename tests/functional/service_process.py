"""Run the real ``nova-error-notifier`` console script for functional tests.

Also here, for the tests that run it: a configuration with one catch-all
rule (``service_config``), a Nova-like build failure to publish
(``publish_error``), and the reader of its alert lines (``parse_alert``).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

ALERT_MARK = 'nova-error-notifier alert '
#: [correlation] group_wait of the test services, in seconds.
GROUP_WAIT = 1

_PAIR_RE = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_alert(line):
    """key=value pairs of an alert line (quoted values unescaped)."""
    body = line.split(ALERT_MARK, 1)[1]
    pairs = {}
    for key, value in _PAIR_RE.findall(body):
        if value.startswith('"'):
            value = re.sub(r'\\(.)', r'\1', value[1:-1])
        pairs[key] = value
    return pairs


def service_config(url, workdir, receiver, driver='log', extra=()):
    """A configuration sending every error to one receiver.

    No storm limit, a short group wait; *extra*: more lines (sections) at
    the end.
    """
    return '\n'.join([
        '[DEFAULT]', 'transport_url = %s' % url, 'rules = all',
        '[rule:all]', 'events = *', 'receivers = %s' % receiver,
        '[receiver:%s]' % receiver, 'driver = %s' % driver,
        '[delivery]', 'state_dir = %s' % workdir,
        'max_alerts_per_interval = 0',
        '[correlation]', 'group_wait = 0.5'] + list(extra) + [''])


def publish_error(pub, request_id):
    """A legacy build failure of instance ``inst-<request_id>``.

    *pub*: a ``rabbitmq.Publisher``.
    """
    pub.publish({'request_id': request_id}, 'compute.hv-1',
                'compute.instance.create.error', 'ERROR',
                {'instance_id': 'inst-' + request_id, 'state': 'building',
                 'exception': "X('%s')" % request_id, 'message': 'X'})


def console_script(name):
    """The installed console script, next to this Python or on PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(candidate):
        return candidate
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError('%s is not installed in this environment'
                                % name)
    return found


class ServiceProcess:
    """One ``nova-error-notifier`` process with its own config and log."""

    def __init__(self, workdir, config_text, extra_args=()):
        self.workdir = str(workdir)
        self.config_path = os.path.join(self.workdir, 'nova_error_notifier'
                                        '.conf')
        self.log_path = os.path.join(self.workdir, 'service.log')
        self.output_path = os.path.join(self.workdir, 'service.out')
        # Each process gets its own outbox, in its work directory, unless
        # the test says otherwise.
        if '[delivery]' not in config_text:
            config_text += '\n[delivery]\nstate_dir = %s\n' % self.workdir
        # A short correlation window keeps the tests quick.
        if '[correlation]' not in config_text:
            config_text += '\n[correlation]\ngroup_wait = %s\n' % GROUP_WAIT
        with open(self.config_path, 'w', encoding='utf-8') as handle:
            handle.write(config_text)
        self.args = [console_script('nova-error-notifier'),
                     '--config-file', self.config_path,
                     '--log-file', self.log_path] + list(extra_args)
        self.process = None
        self.stop_seconds = None

    def start(self, wait_for='Listening to ', timeout=60):
        self._output = open(self.output_path, 'wb')
        self.process = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=self._output,
            stderr=subprocess.STDOUT, cwd=self.workdir)
        if wait_for:
            self.wait_for(re.escape(wait_for), timeout=timeout)
        return self

    def log(self):
        try:
            with open(self.log_path, encoding='utf-8') as handle:
                return handle.read()
        except FileNotFoundError:
            return ''

    def output(self):
        with open(self.output_path, encoding='utf-8',
                  errors='replace') as handle:
            return handle.read()

    def alert_lines(self):
        return [line for line in self.log().splitlines()
                if ALERT_MARK in line]

    def alerts(self):
        """The alerts logged so far, each as parse_alert() reads it."""
        return [parse_alert(line) for line in self.alert_lines()]

    def alerts_by_request(self):
        """{request id: [alert, ...]} of the alerts logged so far."""
        found = {}
        for alert in self.alerts():
            found.setdefault(alert['request_id'], []).append(alert)
        return found

    def wait_for(self, pattern, timeout=30, count=1):
        """Wait until ``pattern`` matches ``count`` log lines."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            lines = [ln for ln in self.log().splitlines() if regex.search(ln)]
            if len(lines) >= count:
                return lines
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    'nova-error-notifier exited with %s while waiting for '
                    '%r; log:\n%s\noutput:\n%s' % (
                        self.process.returncode, pattern, self.log()[-4000:],
                        self.output()[-2000:]))
            if time.monotonic() > deadline:
                raise AssertionError(
                    'timed out after %ss waiting for %d line(s) matching %r '
                    '(found %d); log tail:\n%s' % (
                        timeout, count, pattern, len(lines),
                        self.log()[-4000:]))
            time.sleep(0.1)

    def wait_for_alerts(self, count, timeout=30):
        return self.wait_for(re.escape(ALERT_MARK), timeout=timeout,
                             count=count)

    def pids(self):
        """The supervisor's pid and its worker processes' (one group)."""
        if self.process is None:
            return []
        found = [self.process.pid]
        for entry in os.listdir('/proc'):
            if not entry.isdigit() or int(entry) == self.process.pid:
                continue
            try:
                with open('/proc/%s/stat' % entry) as handle:
                    fields = handle.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            # Fields after the command: state, ppid, pgrp.
            if int(fields[2]) == self.process.pid:
                found.append(int(entry))
        return found

    def kill(self):
        """SIGKILL to every process of the service, as systemd does."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except OSError:
            self.process.kill()
        self.process.wait(10)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        """Send ``sig``; return the exit status (and time it).

        SIGKILL goes to every process of the service (its process group),
        as systemd's stop does once the timeout is over.
        """
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        start = time.monotonic()
        if sig == signal.SIGKILL:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except OSError:
                self.process.send_signal(sig)
        else:
            self.process.send_signal(sig)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError('nova-error-notifier did not stop within '
                                 '%ss of %s' % (timeout, sig))
        finally:
            self.stop_seconds = time.monotonic() - start
            self._output.close()
        return status

    def run_to_exit(self, timeout=60):
        """Run without waiting for start-up; return (status, log)."""
        self.start(wait_for=None)
        try:
            status = self.process.wait(timeout)
        finally:
            self._output.close()
        return status
