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
"""A no-op oslo.messaging notification listener: the benchmark's baseline.

It listens like nova-error-notifier does (same exchange, topics, pool, the
``info``, ``error`` and ``critical`` priorities, the threading executor,
requeue allowed, oslo.messaging's defaults for everything else) and does
nothing with the messages, in the plain form
(``get_notification_listener``) or the batch form
(``get_batch_notification_listener``).

It notes the time it handles the benchmark's head and tail sentinels (by
their request ids), writes them as JSON to ``--result`` and exits. Run by
``tools/bench/run.py``; exits 1 when the tail does not come within
``--timeout`` seconds.
"""

import argparse
import json
import os
import sys
import threading
import time

from oslo_config import cfg
import oslo_messaging


class Marks:
    """Times the sentinels were handled at, and a message count."""

    def __init__(self, head, tail):
        self.head = head
        self.tail = tail
        self.times = {}
        self.cpu = {}
        self.count = 0
        self.count_at_tail = None
        self.lock = threading.Lock()
        self.done = threading.Event()

    def see(self, ctxt):
        request_id = ctxt.get('request_id') if isinstance(ctxt, dict) \
            else None
        with self.lock:
            self.count += 1
            if request_id in (self.head, self.tail) and \
                    request_id not in self.times:
                self.times[request_id] = time.time()
                times = os.times()
                self.cpu[request_id] = (times.user, times.system)
                if request_id == self.tail:
                    self.count_at_tail = self.count
                    self.done.set()


class PlainEndpoint:
    """One message per call; does nothing."""

    def __init__(self, marks):
        self.marks = marks

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self.marks.see(ctxt)

    error = critical = info


class BatchEndpoint:
    """A list of messages per call; does nothing."""

    def __init__(self, marks):
        self.marks = marks

    def info(self, messages):
        for message in messages:
            self.marks.see(message.get('ctxt'))

    error = critical = info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--url', required=True)
    parser.add_argument('--pool', required=True)
    parser.add_argument('--mode', choices=('plain', 'batch'),
                        required=True)
    parser.add_argument('--head', required=True,
                        help='request id of the head sentinel')
    parser.add_argument('--tail', required=True,
                        help='request id of the tail sentinel')
    parser.add_argument('--result', required=True)
    parser.add_argument('--exchange', default='nova')
    parser.add_argument('--topics',
                        default='notifications,versioned_notifications')
    parser.add_argument('--batch-size', type=int, default=100)
    parser.add_argument('--batch-timeout', type=float, default=1.0)
    parser.add_argument('--timeout', type=float, default=600.0)
    args = parser.parse_args(argv)

    conf = cfg.ConfigOpts()
    conf(args=[], project='nova-error-notifier-bench',
         default_config_files=[], default_config_dirs=[])
    transport = oslo_messaging.get_notification_transport(conf, url=args.url)
    targets = [oslo_messaging.Target(topic=topic.strip(),
                                     exchange=args.exchange)
               for topic in args.topics.split(',') if topic.strip()]
    marks = Marks(args.head, args.tail)
    if args.mode == 'plain':
        listener = oslo_messaging.get_notification_listener(
            transport, targets, [PlainEndpoint(marks)], executor='threading',
            allow_requeue=True, pool=args.pool)
    else:
        listener = oslo_messaging.get_batch_notification_listener(
            transport, targets, [BatchEndpoint(marks)], executor='threading',
            allow_requeue=True, pool=args.pool, batch_size=args.batch_size,
            batch_timeout=args.batch_timeout)
    started = time.time()
    listener.start()
    finished = marks.done.wait(args.timeout)
    with marks.lock:
        result = {'mode': args.mode, 'started': started,
                  'head': marks.times.get(args.head),
                  'tail': marks.times.get(args.tail),
                  'count_at_tail': marks.count_at_tail,
                  'cpu': ([b - a for a, b in zip(marks.cpu[args.head],
                                                 marks.cpu[args.tail])]
                          if len(marks.cpu) == 2 else None)}
    listener.stop()
    listener.wait()
    transport.cleanup()
    with open(args.result, 'w', encoding='utf-8') as handle:
        json.dump(result, handle)
    return 0 if finished and result['head'] else 1


if __name__ == '__main__':
    sys.exit(main())
