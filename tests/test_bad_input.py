"""
Hostile input against real nodes: cases 1-34 of docs/bad-input.md (case 35,
the netsplit answers, is in tests/test_cluster_routing.py).

Every case sends raw bytes (built by :mod:`vmqtw.testing.mqttbytes`, independent of
the codec) to a real ``twistd -n vmqtw`` process over a socket and asserts
the MQTT 3.1.1 answer the table gives (where the table names an MQTT 5 reason
code, 3.1.1 closes the connection or answers with its own return code).
After each case :meth:`Ctx.assert_serves` proves that the node still serves
other clients: a long-lived ``#`` subscriber connected before the case must
receive a fresh probe message, and the node log must hold no traceback.

Nodes are module-scoped and grouped by configuration so the file stays fast:
a default node, a "limited" node (small ``max_message_size``,
``max_subscriptions_per_client``, ``connect_timeout`` 2 s, ``max_keepalive``
2 s) and nodes with the password and ACL plugins on.
"""
from __future__ import annotations

import os
import resource
import selectors
import signal
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from vmqtw.testing import mqttbytes as B
from tests.nodeharness import Node, PahoClient
from tests.waiting import wait_until
from vmqtw.auth.passwd import hash_password
from vmqtw.mqtt import packets as P
from vmqtw.mqtt.codec import Decoder
from vmqtw.testing.rawclient import RawClient

# --------------------------------------------------------------------------
# raw-client helpers (the client is vmqtw.testing.rawclient.RawClient)


def open_raw(node: Node) -> RawClient:
    """A raw connection to the node's MQTT listener; nothing sent yet."""
    return RawClient.open(node.host, node.port, timeout=5.0)


def decode_all(data: bytes) -> List[Any]:
    return Decoder().feed(data)


def expect_close(client: RawClient, timeout: float = 5.0) -> bytes:
    """The broker closes the connection; returns what it sent before closing."""
    data, closed = client.read_until_closed(timeout)
    assert closed, "broker did not close the connection; it sent %r" % (data,)
    return data


def expect_silent_close(client: RawClient, timeout: float = 5.0) -> None:
    """"close" in the table: closed without any reply."""
    data = expect_close(client, timeout)
    assert data == b"", "expected a close without reply, got %r" % (decode_all(data),)


def connected(node: Node, client_id: Optional[str] = None, **kwargs: Any) -> RawClient:
    """A raw client that sent CONNECT and got CONNACK 0."""
    return RawClient.connect(node.host, node.port, client_id or "c-" + uuid.uuid4().hex[:12],
                             timeout=5.0, **kwargs)


def rss_kib(node: Node) -> int:
    """The node's resident set size (VmRSS), in KiB."""
    assert node.process is not None
    with open("/proc/%d/status" % node.process.pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# --------------------------------------------------------------------------
# nodes


class Ctx:
    """A running node plus a long-lived ``#`` subscriber that must keep working."""

    def __init__(self, node: Node, credentials: Optional[Tuple[str, bytes]] = None,
                 watch: bool = True, keepalive: int = 30) -> None:
        self.node = node
        self.credentials = credentials
        self.watcher: Optional[PahoClient] = None
        if watch:
            # A persistent session at QoS 1: should paho reconnect under load
            # (it does on its own), the probe still reaches it.
            self.watcher = PahoClient(node, "watcher-" + uuid.uuid4().hex[:8], connect=False,
                                      clean_session=False, keepalive=keepalive)
            if credentials:
                self.watcher.client.username_pw_set(credentials[0], credentials[1])
            self.watcher.connect()
            assert self.watcher.subscribe(("#", 1)) == [1]

    def auth(self) -> dict:
        if self.credentials is None:
            return {}
        return {"username": self.credentials[0], "password": self.credentials[1]}

    def assert_serves(self) -> None:
        """Another client is still served and the log holds no traceback."""
        token = uuid.uuid4().hex
        client = connected(self.node, "probe-" + token[:8], **self.auth())
        try:
            if self.watcher is not None:
                client.send(B.publish("probe/" + token, token.encode(), qos=1, packet_id=1))
                assert client.read(1) == [P.PubAck(1)]
                wait_until(lambda: any(m[1] == token.encode() for m in self.watcher.received()),
                           10, what="probe message at the long-lived subscriber")
            else:
                client.send(B.pingreq())
                assert client.read(1) == [P.PingResp()]
            client.send(B.disconnect())
        finally:
            client.close()
        assert "Traceback" not in self.node.log()

    def topics_seen(self) -> List[str]:
        assert self.watcher is not None
        return [m[0] for m in self.watcher.received()]

    def close(self) -> None:
        if self.watcher is not None:
            try:
                self.watcher.client.loop_stop()
                self.watcher.client.disconnect()
            except Exception:
                pass
        self.node.kill9()


def _start(tmp_path_factory: Any, name: str, settings: dict, **ctx: Any) -> Iterator[Ctx]:
    node = Node(str(tmp_path_factory.mktemp(name)), settings)
    context: Optional[Ctx] = None
    try:
        node.start()
        context = Ctx(node, **ctx)
        yield context
        assert "Traceback" not in node.log()
    finally:
        if context is not None:
            context.close()
        else:
            node.kill9()


@pytest.fixture(scope="module")
def default(tmp_path_factory: Any) -> Iterator[Ctx]:
    yield from _start(tmp_path_factory, "default", {})


LIMIT = 65536            # max_message_size of the limited node
MAX_SUBSCRIPTIONS = 10
CONNECT_TIMEOUT = 2.0
MAX_KEEPALIVE = 2


@pytest.fixture(scope="module")
def limited(tmp_path_factory: Any) -> Iterator[Ctx]:
    # 2,000 slowloris sockets live in this process and in the node (which
    # inherits the limit): make sure both may hold them.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield from _start(tmp_path_factory, "limited", {
            "max_message_size": str(LIMIT),
            "max_subscriptions_per_client": str(MAX_SUBSCRIPTIONS),
            "connect_timeout": "2s",
            "max_keepalive": "%ds" % MAX_KEEPALIVE,
        }, keepalive=1)  # below max_keepalive, or the node drops the watcher
    finally:
        if soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


#: Low iteration count: the KDF is exercised by test_auth_passwd; here it
#: only has to be the real file format.
def _pw(password: str) -> str:
    return hash_password(password, iterations=1000)


def _auth_node(tmp_path_factory: Any, name: str, passwd: str, acl: str,
               **ctx: Any) -> Iterator[Ctx]:
    directory = tmp_path_factory.mktemp(name + "-files")
    passwd_path = directory / "vmq.passwd"
    passwd_path.write_text(passwd)
    acl_path = directory / "vmq.acl"
    acl_path.write_text(acl)
    yield from _start(tmp_path_factory, name, {
        "allow_anonymous": "off",
        "plugins.vmq_passwd": "on",
        "vmq_passwd.password_file": str(passwd_path),
        "plugins.vmq_acl": "on",
        "vmq_acl.acl_file": str(acl_path),
    }, **ctx)


USERS = "".join("%s:%s\n" % (user, _pw("pw-" + user))
                for user in ("alice", "watcher", "+", "bob", "carol"))
#: A blank line, a line with an empty user and one with an empty hash: none is a user.
PASSWD = "\n   \n" + USERS + ":\n:%s\nempty:\n" % _pw("")


@pytest.fixture(scope="module")
def auth_empty_acl(tmp_path_factory: Any) -> Iterator[Ctx]:
    yield from _auth_node(tmp_path_factory, "auth-empty", PASSWD, "",
                          credentials=("alice", b"pw-alice"), watch=False)


PATTERN_ACL = """\
pattern readwrite users/%u/#
pattern readwrite clients/%c/#
user watcher
topic read #
topic write probe/#
"""


@pytest.fixture(scope="module")
def auth_pattern(tmp_path_factory: Any) -> Iterator[Ctx]:
    yield from _auth_node(tmp_path_factory, "auth-pattern", PASSWD, PATTERN_ACL,
                          credentials=("watcher", b"pw-watcher"))


# ==========================================================================
# cases 1-3: lengths and sizes


NON_CONNECT_TYPES = range(2, 16)  # CONNACK .. reserved 15: fourteen types


def test_01_huge_non_connect_first_packet(default: Ctx) -> None:
    """
    Case 1, [MQTT-3.1.0-1]: each of the 14 non-CONNECT types as the first
    packet, declaring 268,435,455 bytes, is closed without reply and the node
    grows by less than 25 MB (CVE-2023-0809: never buffer for an unauthenticated peer).
    """
    before = rss_kib(default.node)
    for kind in NON_CONNECT_TYPES:
        flags = 0b0010 if kind in (6, 8, 10) else 0
        client = open_raw(default.node)
        try:
            client.send_quietly(bytes(((kind << 4) | flags,)) + b"\xff\xff\xff\x7f")
            client.send_quietly(b"\x00" * 65536)
            expect_silent_close(client)
        finally:
            client.close()
    assert rss_kib(default.node) - before < 25 * 1024
    default.assert_serves()


def test_02_five_byte_remaining_length(default: Ctx) -> None:
    """Case 2, section 2.2.3: a fifth length byte is malformed, first packet or later."""
    client = open_raw(default.node)
    try:
        client.send(b"\x10\xff\xff\xff\xff\x7f")
        expect_silent_close(client)
    finally:
        client.close()
    client = connected(default.node)
    try:
        client.send(b"\x30\xff\xff\xff\xff\x7f")
        expect_silent_close(client)
    finally:
        client.close()
    default.assert_serves()


def trickle_until_closed(client: RawClient, header: bytes, budget: int) -> int:
    """
    Send ``header`` then zero bytes in 16 KiB chunks until the broker closes;
    returns the bytes sent.  Fails if ``budget`` bytes go out first.
    """
    sent = 0
    chunk = b"\x00" * 16384
    data = header
    selector = selectors.DefaultSelector()
    selector.register(client.sock, selectors.EVENT_READ)
    try:
        while sent < budget:
            if not client.send_quietly(data):
                return sent
            sent += len(data)
            data = chunk
            if selector.select(0):
                try:
                    if not client.sock.recv(4096):
                        return sent
                except ConnectionResetError:
                    return sent
        raise AssertionError("still open after %d bytes of a 256 MB packet" % sent)
    finally:
        selector.close()


DECLARED_256MB = B.varint(268_435_455)  # 256 MiB - 1: the largest length


def test_03_declared_256mb_connect_trickled(default: Ctx) -> None:
    """
    Case 3 (CVE-2017-7651): a CONNECT declaring 256 MB on a node without
    ``max_message_size`` is closed once it exceeds the largest CONNECT that
    can exist (5 fields of at most 65,537 bytes), never buffered to 256 MB.
    """
    before = rss_kib(default.node)
    client = open_raw(default.node)
    try:
        sent = trickle_until_closed(client, b"\x10" + DECLARED_256MB, 24 * 1024 * 1024)
    finally:
        client.close()
    # What the kernel buffers on loopback comes on top of what the broker read.
    assert sent < 16 * 1024 * 1024
    assert rss_kib(default.node) - before < 25 * 1024
    default.assert_serves()


def test_03_declared_256mb_publish_closed_at_max_message_size(limited: Ctx) -> None:
    """Case 3/32: after CONNECT, a 256 MB PUBLISH is closed as soon as its length is read."""
    before = rss_kib(limited.node)
    client = connected(limited.node)
    try:
        sent = trickle_until_closed(client, b"\x30" + DECLARED_256MB, 24 * 1024 * 1024)
    finally:
        client.close()
    assert sent < 16 * 1024 * 1024
    assert rss_kib(limited.node) - before < 25 * 1024
    limited.assert_serves()


def test_04_non_minimal_length(default: Ctx) -> None:
    """
    Case 4 is an MQTT 5 rule ([MQTT-1.5.5-1]); MQTT 3.1.1 does not forbid a
    non-minimal remaining length, so until MQTT 5 the broker reads ``C0 80 00``
    as the PINGREQ it is (the 3.1.1 answer) and keeps the connection.
    """
    client = connected(default.node)
    try:
        client.send(b"\xc0\x80\x00")
        assert client.read(1) == [P.PingResp()]
        client.send(B.publish("nonminimal/ok", b"1")[:1] + b"\x90\x00"
                    + B.publish("nonminimal/ok", b"1")[2:])
        wait_until(lambda: "nonminimal/ok" in default.topics_seen(), 5,
                   what="non-minimally framed PUBLISH delivered")
    finally:
        client.close()
    default.assert_serves()


# ==========================================================================
# cases 5-11: CONNECT


def test_05_second_connect(default: Ctx) -> None:
    """Case 5, [MQTT-3.1.0-2]: a second CONNECT is a protocol violation: close."""
    client = connected(default.node)
    try:
        client.send(B.connect("again"))
        expect_silent_close(client)
    finally:
        client.close()
    default.assert_serves()


def test_06_protocol_level_and_name(default: Ctx) -> None:
    """
    Case 6: level 6 gets CONNACK 0x01 then close [MQTT-3.1.2-2]; an unknown
    protocol name is closed without reply [MQTT-3.1.2-1].
    """
    client = open_raw(default.node)
    try:
        client.send(B.connect("lvl6", level=6))
        assert decode_all(expect_close(client)) == [P.ConnAck(1, False)]
    finally:
        client.close()
    for name in ("MQTX", "mqtt", "", b"MQ\xffT"):
        client = open_raw(default.node)
        try:
            client.send(B.connect("badname", protocol_name=name))
            expect_silent_close(client)
        finally:
            client.close()
    default.assert_serves()


@pytest.mark.parametrize("raw", [
    B.connect("reserved", reserved=True),                        # case 7 [MQTT-3.1.2-3]
    B.connect("wq", connect_flags=0x02 | (1 << 3)),              # case 8 [MQTT-3.1.2-13]
    B.connect("wr", connect_flags=0x02 | 0x20),                  # case 8 [MQTT-3.1.2-15]
    B.connect("wq3", will_topic="w", will_qos=3),                # case 8 [MQTT-3.1.2-14]
    B.connect("pw", connect_flags=0x02 | 0x40) + B.binary(b"x"),  # case 9 [MQTT-3.1.2-22]
], ids=["07-reserved", "08-will-qos-no-flag", "08-will-retain-no-flag", "08-will-qos3",
        "09-password-no-username"])
def test_07_08_09_bad_connect_flags(default: Ctx, raw: bytes) -> None:
    """Cases 7-9: malformed CONNECT flags are closed without CONNACK."""
    client = open_raw(default.node)
    try:
        client.send(raw)
        expect_silent_close(client)
    finally:
        client.close()
    default.assert_serves()


def test_10_empty_client_id_persistent_session(default: Ctx) -> None:
    """
    Case 10, [MQTT-3.1.3-8]: empty client id with CleanSession=0 gets
    CONNACK 0x02 and the socket really closes (CVE-2025-56352); the client
    can not keep using it.
    """
    client = open_raw(default.node)
    try:
        client.send(B.connect("", clean_session=False))
        assert decode_all(expect_close(client)) == [P.ConnAck(2, False)]
    finally:
        client.close()
    # Pipelined behind the refused CONNECT: must not be acted on.
    client = open_raw(default.node)
    try:
        client.send(B.connect("", clean_session=False) + B.publish("case10/leak", b"x"))
        assert decode_all(expect_close(client)) == [P.ConnAck(2, False)]
    finally:
        client.close()
    default.assert_serves()
    assert "case10/leak" not in default.topics_seen()


def test_11_client_id_over_limit(default: Ctx) -> None:
    """Case 11, [MQTT-3.1.3-9]: 101 characters (limit 100) get CONNACK 0x02, then close."""
    client = open_raw(default.node)
    try:
        client.send(B.connect("x" * 101))
        assert decode_all(expect_close(client)) == [P.ConnAck(2, False)]
    finally:
        client.close()
    client = connected(default.node, "y" * 100)  # the limit itself is fine
    client.close()
    default.assert_serves()


# ==========================================================================
# cases 12-18: strings, topics, PUBLISH

SURROGATE = b"\xed\xa0\x80"  # U+D800 encoded: ill-formed UTF-8


def test_12_ill_formed_utf8(default: Ctx) -> None:
    """
    Case 12, [MQTT-1.5.3-1] (CVE-2017-7653): ill-formed UTF-8 in the client id,
    user name, will topic, PUBLISH topic or filter closes; nothing is forwarded.
    """
    for raw in (B.connect(b"id" + SURROGATE), B.connect("u8", username=b"u" + SURROGATE),
                B.connect("w8", will_topic=b"will/" + SURROGATE)):
        client = open_raw(default.node)
        try:
            client.send(raw)
            expect_silent_close(client)
        finally:
            client.close()
    for raw in (B.publish(b"case12/" + SURROGATE, b"bad"),
                B.subscribe(1, [(b"case12/" + SURROGATE, 0)]),
                B.unsubscribe(1, [b"case12/" + SURROGATE])):
        client = connected(default.node)
        try:
            client.send(raw)
            expect_silent_close(client)
        finally:
            client.close()
    default.assert_serves()
    assert not [t for t in default.topics_seen() if t.startswith("case12")]


def test_13_nul_in_topic_or_filter(default: Ctx) -> None:
    """Case 13, [MQTT-1.5.3-2], [MQTT-4.7.3-2]: U+0000 in a topic or filter closes."""
    for raw in (B.publish(b"case13/a\x00b", b"bad"), B.subscribe(1, [(b"case13/\x00", 0)]),
                B.unsubscribe(1, [b"case13\x00"])):
        client = connected(default.node)
        try:
            client.send(raw)
            expect_silent_close(client)
        finally:
            client.close()
    default.assert_serves()
    assert not [t for t in default.topics_seen() if t.startswith("case13")]


@pytest.mark.parametrize("raw", [
    B.publish("case14/+", b"x"),                          # case 14 [MQTT-3.3.2-2]
    B.publish("case14/#", b"x"),
    B.publish("+", b"x", qos=1, packet_id=1),
    B.publish("", b"x"),                                  # case 15 [MQTT-4.7.3-1]
    B.publish("", b"x", qos=1, packet_id=2),
    B.publish("case16", b"x", flags=0b0110, packet_id=3),  # case 16 [MQTT-3.3.1-4]
    B.publish("case17", b"x", qos=1, packet_id=0),        # case 17 [MQTT-2.3.1-1]
    B.publish("case17", b"x", qos=2, packet_id=0),
    B.publish("case17t", b"", qos=1),                     # case 17: truncated after the topic
    B.publish("case17t", b"", qos=2) + b"\x00",           # one byte of packet id
], ids=["14-plus", "14-hash", "14-plus-qos1", "15-empty", "15-empty-qos1", "16-qos3",
        "17-id0-qos1", "17-id0-qos2", "17-truncated", "17-half-id"])
def test_14_to_17_bad_publish(default: Ctx, raw: bytes) -> None:
    """Cases 14-17: the PUBLISH is malformed: close without PUBACK, never routed."""
    client = connected(default.node)
    try:
        client.send(raw)
        expect_silent_close(client)
    finally:
        client.close()
    default.assert_serves()
    assert not [t for t in default.topics_seen()
                if t.startswith(("case14", "case15", "case16", "case17", "+", "#")) or t == ""]


def test_18_clients_cannot_publish_dollar_topics(default: Ctx) -> None:
    """
    Case 18, [MQTT-4.7.2-1] (CVE-2018-12543): PUBLISH to ``$SYS/x`` or ``$foo``
    is ignored without a crash (QoS 1 still acknowledged), a ``$SYS/#`` and a
    ``$foo`` subscriber get nothing, ``#`` never receives ``$`` topics.
    """
    dollar = connected(default.node)
    client = connected(default.node)
    try:
        dollar.send(B.subscribe(1, [("$SYS/#", 0), ("$foo", 0), ("case18", 0)]))
        assert dollar.read(1) == [P.SubAck(1, [0, 0, 0])]
        client.send(B.publish("$SYS/x", b"fake", qos=1, packet_id=7)
                    + B.publish("$foo", b"fake", qos=1, packet_id=8)
                    + B.publish("$SYS/x", b"fake", retain=True)
                    + B.publish("case18", b"real"))
        assert client.read(2) == [P.PubAck(7), P.PubAck(8)]
        # "case18" was sent last: once it arrives the $ messages would have.
        assert dollar.read(1) == [P.Publish("case18", b"real")]
        wait_until(lambda: "case18" in default.topics_seen(), 5, what="case18 at #")
        assert not [t for t in default.topics_seen() if t.startswith("$")]
        client.send(B.pingreq())
        assert client.read(1) == [P.PingResp()]
    finally:
        client.close()
        dollar.close()
    default.assert_serves()


# ==========================================================================
# cases 19-26: SUBSCRIBE, UNSUBSCRIBE, QoS flows


@pytest.mark.parametrize("raw", [
    B.subscribe(1, [("a", 0)], flags=0),                   # case 19 [MQTT-3.8.1-1]
    B.subscribe(1, [("a", 0)], flags=0b0011),
    B.unsubscribe(1, ["a"], flags=0),                      # case 19 [MQTT-3.10.1-1]
    B.pubrel(1, flags=0),                                  # case 19 [MQTT-3.6.1-1]
    B.pubrel(1, flags=0b1010),
    B.packet("SUBSCRIBE", 0b0010, B.u16(1)),               # case 20 [MQTT-3.8.3-3]
    B.packet("UNSUBSCRIBE", 0b0010, B.u16(1)),             # case 20 [MQTT-3.10.3-2]
    B.subscribe(1, [("a", 3)]),                            # case 20 [MQTT-3.8.3-4]
    B.subscribe(1, [("a", 0x41)]),
    B.subscribe(1, [("a", 0), ("b", 0x80)]),
], ids=["19-sub-flags0", "19-sub-flags3", "19-unsub-flags0", "19-pubrel-flags0",
        "19-pubrel-flags-a", "20-sub-empty", "20-unsub-empty", "20-qos3", "20-reserved",
        "20-reserved-second"])
def test_19_20_bad_subscribe_unsubscribe(default: Ctx, raw: bytes) -> None:
    """Cases 19-20: wrong fixed-header flags, no filters, bad QoS byte: close, no SUBACK."""
    client = connected(default.node)
    try:
        client.send(raw)
        expect_silent_close(client)
    finally:
        client.close()
    default.assert_serves()


BAD_FILTERS = ["case21/#/b", "case21/b#", "case21+/b", "", "$share/ab", "$share//t",
               "case21/+x", "#/case21", "$share/g/"]


def test_21_invalid_filters_refused_never_stored(default: Ctx) -> None:
    """
    Case 21, [MQTT-4.7.1-2/3] (CVE-2025-68699): each invalid filter gets
    SUBACK 0x80 while a valid one in the same packet is granted; nothing is
    stored, so topics those filters might match loosely are not delivered,
    and unsubscribing them is harmless.
    """
    client = connected(default.node)
    publisher = connected(default.node)
    try:
        client.send(B.subscribe(5, [(f, 1) for f in BAD_FILTERS] + [("case21/ok", 1)]))
        assert client.read(1) == [P.SubAck(5, [0x80] * len(BAD_FILTERS) + [1])]
        for topic in ("case21/x/b", "case21/b", "case21/bx", "case21x/b", "ab", "t", "case21/x",
                      "x/case21", "case21/ok"):
            publisher.send(B.publish(topic, topic.encode()))
        # Only the last one matches; anything before it would arrive first.
        assert client.read(1) == [P.Publish("case21/ok", b"case21/ok")]
        client.send(B.unsubscribe(6, BAD_FILTERS) + B.pingreq())
        assert client.read(2) == [P.UnsubAck(6), P.PingResp()]
    finally:
        client.close()
        publisher.close()
    default.assert_serves()


def test_21_well_formed_shared_filters_granted_beside_malformed_ones(default: Ctx) -> None:
    """
    Case 21 for ``$share``: ``$share/<group>/<filter>`` is granted and
    routes (one member of the group gets each message); the malformed forms
    (no filter, a wildcard in the group) are still refused with 0x80.
    """
    member = connected(default.node)
    publisher = connected(default.node)
    try:
        member.send(B.subscribe(7, [("$share/case21/case21/shared", 1), ("$share/case21", 1),
                                    ("$share/c+/case21/shared", 1), ("$share/c#/x", 1)]))
        assert member.read(1) == [P.SubAck(7, [1, 0x80, 0x80, 0x80])]
        publisher.send(B.publish("case21/shared", b"one", qos=1, packet_id=1))
        assert publisher.read(1) == [P.PubAck(1)]
        [got] = member.read(1)
        assert isinstance(got, P.Publish) and got.payload == b"one"
        member.send(B.puback(got.packet_id))
    finally:
        member.close()
        publisher.close()
    default.assert_serves()


def deep_topic(levels: int, size: int) -> str:
    topic = "/".join(["a"] * levels)
    return topic + "z" * (size - len(topic))


def test_22_deep_topic_rejected(default: Ctx) -> None:
    """
    Case 22 (CVE-2019-11779): a 65,535-byte topic of 30,000 levels is refused
    by ``topic_max_depth`` (10): the PUBLISH closes, the filter gets 0x80;
    nothing recurses 30,000 deep (no traceback, node alive).
    """
    topic = deep_topic(30_000, 65_535)
    assert len(topic.encode()) == 65_535 and topic.count("/") == 29_999
    client = connected(default.node)
    try:
        client.send(B.subscribe(1, [(topic, 0), ("/".join(["+"] * 30_000), 0)]))
        assert client.read(1) == [P.SubAck(1, [0x80, 0x80])]
        client.send(B.publish(topic, b"deep"))
        expect_silent_close(client)
    finally:
        client.close()
    default.assert_serves()


def test_23_pathological_wildcards(default: Ctx) -> None:
    """
    Case 23: 1,000 wildcard-heavy filters (one per millisecond's worth of a
    1k/s stream) do not make matching expensive: a publish to a deep topic
    still round-trips quickly and only matching filters deliver.
    """
    filters = []
    for i in range(1000):
        levels = ["p"] + ["+" if (i >> bit) & 1 else "p" for bit in range(1, 9)]
        filters.append("/".join(levels) + ("/#" if i % 2 else "/x%d" % i))
    client = connected(default.node)
    publisher = connected(default.node)
    try:
        for start in range(0, 1000, 100):
            client.send(B.subscribe(start + 1, [(f, 0) for f in filters[start:start + 100]]))
        acks = client.read(10, timeout=10)
        assert all(isinstance(a, P.SubAck) and a.return_codes == [0] * 100 for a in acks)
        started = time.monotonic()
        publisher.send(B.publish("q/q/q/q/q/q/q/q/q/x", b"nomatch")
                       + B.publish("p/p/p/p/p/p/p/p/p/x0", b"match"))
        # Exactly one delivery per message, whatever the number of matches [MQTT-3.3.5-1]
        assert client.read(1) == [P.Publish("p/p/p/p/p/p/p/p/p/x0", b"match")]
        assert time.monotonic() - started < 1.0
        # A second copy would come before the answer to a later PINGREQ.
        client.send(B.pingreq())
        assert client.read(1) == [P.PingResp()]
    finally:
        client.close()
        publisher.close()
    default.assert_serves()


def test_24_qos2_same_id_repeated(default: Ctx) -> None:
    """
    Case 24, [MQTT-4.3.3] (CVE-2023-28366): 100 QoS 2 PUBLISHes with one id
    and no PUBREL deliver once, each answered by PUBREC; 2,000 ids never
    released keep the node's memory bounded.
    """
    watcher = connected(default.node)
    client = connected(default.node)
    try:
        watcher.send(B.subscribe(1, [("case24/once", 2), ("case24/end", 0)]))
        assert watcher.read(1) == [P.SubAck(1, [2, 0])]
        client.send(B.publish("case24/once", b"once", qos=2, packet_id=42) + b"".join(
            B.publish("case24/once", b"once", qos=2, packet_id=42, dup=True) for _ in range(99)))
        assert client.read(100) == [P.PubRec(42)] * 100
        before = rss_kib(default.node)
        client.send(b"".join(B.publish("case24/many", b"m" * 100, qos=2, packet_id=i)
                             for i in range(100, 2100)))
        assert len(client.read(2000, timeout=10)) == 2000
        assert rss_kib(default.node) - before < 25 * 1024
        # "end" was published last: any second copy of "once" would precede it.
        client.send(B.publish("case24/end", b"end", qos=0))
        got = watcher.read(2)
        assert [(p.topic, p.qos) for p in got] == [("case24/once", 2), ("case24/end", 0)]
        client.send(B.pingreq())
        assert client.read(1)[-1] == P.PingResp()
    finally:
        client.close()
        watcher.close()
    default.assert_serves()


def test_25_inflight_window_and_unread_acks(default: Ctx) -> None:
    """
    Case 25, section 4.9: towards a subscriber that never acknowledges, at
    most ``max_inflight_messages`` (20) QoS 1 messages are in flight; the rest
    wait until acknowledgements arrive.  A publisher that floods 20,000 QoS 1
    messages without reading its PUBACKs keeps the node's memory bounded and
    then gets every PUBACK in order [MQTT-4.6.0-2].
    """
    slow = connected(default.node)
    client = connected(default.node)
    try:
        slow.send(B.subscribe(1, [("case25/slow", 1)]))
        assert slow.read(1) == [P.SubAck(1, [1])]
        client.send(b"".join(B.publish("case25/slow", b"%d" % i, qos=1, packet_id=i + 1)
                             for i in range(50)))
        assert len(client.read(50)) == 50
        first = slow.read(20)
        assert [p.payload for p in first] == [b"%d" % i for i in range(20)]
        data, closed = slow.read_until_closed(timeout=0.5)
        assert not closed and data == b"", "more than 20 in flight: %r" % (decode_all(data),)
        slow.send(b"".join(B.puback(p.packet_id) for p in first))
        second = slow.read(20)
        assert [p.payload for p in second] == [b"%d" % i for i in range(20, 40)]

        before = rss_kib(default.node)
        flood = b"".join(B.publish("case25/flood", b"f", qos=1, packet_id=(i % 65535) + 1)
                         for i in range(20_000))
        client.send(flood)
        acks = client.read(20_000, timeout=20)
        assert [a.packet_id for a in acks] == [(i % 65535) + 1 for i in range(20_000)]
        assert rss_kib(default.node) - before < 25 * 1024
    finally:
        client.close()
        slow.close()
    default.assert_serves()


def test_26_subscription_cap(limited: Ctx) -> None:
    """
    Case 26: 100,000 subscriptions from one client are capped at
    ``max_subscriptions_per_client`` (10): the rest get SUBACK 0x80 and
    are not delivered; re-subscribing an existing filter is still allowed.
    """
    client = connected(limited.node)
    publisher = None
    try:
        codes: List[int] = []
        for batch in range(100):
            client.send(B.subscribe(batch + 1, [("case26/%05d" % (batch * 1000 + i), 0)
                                                for i in range(1000)]))
            ack = client.read(1)[0]
            assert ack.packet_id == batch + 1
            codes.extend(ack.return_codes)
        assert codes == [0] * MAX_SUBSCRIPTIONS + [0x80] * (100_000 - MAX_SUBSCRIPTIONS)
        client.send(B.subscribe(200, [("case26/00000", 1)]))
        assert client.read(1) == [P.SubAck(200, [1])]
        publisher = connected(limited.node)  # here: keepalive is capped at 2 s
        publisher.send(B.publish("case26/00010", b"capped") + B.publish("case26/00009", b"in"))
        assert client.read(1) == [P.Publish("case26/00009", b"in")]
    finally:
        client.close()
        if publisher is not None:
            publisher.close()
    limited.assert_serves()


# ==========================================================================
# cases 27-32: timeouts, wills, server packets, sizes


def test_27_slowloris(limited: Ctx) -> None:
    """
    Case 27 (slowloris, CVE-2020-13849): 2,000 silent sockets and 50 that
    trickle one byte of a CONNECT every 0.5 s are all closed by
    ``connect_timeout`` (2 s; never before it, within 5 s of scheduling
    slack after it), while a connected client's publish round trip keeps a
    p99 under 0.5 s (or 10 times its worst round trip before the flood).
    """
    node = limited.node
    live = connected(node, "case27-live")
    live.send(B.subscribe(1, [("case27/lat", 0)]))
    assert live.read(1) == [P.SubAck(1, [0])]

    def round_trip() -> float:
        started = time.monotonic()
        live.send(B.publish("case27/lat", b"t"))
        assert live.read(1) == [P.Publish("case27/lat", b"t")]
        return time.monotonic() - started

    baseline = [round_trip() for _ in range(20)]
    selector = selectors.DefaultSelector()
    opened: Dict[RawClient, float] = {}
    tricklers: List[RawClient] = []
    closed_after: List[float] = []
    trickle = B.connect("slow-loris-client-id")
    latencies: List[float] = []
    try:
        for i in range(2050):
            silent = open_raw(node)
            silent.sock.setblocking(False)
            opened[silent] = time.monotonic()
            selector.register(silent.sock, selectors.EVENT_READ, silent)
            if i >= 2000:
                tricklers.append(silent)
            if i % 40 == 39:
                # Also paces the flood: the node has accepted every socket
                # opened before this round trip when it answers, so the
                # listen backlog (50) never overflows into 1 s SYN retries.
                latencies.append(round_trip())
        # Slack for a loaded 2-core machine; without the connect timeout
        # the sockets would stay open forever, so any bound tells.
        deadline = time.monotonic() + CONNECT_TIMEOUT + 10
        step = 0
        next_trickle = time.monotonic()
        while opened and time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_trickle:
                for trickler in tricklers:
                    if trickler in opened and step < len(trickle) - 1:
                        trickler.send_quietly(trickle[step:step + 1])
                step += 1
                next_trickle = now + 0.5
            for key, _ in selector.select(0.05):
                silent = key.data
                try:
                    data = silent.sock.recv(4096)
                except ConnectionResetError:
                    data = b""
                except BlockingIOError:
                    continue
                assert data == b"", "a socket without CONNECT got %r" % (data,)
                closed_after.append(time.monotonic() - opened.pop(silent))
                selector.unregister(silent.sock)
            latencies.append(round_trip())
        assert not opened, "%d sockets still open %.1f s after the connect timeout" % (
            len(opened), CONNECT_TIMEOUT + 10)
        assert len(closed_after) == 2050
        assert max(closed_after) < CONNECT_TIMEOUT + 5.0, max(closed_after)
        assert min(closed_after) > CONNECT_TIMEOUT - 0.2, min(closed_after)
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        assert p99 < max(0.5, 10 * max(baseline)), (p99, max(baseline))
    finally:
        for key in list(selector.get_map().values()):
            key.data.close()
        selector.close()
        for silent in list(opened):
            silent.close()
        live.close()
    limited.assert_serves()


def test_28_keepalive_capped_and_will_on_expiry(limited: Ctx) -> None:
    """
    Case 28, [MQTT-3.1.2-24], [MQTT-3.1.2-8]: keepalive 65535 is capped by
    ``max_keepalive`` (2 s); after 1.5 × 2 s of silence the broker closes the
    connection and publishes the will.
    """
    client = connected(limited.node, "case28", keepalive=65535, will_topic="case28/will",
                       will_message=b"gone")
    started = time.monotonic()
    try:
        expect_silent_close(client, timeout=1.5 * MAX_KEEPALIVE + 3)
    finally:
        client.close()
    elapsed = time.monotonic() - started
    assert 1.5 * MAX_KEEPALIVE - 0.2 <= elapsed < 1.5 * MAX_KEEPALIVE + 2.5, elapsed
    wait_until(lambda: "case28/will" in limited.topics_seen(), 5, what="will published")
    limited.assert_serves()


def test_29_bad_will_topics(default: Ctx) -> None:
    """
    Case 29: a will topic with a wildcard, ``$SYS``, bad UTF-8 or more levels
    than ``topic_max_depth`` is refused (close, or CONNACK 5 for ``$SYS``) and
    never fires; a valid will still fires on a 3.1.1 takeover.
    """
    for topic in ("case29/+", "case29/#", deep_topic(12, 30)):
        client = open_raw(default.node)
        try:
            client.send(B.connect("case29", will_topic=topic, will_message=b"x"))
            expect_silent_close(client)
        finally:
            client.close()
    client = open_raw(default.node)
    try:
        client.send(B.connect("case29", will_topic="$SYS/will", will_message=b"x"))
        assert decode_all(expect_close(client)) == [P.ConnAck(5, False)]
    finally:
        client.close()
    old = connected(default.node, "case29-takeover", will_topic="case29/will",
                    will_message=b"taken over")
    new = connected(default.node, "case29-takeover")
    try:
        expect_silent_close(old)
        wait_until(lambda: "case29/will" in default.topics_seen(), 5,
                   what="will on takeover")
    finally:
        old.close()
        new.close()
    default.assert_serves()
    assert [t for t in default.topics_seen() if t.startswith(("case29", "$"))] == ["case29/will"]


@pytest.mark.parametrize("raw", [
    B.connack(0), B.suback(1, [0]), B.unsuback(1), B.pingresp(),
], ids=["connack", "suback", "unsuback", "pingresp"])
def test_30_server_only_packets(default: Ctx, raw: bytes) -> None:
    """Case 30 (CVE-2021-28166): a client sending a server-only packet is closed."""
    client = connected(default.node)
    try:
        client.send(raw)
        expect_silent_close(client)
    finally:
        client.close()
    default.assert_serves()


def v5_connect(properties: bytes) -> bytes:
    """An MQTT 5 CONNECT (level 5) with the given raw property block."""
    variable = B.utf8("MQTT") + bytes((5, 0x02)) + B.u16(60)
    props = B.varint(len(properties)) + properties
    return B.packet("CONNECT", 0, variable + props + B.utf8("v5client"))


def test_31_mqtt5_property_abuse(default: Ctx) -> None:
    """
    Case 31 (CVE-2021-41039): MQTT 5 CONNECTs with a duplicated property or
    topic-alias maximum abuse get CONNACK 0x82 Protocol Error and are closed
    (section 4.13.1), 10k user properties are read in linear time and
    accepted; each answer comes at once.
    """
    user_property = b"\x26" + B.utf8("k") + B.utf8("v")
    for props, code in ((b"\x11\x00\x00\x00\x0a" * 2, 0x82),        # session expiry twice
                        (user_property * 10_000, 0x00),
                        (b"\x22\x00\x00" + b"\x22\xff\xff", 0x82)):  # topic alias maximum twice
        client = open_raw(default.node)
        started = time.monotonic()
        try:
            client.send(v5_connect(props))
            if code:
                packets = Decoder(protocol_level=5).feed(expect_close(client))
            else:
                client.sock.settimeout(5.0)   # a CONNACK comes as one segment
                packets = Decoder(protocol_level=5).feed(client.sock.recv(65536))
            assert len(packets) == 1 and isinstance(packets[0], P.ConnAck), packets
            assert packets[0].reason_code == code
        finally:
            client.close()
        assert time.monotonic() - started < 2.0
    default.assert_serves()


def test_32_packet_above_max_message_size(limited: Ctx) -> None:
    """
    Case 32: a PUBLISH one byte above ``max_message_size`` closes the
    connection; one of exactly that size is delivered.
    """
    client = connected(limited.node)
    try:
        topic = "case32/ok"
        header = len(B.publish(topic, b""))  # fixed header with a 1-byte length
        # The exact-size packet has a 3-byte remaining length: two more than `header`.
        payload = b"p" * (LIMIT - header - 2)
        exact = B.publish(topic, payload)
        assert len(exact) == LIMIT
        client.send(exact)
        wait_until(lambda: topic in limited.topics_seen(), 5, what="max-size publish")
        client.send(B.publish("case32/big", payload + b"p"))
        expect_silent_close(client)
    finally:
        client.close()
    limited.assert_serves()
    assert "case32/big" not in limited.topics_seen()


# ==========================================================================
# cases 33-34: authentication and ACLs (plugins.vmq_passwd, plugins.vmq_acl)


def connack_code(node: Node, client_id: str, **kwargs: Any) -> int:
    """The CONNACK return code for this CONNECT; refusals must also close."""
    client = open_raw(node)
    try:
        client.send(B.connect(client_id, **kwargs))
        connack = client.read(1)[0]
        assert isinstance(connack, P.ConnAck), connack
        if connack.return_code:
            expect_close(client)
        return connack.return_code
    finally:
        client.close()


def test_33_anonymous_and_blank_password_lines(auth_empty_acl: Ctx) -> None:
    """
    Case 33 (CVE-2018-12551): with ``allow_anonymous = off`` an anonymous
    CONNECT gets CONNACK 5; blank, user-less and hash-less lines of the
    password file are not users (empty user/password or ``empty`` refused).
    """
    node = auth_empty_acl.node
    assert connack_code(node, "anon") == 5
    assert connack_code(node, "blank", username="", password=b"") in (4, 5)
    assert connack_code(node, "empty", username="empty", password=b"") in (4, 5)
    assert connack_code(node, "alice", username="alice", password=b"wrong") in (4, 5)
    assert connack_code(node, "alice", username="alice", password=b"pw-alice") == 0
    auth_empty_acl.assert_serves()


def test_33_empty_acl_denies_everything(auth_empty_acl: Ctx) -> None:
    """Case 33 (CVE-2018-12550): an empty ACL file denies every subscribe and publish."""
    client = connected(auth_empty_acl.node, "alice-1", username="alice", password=b"pw-alice")
    other = connected(auth_empty_acl.node, "alice-2", username="alice", password=b"pw-alice")
    try:
        client.send(B.subscribe(1, [("#", 0), ("t", 0)]))
        assert client.read(1) == [P.SubAck(1, [0x80, 0x80])]
        other.send(B.subscribe(1, [("t", 0)]))
        assert other.read(1) == [P.SubAck(1, [0x80])]
        client.send(B.publish("t", b"denied", qos=1, packet_id=1) + B.pingreq())
        assert client.read(2) == [P.PubAck(1), P.PingResp()]
        data, closed = other.read_until_closed(timeout=0.5)
        assert data == b"" and not closed
    finally:
        client.close()
        other.close()
    auth_empty_acl.assert_serves()


def test_33_wildcard_identities_never_match_patterns(auth_pattern: Ctx) -> None:
    """
    Case 33 (CVE-2017-7650): ``pattern ... users/%u/#`` and ``clients/%c/#``
    grant a normal user its own tree but never turn a user name or client id of
    ``+`` or ``#`` into a wildcard.
    """
    node = auth_pattern.node
    alice = connected(node, "alice-c", username="alice", password=b"pw-alice")
    plus = connected(node, "+", username="+", password=b"pw-+")
    # "#" can not be a user name in the file (it starts a comment): a client id.
    hash_ = connected(node, "#", username="bob", password=b"pw-bob")
    try:
        alice.send(B.subscribe(1, [("users/alice/#", 0), ("clients/alice-c/x", 0)]))
        assert alice.read(1) == [P.SubAck(1, [0, 0])]
        plus.send(B.subscribe(1, [("users/+/#", 0), ("clients/+/x", 0), ("users/alice/x", 0)]))
        assert plus.read(1) == [P.SubAck(1, [0x80, 0x80, 0x80])]
        hash_.send(B.subscribe(1, [("users/#", 0), ("clients/#", 0)]))
        assert hash_.read(1) == [P.SubAck(1, [0x80, 0x80])]
        plus.send(B.publish("users/alice/x", b"from-plus"))
        hash_.send(B.publish("clients/alice-c/x", b"from-hash"))
        alice.send(B.publish("users/alice/x", b"own"))
        assert alice.read(1) == [P.Publish("users/alice/x", b"own")]
    finally:
        alice.close()
        plus.close()
        hash_.close()
    auth_pattern.assert_serves()


def subscribe_code(node: Node, client_id: str, flt: str, **kwargs: Any) -> int:
    """The SUBACK return code a fresh connection gets for ``flt``."""
    client = connected(node, client_id, **kwargs)
    try:
        client.send(B.subscribe(1, [(flt, 0)]))
        return client.read(1)[0].return_codes[0]
    finally:
        client.close()


RELOAD_ACL_BEFORE = """\
user watcher
topic read #
topic write probe/#
user alice
topic read secret/#
user bob
topic write secret/#
topic write retained/#
user carol
topic read retained/#
"""

RELOAD_ACL_AFTER = """\
user watcher
topic read #
topic write probe/#
user alice
topic read public/#
user bob
topic write secret/#
user carol
topic read retained/#
"""


@pytest.fixture(scope="module")
def auth_reload(tmp_path_factory: Any) -> Iterator[Ctx]:
    yield from _auth_node(tmp_path_factory, "auth-reload", PASSWD, RELOAD_ACL_BEFORE,
                          credentials=("watcher", b"pw-watcher"))


def test_34_acl_revocation_rechecks_subscriptions_and_retained(auth_reload: Ctx) -> None:
    """
    Case 34 (CVE-2021-34434, CVE-2018-12546): after the ACL is changed and
    reloaded (SIGHUP), alice's existing ``secret/#`` subscription no longer
    delivers, and bob's retained message is not given to a new subscriber once
    bob may no longer write its topic.
    """
    node = auth_reload.node
    alice = connected(node, "alice", username="alice", password=b"pw-alice")
    bob = connected(node, "bob", username="bob", password=b"pw-bob")
    carol = None
    try:
        alice.send(B.subscribe(1, [("secret/#", 0)]))
        assert alice.read(1) == [P.SubAck(1, [0])]
        bob.send(B.publish("secret/a", b"before") + B.publish("retained/r", b"kept",
                                                              retain=True, qos=1, packet_id=1))
        assert bob.read(1) == [P.PubAck(1)]
        assert alice.read(1) == [P.Publish("secret/a", b"before")]

        acl_path = node.settings["vmq_acl.acl_file"]
        with open(acl_path, "w") as handle:
            handle.write(RELOAD_ACL_AFTER)
        assert node.process is not None
        os.kill(node.process.pid, signal.SIGHUP)
        # The new ACL lets alice read public/#: once it does, the reload happened.
        wait_until(lambda: subscribe_code(node, "alice-poll", "public/x", username="alice",
                                          password=b"pw-alice") == 0,
                   10, interval=0.2, what="ACL reload")

        bob.send(B.publish("secret/b", b"after") + B.pingreq())
        assert bob.read(1) == [P.PingResp()]
        data, _ = alice.read_until_closed(timeout=1.0)
        assert b"after" not in data, decode_all(data)

        carol = connected(node, "carol", username="carol", password=b"pw-carol")
        carol.send(B.subscribe(1, [("retained/#", 0)]) + B.pingreq())
        assert carol.read(2) == [P.SubAck(1, [0]), P.PingResp()]
    finally:
        alice.close()
        bob.close()
        if carol is not None:
            carol.close()
    auth_reload.assert_serves()


def test_fuzzed_streams_against_the_live_node(default: Ctx) -> None:
    """
    All cases at once, shuffled: 500 seeded mutated streams from
    ``benchmarks/fuzz_live.py`` over real sockets; every malformed one is
    closed by the node, which keeps serving (the long run is that script).
    """
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "benchmarks", "fuzz_live.py")
    spec = importlib.util.spec_from_file_location("fuzz_live", path)
    fuzz_live = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz_live)  # type: ignore[union-attr]
    result = fuzz_live.run_live(500, seed=11, host=default.node.host, port=default.node.port,
                                parallel=32, timeout=5.0, check_every=250)
    assert result["ok"], result["failures"]
    assert result["probes"] == 2 and result["malformed"] > 0
    default.assert_serves()
