"""
Load generator for an MQTT 3.1.1 or 5.0 broker: fan-in, fan-out and latency runs.

Usage::

    python benchmarks/loadgen.py fanin --host 127.0.0.1 --port 1883 \\
        --publishers 4 --messages 25000 --qos 1 --json

``--protocol 5`` runs the same scenario with MQTT 5.0 clients, and
``--properties`` gives every message a content type, a message expiry
interval and a user property (what a v5 application typically sends).

Why it looks the way it does:

* Several OS processes (``multiprocessing`` with *spawn*, so no state leaks
  from the parent) each drive many non-blocking sockets with ``selectors``.
  A paho client spends more time in Python per message than a broker does,
  so it cannot saturate one; here a publisher stamps a pre-built PUBLISH
  template with ``struct.pack_into`` and writes hundreds of frames per
  ``send``, and a subscriber cuts every frame of a ``recv`` by offset.
* Every payload carries ``(run id, publisher index, sequence, timestamp)``.
  Subscribers keep one counter byte per expected message, so loss and
  duplication are counted exactly, not estimated; QoS >= 1 loss and
  duplicates that the protocol does not allow make the run fail.
* Runs are bounded: publishing stops after ``--messages`` or ``--duration``
  seconds, subscribers stop once everything published arrived or after
  ``--drain`` idle seconds, and the parent terminates whatever overruns.
* Only loopback brokers are targeted unless ``--allow-remote`` is given: a
  load generator pointed at somebody else's broker is an attack.

Workers talk to the parent over ``multiprocessing`` pipes with JSON bytes
(``send_bytes``), never pickled objects.

Exit status: 0 ok, 1 integrity failure (QoS >= 1 loss, illegal duplicates,
messages nobody published), 2 usage error or refused host, 3 connection or
protocol error (broker down, CONNACK refused, unexpected close, timeout).
"""
from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
import zlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import attrs

if __package__:
    from . import mqttwire
else:  # run as a script (and in spawned workers): benchmarks/ is sys.path[0]
    import mqttwire

#: Payload prefix: run id (4 bytes), publisher index, sequence, timestamp ns.
PAYLOAD_HEADER = struct.Struct(">4sIQQ")
MIN_PAYLOAD = PAYLOAD_HEADER.size
_SEQ_TS = struct.Struct(">QQ")
_PID = struct.Struct(">H")

#: The property block ``--properties`` puts in every PUBLISH.
BENCH_PROPERTIES = mqttwire.publish_properties(
    content_type="application/octet-stream", message_expiry=3600,
    user_properties=[("bench", "loadgen")])

#: Frames stamped per batch and bytes queued per socket before we wait on it.
BATCH = 512
HIGH_WATER = 256 * 1024
RECV_SIZE = 256 * 1024

SCENARIOS = ("fanin", "fanout", "latency", "offline")
EXIT_OK, EXIT_INTEGRITY, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3

_DEFAULTS: Dict[str, Dict[str, int]] = {
    "fanin": {"publishers": 4, "subscribers": 1, "messages": 25000, "rate": 0},
    "fanout": {"publishers": 1, "subscribers": 10, "messages": 10000, "rate": 0},
    "latency": {"publishers": 1, "subscribers": 1, "messages": 5000, "rate": 1000},
    "offline": {"publishers": 4, "subscribers": 1, "messages": 10000, "rate": 0},
}


class UsageError(Exception):
    """Bad command line or a refused target host."""


# ------------------------------------------------------------------ pure parts


def check_host(host: str, port: int, allow_remote: bool) -> List[str]:
    """Resolve ``host`` and refuse it unless every address is loopback.

    Returns the resolved addresses.  All addresses must be loopback because
    the socket layer may pick any of them.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(f"cannot resolve {host!r}: {e}") from None
    addrs = sorted({info[4][0] for info in infos})
    remote = [a for a in addrs if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
    if remote and not allow_remote:
        raise UsageError(f"refusing non-loopback broker {host} ({', '.join(remote)}); "
                         "pass --allow-remote if you own it")
    return addrs


def make_payload(run_id: bytes, index: int, seq: int, stamp_ns: int, size: int) -> bytes:
    """The payload every benchmark message carries (zero padded to ``size``)."""
    head = PAYLOAD_HEADER.pack(run_id, index, seq, stamp_ns)
    return head + bytes(max(0, size - len(head)))


def read_payload(payload: bytes) -> Tuple[bytes, int, int, int]:
    """``(run_id, publisher index, sequence, timestamp ns)`` of a payload."""
    return PAYLOAD_HEADER.unpack_from(payload, 0)


def percentiles(samples_ns: Sequence[int]) -> Dict[str, float]:
    """Nearest-rank p50/p90/p99/p99.9, min, max and mean, in milliseconds."""
    if not samples_ns:
        return {"count": 0}
    ordered = sorted(samples_ns)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100.0 * n) - 1)] / 1e6

    return {"count": n, "min": ordered[0] / 1e6, "p50": rank(50), "p90": rank(90),
            "p99": rank(99), "p99_9": rank(99.9), "max": ordered[-1] / 1e6,
            "mean": sum(ordered) / n / 1e6}


@attrs.frozen(slots=True)
class SubTally:
    """What one subscriber saw: a counter byte per (publisher, sequence)."""

    seen: Mapping[int, bytes]
    received: int
    duplicates: int
    duplicates_flagged: int
    foreign: int
    out_of_range: int


@attrs.frozen(slots=True)
class Integrity:
    """Loss and duplication over all subscribers of one run."""

    expected: int
    received: int
    unique: int
    lost: int
    lost_acked: int
    duplicates: int
    duplicates_flagged: int
    illegal_duplicates: int
    phantom: int
    foreign: int

    def failed(self, qos: int) -> bool:
        """QoS 0 may lose messages, QoS >= 1 may not; no QoS allows an
        illegal duplicate or a message that was never published."""
        return bool(self.illegal_duplicates or self.phantom or (qos and self.lost))


def tally(qos: int, published: Mapping[int, int], acked: Mapping[int, bytes],
          subs: Sequence[SubTally]) -> Integrity:
    """Compare what publishers sent with what every subscriber received.

    ``published[i]`` is how many sequence numbers publisher ``i`` sent
    (``0..n-1``); ``acked[i]`` has a non-zero byte per sequence the broker
    acknowledged (empty for QoS 0).  Duplicates are legal only for QoS 1 and
    only when the repeated delivery had DUP set (a broker re-send, section
    4.3.2); QoS 0 is at most once and QoS 2 exactly once.
    """
    expected = lost = lost_acked = phantom = unique = 0
    received = dups = flagged = foreign = 0
    for sub in subs:
        received += sub.received
        dups += sub.duplicates
        flagged += sub.duplicates_flagged
        foreign += sub.foreign
        phantom += sub.out_of_range
        for index, count in published.items():
            expected += count
            seen = sub.seen.get(index, b"")
            head = bytes(seen[:count]).ljust(count, b"\0")
            missing = head.count(0)
            lost += missing
            unique += count - missing
            tail = bytes(seen[count:])  # delivered but never published
            phantom += len(tail) - tail.count(0)
            ack = acked.get(index)
            if ack and missing:
                pos = head.find(0)
                while pos >= 0:
                    if pos < len(ack) and ack[pos]:
                        lost_acked += 1
                    pos = head.find(0, pos + 1)
        for index, seen in sub.seen.items():
            if index not in published:
                phantom += len(seen) - bytes(seen).count(0)
    illegal = dups - flagged if qos == 1 else dups
    return Integrity(expected=expected, received=received, unique=unique, lost=lost,
                     lost_acked=lost_acked, duplicates=dups, duplicates_flagged=flagged,
                     illegal_duplicates=illegal, phantom=phantom, foreign=foreign)


def _pack_bytes(data: bytes) -> str:
    return base64.b64encode(zlib.compress(bytes(data), 1)).decode("ascii")


def _unpack_bytes(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text))


def topic_for(scenario: str, index: int) -> str:
    """Fan-in gives each publisher its own topic under one wildcard filter."""
    return f"bench/{index}/x" if scenario in ("fanin", "offline") else "bench/fanout/x"


def filter_for(scenario: str) -> str:
    return "bench/+/x" if scenario in ("fanin", "offline") else "bench/fanout/x"


def spread(count: int, procs: int) -> List[List[int]]:
    """Round-robin indices ``0..count-1`` over at most ``procs`` workers."""
    procs = max(1, min(procs, count))
    return [list(range(w, count, procs)) for w in range(procs)]


# ------------------------------------------------------------- connections


class ConnectionFailed(Exception):
    """The broker refused or dropped a connection during setup."""


def _read_frame_blocking(sock: socket.socket, buf: bytearray) -> Tuple[int, bytes]:
    """One frame from a blocking socket; extra bytes stay in ``buf``."""
    while True:
        frames, nxt = mqttwire.split_frames(buf)
        if frames:
            first, start, end = frames[0]
            body = bytes(buf[start:end])
            del buf[:end]
            return first, body
        data = sock.recv(65536)
        if not data:
            raise ConnectionFailed("broker closed the connection during setup")
        buf += data


def open_client(host: str, port: int, client_id: str, keepalive: int, timeout: float,
                subscription: Optional[Tuple[str, int]] = None,
                protocol: int = 4, clean_session: bool = True) -> Tuple[socket.socket, bytes]:
    """Connect (and subscribe) with blocking calls, then go non-blocking.

    Returns the socket and any bytes read past the CONNACK/SUBACK.
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(mqttwire.connect(client_id, clean_session=clean_session,
                                      keepalive=keepalive, protocol=protocol))
        buf = bytearray()
        first, body = _read_frame_blocking(sock, buf)
        if first >> 4 != mqttwire.CONNACK:
            raise ConnectionFailed(f"expected CONNACK, got packet type {first >> 4}")
        _, code = mqttwire.parse_connack(body, 0, len(body), protocol)
        if code:
            raise ConnectionFailed(f"CONNACK refused {client_id} with return code {code}")
        if subscription is not None:
            sock.sendall(mqttwire.subscribe(1, [subscription], protocol))
            first, body = _read_frame_blocking(sock, buf)
            if first >> 4 != mqttwire.SUBACK:
                raise ConnectionFailed(f"expected SUBACK, got packet type {first >> 4}")
            pid, codes = mqttwire.parse_suback(body, 0, len(body), protocol)
            if pid != 1 or codes[0] == mqttwire.SUBACK_FAILURE:
                raise ConnectionFailed(f"SUBACK refused {subscription[0]!r}: {codes}")
        sock.setblocking(False)
        return sock, bytes(buf)
    except BaseException:
        sock.close()
        raise


class _Conn:
    """Shared socket plumbing: an output buffer and a failure note."""

    __slots__ = ("sock", "out", "inbuf", "error", "mask", "name")

    def __init__(self, sock: socket.socket, leftover: bytes, name: str) -> None:
        self.sock = sock
        self.out = bytearray()
        self.inbuf = leftover
        self.error: Optional[str] = None
        self.mask = 0
        self.name = name

    def flush(self) -> bool:
        """Write what the kernel takes; True when nothing is left."""
        out = self.out
        if out and self.error is None:
            try:
                n = self.sock.send(out)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as e:
                self.error = f"{self.name}: send failed: {e}"
                return True
            del out[:n]
        return not out

    def read(self) -> Optional[bytes]:
        """Return buffered + new bytes, or None when nothing could be read."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            self.error = f"{self.name}: recv failed: {e}"
            return None
        if not data:
            self.error = f"{self.name}: broker closed the connection"
            return None
        if self.inbuf:
            data = self.inbuf + data
        return data


class Publisher(_Conn):
    """One publishing connection: stamps templates, tracks the ack window."""

    __slots__ = ("index", "qos", "total", "window", "rate", "template", "msg_len",
                 "seq_off", "pid_off", "seq", "next_pid", "inflight", "inflight_count",
                 "released", "acked", "acked_count", "bad_acks", "t0", "first_send",
                 "last_send", "last_ack", "v5")

    def __init__(self, sock: socket.socket, leftover: bytes, index: int, topic: str,
                 qos: int, total: int, window: int, payload: int, run_id: bytes,
                 rate: float, protocol: int = 4, properties: bool = False) -> None:
        super().__init__(sock, leftover, f"publisher {index}")
        self.index, self.qos, self.total, self.window, self.rate = index, qos, total, window, rate
        self.v5 = protocol == 5
        # Level 5: a property block between the packet id and the payload.
        props = (BENCH_PROPERTIES if properties else mqttwire.NO_PROPERTIES) if self.v5 else b""
        head = mqttwire.publish_header(topic, len(props) + payload, qos=qos)
        self.pid_off = len(head)
        pid_room = b"\0\0" if qos else b""
        body = make_payload(run_id, index, 0, 0, payload)
        self.template = bytearray(head + pid_room + props + body)
        self.msg_len = len(self.template)
        # After run id and index.
        self.seq_off = len(head) + len(pid_room) + len(props) + 8
        self.seq = 0
        self.next_pid = 1
        self.inflight = [-1] * 65536 if qos else []
        self.inflight_count = 0
        self.released = bytearray(65536) if qos == 2 else bytearray()
        self.acked = bytearray(total) if qos else bytearray()
        self.acked_count = 0
        self.bad_acks = 0
        self.t0 = 0.0
        self.first_send = 0.0
        self.last_send = 0.0
        self.last_ack = 0.0

    def flush(self) -> bool:
        """As :meth:`_Conn.flush`; "sent" means handed to the kernel, so the
        publish rate ends when the last byte of a batch was accepted."""
        had = bool(self.out)
        empty = _Conn.flush(self)
        if had and empty:
            self.last_send = time.time()
        return empty

    def due(self, now: float) -> int:
        """How many messages may be stamped right now."""
        n = self.total - self.seq
        if self.qos:
            n = min(n, self.window - self.inflight_count)
        if self.rate:
            n = min(n, int((now - self.t0) * self.rate) + 1 - self.seq)
        return n

    def next_due_time(self) -> float:
        return self.t0 + self.seq / self.rate if self.rate else 0.0

    def fill(self, now: float) -> int:
        """Stamp up to BATCH messages into the output buffer."""
        if len(self.out) >= HIGH_WATER or self.error is not None:
            return 0
        n = min(self.due(now), BATCH)
        if n <= 0:
            return 0
        size = self.msg_len
        buf = self.template * n
        stamp = time.monotonic_ns()
        seq = self.seq
        pack_seq = _SEQ_TS.pack_into
        off = self.seq_off
        if self.qos:
            inflight = self.inflight
            pid = self.next_pid
            pack_pid = _PID.pack_into
            poff = self.pid_off
            for _ in range(n):
                while inflight[pid] >= 0:  # only after out-of-order acks
                    pid = pid % 65535 + 1
                inflight[pid] = seq
                pack_pid(buf, poff, pid)
                pack_seq(buf, off, seq, stamp)
                seq += 1
                pid = pid % 65535 + 1
                poff += size
                off += size
            self.next_pid = pid
            self.inflight_count += n
        else:
            for _ in range(n):
                pack_seq(buf, off, seq, stamp)
                seq += 1
                off += size
        self.seq = seq
        self.out += buf
        if not self.first_send:
            self.first_send = time.time()
        return n

    def on_readable(self) -> None:
        data = self.read()
        if data is None:
            return
        frames, nxt = mqttwire.split_frames(data)
        self.inbuf = data[nxt:]
        inflight, acked = self.inflight, self.acked
        for first, start, end in frames:
            kind = first >> 4
            if (kind == mqttwire.PUBACK and self.qos == 1
                    or kind == mqttwire.PUBCOMP and self.qos == 2):
                pid = data[start] << 8 | data[start + 1]
                # Level 5: a reason code may follow; 0x80 and above is a refusal.
                seq = inflight[pid] if end - start == 2 or (
                    self.v5 and end - start > 2 and data[start + 2] < 0x80) else -1
                if seq < 0 or (self.qos == 2 and not self.released[pid]):
                    self.bad_acks += 1
                    continue
                inflight[pid] = -1
                if self.qos == 2:
                    self.released[pid] = 0
                acked[seq] = 1
                self.acked_count += 1
                self.inflight_count -= 1
            elif kind == mqttwire.PUBREC and self.qos == 2:
                pid = data[start] << 8 | data[start + 1]
                if inflight[pid] < 0 or (end - start > 2 and data[start + 2] >= 0x80):
                    self.bad_acks += 1
                    continue
                self.released[pid] = 1
                self.out += mqttwire.pubrel(pid)
            elif kind == mqttwire.PINGRESP:
                pass
            else:
                self.error = f"{self.name}: unexpected packet type {kind}"
                return
        if frames and self.qos:
            self.last_ack = time.time()

    @property
    def done(self) -> bool:
        return self.error is not None or (
            self.seq >= self.total and not self.out and self.inflight_count == 0)

    def result(self) -> Dict[str, Any]:
        return {"index": self.index, "published": self.seq, "acked": self.acked_count,
                "acked_map": _pack_bytes(self.acked[:self.seq]) if self.qos else "",
                "bad_acks": self.bad_acks, "unacked": self.inflight_count,
                "first_send": self.first_send, "last_send": self.last_send,
                "last_ack": self.last_ack}


class Subscriber(_Conn):
    """One subscribing connection: acks deliveries, counts every sequence."""

    __slots__ = ("index", "qos", "run_id", "seen", "received", "unique", "duplicates",
                 "duplicates_flagged", "foreign", "out_of_range", "pending_rel",
                 "latencies", "first_recv", "last_recv", "last_data", "v5")

    def __init__(self, sock: socket.socket, leftover: bytes, index: int, qos: int,
                 run_id: bytes, publishers: int, total: int, latency: bool,
                 protocol: int = 4) -> None:
        super().__init__(sock, leftover, f"subscriber {index}")
        self.index, self.qos, self.run_id = index, qos, run_id
        self.v5 = protocol == 5
        self.seen = [bytearray(total) for _ in range(publishers)]
        self.received = self.unique = self.duplicates = self.duplicates_flagged = 0
        self.foreign = self.out_of_range = 0
        self.pending_rel: set = set()
        self.latencies: Optional[List[int]] = [] if latency else None
        self.first_recv = self.last_recv = 0.0
        self.last_data = time.monotonic()

    def on_readable(self) -> None:
        data = self.read()
        if data is not None:
            self.consume(data)

    def consume(self, data: bytes) -> None:
        """Account for every frame in ``data`` (buffered + new bytes)."""
        frames, nxt = mqttwire.split_frames(data)
        self.inbuf = data[nxt:]
        seen, run_id, out = self.seen, self.run_id, self.out
        v5 = self.v5
        npubs = len(seen)
        unpack = PAYLOAD_HEADER.unpack_from
        lat = self.latencies
        now_ns = time.monotonic_ns() if lat is not None else 0
        received = unique = dups = flagged = foreign = oor = 0
        for first, start, end in frames:
            kind = first >> 4
            if kind == mqttwire.PUBLISH:
                qos = (first >> 1) & 3
                pos = start + 2 + (data[start] << 8 | data[start + 1])
                if qos:
                    pid = data[pos] << 8 | data[pos + 1]
                    pos += 2
                    if qos == 1:
                        out += _PUBACKS[pid]
                    else:
                        out += mqttwire.pubrec(pid)
                        if pid in self.pending_rel:
                            continue  # re-sent before our PUBREC arrived: one message
                        self.pending_rel.add(pid)
                if v5:
                    # The property block: mostly one length byte.
                    length = data[pos]
                    pos = pos + 1 + length if length < 0x80 else \
                        mqttwire.skip_properties(data, pos, end)
                if end - pos < MIN_PAYLOAD:
                    foreign += 1
                    continue
                run, idx, seq, stamp = unpack(data, pos)
                if run != run_id:
                    foreign += 1
                    continue
                received += 1
                if idx >= npubs or seq >= len(seen[idx]):
                    oor += 1
                    continue
                row = seen[idx]
                count = row[seq]
                if count:
                    dups += 1
                    if first & 0x08:
                        flagged += 1
                    if count < 255:
                        row[seq] = count + 1
                else:
                    row[seq] = 1
                    unique += 1
                    if lat is not None:
                        lat.append(now_ns - stamp)
            elif kind == mqttwire.PUBREL and self.qos == 2:
                pid = data[start] << 8 | data[start + 1]
                self.pending_rel.discard(pid)
                out += mqttwire.pubcomp(pid)
            elif kind == mqttwire.PINGRESP:
                pass
            else:
                self.error = f"{self.name}: unexpected packet type {kind}"
                return
        if frames:
            wall = time.time()
            if not self.first_recv:
                self.first_recv = wall
            self.last_recv = wall
            self.last_data = time.monotonic()
        self.received += received
        self.unique += unique
        self.duplicates += dups
        self.duplicates_flagged += flagged
        self.foreign += foreign
        self.out_of_range += oor

    def result(self) -> Dict[str, Any]:
        res: Dict[str, Any] = {
            "index": self.index, "received": self.received, "unique": self.unique,
            "duplicates": self.duplicates, "duplicates_flagged": self.duplicates_flagged,
            "foreign": self.foreign, "out_of_range": self.out_of_range,
            "first_recv": self.first_recv, "last_recv": self.last_recv,
            "seen": {str(i): _pack_bytes(row) for i, row in enumerate(self.seen)}}
        if self.latencies is not None:
            res["latency_ms"] = percentiles(self.latencies)
        return res


_PUBACKS = [b"\x40\x02" + i.to_bytes(2, "big") for i in range(65536)]


# ------------------------------------------------------------------ worker


def _send(ctrl: Any, message: Dict[str, Any]) -> None:
    ctrl.send_bytes(json.dumps(message).encode("utf-8"))


def _recv(ctrl: Any) -> Dict[str, Any]:
    return json.loads(ctrl.recv_bytes().decode("utf-8"))


def _close_all(conns: Sequence[_Conn], budget: float) -> None:
    """DISCONNECT every healthy connection and wait (bounded) for the close.

    Waiting for the broker's EOF instead of closing at once avoids a reset
    that could discard bytes the broker has not read yet.
    """
    sel = selectors.DefaultSelector()
    try:
        for c in conns:
            if c.error is None:
                try:
                    c.sock.setblocking(True)
                    c.sock.settimeout(budget)
                    c.sock.sendall(bytes(c.out) + mqttwire.disconnect())
                    c.sock.shutdown(socket.SHUT_WR)
                    c.sock.setblocking(False)
                    sel.register(c.sock, selectors.EVENT_READ, c)
                except OSError:
                    pass
        end = time.monotonic() + budget
        while sel.get_map() and time.monotonic() < end:
            for key, _ in sel.select(end - time.monotonic()):
                try:
                    data = key.fileobj.recv(RECV_SIZE)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
    finally:
        sel.close()
        for c in conns:
            c.sock.close()


def _run(spec: Dict[str, Any], ctrl: Any) -> Dict[str, Any]:
    """Body of one worker process (see :func:`_worker_entry`)."""
    run_id = bytes.fromhex(spec["run_id"])
    host, port, qos = spec["host"], spec["port"], spec["qos"]
    keepalive = spec["keepalive"]
    scenario = spec["scenario"]
    protocol = spec.get("protocol", 4)
    subs: List[Subscriber] = []
    pubs: List[Publisher] = []
    errors: List[str] = []
    offline = scenario == "offline"

    def subscriber(i: int, subscription: Optional[Tuple[str, int]]) -> Subscriber:
        sock, left = open_client(spec.get("sub_host") or host, spec.get("sub_port") or port,
                                 f"vmqtwb-{spec['run_id']}-s{i}", keepalive,
                                 spec["setup_timeout"], subscription, protocol,
                                 clean_session=not offline)
        sub = Subscriber(sock, b"", i, qos, run_id, spec["publishers"], spec["messages"],
                         spec["latency"], protocol)
        if left:  # a persistent session's messages may all come with the CONNACK
            sub.consume(left)
        return sub

    try:
        for i in spec["subs"]:
            subs.append(subscriber(i, (filter_for(scenario), qos)))
        if offline:
            # Subscribed persistent sessions, then gone: the broker keeps
            # what is published for them until they come back.
            _close_all(subs, 2.0)
            subs = []
        for i in spec["pubs"]:
            sock, left = open_client(host, port, f"vmqtwb-{spec['run_id']}-p{i}", keepalive,
                                     spec["setup_timeout"], None, protocol)
            pubs.append(Publisher(sock, left, i, topic_for(scenario, i), qos, spec["messages"],
                                  spec["window"], spec["payload"], run_id, spec["rate"],
                                  protocol, spec.get("properties", False)))
    except (OSError, ConnectionFailed, mqttwire.WireError) as e:
        for c in [*subs, *pubs]:
            c.sock.close()
        return {"ev": "result", "errors": [f"setup: {e}"], "pubs": [], "subs": []}
    _send(ctrl, {"ev": "ready"})
    if not ctrl.poll(spec["setup_timeout"] + 30):
        _close_all([*subs, *pubs], 1.0)
        return {"ev": "result", "errors": ["no go from parent"], "pubs": [], "subs": []}
    go = _recv(ctrl)
    if offline and spec["subs"]:
        # Back once every publisher finished (the parent says how many it
        # published), to collect and check what was queued meanwhile.
        if not ctrl.poll(spec["duration"] + 3 * spec["drain"] + 5):
            return {"ev": "result", "errors": ["no drain from parent"], "pubs": [], "subs": []}
        message = _recv(ctrl)
        try:
            subs = [subscriber(i, None) for i in spec["subs"]]
        except (OSError, ConnectionFailed, mqttwire.WireError) as e:
            return {"ev": "result", "errors": [f"reconnect: {e}"], "pubs": [], "subs": []}
        go = dict(go, expected=sum(message["published"].values()) * len(subs))
    timed_out = _loop(spec, ctrl, pubs, subs, go)
    for c in [*pubs, *subs]:
        if c.error:
            errors.append(c.error)
    _close_all([*subs, *pubs], 2.0)
    if offline:
        # End the persistent sessions (a clean session takes each over), or
        # the broker would keep storing later runs' messages for them.
        for i in spec["subs"]:
            try:
                sock, _ = open_client(spec.get("sub_host") or host, spec.get("sub_port") or port,
                                      f"vmqtwb-{spec['run_id']}-s{i}", keepalive,
                                      spec["setup_timeout"], None, protocol)
                _close_all([_Conn(sock, b"", f"subscriber {i}")], 2.0)
            except (OSError, ConnectionFailed, mqttwire.WireError) as e:
                errors.append(f"subscriber {i}: ending the session: {e}")
    return {"ev": "result", "errors": errors, "timed_out": timed_out,
            "pubs": [p.result() for p in pubs], "subs": [s.result() for s in subs]}


def _loop(spec: Dict[str, Any], ctrl: Any, pubs: List[Publisher], subs: List[Subscriber],
          go: Dict[str, Any]) -> bool:
    """Drive all sockets until done; returns True when a time cap ended it."""
    sel = selectors.DefaultSelector()
    start = time.monotonic()
    pub_deadline = start + spec["duration"]
    sub_deadline = pub_deadline + 2 * spec["drain"]
    drain = spec["drain"]
    conns: List[_Conn] = [*pubs, *subs]
    for c in conns:
        c.mask = selectors.EVENT_READ
        sel.register(c.sock, c.mask, c)
    sel.register(ctrl, selectors.EVENT_READ, None)
    for p in pubs:
        p.t0 = start
    for s in subs:
        s.last_data = start
    # Subscribers learn how much was published from the parent, or from the
    # publishers beside them when this worker holds every publisher.
    expected: Optional[int] = go.get("expected")
    local_drain = bool(pubs) and len(pubs) == spec["publishers"]
    drain_started = start if expected is not None else 0.0
    timed_out = False
    try:
        while True:
            now = time.monotonic()
            active = [p for p in pubs if not p.done]
            if active and now >= pub_deadline:
                timed_out = True
                for p in active:
                    p.total = p.seq  # publish nothing more; wait for acks briefly
                if now >= pub_deadline + drain:
                    active = []
            if not active and subs and expected is None and local_drain:
                expected = sum(p.seq for p in pubs) * len(subs)
                drain_started = now
            if subs:
                if expected is not None:
                    if sum(s.unique for s in subs) >= expected:
                        break
                    idle = now - max(max(s.last_data for s in subs), drain_started)
                    if idle >= drain:
                        break
                if now >= sub_deadline:
                    timed_out = True
                    break
                if all(s.error for s in subs):
                    break
            elif not active:
                break
            wait = 0.05
            for p in active:
                p.fill(now)
            for c in conns:
                if c.out and not c.flush():
                    want = selectors.EVENT_READ | selectors.EVENT_WRITE
                else:
                    want = selectors.EVENT_READ
                if c.error is not None:
                    if c.mask:
                        sel.unregister(c.sock)
                        c.mask = 0
                    continue
                if want != c.mask:
                    sel.modify(c.sock, want, c)
                    c.mask = want
                if isinstance(c, Publisher) and not c.out and not c.done:
                    if c.due(now) > 0:
                        wait = 0.0
                    elif c.rate and c.seq < c.total:
                        wait = min(wait, max(0.0, c.next_due_time() - now))
            for key, mask in sel.select(wait):
                conn = key.data
                if conn is None:
                    message = _recv(ctrl)
                    if message.get("cmd") == "drain":
                        expected = sum(message["published"].values()) * len(subs)
                        drain_started = time.monotonic()
                    elif message.get("cmd") == "stop":
                        return True
                    continue
                if mask & selectors.EVENT_READ:
                    conn.on_readable()
                if mask & selectors.EVENT_WRITE:
                    conn.flush()
    finally:
        sel.close()
    return timed_out


def _worker_entry(spec_json: str, ctrl: Any) -> None:
    """Process target: run, then always answer the parent with a result."""
    # Ctrl-C is the parent's to handle: it terminates workers in its cleanup.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = _run(json.loads(spec_json), ctrl)
    except Exception:  # report instead of dying silently
        result = {"ev": "result", "errors": [traceback.format_exc()], "pubs": [], "subs": []}
    try:
        _send(ctrl, result)
    except OSError:
        pass


# ------------------------------------------------------------------ parent


@attrs.frozen(slots=True)
class Settings:
    """A validated command line."""

    scenario: str
    host: str
    port: int
    publishers: int
    subscribers: int
    messages: int
    qos: int
    payload: int
    duration: float
    rate: float
    window: int
    procs: int
    sub_procs: int
    drain: float
    setup_timeout: float
    json: bool
    allow_remote: bool
    #: Subscribers connect here instead (another node of a cluster).
    sub_host: Optional[str] = None
    sub_port: Optional[int] = None
    #: MQTT protocol level of every client: 4 (3.1.1) or 5.
    protocol: int = 4
    #: Level 5: every PUBLISH carries BENCH_PROPERTIES.
    properties: bool = False


def parse_args(argv: Optional[Sequence[str]] = None) -> Settings:
    cpus = os.cpu_count() or 1
    ap = argparse.ArgumentParser(
        prog="loadgen.py",
        description="MQTT 3.1.1 / 5.0 load generator (loopback only by default)")
    ap.add_argument("scenario", choices=SCENARIOS)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--sub-host", help="subscribers connect here (another cluster node); "
                    "default --host")
    ap.add_argument("--sub-port", type=int, help="subscribers' port; default --port")
    ap.add_argument("--publishers", type=int, help="publisher connections")
    ap.add_argument("--subscribers", type=int, help="subscriber connections")
    ap.add_argument("--messages", type=int, help="messages per publisher")
    ap.add_argument("--qos", type=int, default=0, choices=(0, 1, 2))
    ap.add_argument("--payload", type=int, default=64,
                    help=f"payload bytes (at least {MIN_PAYLOAD})")
    ap.add_argument("--duration", type=float, default=30.0, help="cap on publishing, seconds")
    ap.add_argument("--rate", type=float, help="messages/s per publisher, 0 = unlimited")
    ap.add_argument("--window", type=int, default=100, help="unacked messages per connection")
    ap.add_argument("--procs", type=int, default=cpus, help="publisher processes (max)")
    ap.add_argument("--sub-procs", type=int, default=cpus, help="subscriber processes (max)")
    ap.add_argument("--drain", type=float, default=2.0,
                    help="stop after this many idle seconds once publishing ended")
    ap.add_argument("--setup-timeout", type=float, default=10.0)
    ap.add_argument("--protocol", type=int, default=4, choices=mqttwire.PROTOCOLS,
                    help="MQTT protocol level: 4 (3.1.1) or 5 (5.0)")
    ap.add_argument("--properties", action="store_true",
                    help="level 5: a content type, message expiry and user property "
                    "in every PUBLISH")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--allow-remote", action="store_true",
                    help="allow a broker that is not on a loopback address")
    ns = ap.parse_args(argv)
    d = _DEFAULTS[ns.scenario]
    pick = lambda value, key: d[key] if value is None else value  # noqa: E731
    settings = Settings(
        scenario=ns.scenario, host=ns.host, port=ns.port,
        sub_host=ns.sub_host, sub_port=ns.sub_port,
        publishers=pick(ns.publishers, "publishers"),
        subscribers=pick(ns.subscribers, "subscribers"),
        messages=pick(ns.messages, "messages"), qos=ns.qos, payload=ns.payload,
        duration=ns.duration, rate=pick(ns.rate, "rate"), window=ns.window, procs=ns.procs,
        sub_procs=ns.sub_procs, drain=ns.drain, setup_timeout=ns.setup_timeout,
        json=ns.json, allow_remote=ns.allow_remote, protocol=ns.protocol,
        properties=ns.properties)
    problems = []
    if settings.scenario == "latency" and (settings.publishers, settings.subscribers) != (1, 1):
        problems.append("latency runs exactly 1 publisher and 1 subscriber in one process")
    if settings.publishers < 1 or settings.subscribers < 1 or settings.messages < 1:
        problems.append("--publishers, --subscribers and --messages must be >= 1")
    if settings.payload < MIN_PAYLOAD:
        problems.append(f"--payload must be >= {MIN_PAYLOAD}")
    if not 1 <= settings.window <= 65535:
        problems.append("--window must be in 1..65535")
    if not 0 < settings.duration <= 3600 or settings.drain <= 0 or settings.rate < 0:
        problems.append("--duration in (0, 3600], --drain > 0, --rate >= 0")
    if settings.procs < 1 or settings.sub_procs < 1:
        problems.append("--procs and --sub-procs must be >= 1")
    if not 0 < settings.port < 65536:
        problems.append("--port out of range")
    if settings.properties and settings.protocol != 5:
        problems.append("--properties needs --protocol 5")
    if problems:
        ap.error("; ".join(problems))
    return settings


def plan(settings: Settings, run_id: str) -> List[Dict[str, Any]]:
    """Worker specs: subscriber workers first, then publisher workers."""
    base = {"run_id": run_id, "host": settings.host, "port": settings.port,
            "sub_host": settings.sub_host, "sub_port": settings.sub_port,
            "qos": settings.qos, "scenario": settings.scenario,
            "publishers": settings.publishers, "messages": settings.messages,
            "payload": settings.payload, "window": settings.window, "rate": settings.rate,
            "duration": settings.duration, "drain": settings.drain,
            "setup_timeout": settings.setup_timeout, "latency": False,
            "protocol": settings.protocol, "properties": settings.properties,
            "keepalive": min(65535, int(settings.duration + 3 * settings.drain) + 60)}
    if settings.scenario == "latency":
        return [dict(base, subs=[0], pubs=[0], latency=True)]
    specs = [dict(base, subs=group, pubs=[])
             for group in spread(settings.subscribers, settings.sub_procs)]
    specs += [dict(base, subs=[], pubs=group)
              for group in spread(settings.publishers, settings.procs)]
    return specs


def run(settings: Settings) -> Dict[str, Any]:
    """Run one scenario in worker processes and return the report dict."""
    ctx = multiprocessing.get_context("spawn")
    run_id = os.urandom(4).hex()
    specs = plan(settings, run_id)
    workers: List[Tuple[Dict[str, Any], Any, Any]] = []
    results: Dict[int, Dict[str, Any]] = {}
    errors: List[str] = []
    hard_end = 0.0
    try:
        # Subscribers must be subscribed before any publisher starts.
        sub_specs = [s for s in specs if s["subs"]]
        pub_only = [s for s in specs if not s["subs"]]
        for group in (sub_specs, pub_only):
            started = []
            for spec in group:
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker_entry, args=(json.dumps(spec), child),
                                   daemon=True)
                proc.start()
                child.close()
                workers.append((spec, proc, parent))
                started.append(len(workers) - 1)
            deadline = time.monotonic() + settings.setup_timeout + 20
            for w in started:
                spec, proc, parent = workers[w]
                if not parent.poll(max(0.0, deadline - time.monotonic())):
                    raise ConnectionFailed("worker did not get ready in time")
                message = _recv(parent)
                if message.get("ev") != "ready":
                    results[w] = message
                    raise ConnectionFailed("; ".join(message.get("errors", ["setup failed"])))
        go_wall = time.time()
        for _, _, parent in workers:
            _send(parent, {"cmd": "go", "t": go_wall})
        hard_end = time.monotonic() + settings.duration + 3 * settings.drain + 10
        published: Dict[str, int] = {}
        drained = False
        while len(results) < len(workers):
            pending = {workers[w][2]: w for w in range(len(workers)) if w not in results}
            remaining = hard_end - time.monotonic()
            if remaining <= 0:
                errors.append("workers overran the time cap and were stopped")
                break
            for parent in multiprocessing.connection.wait(list(pending), remaining):
                w = pending[parent]
                try:
                    results[w] = _recv(parent)
                except (EOFError, OSError):
                    results[w] = {"errors": [f"worker {w} died"], "pubs": [], "subs": []}
                for p in results[w].get("pubs", []):
                    published[str(p["index"])] = p["published"]
            if not drained and all(w in results for w, (s, _, _) in enumerate(workers)
                                   if not s["subs"]):
                drained = True
                for w, (spec, _, parent) in enumerate(workers):
                    if w not in results and not spec["pubs"]:
                        _send(parent, {"cmd": "drain", "published": published})
    except ConnectionFailed as e:
        errors.append(str(e))
    finally:
        for _, proc, parent in workers:
            proc.join(timeout=max(0.5, min(5.0, hard_end - time.monotonic())) if hard_end else 2.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
            parent.close()
    return summarize(settings, list(results.values()), errors)


def summarize(settings: Settings, results: Sequence[Mapping[str, Any]],
              errors: Sequence[str]) -> Dict[str, Any]:
    """Fold worker results into the report (rates, integrity, latency)."""
    errors = list(errors)
    pubs = [p for r in results for p in r.get("pubs", [])]
    subs = [s for r in results for s in r.get("subs", [])]
    for r in results:
        errors.extend(r.get("errors", []))
    timed_out = any(r.get("timed_out") for r in results)
    published = {p["index"]: p["published"] for p in pubs}
    acked = {p["index"]: _unpack_bytes(p["acked_map"]) for p in pubs if p["acked_map"]}
    tallies = [SubTally(seen={int(k): _unpack_bytes(v) for k, v in s["seen"].items()},
                        received=s["received"], duplicates=s["duplicates"],
                        duplicates_flagged=s["duplicates_flagged"], foreign=s["foreign"],
                        out_of_range=s["out_of_range"]) for s in subs]
    integrity = tally(settings.qos, published, acked, tallies)
    if len(pubs) < settings.publishers or len(subs) < settings.subscribers:
        errors.append("not every connection reported")
    total_pub = sum(published.values())
    total_acked = sum(p["acked"] for p in pubs)
    bad_acks = sum(p["bad_acks"] for p in pubs)
    if bad_acks:
        errors.append(f"{bad_acks} acknowledgements for packet ids not in flight")
    t_first = min((p["first_send"] for p in pubs if p["first_send"]), default=0.0)

    def rate(count: int, ends: List[float]) -> Optional[float]:
        end = max((e for e in ends if e), default=0.0)
        if not count or not t_first or end <= t_first:
            return None
        return count / (end - t_first)

    rates = {"published_per_s": rate(total_pub, [p["last_send"] for p in pubs]),
             "received_per_s": rate(integrity.received, [s["last_recv"] for s in subs])}
    if settings.qos:
        rates["acked_per_s"] = rate(total_acked, [p["last_ack"] for p in pubs])
    if settings.scenario == "fanout":
        rates["deliveries_per_s"] = rates["received_per_s"]
    report: Dict[str, Any] = {
        "scenario": settings.scenario, "broker": f"{settings.host}:{settings.port}",
        "qos": settings.qos, "protocol": settings.protocol,
        "properties": settings.properties, "publishers": settings.publishers,
        "subscribers": settings.subscribers, "messages_per_publisher": settings.messages,
        "payload_bytes": settings.payload, "window": settings.window,
        "rate_per_publisher": settings.rate or None,
        "published": total_pub, "acked": total_acked if settings.qos else None,
        "rates": rates, "integrity": attrs.asdict(integrity),
        "timed_out": timed_out, "errors": errors}
    if settings.scenario == "latency":
        lat = [s["latency_ms"] for s in subs if "latency_ms" in s]
        report["latency_ms"] = lat[0] if lat else {"count": 0}
    if errors:
        report["exit"] = EXIT_ERROR
    elif integrity.failed(settings.qos):
        report["exit"] = EXIT_INTEGRITY
    else:
        report["exit"] = EXIT_OK
    report["ok"] = report["exit"] == EXIT_OK
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """The human summary."""
    def num(x: Optional[float]) -> str:
        return "-" if x is None else f"{x:,.0f}"

    ig = report["integrity"]
    rates = report["rates"]
    lines = [
        f"{report['scenario']} against {report['broker']}: MQTT "
        f"{'5.0' if report.get('protocol') == 5 else '3.1.1'}"
        f"{' with properties' if report.get('properties') else ''}, qos {report['qos']}, "
        f"{report['publishers']} publisher(s) -> {report['subscribers']} subscriber(s), "
        f"{report['messages_per_publisher']} msgs/publisher, {report['payload_bytes']} B payload",
        f"  published {report['published']:>10,}   {num(rates['published_per_s'])} msg/s",
    ]
    if report["qos"]:
        lines.append(f"  acked     {report['acked']:>10,}   {num(rates.get('acked_per_s'))} msg/s")
    label = "delivered" if report["scenario"] == "fanout" else "received "
    lines.append(f"  {label} {ig['received']:>10,}   {num(rates['received_per_s'])} msg/s"
                 f"   (expected {ig['expected']:,})")
    lost_pct = 100.0 * ig["lost"] / ig["expected"] if ig["expected"] else 0.0
    lines.append(f"  lost {ig['lost']:,} ({lost_pct:.2f}%, {ig['lost_acked']:,} of them acked)  "
                 f"duplicates {ig['duplicates']:,} (DUP-flagged {ig['duplicates_flagged']:,}, "
                 f"illegal {ig['illegal_duplicates']:,})  phantom {ig['phantom']:,}  "
                 f"foreign {ig['foreign']:,}")
    if "latency_ms" in report:
        lat = report["latency_ms"]
        if lat.get("count"):
            lines.append(f"  latency ms: p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  "
                         f"p99 {lat['p99']:.3f}  max {lat['max']:.3f}  "
                         f"(n={lat['count']:,}, mean {lat['mean']:.3f})")
    if report["timed_out"]:
        lines.append("  stopped by the --duration cap")
    for err in report["errors"]:
        lines.append(f"  error: {err.strip()}")
    verdict = {EXIT_OK: "OK", EXIT_INTEGRITY: "FAILED (integrity)", EXIT_ERROR: "FAILED (errors)"}
    lines.append(f"  result: {verdict[report['exit']]}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    settings = parse_args(argv)
    try:
        check_host(settings.host, settings.port, settings.allow_remote)
        if settings.sub_host is not None:
            check_host(settings.sub_host, settings.sub_port or settings.port,
                       settings.allow_remote)
    except UsageError as e:
        sys.stderr.write(f"loadgen.py: error: {e}\n")
        return EXIT_USAGE
    try:
        report = run(settings)
    except KeyboardInterrupt:
        sys.stderr.write("loadgen.py: interrupted\n")
        return 130
    if settings.json:
        sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
    else:
        sys.stdout.write(format_report(report) + "\n")
    return int(report["exit"])


if __name__ == "__main__":
    sys.exit(main())
