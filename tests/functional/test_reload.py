"""SIGHUP re-reads rules and receivers; a broken file is refused."""

import signal
import threading

from tests.functional import rabbitmq as rq
from tests.functional import service_process

config = service_process.service_config
publish_error = service_process.publish_error


def test_reload_switches_rules_and_refuses_a_broken_file(tmp_path,
                                                         rabbitmq_vhost):
    url = rabbitmq_vhost.url
    proc = service_process.ServiceProcess(
        tmp_path, config(url, tmp_path, 'first'))
    proc.start()
    try:
        with rq.Publisher(url) as pub:
            publish_error(pub, 'req-before')
            proc.wait_for_alerts(1)
            with open(proc.config_path, 'w') as handle:
                handle.write(config(url, tmp_path, 'second'))
            proc.process.send_signal(signal.SIGHUP)
            proc.wait_for('Reloaded: 1 rule')
            publish_error(pub, 'req-after')
            proc.wait_for_alerts(2)
            with open(proc.config_path, 'w') as handle:
                handle.write(config(url, tmp_path, 'third', driver='emial'))
            proc.process.send_signal(signal.SIGHUP)
            proc.wait_for('Reload refused: the configuration in force')
            publish_error(pub, 'req-refused')
            proc.wait_for_alerts(3)

            # Reloads while messages flow: nothing lost, nothing doubled.
            with open(proc.config_path, 'w') as handle:
                handle.write(config(url, tmp_path, 'fourth'))
            done = threading.Event()

            def hup():
                for _ in range(3):
                    proc.process.send_signal(signal.SIGHUP)
                    done.wait(0.3)
            thread = threading.Thread(target=hup)
            thread.start()
            for number in range(60):
                publish_error(pub, 'req-flow-%02d' % number)
            thread.join()
            proc.wait_for_alerts(63, timeout=60)
        by_request = proc.alerts_by_request()
        assert by_request['req-before'][0]['receiver'] == 'first'
        assert by_request['req-after'][0]['receiver'] == 'second'
        assert by_request['req-refused'][0]['receiver'] == 'second'
        assert all(len(v) == 1 for v in by_request.values()), by_request
        assert len([k for k in by_request if k.startswith('req-flow-')]) \
            == 60
        assert proc.process.poll() is None
        log = proc.log()
        assert "driver 'emial' is not installed" in log
    finally:
        status = proc.stop()
    assert status == 0
