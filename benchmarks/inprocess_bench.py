"""
The broker's per-message CPU cost without sockets: one publisher's bytes
fed to the real protocol/session/registry in 64 KiB chunks, one or more
subscribers on ``StringTransport``.  Complements ``loadgen.py`` (which
measures a real node over TCP) by isolating parse → route → write.

    .venv/bin/python -m benchmarks.inprocess_bench [--messages N] [--qos Q]
        [--subscribers M] [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time

from twisted.internet.testing import StringTransport

from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Broker
from vmqtw.broker.queue import QueueLimits


def run(messages: int, qos: int, subscribers: int) -> float:
    # Subscribers acknowledge nothing: the whole packet-id space is the
    # in-flight window, so at most 65,535 QoS 1 messages per run.
    if qos:
        messages = min(messages, 65_000)
    broker = Broker(limits=QueueLimits(max_inflight_messages=0))
    subs = [broker.subscriber("sub%d" % i, ("bench/+/x", qos)) for i in range(subscribers)]
    publisher = broker.connect("publisher")
    frames = b"".join(B.publish("bench/%d/x" % (i % 100), b"p" * 64, qos=qos,
                                packet_id=(i % 65535) + 1 if qos else None)
                      for i in range(messages))
    chunks = [frames[i:i + 65536] for i in range(0, len(frames), 65536)]
    for sub in subs:
        sub.transport = StringTransport()
        sub.protocol.transport = sub.transport
    started = time.perf_counter()
    for chunk in chunks:
        publisher.protocol.dataReceived(chunk)
    elapsed = time.perf_counter() - started
    return messages / elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--qos", type=int, default=0, choices=(0, 1))
    parser.add_argument("--subscribers", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
    messages = min(args.messages, 65_000) if args.qos else args.messages
    rate = run(messages, args.qos, args.subscribers)
    if args.profile:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    sys.stdout.write("%d messages qos %d to %d subscriber(s): %.0f msg/s in\n"
                     % (messages, args.qos, args.subscribers, rate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
