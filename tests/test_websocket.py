"""
MQTT over WebSocket in process: the real registry and sessions behind
:class:`~vmqtw.mqtt.websocket.MQTTWebSocketFactory` over ``StringTransport``,
time from a ``task.Clock``.  The client side is written here by hand (the
HTTP upgrade, masked frames out, frames in), independent of autobahn, so a
test fails when what goes over the wire is wrong, not merely when two
halves of one library disagree.
"""
from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from tests.test_tls import Pki
from vmqtw.config import Config, ConfigError, parse_config
from vmqtw.mqtt import packets as P
from vmqtw.mqtt.codec import Decoder
from vmqtw.mqtt.websocket import (MAX_HANDSHAKE_BYTES, Accept, MQTTWebSocketFactory, Refuse,
                                  answer_opening)
from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Broker
from vmqtw.tls import wss_options_from_config
from vmqtw.types import SubscriberId

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BINARY, TEXT, CLOSE = 0x2, 0x1, 0x8


# -- the opening answer (pure) -----------------------------------------------------


def test_mqtt_subprotocol_on_mqtt_path_accepted():
    """[MQTT-6.0.0-4]: the server answers with the subprotocol mqtt."""
    assert answer_opening("/mqtt", ["mqtt"]) == Accept("mqtt")


def test_first_known_subprotocol_in_client_order_wins():
    """As VerneMQ: the client's first offer that the server knows (mqttv3.1 too)."""
    assert answer_opening("/mqtt", ["wamp", "mqttv3.1", "mqtt"]) == Accept("mqttv3.1")
    assert answer_opening("/mqtt", ["mqtt", "mqttv3.1"]) == Accept("mqtt")


def test_no_or_another_subprotocol_refused():
    for offered in ([], ["wamp.2.json"], ["MQTT"]):
        answer = answer_opening("/mqtt", offered)
        assert isinstance(answer, Refuse) and answer.code == 400, offered
        assert "subprotocol mqtt" in answer.reason


def test_other_path_refused():
    answer = answer_opening("/", ["mqtt"])
    assert isinstance(answer, Refuse) and answer.code == 404


# -- a hand-written WebSocket client -------------------------------------------------


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame [RFC 6455 5.2]."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> List[Tuple[int, bytes]]:
    """(opcode, payload) of every complete, unmasked server frame in ``data``."""
    frames = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        assert not data[1] & 0x80, "a server must not mask its frames"
        offset = 2
        if length == 126:
            length, offset = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            length, offset = struct.unpack("!Q", data[2:10])[0], 10
        frames.append((opcode, data[offset:offset + length]))
        data = data[offset + length:]
    return frames


def upgrade_request(path: str = "/mqtt", protocols: Optional[Sequence[str]] = ("mqtt",),
                    key: bytes = b"dGhlIHNhbXBsZSBub25jZQ==") -> bytes:
    lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:8080", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: " + key.decode(),
             "Sec-WebSocket-Version: 13"]
    if protocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class SocketTransport(StringTransport):
    """StringTransport, tolerant as TCP and TLS transports are of unregistering no producer."""

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


class WSClient:
    """One raw WebSocket connection to an in-process broker."""

    def __init__(self, factory: MQTTWebSocketFactory, port: int = 40001) -> None:
        self.transport = SocketTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        self.protocol: Any = protocol
        protocol.makeConnection(self.transport)
        self.decoder = Decoder()
        self.response = b""

    def upgrade(self, **kwargs: Any) -> bytes:
        """Send the upgrade request; the HTTP answer (status line and headers)."""
        self.protocol.dataReceived(upgrade_request(**kwargs))
        data = self.transport.value()
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data
        self.transport.clear()
        self.transport.write(rest)  # frames right behind the answer, if any
        self.response = head
        return head

    def send(self, data: bytes, opcode: int = BINARY) -> None:
        self.protocol.dataReceived(client_frame(opcode, data))

    def frames(self) -> List[Tuple[int, bytes]]:
        data = self.transport.value()
        self.transport.clear()
        return server_frames(data)

    def received(self) -> List[Any]:
        """The MQTT packets in the binary messages the broker sent (each checked binary)."""
        packets = []
        for opcode, payload in self.frames():
            assert opcode == BINARY, (opcode, payload)
            packets += self.decoder.feed(payload)
        return packets

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def finish_close(self) -> None:
        """Deliver connectionLost, as the reactor does after a close."""
        self.protocol.connectionLost(Failure(ConnectionDone()))


def ws_broker(**kwargs: Any) -> Tuple[Broker, MQTTWebSocketFactory]:
    broker = Broker(**kwargs)
    return broker, MQTTWebSocketFactory(broker.factory, broker.clock)


def connected(factory: MQTTWebSocketFactory, client_id: str, port: int = 40001) -> WSClient:
    client = WSClient(factory, port)
    client.upgrade()
    client.send(B.connect(client_id))
    assert client.received() == [P.ConnAck(0, False)]
    return client


# -- the handshake -------------------------------------------------------------------


def test_upgrade_answers_101_with_mqtt_subprotocol_and_accept_key():
    """[MQTT-6.0.0-4] and RFC 6455 4.2.2: 101, the subprotocol, the accept key."""
    _, factory = ws_broker()
    client = WSClient(factory)
    key = base64.b64encode(os.urandom(16))
    head = client.upgrade(key=key).decode()
    lines = head.split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101"), head
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["sec-websocket-protocol"] == "mqtt"
    expected = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
    assert headers["sec-websocket-accept"] == expected
    assert "sec-websocket-extensions" not in headers  # no permessage-deflate
    assert "server" not in headers
    assert not client.closed


def test_client_offering_no_subprotocol_refused_before_any_mqtt():
    """Refused with one info line: nothing a client causes is logged as a warning."""
    _, factory = ws_broker()
    client = WSClient(factory)
    events: List[Dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        head = client.upgrade(protocols=None)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert head.startswith(b"HTTP/1.1 400"), head
    assert client.closed
    assert [(e["log_level"], e["log_namespace"]) for e in events] == [
        (LogLevel.info, "vmqtw.mqtt.websocket")], events


def test_client_offering_another_subprotocol_refused():
    _, factory = ws_broker()
    client = WSClient(factory)
    head = client.upgrade(protocols=["wamp.2.json"])
    assert head.startswith(b"HTTP/1.1 400"), head
    assert client.closed


def test_other_path_gets_404():
    _, factory = ws_broker()
    client = WSClient(factory)
    assert client.upgrade(path="/").startswith(b"HTTP/1.1 404")
    assert client.closed


def test_endless_upgrade_request_cut_off():
    """Headers are not buffered without end: past the limit the socket is aborted."""
    _, factory = ws_broker()
    client = WSClient(factory)
    client.protocol.dataReceived(b"GET /mqtt HTTP/1.1\r\n")
    filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    for _ in range(MAX_HANDSHAKE_BYTES // len(filler) + 1):
        if client.closed:
            break
        client.protocol.dataReceived(filler)
    assert client.closed
    assert client.transport.value() == b""  # no answer, aborted


def test_connect_timeout_covers_the_upgrade():
    """A client that never finishes the upgrade is closed at connect_timeout."""
    broker, factory = ws_broker(connect_timeout=5.0)
    client = WSClient(factory)
    client.protocol.dataReceived(b"GET /mqtt HTTP/1.1\r\n")
    broker.clock.advance(4.9)
    assert not client.closed
    broker.clock.advance(0.2)
    assert client.closed


def test_max_connections_counts_websocket_connections():
    broker = Broker()
    broker.factory.max_connections = 1
    factory = MQTTWebSocketFactory(broker.factory, broker.clock)
    first = WSClient(factory)
    assert factory.buildProtocol(None) is None
    first.finish_close()
    assert factory.buildProtocol(None) is not None


# -- MQTT in binary messages ---------------------------------------------------------


def test_publish_subscribe_qos0_and_qos1():
    _, factory = ws_broker()
    subscriber = connected(factory, "sub", 40001)
    subscriber.send(B.subscribe(1, [("t/#", 1)]))
    assert subscriber.received() == [P.SubAck(1, [1])]
    publisher = connected(factory, "pub", 40002)
    publisher.send(B.publish("t/0", b"zero"))
    publisher.send(B.publish("t/1", b"one", qos=1, packet_id=7))
    assert publisher.received() == [P.PubAck(7)]
    got = [(p.topic, p.payload, p.qos) for p in subscriber.received()]
    assert got == [("t/0", b"zero", 0), ("t/1", b"one", 1)]


def test_a_packet_split_over_messages_and_packets_sharing_one():
    """[MQTT-6.0.0-2]: packets are not aligned with WebSocket messages."""
    _, factory = ws_broker()
    client = WSClient(factory)
    client.upgrade()
    connect = B.connect("split")
    client.send(connect[:3])
    assert client.received() == []
    client.send(connect[3:] + B.pingreq())
    assert client.received() == [P.ConnAck(0, False), P.PingResp()]


def test_fragmented_binary_message_streams_into_mqtt():
    _, factory = ws_broker()
    client = WSClient(factory)
    client.upgrade()
    connect = B.connect("frag")
    client.protocol.dataReceived(client_frame(BINARY, connect[:5], fin=False))
    client.protocol.dataReceived(client_frame(0x0, connect[5:], fin=True))
    assert client.received() == [P.ConnAck(0, False)]


def test_text_message_closes_with_1003():
    """[MQTT-6.0.0-1]: a non-binary data frame closes the connection."""
    broker, factory = ws_broker()
    client = connected(factory, "texter")
    client.send(B.pingreq(), opcode=TEXT)  # not even UTF-8
    frames = client.frames()
    assert [opcode for opcode, _ in frames] == [CLOSE]
    assert struct.unpack("!H", frames[0][1][:2])[0] == 1003
    assert client.closed
    client.send(B.publish("t", b"ignored"))
    assert client.frames() == []
    client.finish_close()
    assert client.protocol.mqtt.session.close_reason == "protocol error: a WebSocket text message"
    assert not broker.registry.sessions


def test_mqtt_side_closing_sends_a_close_frame():
    """A refused CONNECT: CONNACK, then the WebSocket closing handshake."""
    _, factory = ws_broker()
    client = WSClient(factory)
    client.upgrade()
    client.send(B.connect("", clean_session=False))  # [MQTT-3.1.3-8]
    frames = client.frames()
    assert [opcode for opcode, _ in frames] == [BINARY, CLOSE]
    assert struct.unpack("!H", frames[1][1][:2])[0] == 1000


def test_close_frame_from_client_ends_the_session_with_its_will():
    broker, factory = ws_broker()
    watcher = connected(factory, "watcher", 40001)
    watcher.send(B.subscribe(1, [("will/#", 0)]))
    watcher.received()
    client = WSClient(factory, 40002)
    client.upgrade()
    client.send(B.connect("dies", will_topic="will/dies", will_message=b"gone"))
    assert client.received() == [P.ConnAck(0, False)]
    client.send(struct.pack("!H", 1000), opcode=CLOSE)
    assert [opcode for opcode, _ in client.frames()] == [CLOSE]  # the reply
    assert client.closed
    client.finish_close()
    assert [p.topic for p in watcher.received()] == ["will/dies"]


def test_listener_stop_aborts_websocket_connections():
    _, factory = ws_broker()
    client = connected(factory, "c")
    assert [c.session.client_id for c in factory.connections] == ["c"]
    for connection in list(factory.connections):
        connection.abort("listener closed")
    assert client.closed
    client.finish_close()
    assert not factory.connections


def test_peer_address_is_the_socket_peer():
    _, factory = ws_broker()
    client = connected(factory, "peer", 40123)
    assert client.protocol.mqtt.session.peer == ("127.0.0.1", 40123)


def test_a_subscriber_whose_socket_is_full_has_its_messages_wait_in_its_queue():
    """The MQTT protocol is the producer of the socket under the WebSocket:
    while the socket's transport holds its buffer size (it pauses the
    producer), messages wait in the subscriber's queue, not in the
    transport; once resumed they go out, in order."""
    broker, factory = ws_broker()
    subscriber = connected(factory, "sub", 40001)
    subscriber.send(B.subscribe(1, [("t", 0)]))
    subscriber.received()
    assert subscriber.transport.producer is subscriber.protocol.mqtt
    publisher = connected(factory, "pub", 40002)
    subscriber.transport.producer.pauseProducing()   # as a full TCP buffer does
    for n in range(5):
        publisher.send(B.publish("t", b"%d" % n))
    assert subscriber.received() == []
    queue = broker.registry.queues[SubscriberId("", "sub")]
    assert len(queue.pending) == 5
    subscriber.transport.producer.resumeProducing()
    assert [p.payload for p in subscriber.received()] == [b"%d" % n for n in range(5)]
    assert not queue.pending


def test_backpressure_pauses_the_socket():
    _, factory = ws_broker()
    client = connected(factory, "slow")
    client.protocol.mqtt.pause_reading()
    assert client.transport.producerState == "paused"
    client.protocol.mqtt.resume_reading()
    assert client.transport.producerState == "producing"


# -- configuration -------------------------------------------------------------------


def _problems(text: str) -> List[str]:
    try:
        parse_config(text, "vernemq.conf")
    except ConfigError as error:
        return [str(problem) for problem in error.problems]
    return []


def test_ws_and_wss_listeners_parse_with_their_own_tls_keys():
    config = parse_config("listener.ws.default = 127.0.0.1:8080\n"
                          "listener.ws.inside = 10.0.0.1:8080\n"
                          "listener.wss.default = 127.0.0.1:8443\n"
                          "listener.wss.certfile = /etc/s.crt\n"
                          "listener.wss.keyfile = /etc/s.key\n"
                          "listener.wss.cafile = /etc/ca.crt\n"
                          "listener.wss.require_certificate = on\n", "vernemq.conf")
    assert config.ws_listeners == {"default": ("127.0.0.1", 8080), "inside": ("10.0.0.1", 8080)}
    assert config.wss_listeners == {"default": ("127.0.0.1", 8443)}
    assert (config.listener_wss_certfile, config.listener_wss_keyfile,
            config.listener_wss_cafile) == ("/etc/s.crt", "/etc/s.key", "/etc/ca.crt")
    assert config.listener_wss_require_certificate
    assert config.listener_ssl_certfile is None  # the ssl keys are not the wss ones
    assert Config.default().ws_listeners == {} and Config.default().wss_listeners == {}


def test_wss_without_its_certificate_is_a_config_error_naming_the_keys():
    problems = _problems("listener.ssl.certfile = /etc/s.crt\nlistener.ssl.keyfile = /etc/s.key\n"
                         "listener.wss.default = 127.0.0.1:8443\n")
    assert problems == [
        "vernemq.conf:3: listener.wss.default: a TLS listener needs listener.wss.certfile, "
        "which is not set; allowed: listener.wss.default together with "
        "listener.wss.certfile = <PEM file>",
        "vernemq.conf:3: listener.wss.default: a TLS listener needs listener.wss.keyfile, "
        "which is not set; allowed: listener.wss.default together with "
        "listener.wss.keyfile = <PEM file>"]


def test_wss_client_certificate_settings_need_the_wss_cafile():
    problems = _problems("listener.wss.require_certificate = on\n"
                         "listener.wss.use_identity_as_username = on\n")
    assert [p.split(": ")[1] for p in problems] == [
        "listener.wss.require_certificate", "listener.wss.use_identity_as_username"]
    assert all("listener.wss.cafile" in p for p in problems)


def test_a_ws_listener_on_a_port_in_use_by_another_listener():
    problems = _problems("listener.tcp.default = 127.0.0.1:1883\n"
                         "listener.ws.default = 127.0.0.1:1883\n")
    assert problems == [
        "vernemq.conf:2: listener.ws.default: 127.0.0.1:1883 is already used by "
        "listener.tcp.default (line 1); allowed: a different IP:PORT for every listener "
        "(or port 0)"]


def test_wss_options_loaded_and_checked(tmp_path: Any):
    pki = Pki.create(str(tmp_path))
    config = parse_config("listener.wss.default = 127.0.0.1:8443\n"
                          "listener.wss.certfile = %s\nlistener.wss.keyfile = %s\n"
                          % (pki.certfile, pki.keyfile), "vernemq.conf")
    assert wss_options_from_config(config) is not None
    assert wss_options_from_config(Config.default()) is None
    missing = config.replace(listener_wss_certfile=str(tmp_path / "nope.crt"))
    with pytest.raises(ConfigError, match="listener.wss.certfile"):
        wss_options_from_config(missing)


# -- wiring ----------------------------------------------------------------------------


def test_a_node_serves_ws_as_its_other_mqtt_listeners(tmp_path: Any):
    """
    build_node: the ws listener is one of the MQTT listeners (closed when
    the node is removed from its cluster, as they are), with the node's
    limits, and listed by ``listener show`` as VerneMQ's mqttws.
    """
    from tests.test_node import RecordingReactor
    from vmqtw.node import build_node

    reactor = RecordingReactor()
    config = Config.default().replace(
        platform_data_dir=str(tmp_path / "data"), message_store="memory",
        listener_vmq_clustering=("127.0.0.1", 44053), connect_timeout=7.0,
        listener_max_connections=3, tcp_listeners={"default": ("127.0.0.1", 41883)},
        ws_listeners={"default": ("127.0.0.1", 48080)})
    node = build_node(config, reactor)
    reactor.node = node
    serving = node.service.getServiceNamed("mqtt-listeners")
    assert [listener.name for listener in serving.listeners] == [
        "listener.tcp.default", "listener.ws.default"]
    ws = serving.listeners[1]
    assert isinstance(ws.factory, MQTTWebSocketFactory)
    assert (ws.factory.mqtt.connect_timeout, ws.factory.mqtt.max_connections) == (7.0, 3)
    assert [(info.kind, info.address) for info in node.admin.listeners] == [
        ("mqtt", ("127.0.0.1", 41883)), ("mqttws", ("127.0.0.1", 48080))]
    node.service.startService()
    try:
        assert [p[0] for p in reactor.tcpServers if p[0] == 48080] == [48080]
        assert ws.port is not None
        peers = node.metadata.peers
        peers.leave(peers.node)
        assert not serving.serving and ws.port is None
    finally:
        node.service.stopService()


def test_ws_and_wss_ports_are_probed_before_the_node_starts():
    """A taken ws/wss port stops twistd with the key named (vmqtw.startup)."""
    from vmqtw.startup import listener_addresses

    config = Config.default().replace(ws_listeners={"default": ("127.0.0.1", 8080)},
                                      wss_listeners={"default": ("127.0.0.1", 8443)})
    keys = [key for key, _host, _port in listener_addresses(config)]
    assert "listener.ws.default" in keys and "listener.wss.default" in keys
