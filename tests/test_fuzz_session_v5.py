"""
Fuzzing the MQTT 5.0 session paths (issue 10): streams that start with a
level-5 CONNECT, then level-5 packets with properties (topic aliases, expiry,
user properties, subscription identifiers, options bytes), DISCONNECT with
reason codes and AUTH, built with :mod:`vmqtw.testing.mqtt5bytes` and then
mutated (bits flipped, truncated, junk spliced in), fed in random chunks to
one connection of an in-process broker that also serves a 3.1.1 bystander.

The invariant is the 3.1.1 fuzzer's (tests/test_fuzz_session.py): no
exception escapes and no failure is logged, the bystander keeps being
served, and once the connection is gone only live sessions are registered.
"""
from __future__ import annotations

from typing import List

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.test_fuzz_session import LogFailures
from vmqtw.mqtt.session import SessionSettings
from vmqtw.testing import mqtt5bytes as B5
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Broker

topics = st.sampled_from(["a", "a/b", "", "a/+", "#", "$SYS/x", "a/b/c/d/e"])
filters = st.sampled_from(["a", "a/#", "+/b", "#", "$share/g/a", "a/#/b", ""])

def blocks(*items: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A property block of up to three of ``items`` (mostly ones the packet allows)."""
    return st.lists(st.one_of(*items), max_size=3).map(lambda found: B5.props(*found))


publish_properties = st.one_of(
    # Mostly what a client may send...
    blocks(st.builds(B5.p_u16, st.just(0x23), st.integers(1, 4)),    # topic alias
           st.builds(B5.p_u32, st.just(0x02), st.integers(0, 5)),    # message expiry
           st.builds(B5.p_pair, st.sampled_from(["k", ""]), st.just("v")),
           st.builds(B5.p_byte, st.just(0x01), st.integers(0, 1)),   # payload format
           st.builds(B5.p_str, st.just(0x03), st.just("text/plain"))),
    # ...sometimes what it may not: an alias above the maximum or 0, a
    # subscription identifier.
    blocks(st.builds(B5.p_u16, st.just(0x23), st.integers(0, 6)),
           st.builds(B5.p_vbi, st.just(0x0B), st.integers(1, 3))),
)
subscribe_properties = blocks(
    st.builds(B5.p_vbi, st.just(0x0B), st.integers(1, 3)),
    st.builds(B5.p_pair, st.just("k"), st.just("v")))
connect_properties = blocks(
    st.builds(B5.p_u32, st.just(0x11), st.sampled_from([0, 3, 0xFFFFFFFF])),
    st.builds(B5.p_u16, st.just(0x21), st.integers(1, 3)),            # receive maximum
    st.builds(B5.p_u32, st.just(0x27), st.integers(20, 200)),         # maximum packet size
    st.builds(B5.p_u16, st.just(0x22), st.integers(0, 3)))            # topic alias maximum
publishes = st.builds(
    lambda topic, qos, packet_id, props, retain: B5.publish(
        topic, b"p", qos=qos, packet_id=packet_id if qos else None, properties=props,
        retain=retain),
    topics, st.integers(0, 2), st.integers(1, 4), publish_properties, st.booleans())
subscribes = st.builds(
    lambda packet_id, pairs, props: B5.subscribe(packet_id, pairs, props),
    st.integers(1, 4), st.lists(st.tuples(filters, st.integers(0, 0x2F)), min_size=1,
                                max_size=3), subscribe_properties)
unsubscribes = st.builds(lambda packet_id, flts: B5.unsubscribe(packet_id, flts),
                         st.integers(1, 4), st.lists(filters, min_size=1, max_size=2))
acks = st.builds(B5.ack, st.sampled_from(["PUBACK", "PUBREC", "PUBREL", "PUBCOMP"]),
                 st.integers(1, 4), st.sampled_from([None, 0, 0x10, 0x92]))
others = st.sampled_from([B5.disconnect(0x04), B5.disconnect(0, B5.props(B5.p_u32(0x11, 9))),
                          B5.auth(0x18, B5.props(B5.p_str(0x15, "m"))), B.pingreq()])
connects = st.builds(
    lambda client_id, clean, props, will: B5.connect(
        client_id, clean_start=clean, keepalive=0, properties=props,
        will_topic="w/" + client_id if will else None, will_message=b"will",
        will_properties=B5.props(B5.p_u32(0x18, 1)) if will else B5.NO_PROPS),
    st.sampled_from(["fuzz5", ""]), st.booleans(), connect_properties, st.booleans())


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    data = draw(connects) + b"".join(draw(st.lists(
        st.one_of(publishes, publishes, subscribes, unsubscribes, acks, others), max_size=10)))
    mutation = draw(st.sampled_from(["none", "none", "flip", "truncate", "junk"]))
    if mutation == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes((data[at] ^ (1 << draw(st.integers(0, 7))),)) + data[at + 1:]
    elif mutation == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif mutation == "junk":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(1, 200), max_size=3), st.sampled_from([0.0, 1.5]))
def test_v5_streams_close_only_their_connection(data: bytes, cuts: List[int],
                                                dt: float) -> None:
    broker = Broker(settings=SessionSettings(topic_alias_max_client=4, receive_max_broker=3))
    with LogFailures() as logged:
        bystander = broker.subscriber("bystander", ("#", 0), keepalive=0)
        fuzz = broker.client()
        start = 0
        for cut in sorted(set(c for c in cuts if c < len(data))) + [len(data)]:
            if cut > start:
                fuzz.send(data[start:cut])
                start = cut
                broker.clock.advance(dt)
        session = fuzz.protocol.session
        event("level-5 session" if session.level == 5 and session.subscriber_id is not None
              else "not connected")
        event("closed" if fuzz.closed else "open")
        if fuzz.closed:
            fuzz.finish_close()
        else:
            fuzz.drop()
        broker.clock.advance(10)    # delayed wills, expiries
        prober = broker.connect("prober", keepalive=0)
        prober.send(B.publish("probe/alive", b"probe"))
        seen = [(p.topic, p.payload) for p in bystander.publishes()]
        assert not bystander.closed
        assert seen and seen[-1] == ("probe/alive", b"probe"), seen
        live = {c for c in broker.factory.connections if not c.closing}
        for sid, session in broker.registry.sessions.items():
            assert session.io in live, (sid, session)
    assert not logged.failures, [f.getTraceback() for f in logged.failures]
