"""
End to end: ``listener.ws`` and ``listener.wss`` of a real ``twistd -n
vmqtw`` node, with paho-mqtt's websockets transport (``transport=
"websockets"``, ``ws_set_options(path="/mqtt")``, ``tls_set`` for wss) and
a browser-style client written here over a plain socket: the HTTP upgrade
by hand, the ``Sec-WebSocket-Protocol: mqtt`` answer checked, MQTT in
masked binary frames.  Every node is killed in the fixture's teardown.
"""
from __future__ import annotations

import base64
import json
import os
import re
import socket
import struct
import types
from typing import Any, Dict, Optional, Sequence, Tuple

import paho.mqtt.client as mqtt

from tests.clusterharness import free_port
from tests.test_e2e_cluster import admin
from tests.test_tls import Pki, issue
from tests.waiting import wait_until
from vmqtw.testing import mqttbytes as B

HOST = "127.0.0.1"
BINARY, TEXT, CLOSE = 0x2, 0x1, 0x8


def _accepting(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def ws_node(nodes: Any, name: str, **settings: str) -> Any:
    """A node with its TCP listener and ``listener.ws.default`` (and any ``settings``)."""
    ws_port = free_port(HOST)
    options = {"listener.ws.default": "%s:%d" % (HOST, ws_port)}
    options.update({key.replace("__", "."): value for key, value in settings.items()})
    node = nodes.node(name, **options)
    node.ws_port = ws_port
    wait_until(lambda: _accepting(ws_port), 10, what="WebSocket listener")
    return node


def ws_client(nodes: Any, port: int, client_id: str, cafile: Optional[str] = None,
              identity: Optional[Tuple[str, str]] = None, username: Optional[str] = None,
              refused_ok: bool = False) -> Any:
    """
    A paho client over ws (or wss, given ``cafile``; with a client
    certificate, given ``identity`` = (certfile, keyfile)) on /mqtt, with
    its CONNACK.
    """
    holder = nodes.client(types.SimpleNamespace(host=HOST, port=port), client_id, connect=False)
    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                       protocol=mqtt.MQTTv311, transport="websockets")
    paho.ws_set_options(path="/mqtt")
    if cafile is not None:
        certfile, keyfile = identity if identity is not None else (None, None)
        paho.tls_set(ca_certs=cafile, certfile=certfile, keyfile=keyfile)
    if username is not None:
        paho.username_pw_set(username, None)
    paho.on_message = holder._on_message
    paho.on_connect = holder._on_connect
    paho.reconnect_delay_set(60, 60)
    nodes.clients.append(paho)
    holder.client = paho
    return holder.connect(refused_ok=refused_ok)


def pubsub_both_ways(ws: Any, tcp: Any) -> None:
    """QoS 0 and 1, from ws to tcp and from tcp to ws."""
    assert ws.subscribe(("to-ws/#", 1)) == [1]
    assert tcp.subscribe(("to-tcp/#", 1)) == [1]
    tcp.publish("to-ws/0", b"zero", 0)
    tcp.publish("to-ws/1", b"one", 1)
    ws.publish("to-tcp/0", b"zero", 0)
    ws.publish("to-tcp/1", b"one" * 1000, 1)
    assert sorted(ws.wait_for(2)) == [("to-ws/0", b"zero", 0, False),
                                      ("to-ws/1", b"one", 1, False)]
    assert sorted(tcp.wait_for(2)) == [("to-tcp/0", b"zero", 0, False),
                                       ("to-tcp/1", b"one" * 1000, 1, False)]


# -- a browser-style client over a plain socket ------------------------------------------


def masked(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (RFC 6455 5.2), payloads under 64 KiB."""
    length = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | length]) if length < 126
                                     else bytes([0x80 | 126]) + struct.pack("!H", length))
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class BrowserClient:
    """What a browser's ``new WebSocket(url, ["mqtt"])`` does on the wire."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=10)
        self.buffer = b""

    def upgrade(self, protocols: Sequence[str] = ("mqtt",), path: str = "/mqtt",
                ) -> Tuple[str, Dict[str, str]]:
        """The status line and headers of the server's answer."""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET %s HTTP/1.1" % path, "Host: %s" % HOST, "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " + key,
                 "Sec-WebSocket-Version: 13", "Origin: http://example.com"]
        if protocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(4096)
            if not data:
                break
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status, *rest = head.decode().split("\r\n")
        return status, {k.strip().lower(): v.strip()
                        for k, _, v in (line.partition(":") for line in rest)}

    def send(self, payload: bytes, opcode: int = BINARY) -> None:
        self.sock.sendall(masked(opcode, payload))

    def frame(self) -> Optional[Tuple[int, bytes]]:
        """The next server frame, or None once the server closed the socket."""
        def need(count: int) -> bool:
            while len(self.buffer) < count:
                data = self.sock.recv(65536)
                if not data:
                    return False
                self.buffer += data
            return True
        if not need(2):
            return None
        opcode, length, offset = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
        if length == 126:
            if not need(4):
                return None
            length, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
        if not need(offset + length):
            return None
        payload, self.buffer = self.buffer[offset:offset + length], self.buffer[offset + length:]
        return opcode, payload

    def closed_by_server(self) -> bool:
        """Reads until the server closes: True if it did (within the socket timeout)."""
        try:
            while self.frame() is not None:
                pass
        except OSError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def metric(node: Any, name: str) -> int:
    shown = admin(node, "metrics", "show")
    assert shown.returncode == 0, shown
    found = re.search(r"^%s = (\d+)" % re.escape(name), shown.stdout, re.M)
    assert found, shown.stdout
    return int(found.group(1))


# -- the tests ---------------------------------------------------------------------------


def test_paho_over_ws_and_tcp_exchange_qos0_and_qos1(nodes: Any) -> None:
    node = ws_node(nodes, "ws")
    ws = ws_client(nodes, node.ws_port, "over-ws")
    tcp = nodes.client(node, "over-tcp")
    pubsub_both_ways(ws, tcp)
    log = node.log()
    assert "listener listener.ws.default accepting MQTT on %s:%d" % (HOST, node.ws_port) in log

    # listener show lists it (VerneMQ's type name), with its connection.
    shown = json.loads(admin(node, "--format=json", "listener", "show").stdout)["table"]
    rows = {row["name"]: row for row in shown}
    assert rows["listener.ws.default"]["type"] == "mqttws"
    assert rows["listener.ws.default"]["port"] == node.ws_port
    assert rows["listener.ws.default"]["active_conns"] == 1
    assert rows["listener.ws.default"]["status"] == "running"

    # The connection's peer is the client's socket, as on TCP.
    assert re.search(r"client over-ws connected from 127\.0\.0\.1:\d+ ", node.log()), node.log()

    # A stopped ws listener with -k closes its connections; start opens it again.
    where = ("address=" + HOST, "port=%d" % node.ws_port)
    assert admin(node, "listener", "stop", *where, "-k").returncode == 0
    wait_until(lambda: not ws.client.is_connected(), 10, what="ws client closed by stop -k")
    assert tcp.client.is_connected()
    assert admin(node, "listener", "start", *where).returncode == 0
    wait_until(lambda: _accepting(node.ws_port), 10, what="ws listener again")


def test_browser_style_client_refused_subprotocols_and_text_frames(nodes: Any) -> None:
    node = ws_node(nodes, "browser")
    opened = metric(node, "socket_open_total")

    # A browser offering mqtt: 101, Sec-WebSocket-Protocol: mqtt, MQTT in binary frames.
    browser = BrowserClient(node.ws_port)
    status, headers = browser.upgrade(("mqtt",))
    assert status.startswith("HTTP/1.1 101"), status
    assert headers["sec-websocket-protocol"] == "mqtt"
    browser.send(B.connect("browser"))
    assert browser.frame() == (BINARY, B.connack(0))
    browser.send(B.subscribe(1, [("b/#", 0)]))
    assert browser.frame() == (BINARY, B.suback(1, [0]))
    tcp = nodes.client(node, "tcp")
    tcp.publish("b/x", b"to the browser", 0)
    opcode, payload = browser.frame()
    assert (opcode, payload) == (BINARY, B.publish("b/x", b"to the browser"))

    # A text message closes the connection, with close code 1003.
    browser.send(B.pingreq(), opcode=TEXT)
    opcode, payload = browser.frame()
    assert opcode == CLOSE and struct.unpack("!H", payload[:2])[0] == 1003
    assert browser.closed_by_server()
    browser.close()
    wait_until(lambda: "client browser disconnected" in node.log(), 10,
               what="the disconnect logged")
    assert "protocol error: a WebSocket text message" in node.log()

    # No subprotocol, or only others: refused, no MQTT spoken.
    for offered in ((), ("wamp.2.json",)):
        refused = BrowserClient(node.ws_port)
        status, headers = refused.upgrade(offered)
        assert status.startswith("HTTP/1.1 400"), (offered, status)
        assert "sec-websocket-protocol" not in headers
        assert refused.closed_by_server()
        refused.close()
    # MQTT lives on /mqtt only.
    elsewhere = BrowserClient(node.ws_port)
    status, _headers = elsewhere.upgrade(("mqtt",), path="/")
    assert status.startswith("HTTP/1.1 404"), status
    elsewhere.close()

    # Every WebSocket connection was counted as an MQTT socket (the tcp one too).
    assert metric(node, "socket_open_total") - opened == 5


def test_paho_over_wss(nodes: Any, tmp_path: Any) -> None:
    pki = Pki.create(str(tmp_path / "pki"))
    wss_port = free_port(HOST)
    node = ws_node(nodes, "wss", **{
        "listener.wss.default": "%s:%d" % (HOST, wss_port),
        "listener.wss.certfile": pki.certfile, "listener.wss.keyfile": pki.keyfile})
    wait_until(lambda: _accepting(wss_port), 10, what="wss listener")
    wss = ws_client(nodes, wss_port, "over-wss", cafile=pki.cafile)
    tcp = nodes.client(node, "tcp")
    pubsub_both_ways(wss, tcp)
    shown = json.loads(admin(node, "--format=json", "listener", "show").stdout)["table"]
    assert sorted(row["type"] for row in shown) == ["mqtt", "mqttws", "mqttwss"]


def test_wss_certificate_identity_as_username(nodes: Any, tmp_path: Any) -> None:
    """
    listener.wss.use_identity_as_username: the client certificate's CN is
    the user name, whatever CONNECT says, and no password is asked for
    (vmq_passwd on, empty file); a wss client without a certificate gets
    CONNACK 5 [MQTT-3.2.2-5].
    """
    pki = Pki.create(str(tmp_path / "pki"))
    (tmp_path / "ident").mkdir()
    (tmp_path / "ident" / "vmq.passwd").write_text("")
    wss_port = free_port(HOST)
    node = ws_node(nodes, "ident", **{
        "listener.wss.default": "%s:%d" % (HOST, wss_port),
        "listener.wss.certfile": pki.certfile, "listener.wss.keyfile": pki.keyfile,
        "listener.wss.cafile": pki.cafile, "listener.wss.use_identity_as_username": "on",
        "allow_anonymous": "off", "plugins.vmq_passwd": "on",
        "vmq_passwd.password_file": "./vmq.passwd"})
    wait_until(lambda: _accepting(wss_port), 10, what="wss listener")
    alice = ws_client(nodes, wss_port, "a", cafile=pki.cafile, username="mallory",
                      identity=pki.client_files("alice", issue(pki.ca, ["alice"])))
    assert alice.connacks[-1][1].getName() == "Success"
    shown = admin(node, "--format=json", "session", "show", "--client_id", "--user")
    assert json.loads(shown.stdout)["table"] == [{"client_id": "a", "user": "alice"}], shown
    anonymous = ws_client(nodes, wss_port, "anon", cafile=pki.cafile, username="alice",
                          refused_ok=True)
    assert anonymous.connacks[-1][1].getName() == "Not authorized"
    # The plain ws listener of the same node takes no identity: alice's
    # name without her password is refused by vmq_passwd (CONNACK 4).
    plain = ws_client(nodes, node.ws_port, "plain", username="alice", refused_ok=True)
    assert plain.connacks[-1][1].getName() == "Bad user name or password"
