"""
Pure tests of the inter-node frames (wire) and handshake (auth): no I/O,
time passed in.
"""
from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from vmqtw.cluster import auth, wire

COOKIE = b"secret-cookie-\x00\xff-value"

plain = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4).map(tuple)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20)

frames = st.one_of(
    st.builds(wire.cast, st.text(max_size=10), plain),
    st.builds(wire.call, st.integers(0, 2**32), st.text(max_size=10),
              st.lists(plain, max_size=3).map(tuple)),
    st.builds(wire.reply, st.integers(0, 2**32), st.booleans(), plain),
    st.builds(wire.hello, st.text(min_size=1, max_size=10),
              st.integers(0, 9), st.binary(min_size=32, max_size=32)),
    st.builds(wire.proof, st.binary(max_size=32)),
    st.builds(wire.refuse, st.text(max_size=10)),
    st.just(wire.ping()))


# -- wire ------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.lists(frames, min_size=1, max_size=5), st.integers(1, 7))
def test_frames_round_trip_in_any_chunking(sent, chunk):
    """
    Frames come back equal -- tuples as tuples, bytes as bytes, str as str
    -- however the stream is cut into chunks.
    """
    data = b"".join(wire.encode_frame(f) for f in sent)
    decoder = wire.FrameDecoder()
    got = []
    for i in range(0, len(data), chunk):
        got.extend(decoder.feed(data[i:i + chunk]))
    assert got == sent
    assert decoder.buffered == 0


def test_length_prefix_is_four_bytes_big_endian():
    """The body length is a 4-byte big-endian prefix of a msgpack body."""
    data = wire.encode_frame(wire.cast("c", (1, b"x")))
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert msgpack.unpackb(data[4:], use_list=False) == (
        wire.KIND_CAST, "c", (1, b"x"))


def test_oversize_frame_refused_from_its_header_alone():
    """
    A length over the limit is an error as soon as the header arrives, so
    an oversize frame is never buffered.
    """
    decoder = wire.FrameDecoder(max_frame_size=100)
    with pytest.raises(wire.ProtocolError, match="exceeds"):
        decoder.feed(struct.pack(">I", 101))
    with pytest.raises(wire.ProtocolError):
        decoder.feed(b"more")  # a failed stream stays failed


def test_frame_at_the_limit_accepted():
    body = msgpack.packb((wire.KIND_CAST, "c", b"x" * 80))
    decoder = wire.FrameDecoder(max_frame_size=len(body))
    assert decoder.feed(struct.pack(">I", len(body)) + body) == [
        (wire.KIND_CAST, "c", b"x" * 80)]


@pytest.mark.parametrize("body", [
    b"\xc1",                                   # never-used msgpack byte
    msgpack.packb([1, 2]) + b"\x00",           # trailing garbage
    msgpack.packb({"a": 1}),                   # not an array
    msgpack.packb([]),                         # empty
    msgpack.packb(["cast", "c", 1]),           # kind not an int
    msgpack.packb([99, 1]),                    # unknown kind
    msgpack.packb([wire.KIND_CAST, "c"]),      # wrong arity
    msgpack.packb([wire.KIND_CAST, "c", msgpack.ExtType(5, b"x")]),
], ids=["reserved", "trailing", "map", "empty", "strkind", "unknown",
        "arity", "ext"])
def test_bad_bodies_are_protocol_errors(body):
    decoder = wire.FrameDecoder()
    with pytest.raises(wire.ProtocolError):
        decoder.feed(struct.pack(">I", len(body)) + body)


def test_limit_change_applies_to_the_very_next_frame():
    """
    The link raises the limit after the handshake; a big frame arriving in
    the same chunk right after the last handshake frame must be judged by
    the new limit.
    """
    small = wire.encode_frame(wire.proof(b"m" * 32))
    big = wire.encode_frame(wire.cast("c", b"x" * 10000))
    decoder = wire.FrameDecoder(max_frame_size=wire.HANDSHAKE_MAX_FRAME_SIZE)
    decoder.push(small + big)
    assert decoder.next_frame() == wire.proof(b"m" * 32)
    decoder.max_frame_size = wire.DEFAULT_MAX_FRAME_SIZE
    assert decoder.next_frame() == wire.cast("c", b"x" * 10000)
    assert decoder.next_frame() is None


# -- handshake ---------------------------------------------------------------

def pair(cookie_i=COOKIE, cookie_r=COOKIE, expected="r@h"):
    i = auth.Handshake(auth.INITIATOR, "i@h", cookie_i, b"\x01" * 32,
                       expected_peer=expected)
    r = auth.Handshake(auth.RESPONDER, "r@h", cookie_r, b"\x02" * 32)
    return i, r


def run(i, r, sent=None):
    """Drive both sides to the end; record every encoded frame in sent."""
    sent = sent if sent is not None else []
    to_r = i.start()
    assert r.start() == []
    while to_r:
        sent += [wire.encode_frame(f) for f in to_r]
        to_i = []
        for f in to_r:
            to_i += r.receive(f)
        if r.verified and not r.established:
            to_i += r.accept()
        sent += [wire.encode_frame(f) for f in to_i]
        to_r = []
        for f in to_i:
            to_r += i.receive(f)
    return sent


def test_handshake_with_same_cookie_establishes_both_sides():
    i, r = pair()
    sent = run(i, r)
    assert i.established and r.established
    assert (i.peer, r.peer) == ("r@h", "i@h")
    assert not any(COOKIE in s for s in sent)


def test_wrong_cookie_fails_at_responder_and_cookie_never_sent():
    """
    The responder checks the initiator's proof before proving itself, so
    a stranger gets no proof; neither cookie appears in any frame.
    """
    other = b"another-cookie"
    i, r = pair(cookie_i=other)
    sent = []
    with pytest.raises(auth.HandshakeFailed) as e:
        run(i, r, sent)
    assert e.value.auth
    assert not r.verified and not i.established
    assert len(sent) == 3  # HELLO, HELLO, PROOF(I): no responder proof
    assert not any(COOKIE in s or other in s for s in sent)


def test_responder_with_wrong_cookie_never_verifies_initiator():
    i, r = pair(cookie_r=b"wrong")
    with pytest.raises(auth.HandshakeFailed, match="cookie"):
        run(i, r)
    assert not r.verified


def test_proofs_are_bound_to_role_nonces_and_names():
    """A proof is useless with another role, nonce or name."""
    base = dict(cookie=COOKIE, role=auth.INITIATOR,
                initiator_nonce=b"a" * 32, responder_nonce=b"b" * 32,
                initiator="x", responder="y")
    ref = auth.compute_proof(**base)
    for k, v in [("role", auth.RESPONDER), ("initiator_nonce", b"c" * 32),
                 ("responder_nonce", b"c" * 32), ("initiator", "z"),
                 ("responder", "z"), ("cookie", b"other")]:
        assert auth.compute_proof(**dict(base, **{k: v})) != ref, k
    # name boundaries are unambiguous
    assert auth.compute_proof(**dict(base, initiator="xy", responder="")) \
        != auth.compute_proof(**dict(base, initiator="x", responder="y"))


def test_reflected_proof_is_rejected():
    """Sending the responder's own role proof back must not verify."""
    i, r = pair()
    r.start()
    hello_i = i.start()[0]
    (hello_r,) = r.receive(hello_i)
    i.receive(hello_r)
    reflected = auth.compute_proof(COOKIE, auth.RESPONDER, b"\x01" * 32,
                                   b"\x02" * 32, "i@h", "r@h")
    with pytest.raises(auth.HandshakeFailed):
        r.receive(wire.proof(reflected))


def test_initiator_refuses_unexpected_node_name():
    i, r = pair(expected="someone-else")
    with pytest.raises(auth.HandshakeFailed, match="expected node"):
        run(i, r)


def test_version_mismatch_is_not_an_auth_failure():
    r = auth.Handshake(auth.RESPONDER, "r@h", COOKIE, b"\x02" * 32)
    r.start()
    with pytest.raises(auth.HandshakeFailed) as e:
        r.receive(wire.hello("i@h", auth.PROTOCOL_VERSION + 1, b"\x01" * 32))
    assert not e.value.auth


@pytest.mark.parametrize("frame", [
    wire.hello("", 1, b"\x01" * 32),
    wire.hello("r@h", 1, b"\x01" * 32),         # our own name
    wire.hello("i@h", 1, b"\x01" * 31),
    wire.hello("i@h", "1", b"\x01" * 32),
    wire.proof(b"x"),                           # PROOF before HELLO
    wire.cast("c", 1),
])
def test_malformed_handshake_frames_fail(frame):
    r = auth.Handshake(auth.RESPONDER, "r@h", COOKIE, b"\x02" * 32)
    r.start()
    with pytest.raises(auth.HandshakeFailed) as e:
        r.receive(frame)
    assert e.value.auth


def test_refusal_is_reported_as_refused():
    i, _ = pair()
    i.start()
    with pytest.raises(auth.HandshakeRefused, match="duplicate"):
        i.receive(wire.refuse("duplicate link"))


def test_accept_only_after_verification():
    _, r = pair()
    r.start()
    with pytest.raises(RuntimeError):
        r.accept()


# -- failure limiter -------------------------------------------------------

def test_limiter_blocks_after_max_failures_in_window():
    lim = auth.FailureLimiter(max_failures=5, window=10.0, base_block=10.0)
    for k in range(4):
        assert not lim.failure("1.2.3.4", 100.0 + k)
        assert lim.allowed("1.2.3.4", 100.0 + k)
    assert lim.failure("1.2.3.4", 104.0)  # starts a block
    assert not lim.allowed("1.2.3.4", 104.0)
    assert not lim.allowed("1.2.3.4", 113.9)
    assert lim.allowed("1.2.3.4", 114.0)
    assert lim.allowed("5.6.7.8", 104.0)  # other IPs unaffected


def test_limiter_failures_outside_window_do_not_add_up():
    lim = auth.FailureLimiter(max_failures=3, window=10.0)
    for t in (0.0, 6.0, 12.0, 18.0, 24.0):
        assert not lim.failure("ip", t)
    assert lim.allowed("ip", 24.0)


def test_limiter_block_grows_and_is_capped():
    lim = auth.FailureLimiter(max_failures=2, window=10.0, base_block=10.0,
                              max_block=35.0)
    now, blocks = 0.0, []
    for _ in range(4):
        lim.failure("ip", now)
        assert lim.failure("ip", now)
        blocks.append(lim.blocked_for("ip", now))
        now += blocks[-1]
    assert blocks == [10.0, 20.0, 35.0, 35.0]


def test_limiter_success_clears_and_memory_is_bounded():
    lim = auth.FailureLimiter(max_failures=2, max_tracked=3)
    lim.failure("a", 0.0)
    lim.success("a")
    assert not lim.failure("a", 0.1)  # count restarted
    for ip in "bcde":
        lim.failure(ip, 1.0)
    # "b" was the oldest of 4 > max_tracked: forgotten, so its count restarts
    assert not lim.failure("b", 1.0)
    assert lim.failure("e", 1.0)  # "e" was remembered
