"""
Micro benchmark of the MQTT codec's hot path (not a test: nothing asserts).

Decodes 100k small QoS 0 / QoS 1 PUBLISH frames fed in 64 KiB chunks, the
way ``dataReceived`` sees a busy publisher, and encodes as many with
``encode_publish``.  Run: ``.venv/bin/python -m benchmarks.codec_bench``
(from the repository root).
"""
from __future__ import annotations

import sys
import time

from vmqtw.mqtt.codec import Decoder, encode_publish

FRAMES = 100_000
CHUNK = 64 * 1024


def _stream(frames: int) -> bytes:
    parts = []
    for i in range(frames):
        qos = i & 1
        parts.append(encode_publish("sensors/%d/temperature" % (i % 100),
                                    b"x" * 32, qos, False, False,
                                    (i % 65535) + 1 if qos else None))
    return b"".join(parts)


def bench_decode(frames: int = FRAMES, rounds: int = 5) -> float:
    """Best frames/s over ``rounds`` runs."""
    data = _stream(frames)
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    best = 0.0
    for _ in range(rounds):
        dec = Decoder()
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


def main() -> None:
    sys.stdout.write("decode: %.0f frames/s\n" % bench_decode())
    sys.stdout.write("encode_publish: %.0f frames/s\n" % bench_encode())


if __name__ == "__main__":
    main()
