"""
Micro benchmark of the MQTT codec's hot path (not a test: nothing asserts).

Decodes 100k small QoS 0 / QoS 1 PUBLISH frames fed in 64 KiB chunks, the
way ``dataReceived`` sees a busy publisher, and encodes as many with
``encode_publish``; then the same at MQTT 5.0 (``encode_publish5``), without
properties and with two typical ones (message expiry interval and one user
property), which is where a ``Properties`` object is built per frame.
Run: ``.venv/bin/python -m benchmarks.codec_bench`` (from the repository
root).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional

from vmqtw.mqtt.codec import Decoder, encode_publish, encode_publish5
from vmqtw.mqtt.packets import Properties

FRAMES = 100_000
CHUNK = 64 * 1024

#: The properties of the "v5 with properties" runs.
PROPS = Properties(message_expiry_interval=3600,
                   user_properties=(("device", "abc-123"),))

_Encoder = Callable[[str, bytes, int, bool, bool, Optional[int]], bytes]


def _encode_311(topic: str, payload: bytes, qos: int, retain: bool,
                dup: bool, packet_id: Optional[int]) -> bytes:
    return encode_publish(topic, payload, qos, retain, dup, packet_id)


def _encode_v5(topic: str, payload: bytes, qos: int, retain: bool,
               dup: bool, packet_id: Optional[int]) -> bytes:
    return encode_publish5(topic, payload, qos, retain, dup, packet_id)


def _encode_v5_props(topic: str, payload: bytes, qos: int, retain: bool,
                     dup: bool, packet_id: Optional[int]) -> bytes:
    return encode_publish5(topic, payload, qos, retain, dup, packet_id, PROPS)


def _stream(frames: int, encoder: _Encoder = _encode_311) -> bytes:
    parts = []
    for i in range(frames):
        qos = i & 1
        parts.append(encoder("sensors/%d/temperature" % (i % 100),
                             b"x" * 32, qos, False, False,
                             (i % 65535) + 1 if qos else None))
    return b"".join(parts)


def bench_decode(frames: int = FRAMES, rounds: int = 5,
                 encoder: _Encoder = _encode_311, level: int = 4) -> float:
    """Best frames/s over ``rounds`` runs."""
    data = _stream(frames, encoder)
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    best = 0.0
    for _ in range(rounds):
        dec = Decoder(protocol_level=level)
        count = 0
        t0 = time.perf_counter()
        for chunk in chunks:
            count += len(dec.feed(chunk))
        elapsed = time.perf_counter() - t0
        assert count == frames, count
        best = max(best, frames / elapsed)
    return best


def bench_encode(frames: int = FRAMES, rounds: int = 5) -> float:
    """Best encode_publish calls/s over ``rounds`` runs."""
    payload = b"x" * 32
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(frames):
            encode_publish("sensors/1/temperature", payload, i & 1, False,
                           False, 7 if i & 1 else None)
        best = max(best, frames / (time.perf_counter() - t0))
    return best


def bench_encode_v5(frames: int = FRAMES, rounds: int = 5,
                    properties: Optional[Properties] = None) -> float:
    """Best encode_publish5 calls/s over ``rounds`` runs (no wrapper)."""
    payload = b"x" * 32
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(frames):
            encode_publish5("sensors/1/temperature", payload, i & 1, False,
                            False, 7 if i & 1 else None, properties)
        best = max(best, frames / (time.perf_counter() - t0))
    return best


def main() -> None:
    out = sys.stdout.write
    out("decode: %.0f frames/s\n" % bench_decode())
    out("encode_publish: %.0f frames/s\n" % bench_encode())
    out("v5 decode, no properties: %.0f frames/s\n"
        % bench_decode(encoder=_encode_v5, level=5))
    out("v5 decode, 2 properties: %.0f frames/s\n"
        % bench_decode(encoder=_encode_v5_props, level=5))
    out("encode_publish5, no properties: %.0f frames/s\n" % bench_encode_v5())
    out("encode_publish5, 2 properties: %.0f frames/s\n"
        % bench_encode_v5(properties=PROPS))


if __name__ == "__main__":
    main()
