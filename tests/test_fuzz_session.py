"""
Fuzzing the codec and the session state machine together (docs/bad-input.md, issue 5).

Hypothesis builds packet streams from :mod:`vmqtw.testing.mqttbytes` (independent of
the codec), then mutates them: bits flipped, the stream truncated, packets
reordered, packets that are illegal for the state (a second CONNECT,
server-only packets) or junk spliced in.  Each stream is fed in random chunks,
with the clock moving between chunks, to one connection of an in-process
broker (:mod:`vmqtw.testing.inprocess_broker`: the real registry, sessions and protocols
over ``StringTransport`` and ``task.Clock``) that also serves a bystander.

The invariant: a protocol error closes *that* connection and nothing else
happens --

* no exception escapes ``dataReceived`` and no failure is logged (the
  protocol's catch-all for internal errors would hide a bug as a close);
* a stream the reference decoder finds malformed always ends closed;
* nothing after the malformed point takes effect: the bystander (subscribed to
  ``#``) only ever sees messages of well-formed PUBLISHes (or wills) of the
  stream, and keeps being served;
* the registry stays consistent once the connection is gone: only live
  sessions are registered, clean sessions leave no queue or subscription, the
  bystander's subscription is untouched.

Longer runs: ``benchmarks/fuzz_live.py`` (in process and against a live node).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, List, Tuple

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.logger import globalLogPublisher

from vmqtw.testing import mqtt5bytes as B5
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Broker
from vmqtw.mqtt import packets as P
from vmqtw.mqtt.codec import Decoder, ProtocolError
from vmqtw.mqtt.session import SessionSettings
from vmqtw.types import SubscriberId

BYSTANDER = "bystander"

# -- strategies ----------------------------------------------------------------

#: Never the bystander's id: taking it over would be legitimate, not a bug.
client_ids = st.sampled_from(["fuzz", "fuzz-2", "", "x" * 101, "fuzz/+"])
good_topics = st.sampled_from(["a", "a/b", "a/b/c", "probe/x", "$SYS/x", "$foo", "a//b", "/",
                               "t\u00e9"])
topics = st.one_of(
    good_topics, good_topics, good_topics,
    st.sampled_from(["a/+", "#", "", "+", "a/" * 12 + "z", "a/#", "+/+"]),
    st.text(alphabet="ab/+#$\x00\u00e9", max_size=6),
)
payloads = st.binary(max_size=24)
packet_ids = st.one_of(st.integers(1, 8), st.integers(0, 65535))
qos = st.sampled_from([0, 0, 1, 1, 2, 2, 3])


@st.composite
def connects(draw: Any) -> bytes:
    will = draw(st.booleans())
    return B.connect(
        draw(client_ids),
        level=draw(st.sampled_from([4, 4, 4, 3, 5])),
        protocol_name=draw(st.sampled_from(["MQTT", "MQTT", "MQTT", "MQIsdp", "MQTX"])),
        clean_session=draw(st.booleans()),
        keepalive=draw(st.sampled_from([0, 1, 5, 60, 65535])),
        will_topic=draw(topics) if will else None,
        will_message=draw(payloads) if will else b"",
        will_qos=draw(qos) if will else 0,
        will_retain=draw(st.booleans()) if will else False,
        username=draw(st.sampled_from([None, "u", ""])),
        password=draw(st.sampled_from([None, b"p"])),
    )


@st.composite
def connects5(draw: Any) -> bytes:
    """
    Real MQTT 5.0 CONNECTs (properties, will properties): the broker refuses
    level 5 until the session opts in to the codec's MQTT 5.0 (issue 10).
    """
    will = draw(st.booleans())
    properties = st.sampled_from([B5.NO_PROPS, B5.props(B5.p_u32(0x11, 60)),
                                  B5.props(B5.p_u16(0x21, 0)),
                                  B5.props(B5.p_pair("k", "v"), B5.p_pair("k", "v"))])
    return B5.connect(
        draw(client_ids), keepalive=draw(st.sampled_from([0, 5, 60])),
        clean_start=draw(st.booleans()), properties=draw(properties),
        will_topic=draw(topics) if will else None,
        will_message=draw(payloads) if will else b"",
        will_qos=draw(qos) if will else 0,
        will_properties=draw(properties) if will else B5.NO_PROPS,
        username=draw(st.sampled_from([None, "u"])),
        password=draw(st.sampled_from([None, b"p"])))


@st.composite
def publishes(draw: Any) -> bytes:
    level = draw(qos)
    return B.publish(draw(topics), draw(payloads), qos=level, retain=draw(st.booleans()),
                     dup=draw(st.booleans()),
                     packet_id=draw(packet_ids) if level else None)


@st.composite
def subscribes(draw: Any) -> bytes:
    filters = draw(st.lists(st.tuples(topics, st.integers(0, 3)), min_size=0, max_size=3))
    return B.subscribe(draw(packet_ids), filters,
                       flags=draw(st.sampled_from([0b0010, 0b0010, 0b0010, 0, 0b0011])))


@st.composite
def unsubscribes(draw: Any) -> bytes:
    return B.unsubscribe(draw(packet_ids), draw(st.lists(topics, max_size=3)),
                         flags=draw(st.sampled_from([0b0010, 0b0010, 0])))


acks = st.builds(lambda builder, pid: builder(pid),
                 st.sampled_from([B.puback, B.pubrec, B.pubrel, B.pubcomp, B.unsuback]),
                 packet_ids)
#: Packets only a server sends, and reserved types: illegal from a client.
illegal = st.one_of(st.builds(B.connack, st.integers(0, 5)),
                    st.builds(B.suback, packet_ids, st.lists(st.integers(0, 2), min_size=1,
                                                             max_size=2)),
                    st.just(B.pingresp()), st.just(B.packet(0, 0)), st.just(B.packet(15, 0)))
junk = st.binary(min_size=1, max_size=8)

packets = st.one_of(
    publishes(), publishes(), publishes(), subscribes(), unsubscribes(), acks,
    st.just(B.pingreq()), st.just(B.disconnect()), connects(), connects5(), illegal, junk)


@st.composite
def streams(draw: Any) -> Tuple[bytes, List[int]]:
    """A mutated packet stream and the chunk boundaries it is fed in."""
    parts = [draw(st.one_of(connects(), connects(), connects(), connects5()))] \
        if draw(st.integers(0, 9)) else []
    parts += draw(st.lists(packets, max_size=10))
    mutation = draw(st.sampled_from(["none"] * 3 + ["flip", "truncate", "reorder", "splice"]))
    if mutation == "reorder" and parts:
        parts = draw(st.permutations(parts))
    if mutation == "splice":
        parts.insert(draw(st.integers(0, len(parts))), draw(st.one_of(illegal, junk,
                                                                      connects())))
    data = bytearray(b"".join(parts))
    if mutation == "flip" and data:
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    if mutation == "truncate" and data:
        del data[draw(st.integers(0, len(data) - 1)):]
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data))), max_size=6))))
    return bytes(data), cuts


# -- the reference -----------------------------------------------------------------


def reference(data: bytes) -> Tuple[List[Any], bool]:
    """What an independent decoder makes of the stream: packets, malformed?"""
    decoder = Decoder(connect_first=True)
    try:
        return decoder.feed(data), False
    except ProtocolError as error:
        return error.packets, True


def may_reach_bystander(packets_: List[Any]) -> set:
    """(topic, payload) of every message the stream could legitimately route."""
    allowed = set()
    for packet in packets_:
        if isinstance(packet, P.Publish):
            allowed.add((packet.topic, packet.payload))
        elif isinstance(packet, P.Connect) and packet.will is not None:
            allowed.add((packet.will.topic, packet.will.payload))
    return allowed


class LogFailures:
    """Collects logged failures (``log.failure``) while in use."""

    def __init__(self) -> None:
        self.failures: List[Any] = []

    def __call__(self, event: dict) -> None:
        if event.get("log_failure") is not None:
            self.failures.append(event["log_failure"])

    def __enter__(self) -> "LogFailures":
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        globalLogPublisher.removeObserver(self)


def check_registry(broker: Broker, bystander: Any) -> None:
    """Only live sessions registered; dead clean sessions leave nothing behind."""
    registry = broker.registry
    live = {c for c in broker.factory.connections if not c.closing}
    for sid, session in registry.sessions.items():
        assert session.io in live, (sid, session)
    for sid, queue in registry.queues.items():
        if sid not in registry.sessions:
            assert not queue.clean_session, sid
    for client_id in ("fuzz", "fuzz-2"):
        sid = SubscriberId("", client_id)
        queue = registry.queues.get(sid)
        if queue is None or queue.clean_session:
            assert not registry.subscriptions(sid), sid
    assert registry.subscriptions(SubscriberId("", BYSTANDER)) == {"#": 0}
    assert registry.sessions[SubscriberId("", BYSTANDER)].io is bystander.protocol


def run_stream(data: bytes, cuts: List[int], dt: float) -> None:
    # 3.1/3.1.1 streams, checked against a 3.1.1 reference: level 5 stays
    # an unacceptable level here (MQTT 5.0 has its own tests).
    broker = Broker(settings=SessionSettings(max_subscriptions_per_client=20,
                                             protocol_versions=(3, 4)),
                    connect_timeout=5.0)
    with LogFailures() as logged:
        bystander = broker.subscriber(BYSTANDER, ("#", 0), keepalive=0)
        fuzz = broker.client()
        start = 0
        for cut in cuts + [len(data)]:
            if cut > start:
                fuzz.send(data[start:cut])
                start = cut
                broker.clock.advance(dt)
        expected, malformed = reference(data)
        event("malformed" if malformed else "well-formed")
        event("connected" if fuzz.protocol.session.subscriber_id is not None
              and not fuzz.closed else "closed" if fuzz.closed else "open, not connected")
        if malformed:
            assert fuzz.closed, "malformed stream left the connection open"
        if fuzz.closed:
            written = len(fuzz.transport.value())
            fuzz.send(B.publish("a", b"after-close"))
            assert len(fuzz.transport.value()) == written, "answered after closing"
            fuzz.finish_close()
        else:
            fuzz.drop()  # the network dies: the session ends or is parked
        broker.clock.advance(dt)

        prober = broker.connect("prober", keepalive=0)
        prober.send(B.publish("probe/alive", b"probe"))
        seen = [(p.topic, p.payload) for p in bystander.publishes()]
        assert not bystander.closed
        assert seen and seen[-1] == ("probe/alive", b"probe"), seen
        stray = set(seen[:-1]) - may_reach_bystander(expected)
        assert not stray, "routed from beyond the malformed point: %r" % (stray,)
        check_registry(broker, bystander)
    assert not logged.failures, [f.getTraceback() for f in logged.failures]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.sampled_from([0.0, 0.1, 2.0]))
def test_mutated_streams_close_only_their_connection(stream: Tuple[bytes, List[int]],
                                                     dt: float) -> None:
    """
    [MQTT-4.8.0-1]: a malformed or illegal packet closes the connection;
    no exception escapes, other clients and the registry are unaffected.
    """
    data, cuts = stream
    run_stream(data, cuts, dt)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(publishes(), subscribes(), unsubscribes(), acks,
                          st.just(B.pingreq())), max_size=12), st.booleans())
def test_connected_streams_close_only_their_connection(body: List[bytes],
                                                       clean: bool) -> None:
    """
    The same invariant for a stream that certainly starts with a valid
    CONNECT, so every later packet reaches the session [MQTT-3.1.0-1].
    """
    data = B.connect("fuzz", clean_session=clean, keepalive=0) + b"".join(body)
    run_stream(data, [len(data) // 2], 0.1)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), st.lists(st.integers(1, 64), max_size=5))
def test_decoder_raises_only_protocol_error_whatever_the_split(data: bytes,
                                                               cuts: List[int]) -> None:
    """Arbitrary bytes give packets or ProtocolError, the same for any chunking."""
    whole = reference(data)
    decoder = Decoder(connect_first=True)
    got: List[Any] = []
    malformed = False
    start = 0
    for cut in sorted(set(c for c in cuts if c < len(data))) + [len(data)]:
        try:
            got += decoder.feed(data[start:cut])
        except ProtocolError as error:
            got += error.packets
            malformed = True
            break
        start = cut
    assert (got, malformed) == whole


def load_fuzz_live() -> Any:
    """``benchmarks/fuzz_live.py`` (a script, not a package module)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "benchmarks", "fuzz_live.py")
    spec = importlib.util.spec_from_file_location("fuzz_live", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_long_fuzz_command_in_process_smoke() -> None:
    """The documented long run keeps its invariants over 3,000 seeded inputs."""
    result = load_fuzz_live().run_inprocess(3000, seed=3, check_every=500)
    assert result["ok"], result["failures"]
    assert result["probes"] == 6
    # The generator really produces both kinds of streams.
    assert 0 < result["malformed"] < 3000 and result["open"] > 0
