"""
The broker's per-message CPU cost without sockets: one publisher's bytes
fed to the real protocol/session/registry in 64 KiB chunks, one or more
subscribers on ``StringTransport``.  Complements ``loadgen.py`` (which
measures a real node over TCP) by isolating parse → route → write.

    .venv/bin/python -m benchmarks.inprocess_bench [--messages N] [--qos Q]
        [--subscribers M] [--v5] [--properties] [--profile]

``--v5`` makes the publisher and the subscribers MQTT 5.0 clients;
``--properties`` (with ``--v5``) gives every PUBLISH a content type and two
user properties, passed on to every subscriber.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from typing import Any

from twisted.internet.testing import StringTransport

from vmqtw.mqtt import packets as P
from vmqtw.mqtt.codec import Decoder
from vmqtw.testing import mqtt5bytes as B5
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Broker
from vmqtw.broker.queue import QueueLimits


def _connect5(broker: Broker, client_id: str) -> Any:
    client = broker.client()
    client.decoder = Decoder(protocol_level=5)
    client.send(B5.connect(client_id, keepalive=0))
    assert isinstance(client.received()[0], P.ConnAck)
    return client


def run(messages: int, qos: int, subscribers: int, v5: bool = False,
        properties: bool = False) -> float:
    # Subscribers acknowledge nothing: the whole packet-id space is the
    # in-flight window, so at most 65,535 QoS 1 messages per run.
    if qos:
        messages = min(messages, 65_000)
    broker = Broker(limits=QueueLimits(max_inflight_messages=0))
    if v5:
        subs = [_connect5(broker, "sub%d" % i) for i in range(subscribers)]
        for sub in subs:
            sub.send(B5.subscribe(1, [("bench/+/x", qos)]))
        publisher = _connect5(broker, "publisher")
        props = B5.props(B5.p_str(0x03, "text/plain"), B5.p_pair("a", "1"),
                         B5.p_pair("b", "2")) if properties else B5.NO_PROPS
        frames = b"".join(B5.publish("bench/%d/x" % (i % 100), b"p" * 64, qos=qos,
                                     packet_id=(i % 65535) + 1 if qos else None,
                                     properties=props)
                          for i in range(messages))
    else:
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
    parser.add_argument("--v5", action="store_true", help="MQTT 5.0 clients")
    parser.add_argument("--properties", action="store_true",
                        help="with --v5: PUBLISH properties on every message")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
    messages = min(args.messages, 65_000) if args.qos else args.messages
    rate = run(messages, args.qos, args.subscribers, args.v5, args.properties)
    if args.profile:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    sys.stdout.write("%d messages qos %d to %d subscriber(s)%s: %.0f msg/s in\n"
                     % (messages, args.qos, args.subscribers,
                        (" (MQTT 5.0%s)" % (", properties" if args.properties else ""))
                        if args.v5 else "", rate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
