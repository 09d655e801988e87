"""
Smoke tests for the load generator in ``benchmarks/``.

Three layers: the hand-written client framing (``benchmarks/mqttwire.py``)
checked against byte literals from the spec and round-tripped; the
generator's connection classes and loss/duplicate accounting driven over a
``socketpair`` (no broker); and a few tiny end-to-end runs of
``loadgen.py`` against a real broker started by the ``broker`` fixture.

The fixture runs vmqtw (``python -m twisted vmqtw --config ...``).  Set
``VMQTW_BENCH_BROKER=mosquitto`` to run the same end-to-end tests against
Debian's mosquitto instead, which is how the tool itself was validated.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import loadgen, mqttwire

REPO = Path(__file__).resolve().parent.parent
LOADGEN = REPO / "benchmarks" / "loadgen.py"
RUN_ID = b"\x01\x02\x03\x04"


# ------------------------------------------------------------------ framing


@pytest.mark.parametrize("value, encoded", [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
    (16384, b"\x80\x80\x01"), (2097151, b"\xff\xff\x7f"),
    (2097152, b"\x80\x80\x80\x01"), (268435455, b"\xff\xff\xff\x7f"),
])
def test_remaining_length_boundaries(value: int, encoded: bytes) -> None:
    """The boundary values of the Remaining Length table in section 2.2.3."""
    assert mqttwire.encode_remaining_length(value) == encoded
    assert mqttwire.decode_remaining_length(b"\x99" + encoded, 1) == (value, 1 + len(encoded))


@given(st.integers(0, mqttwire.MAX_REMAINING_LENGTH))
@settings(max_examples=200, deadline=None)
def test_remaining_length_round_trip(value: int) -> None:
    """Any length 0..268,435,455 survives encode/decode (section 2.2.3)."""
    encoded = mqttwire.encode_remaining_length(value)
    assert mqttwire.decode_remaining_length(encoded) == (value, len(encoded))
    assert mqttwire.decode_remaining_length(encoded[:-1]) is None  # needs more bytes


def test_remaining_length_limits() -> None:
    """A fifth length byte and values past 268,435,455 are malformed (section 2.2.3)."""
    with pytest.raises(mqttwire.WireError):
        mqttwire.decode_remaining_length(b"\xff\xff\xff\xff\x01")
    with pytest.raises(mqttwire.WireError):
        mqttwire.encode_remaining_length(268435456)


def test_connect_bytes() -> None:
    """CONNECT for "MQTT" level 4, clean session, keepalive 60, client id
    "ab": reserved flag bit 0 is zero [MQTT-3.1.2-3], the client id is the
    first payload field [MQTT-3.1.3-1]."""
    assert mqttwire.connect("ab", keepalive=60) == (
        b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02ab")
    with_user = mqttwire.connect("c", clean_session=False, keepalive=0,
                                 username="u", password=b"p")
    assert with_user == b"\x10\x13\x00\x04MQTT\x04\xc0\x00\x00\x00\x01c\x00\x01u\x00\x01p"
    with pytest.raises(mqttwire.WireError):
        mqttwire.connect("c", password=b"p")  # [MQTT-3.1.2-22]


def test_subscribe_and_acks_fixed_headers() -> None:
    """SUBSCRIBE and PUBREL carry flags 0b0010 [MQTT-3.8.1-1] [MQTT-3.6.1-1];
    PUBACK/PUBREC/PUBCOMP carry 0; DISCONNECT and PINGREQ are two bytes
    [MQTT-3.14.1-1]."""
    assert mqttwire.subscribe(10, [("a/+", 1)]) == b"\x82\x08\x00\x0a\x00\x03a/+\x01"
    assert mqttwire.unsubscribe(11, ["a/+"]) == b"\xa2\x07\x00\x0b\x00\x03a/+"
    assert mqttwire.puback(0x0102) == b"\x40\x02\x01\x02"
    assert mqttwire.pubrec(7) == b"\x50\x02\x00\x07"
    assert mqttwire.pubrel(7) == b"\x62\x02\x00\x07"
    assert mqttwire.pubcomp(7) == b"\x70\x02\x00\x07"
    assert mqttwire.disconnect() == b"\xe0\x00"
    assert mqttwire.pingreq() == b"\xc0\x00"


def test_publish_bytes_and_rules() -> None:
    """PUBLISH layout of section 3.3; a packet id only for QoS > 0 and never 0
    [MQTT-2.3.1-1] [MQTT-2.3.1-5]; no DUP on QoS 0 [MQTT-3.3.1-2]; no QoS 3
    [MQTT-3.3.1-4]."""
    assert mqttwire.publish("a/b", b"hi", qos=1, packet_id=10) == (
        b"\x32\x09\x00\x03a/b\x00\x0ahi")
    assert mqttwire.publish("t", b"", retain=True) == b"\x31\x03\x00\x01t"
    assert mqttwire.publish("t", b"x", qos=2, packet_id=1, dup=True)[0] == 0x3C
    for kwargs in ({"qos": 1}, {"qos": 1, "packet_id": 0}, {"qos": 0, "packet_id": 3},
                   {"qos": 0, "dup": True}, {"qos": 3, "packet_id": 1}):
        with pytest.raises(mqttwire.WireError):
            mqttwire.publish("t", b"x", **kwargs)


topics = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#"),
                 min_size=1, max_size=40)


@given(topic=topics, payload=st.binary(max_size=300), qos=st.integers(0, 2),
       packet_id=st.integers(1, 65535), retain=st.booleans(), dup=st.booleans())
@settings(max_examples=200, deadline=None)
def test_publish_round_trip(topic: str, payload: bytes, qos: int, packet_id: int,
                            retain: bool, dup: bool) -> None:
    """What :func:`publish` writes, :func:`parse_publish` reads back
    (section 3.3), the payload located by offsets, not copied."""
    dup = dup and qos > 0
    frame = mqttwire.publish(topic, payload, qos=qos, packet_id=packet_id if qos else None,
                             retain=retain, dup=dup)
    frames, used = mqttwire.split_frames(frame)
    assert used == len(frame) and len(frames) == 1
    first, start, end = frames[0]
    view = mqttwire.parse_publish(frame, first, start, end)
    assert view.topic == topic.encode("utf-8")
    assert (view.qos, view.retain, view.dup) == (qos, retain, dup)
    assert view.packet_id == (packet_id if qos else None)
    assert frame[view.payload_start:view.payload_end] == payload


frame_strategy = st.one_of(
    st.builds(lambda t, p: mqttwire.publish(t, p), topics, st.binary(max_size=200)),
    st.builds(lambda p, n: mqttwire.publish("big", bytes(n), qos=1, packet_id=p),
              st.integers(1, 65535), st.integers(100, 20000)),
    st.integers(1, 65535).map(mqttwire.puback),
    st.integers(1, 65535).map(mqttwire.pubrel),
    st.just(b"\x20\x02\x00\x00"), st.just(mqttwire.pingreq()),
)


@given(frames=st.lists(frame_strategy, min_size=1, max_size=20), data=st.data())
@settings(max_examples=100, deadline=None)
def test_split_frames_any_chunking(frames: List[bytes], data: Any) -> None:
    """However a stream is cut into reads, the same frames come out, in
    order; a partial frame is left for the next read."""
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    got: List[bytes] = []
    pending = b""
    for lo, hi in zip([0] + cuts, cuts + [len(stream)]):
        buf = pending + stream[lo:hi]
        found, nxt = mqttwire.split_frames(buf)
        pos = 0
        for first, start, end in found:  # frames are back to back from 0
            assert buf[pos] == first
            got.append(buf[pos:end])
            pos = end
        assert pos == nxt
        pending = buf[nxt:]
    assert pending == b""
    assert got == frames


def test_split_frames_offsets() -> None:
    """split_frames starts at an offset and reports body offsets into the
    caller's buffer."""
    buf = b"junk" + mqttwire.puback(5) + mqttwire.pubrec(6) + b"\x30"
    frames, nxt = mqttwire.split_frames(buf, 4)
    assert frames == [(0x40, 6, 8), (0x50, 10, 12)]
    assert nxt == len(buf) - 1
    with pytest.raises(mqttwire.WireError):
        mqttwire.split_frames(b"\x30\x80\x80\x80\x80\x01")
    with pytest.raises(mqttwire.WireError):
        mqttwire.split_frames(b"\x30\x80\x01" + bytes(128), max_remaining=100)


def test_parse_server_packets() -> None:
    """CONNACK (section 3.2), SUBACK with a refused filter (section 3.9),
    and acknowledgement bodies, from hand-written bytes."""
    assert mqttwire.parse_connack(b"\x01\x00", 0, 2) == (True, 0)
    assert mqttwire.parse_connack(b"\x00\x05", 0, 2) == (False, 5)
    assert mqttwire.parse_suback(b"\x00\x0a\x01\x80\x00", 0, 5) == (10, [1, 0x80, 0])
    assert mqttwire.parse_ack(b"\xff\xfe", 0, 2) == 0xFFFE
    for bad in (lambda: mqttwire.parse_connack(b"\x02\x00", 0, 2),
                lambda: mqttwire.parse_connack(b"\x00", 0, 1),
                lambda: mqttwire.parse_suback(b"\x00\x01\x03", 0, 3),
                lambda: mqttwire.parse_ack(b"\x00\x01\x00", 0, 3),
                lambda: mqttwire.parse_publish(b"\x00\x05ab", 0x32, 0, 4),
                lambda: mqttwire.parse_publish(b"\x00\x01a", 0x36, 0, 3)):
        with pytest.raises(mqttwire.WireError):
            bad()


# ------------------------------------------------- generator, no broker


def test_level_5_framing() -> None:
    """Section 3.1.2 / 3.8.2 / 3.3.2.3: level 5 adds property blocks; replies parsed past them."""
    assert mqttwire.connect("c", keepalive=10, protocol=5) == (
        b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x0a\x00\x00\x01c")
    assert mqttwire.subscribe(1, [("t", 1)], 5) == b"\x82\x07\x00\x01\x00\x00\x01t\x01"
    props = mqttwire.publish_properties(content_type="x", message_expiry=5,
                                        user_properties=[("k", "v")])
    assert props == b"\x10\x02\x00\x00\x00\x05\x03\x00\x01x\x26\x00\x01k\x00\x01v"
    frame = mqttwire.publish("t", b"pay", qos=1, packet_id=9, properties=props)
    [(first, start, end)], _ = mqttwire.split_frames(frame)
    view = mqttwire.parse_publish(frame, first, start, end, protocol=5)
    assert (view.topic, view.packet_id, frame[view.payload_start:view.payload_end]) == (
        b"t", 9, b"pay")
    connack = b"\x00\x00\x03\x22\x00\x0a"   # flags, reason, properties
    assert mqttwire.parse_connack(connack, 0, len(connack), protocol=5) == (False, 0)
    suback = b"\x00\x01\x00\x01\x97"
    assert mqttwire.parse_suback(suback, 0, len(suback), protocol=5) == (1, [1, 0x80])
    with pytest.raises(mqttwire.WireError):
        mqttwire.connect("c", protocol=3)


def test_check_host_refuses_remote() -> None:
    """Only loopback brokers are targets unless --allow-remote."""
    assert loadgen.check_host("127.0.0.2", 1883, False) == ["127.0.0.2"]
    assert loadgen.check_host("::1", 1883, False) == ["::1"]
    with pytest.raises(loadgen.UsageError):
        loadgen.check_host("192.0.2.7", 1883, False)
    assert loadgen.check_host("192.0.2.7", 1883, True) == ["192.0.2.7"]


def test_percentiles_nearest_rank() -> None:
    samples = [i * 1_000_000 for i in range(1, 101)]  # 1..100 ms
    p = loadgen.percentiles(samples)
    assert (p["p50"], p["p90"], p["p99"], p["max"], p["min"]) == (50.0, 90.0, 99.0, 100.0, 1.0)
    assert p["mean"] == pytest.approx(50.5)
    assert loadgen.percentiles([]) == {"count": 0}


def _sub(seen: Dict[int, bytes], dups: int = 0, flagged: int = 0, oor: int = 0) -> loadgen.SubTally:
    received = sum(len(v) - v.count(0) for v in seen.values()) + dups + oor
    return loadgen.SubTally(seen=seen, received=received, duplicates=dups,
                            duplicates_flagged=flagged, foreign=0, out_of_range=oor)


def test_tally_loss_and_duplicates() -> None:
    """Loss is counted per (publisher, sequence); QoS 1 loss fails the run,
    QoS 0 loss does not [MQTT-4.3.1], [MQTT-4.3.2]; a QoS 1 duplicate is
    legal only with DUP set [MQTT-3.3.1-1]; QoS 2 allows none [MQTT-4.3.3]."""
    published = {0: 4, 1: 3}
    acked = {0: b"\x01\x01\x01\x00", 1: b"\x01\x01\x01"}
    clean = loadgen.tally(1, published, acked, [_sub({0: b"\x01" * 4, 1: b"\x01" * 3})])
    assert (clean.lost, clean.unique, clean.expected) == (0, 7, 7)
    assert not clean.failed(1)

    lossy = loadgen.tally(1, published, acked, [_sub({0: b"\x01\x00\x01\x00", 1: b"\x01\x01"})])
    assert (lossy.lost, lossy.lost_acked) == (3, 2)  # seq 0/1, seq 1/2 were acked; 0/3 not
    assert lossy.failed(1) and not lossy.failed(0)

    dup = [_sub({0: b"\x01\x02\x01\x01", 1: b"\x01\x01\x01"}, dups=1, flagged=1)]
    assert not loadgen.tally(1, published, acked, dup).failed(1)
    assert loadgen.tally(2, published, acked, dup).illegal_duplicates == 1
    unflagged = [_sub({0: b"\x01\x02\x01\x01", 1: b"\x01\x01\x01"}, dups=1, flagged=0)]
    assert loadgen.tally(1, published, acked, unflagged).failed(1)

    # A sequence nobody published (beyond the published count) is a phantom.
    phantom = loadgen.tally(0, {0: 2}, {}, [_sub({0: b"\x01\x01\x01\x00"})])
    assert phantom.phantom == 1 and phantom.failed(0)

    two_subs = loadgen.tally(0, {0: 2}, {}, [_sub({0: b"\x01\x01"}), _sub({0: b"\x00\x01"})])
    assert (two_subs.expected, two_subs.lost, two_subs.unique) == (4, 1, 3)


@pytest.fixture
def pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _pump(conn: Any, done: Any) -> None:
    """Feed a connection from its socketpair until ``done()`` (bounded)."""
    deadline = time.monotonic() + 5
    while not done():
        assert time.monotonic() < deadline, "timed out"
        conn.on_readable()


def _drain_frames(sock: socket.socket, want: int) -> Tuple[bytes, List[Tuple[int, int, int]]]:
    sock.settimeout(5)
    buf = b""
    while True:
        frames, _ = mqttwire.split_frames(buf)
        if len(frames) >= want:
            return buf, frames
        buf += sock.recv(65536)


def test_publisher_window_and_acks(pair: Tuple[socket.socket, socket.socket]) -> None:
    """A QoS 1 publisher keeps at most ``window`` PUBLISHes unacknowledged,
    uses distinct non-zero packet ids [MQTT-2.3.1-1], and counts each PUBACK
    once; an ack for an id not in flight is reported, not counted."""
    a, b = pair
    pub = loadgen.Publisher(a, b"", 3, "bench/3/x", 1, total=10, window=4, payload=40,
                            run_id=RUN_ID, rate=0)
    assert pub.fill(0.0) == 4 and pub.fill(0.0) == 0  # window full
    assert pub.flush()
    buf, frames = _drain_frames(b, 4)
    pids = []
    for i, (first, start, end) in enumerate(frames):
        view = mqttwire.parse_publish(buf, first, start, end)
        assert (view.topic, view.qos, view.dup) == (b"bench/3/x", 1, False)
        assert end - view.payload_start == 40
        assert loadgen.read_payload(buf[view.payload_start:end])[:3] == (RUN_ID, 3, i)
        pids.append(view.packet_id)
    assert len(set(pids)) == 4 and 0 not in pids
    b.sendall(mqttwire.puback(pids[1]) + mqttwire.puback(pids[1]) + mqttwire.puback(999))
    _pump(pub, lambda: pub.acked_count + pub.bad_acks == 3)
    assert (pub.acked_count, pub.bad_acks, pub.inflight_count) == (1, 2, 3)
    assert pub.acked[1] == 1 and pub.acked[0] == 0
    assert pub.fill(0.0) == 1  # one slot came free
    assert not pub.done


def test_subscriber_counts_dups_and_acks(pair: Tuple[socket.socket, socket.socket]) -> None:
    """The subscriber PUBACKs every QoS 1 delivery [MQTT-4.3.2-1] (even
    duplicates), counts a re-send with DUP as legal and one without as not,
    ignores other runs' messages, and copes with a frame split across reads."""
    a, b = pair
    sub = loadgen.Subscriber(a, b"", 0, 1, RUN_ID, publishers=2, total=5, latency=False)

    def msg(pub: int, seq: int, pid: int, dup: bool = False, run: bytes = RUN_ID) -> bytes:
        return mqttwire.publish("bench/x", loadgen.make_payload(run, pub, seq, 0, 30), qos=1,
                                packet_id=pid, dup=dup)

    stream = (msg(0, 0, 1) + msg(1, 4, 2) + msg(0, 0, 3, dup=True) + msg(0, 0, 4)
              + msg(0, 1, 5, run=b"zzzz") + msg(0, 9, 6))
    b.sendall(stream[:20])
    _pump(sub, lambda: len(sub.inbuf) == 20)  # not one whole frame yet
    assert sub.received == 0
    b.sendall(stream[20:])
    _pump(sub, lambda: sub.received + sub.foreign == 6)
    assert sub.flush()
    assert (sub.received, sub.unique, sub.duplicates, sub.duplicates_flagged) == (5, 2, 2, 1)
    assert (sub.foreign, sub.out_of_range) == (1, 1)
    assert sub.seen[0][0] == 3 and sub.seen[1][4] == 1
    buf, frames = _drain_frames(b, 6)
    assert [mqttwire.parse_ack(buf, s, e) for _, s, e in frames] == [1, 2, 3, 4, 5, 6]
    assert {f for f, _, _ in frames} == {0x40}


def test_subscriber_qos2_handshake(pair: Tuple[socket.socket, socket.socket]) -> None:
    """QoS 2 delivery: PUBREC for PUBLISH, PUBCOMP for PUBREL [MQTT-4.3.3-2];
    a re-sent PUBLISH before PUBREL is the same message, not a duplicate."""
    a, b = pair
    sub = loadgen.Subscriber(a, b"", 0, 2, RUN_ID, publishers=1, total=3, latency=False)
    payload = loadgen.make_payload(RUN_ID, 0, 2, 0, 24)
    b.sendall(mqttwire.publish("t", payload, qos=2, packet_id=9)
              + mqttwire.publish("t", payload, qos=2, packet_id=9, dup=True)
              + mqttwire.pubrel(9))
    _pump(sub, lambda: len(sub.out) == 12)
    assert sub.flush()
    assert (sub.unique, sub.duplicates) == (1, 0)
    assert bytes(_drain_frames(b, 3)[0]) == (mqttwire.pubrec(9) * 2 + mqttwire.pubcomp(9))


# ------------------------------------------------------------------ broker


BROKER_KIND = os.environ.get("VMQTW_BENCH_BROKER", "vmqtw")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _broker_command(kind: str, port: int, tmp: Path) -> List[str]:
    if kind == "mosquitto":
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        "max_queued_messages 1000000\n")
        return [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)]
    data = tmp / "data"
    data.mkdir()
    conf = tmp / "vmqtw.conf"
    # A free clustering port too: the default 44053 may be taken by a
    # developer's node or a parallel test.
    conf.write_text(f"listener.tcp.default = 127.0.0.1:{port}\nallow_anonymous = on\n"
                    f"listener.vmq.clustering = 127.0.0.1:{_free_port()}\n"
                    f"platform_data_dir = {data}\n")
    # ``python -m twisted`` is ``twist``: always in the foreground, no ``-n``.
    return [sys.executable, "-m", "twisted", "--log-file", str(tmp / "broker.log"),
            "vmqtw", "--config", str(conf)]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[str, int]]:
    """A real broker on a free loopback port for the module; always stopped."""
    tmp = tmp_path_factory.mktemp("broker")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = open(tmp / "stdout.txt", "wb")
    proc = subprocess.Popen(_broker_command(BROKER_KIND, port, tmp), cwd=tmp, env=env,
                            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{BROKER_KIND} exited with {proc.returncode}: "
                                   f"{(tmp / 'stdout.txt').read_text(errors='replace')[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{BROKER_KIND} did not listen on {port}") from None
                time.sleep(0.05)  # bounded poll for another process
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


def _loadgen(*args: str, timeout: float = 60) -> Tuple[int, Dict[str, Any]]:
    proc = subprocess.run([sys.executable, str(LOADGEN), *args, "--json"],
                          capture_output=True, timeout=timeout)
    report = json.loads(proc.stdout) if proc.stdout.strip() else {}
    assert proc.returncode == report.get("exit", proc.returncode), proc.stderr
    return proc.returncode, report


def _target(broker: Tuple[str, int]) -> List[str]:
    return ["--host", broker[0], "--port", str(broker[1]), "--duration", "20", "--drain", "1"]


def test_fanin_qos0_end_to_end(broker: Tuple[str, int]) -> None:
    """Two publishers fan in on ``bench/+/x`` [MQTT-4.7.1-3] at QoS 0: no
    duplicates or phantoms; whatever is missing is counted as loss."""
    rc, r = _loadgen("fanin", *_target(broker), "--publishers", "2", "--messages", "300")
    ig = r["integrity"]
    assert rc == 0, r
    assert r["published"] == 600 and ig["expected"] == 600
    assert ig["unique"] + ig["lost"] == 600 and ig["unique"] > 0
    assert ig["illegal_duplicates"] == ig["phantom"] == 0
    assert r["rates"]["received_per_s"] > 0


def test_fanin_qos1_end_to_end(broker: Tuple[str, int]) -> None:
    """QoS 1 fan-in: every PUBLISH is PUBACKed [MQTT-4.3.2-2] and delivered
    at least once [MQTT-4.3.2-1], so nothing may be lost."""
    rc, r = _loadgen("fanin", *_target(broker), "--publishers", "2", "--messages", "300",
                     "--qos", "1", "--window", "50")
    assert rc == 0, r
    assert r["acked"] == 600
    assert r["integrity"]["unique"] == 600 and r["integrity"]["lost"] == 0
    assert r["rates"]["acked_per_s"] > 0


def test_fanout_qos1_end_to_end(broker: Tuple[str, int]) -> None:
    """One publisher, three subscribers on the same topic: each subscriber
    gets its own copy of every message [MQTT-3.3.5-1]."""
    rc, r = _loadgen("fanout", *_target(broker), "--subscribers", "3", "--messages", "200",
                     "--qos", "1")
    assert rc == 0, r
    assert r["integrity"]["expected"] == 600 and r["integrity"]["unique"] == 600
    assert r["rates"]["deliveries_per_s"] > 0


def test_latency_end_to_end(broker: Tuple[str, int]) -> None:
    """Paced publisher and subscriber in one process: every message gets a
    latency sample and the percentiles are ordered."""
    rc, r = _loadgen("latency", *_target(broker), "--messages", "200", "--rate", "2000")
    assert rc == 0, r
    lat = r["latency_ms"]
    assert lat["count"] == 200
    assert 0 <= lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]


def test_duration_cap_end_to_end(broker: Tuple[str, int]) -> None:
    """A run that cannot finish its messages stops at --duration by itself
    and still accounts for everything it did publish (QoS 1: no loss)."""
    started = time.monotonic()
    rc, r = _loadgen("fanin", "--host", broker[0], "--port", str(broker[1]), "--drain", "1",
                     "--publishers", "1", "--messages", "1000000", "--rate", "200",
                     "--duration", "1", "--qos", "1")
    assert rc == 0, r
    assert r["timed_out"] is True
    assert 150 <= r["published"] <= 260 and r["acked"] == r["published"]
    assert r["integrity"]["lost"] == 0 and r["integrity"]["expected"] == r["published"]
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("qos, scenario, extra", [
    ("0", "fanin", []), ("1", "fanin", ["--properties"]), ("1", "fanout", []),
    ("0", "fanout", ["--properties"])])
def test_protocol_5_end_to_end(broker: Tuple[str, int], qos: str, scenario: str,
                               extra: List[str]) -> None:
    """``--protocol 5`` (with or without properties): the same runs at MQTT 5.0."""
    rc, r = _loadgen(scenario, *_target(broker), "--publishers", "2" if scenario == "fanin"
                     else "1", "--subscribers", "1" if scenario == "fanin" else "3",
                     "--messages", "200", "--qos", qos, "--protocol", "5", *extra)
    assert rc == 0, r
    assert (r["protocol"], r["properties"]) == (5, bool(extra))
    ig = r["integrity"]
    assert ig["unique"] > 0 and ig["illegal_duplicates"] == ig["phantom"] == 0
    if qos == "1":
        assert ig["unique"] == ig["expected"] and ig["lost"] == 0


def test_properties_need_protocol_5() -> None:
    proc = subprocess.run([sys.executable, str(LOADGEN), "fanin", "--properties"],
                          capture_output=True, timeout=30)
    assert proc.returncode == loadgen.EXIT_USAGE
    assert b"--properties needs --protocol 5" in proc.stderr


def test_unreachable_broker_is_an_error() -> None:
    """Nothing listening: exit status 3 with the reason, quickly."""
    rc, r = _loadgen("fanin", "--port", str(_free_port()), "--messages", "10",
                     "--setup-timeout", "2", timeout=30)
    assert rc == loadgen.EXIT_ERROR
    assert r["errors"] and r["published"] == 0


def test_remote_host_refused() -> None:
    """A non-loopback broker is refused before any connection is made."""
    proc = subprocess.run([sys.executable, str(LOADGEN), "fanin", "--host", "192.0.2.7"],
                          capture_output=True, timeout=30)
    assert proc.returncode == loadgen.EXIT_USAGE
    assert b"refusing non-loopback" in proc.stderr


def test_benchmarks_never_import_tests() -> None:
    """
    The benchmarks run from a checkout without the test suite's helpers:
    what they share with the tests lives in ``vmqtw.testing``.
    """
    import ast
    offenders = []
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            offenders += ["%s:%d %s" % (path.name, node.lineno, name)
                          for name in names if name.split(".")[0] == "tests"]
    assert offenders == []


# ------------------------------------------------------------------ suite


def test_suite_table_shows_failures_and_ratios() -> None:
    """The table keeps a failed run visible (marked, with its reason) and
    takes ratios to mosquitto, and cluster rows to the single node."""
    from benchmarks import suite
    ok = {"value": 100.0, "note": None, "failed": False}
    results = {
        "fanin1": {"vmqtw": [ok, dict(ok, value=60.0), dict(ok, value=80.0)],
                   "mosquitto": [dict(ok, value=200.0), dict(ok, value=160.0),
                                 {"value": None, "note": "lost_acked 3", "failed": True}]},
        "cluster1": {"vmqtw": [dict(ok, value=40.0)]},
    }
    rows = suite.summarize(results, ["vmqtw", "mosquitto"])
    by_key = {row["key"]: row for row in rows}
    assert by_key["fanin1"]["brokers"]["vmqtw"]["median"] == 80.0
    assert by_key["fanin1"]["brokers"]["mosquitto"]["median"] == 180.0
    assert by_key["fanin1"]["ratio"] == pytest.approx(80.0 / 180.0)
    assert by_key["cluster1"]["ratio"] == pytest.approx(40.0 / 80.0)
    table = suite.format_table(rows, ["vmqtw", "mosquitto"], 3)
    assert "FAILED 1/3" in table and "lost_acked 3" in table


def test_suite_runs_vmqtw_and_stops_it() -> None:
    """``python -m benchmarks.suite`` with tiny counts against the node it
    starts itself: every scenario asked for gives a figure, every message is
    accounted for, and the node is gone when the command returns."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.suite", "--brokers", "vmqtw", "--scale", "0.01",
         "--idle", "50", "--duration", "20", "--only", "idle", "--only", "fanin1",
         "--only", "offline", "--only", "cluster1", "--only", "stalled", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.stdout.strip(), proc.stderr
    report = json.loads(proc.stdout)
    rows = {row["key"]: row for row in report["rows"]}
    assert sorted(rows) == ["cluster1", "fanin1", "idle", "offline", "stalled"]
    for key, row in rows.items():
        got = row["brokers"]["vmqtw"]
        assert got["failed"] == 0, (key, got["notes"])
        assert got["median"] is not None and (got["median"] > 0 or key == "stalled"), key
    for key in ("fanin1", "offline", "cluster1"):
        run = report["details"][key]["vmqtw"][0]["report"]
        assert run["integrity"]["lost"] == 0 and run["published"] > 0, key
    assert proc.returncode == 0, proc.stderr
    for pid in report["pids"]:
        assert not os.path.exists("/proc/%d" % pid), pid


def test_suite_interrupted_stops_its_broker() -> None:
    """Ctrl-C in the middle of a run: the suite exits 130 and the node it
    started is gone (the suite, not the terminal, owns it)."""
    import signal
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.suite", "--brokers", "vmqtw", "--only", "fanin1",
         "--duration", "60"], cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        line = proc.stderr.readline()   # "fanin1 on vmqtw (pid N) ...", once it listens
        assert " on vmqtw (pid " in line, line
        pid = int(line.split("(pid ")[1].split(")")[0])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        assert not os.path.exists("/proc/%d" % pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
