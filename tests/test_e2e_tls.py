"""
End to end: TLS listeners of a real ``twistd -n vmqtw`` node, with paho-mqtt
(``tls_set``) and stdlib ``ssl`` clients, and a PKI the test generates
(a CA, a server certificate for 127.0.0.1 as IP SAN, client certificates
named by their CN, and a rogue CA).  Every node is killed in the fixture's
teardown, every file lives under ``tmp_path``.
"""
from __future__ import annotations

import socket
import ssl
import subprocess
import types
from typing import Any, Optional, Tuple, Union

import pytest

from vmqtw.testing import mqttbytes as B
from tests.clusterharness import free_port
from tests.waiting import wait_until
from tests.test_tls import Pki, issue, make_ca
from vmqtw.testing.rawclient import ConnectRefused, PeerClosed, RawClient

HOST = "127.0.0.1"

_CONNACK_NAMES = {"Success": 0, "Unsupported protocol version": 1,
                  "Client identifier not valid": 2, "Server unavailable": 3,
                  "Bad user name or password": 4, "Not authorized": 5}


@pytest.fixture
def pki(tmp_path: Any) -> Pki:
    return Pki.create(str(tmp_path / "pki"))


def _accepting(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def tls_node(nodes: Any, pki: Pki, **settings: str) -> Any:
    """A node with a TCP listener and ``listener.ssl.default`` on its own port."""
    tls_port = free_port(HOST)
    options = {"listener.ssl.default": "%s:%d" % (HOST, tls_port),
               "listener.ssl.certfile": pki.certfile, "listener.ssl.keyfile": pki.keyfile}
    options.update({key.replace("__", "."): value for key, value in settings.items()})
    node = nodes.node("node", **options)
    node.tls_port = tls_port
    wait_until(lambda: _accepting(tls_port), 10, what="TLS listener")
    return node


def tls_client(nodes: Any, node: Any, pki: Pki, client_id: str,
               identity: Optional[Tuple[str, str]] = None, username: Optional[str] = None) -> Any:
    """A paho client over TLS that verifies the server (CA + IP SAN) and got its CONNACK."""
    address = types.SimpleNamespace(host=HOST, port=node.tls_port)
    client = nodes.client(address, client_id, connect=False)
    client.client.reconnect_delay_set(60, 60)
    certfile, keyfile = identity if identity is not None else (None, None)
    client.client.tls_set(ca_certs=pki.cafile, certfile=certfile, keyfile=keyfile)
    if username is not None:
        client.client.username_pw_set(username, None)
    return client.connect(refused_ok=True)


def connack(client: Any) -> int:
    """The MQTT 3.1.1 CONNACK return code paho saw (paho 2 names them MQTT 5 style)."""
    return _CONNACK_NAMES[client.connacks[0][1].getName()]


def raw_tls_connect(port: int, pki: Pki, identity: Optional[Tuple[str, str]] = None,
                    client_id: str = "raw") -> Union[int, str]:
    """
    CONNECT over a stdlib TLS socket: the CONNACK return code, or a string
    saying how the connection failed (handshake error, alert, close).
    With TLS 1.3 a refused client certificate shows as an alert on the
    first read rather than in the client's handshake.
    """
    context = ssl.create_default_context(cafile=pki.cafile)
    if identity is not None:
        context.load_cert_chain(*identity)
    with socket.create_connection((HOST, port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=HOST) as tls:
                connack = RawClient(tls).handshake(client_id, expect=None)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as error:
            return "refused: %s" % error
        except (PeerClosed, ConnectRefused) as error:
            return "closed: %s" % error
    return connack.return_code


def no_traceback(node: Any) -> None:
    log = node.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


# -- tests ------------------------------------------------------------------------


def test_tls_and_tcp_listeners_side_by_side(nodes, pki):
    """
    One node, a plain TCP and a TLS listener: messages cross between them
    both ways [MQTT-3.3.5-1 delivery to matching subscribers]; the TLS port
    speaks no plain MQTT.
    """
    node = tls_node(nodes, pki)
    tcp = nodes.client(node, "tcp")
    secure = tls_client(nodes, node, pki, "tls")
    assert connack(secure) == 0
    assert tcp.subscribe(("from/tls", 1)) == [1]
    assert secure.subscribe(("from/tcp", 1)) == [1]
    secure.publish("from/tls", b"over tls", qos=1)
    tcp.publish("from/tcp", b"over tcp", qos=1)
    assert tcp.wait_for(1) == [("from/tls", b"over tls", 1, False)]
    assert secure.wait_for(1) == [("from/tcp", b"over tcp", 1, False)]
    with RawClient.open(HOST, node.tls_port) as plain:
        plain.send(B.connect("plain"))
        answer, _ = plain.read_until_closed()
    assert not answer.startswith(b"\x20")          # a TLS alert or a close, no CONNACK
    assert raw_tls_connect(node.tls_port, pki) == 0
    no_traceback(node)


def test_required_certificate(nodes, pki):
    """
    require_certificate on: no certificate, or one from another CA, fails
    the handshake; a certificate from listener.ssl.cafile connects, and the
    node keeps serving without logging a traceback.
    """
    node = tls_node(nodes, pki, listener__ssl__cafile=pki.cafile,
                    listener__ssl__require_certificate="on")
    alice = pki.client_files("alice", issue(pki.ca, ["alice"]))
    rogue = pki.client_files("rogue", issue(make_ca("vmqtw test CA"), ["alice"]))
    assert isinstance(raw_tls_connect(node.tls_port, pki), str)
    assert isinstance(raw_tls_connect(node.tls_port, pki, rogue), str)
    assert raw_tls_connect(node.tls_port, pki, alice) == 0
    client = tls_client(nodes, node, pki, "paho", identity=alice)
    assert connack(client) == 0
    assert node.log().count("TLS connection from") >= 2
    no_traceback(node)


ACL = """\
user alice
topic readwrite alice/#
user bob
topic readwrite bob/#
"""


def test_identity_as_username_with_acl(nodes, pki):
    """
    use_identity_as_username: the certificate CN is the user name whatever
    CONNECT carries, no password is asked for (vmq_passwd on, empty file),
    and the ACL applies to the CN: alice may publish to alice/x, not bob/x
    [MQTT-3.3.5-2 the server may refuse a PUBLISH it is not authorized for].
    A TLS client without certificate gets CONNACK 5 [MQTT-3.2.2-5].
    """
    (pki_dir := nodes.tmp_path / "node").mkdir()
    (pki_dir / "vmq.passwd").write_text("")
    (pki_dir / "vmq.acl").write_text(ACL)
    node = tls_node(nodes, pki, listener__ssl__cafile=pki.cafile,
                    listener__ssl__use_identity_as_username="on",
                    allow_anonymous="off", plugins__vmq_passwd="on",
                    vmq_passwd__password_file="./vmq.passwd", plugins__vmq_acl="on",
                    vmq_acl__acl_file="./vmq.acl")
    alice = tls_client(nodes, node, pki, "a",
                       identity=pki.client_files("alice", issue(pki.ca, ["alice"])))
    # bob's certificate, but CONNECT claims to be alice: the CN wins.
    bob = tls_client(nodes, node, pki, "b", username="alice",
                     identity=pki.client_files("bob", issue(pki.ca, ["bob"])))
    assert connack(alice) == 0 and connack(bob) == 0
    assert alice.subscribe(("alice/#", 1), ("bob/#", 1)) == [1, 0x80]
    assert bob.subscribe(("bob/#", 1), ("alice/#", 1)) == [1, 0x80]
    alice.publish("bob/x", b"not allowed", qos=1)     # PUBACKed and dropped
    alice.publish("alice/x", b"allowed", qos=1)
    bob.publish("alice/y", b"not allowed either", qos=1)
    bob.publish("bob/y", b"own", qos=1)
    assert alice.wait_for(1) == [("alice/x", b"allowed", 1, False)]
    assert bob.wait_for(1) == [("bob/y", b"own", 1, False)]
    anonymous = tls_client(nodes, node, pki, "anon", username="alice")
    assert connack(anonymous) == 5
    # Everything has been routed once the PUBLISHes are acknowledged; one more
    # round trip through each client makes sure nothing forbidden trails behind.
    alice.publish("alice/z", b"last", qos=1)
    bob.publish("bob/z", b"last", qos=1)
    assert [m[0] for m in alice.wait_for(2)] == ["alice/x", "alice/z"]
    assert [m[0] for m in bob.wait_for(2)] == ["bob/y", "bob/z"]
    no_traceback(node)


def test_mismatched_key_stops_the_node_with_one_sentence(nodes, pki, tmp_path):
    """A keyfile that is not the certificate's key: twistd exits non-zero naming key and file."""
    other_key = str(tmp_path / "other.key")
    with open(other_key, "wb") as handle:
        handle.write(issue(pki.ca, ["x"]).key_pem())
    node = nodes.node("node", start=False)
    node.settings.update({"listener.ssl.default": "%s:%d" % (HOST, free_port(HOST)),
                          "listener.ssl.certfile": pki.certfile,
                          "listener.ssl.keyfile": other_key})
    node.start(wait=False)
    try:
        code = node.process.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError("node did not stop:\n" + node.log())
    assert code != 0
    log = node.log()
    assert "listener.ssl.keyfile" in log and other_key in log and "is not the private key" in log
