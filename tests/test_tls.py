"""
TLS listeners in process: certificates made by the test (``cryptography``),
the real :class:`~vmqtw.tls.TLSServerFactory` around the real MQTT factory
and sessions, TLS clients from Twisted, all connected through
``twisted.test.iosim`` pumps -- real handshakes, no sockets, no sleeps.

The PKI helpers at the top are shared with ``tests/test_e2e_tls.py``.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Any, List, Optional, Sequence

import attrs
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.internet.ssl import Certificate, CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import FakeTransport, connect

from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Broker
from tests.waiting import wait_until_deferred
from vmqtw.broker.auth import BrokerAuthenticator
from vmqtw.config import ConfigError, parse_config
from vmqtw.mqtt import packets as P
from vmqtw.mqtt.codec import Decoder
from vmqtw.mqtt.session import ConnectInfo, SessionSettings
from vmqtw.cluster.link import TcpTransport
from vmqtw.types import SubscriberId
from vmqtw.tls import (ClusterTLS, TLSServerFactory, load_server_options, peer_common_name,
                       server_options_from_config)

# -- a small PKI, made fresh by each test that needs one -------------------------


@attrs.define
class Issued:
    """A private key and its certificate."""

    key: Any
    cert: x509.Certificate

    def key_pem(self, password: Optional[bytes] = None) -> bytes:
        encryption = (serialization.BestAvailableEncryption(password) if password
                      else serialization.NoEncryption())
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8, encryption)

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _name(common_names: Sequence[str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vmqtw tests")] +
                     [x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names])


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2)))


def make_ca(cn: str, issuer: Optional[Issued] = None) -> Issued:
    """A CA certificate: self-signed, or an intermediate signed by ``issuer``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name([cn])
    builder = _builder(subject, issuer.cert.subject if issuer else subject, key.public_key())
    builder = (builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                            False, False), True))
    signer = issuer.key if issuer else key
    return Issued(key, builder.sign(signer, hashes.SHA256()))


def issue(ca: Issued, common_names: Sequence[str] = (), ip: Optional[str] = None,
          node: bool = False) -> Issued:
    """
    A leaf certificate signed by ``ca``: a server one when ``ip`` is given,
    a cluster node's (server and client) with ``node``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(_name(common_names), ca.cert.subject, key.public_key())
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    if ip is not None:
        builder = (builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(ip))]), False)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH] +
                ([ExtendedKeyUsageOID.CLIENT_AUTH] if node else [])), False))
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


@attrs.define
class Pki:
    """The files a TLS listener is configured with, plus client identities."""

    directory: str
    ca: Issued
    server: Issued
    certfile: str
    keyfile: str
    cafile: str

    @classmethod
    def create(cls, directory: str, ip: str = "127.0.0.1") -> "Pki":
        os.makedirs(directory, exist_ok=True)
        ca = make_ca("vmqtw test CA")
        server = issue(ca, ["vmqtw test server"], ip=ip)
        pki = cls(directory, ca, server, os.path.join(directory, "server.crt"),
                  os.path.join(directory, "server.key"), os.path.join(directory, "ca.crt"))
        write(pki.certfile, server.cert_pem())
        write(pki.keyfile, server.key_pem())
        write(pki.cafile, ca.cert_pem())
        return pki

    def client_files(self, name: str, issued: Issued) -> tuple:
        """``(certfile, keyfile)`` of a client identity, written next to the others."""
        certfile = os.path.join(self.directory, name + ".crt")
        keyfile = os.path.join(self.directory, name + ".key")
        write(certfile, issued.cert_pem())
        write(keyfile, issued.key_pem())
        return certfile, keyfile


def write(path: str, data: bytes) -> str:
    with open(path, "wb") as handle:
        handle.write(data)
    return path


# -- in-memory TLS connections to the in-process broker -------------------------


class Recorder(Protocol):
    """The application side of a TLS client: keeps what arrives and why it ended."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason

    def packets(self) -> List[Any]:
        return Decoder().feed(self.data)


def client_options(pki: Pki, identity: Optional[Issued] = None, **kwargs: Any) -> Any:
    """Twisted client TLS options trusting the test CA (no host name check in-memory)."""
    keys = {}
    if identity is not None:
        keys = dict(privateKey=crypto.PKey.from_cryptography_key(identity.key),
                    certificate=crypto.X509.from_cryptography(identity.cert))
    return CertificateOptions(trustRoot=Certificate(crypto.X509.from_cryptography(pki.ca.cert)),
                              **keys, **kwargs)


@attrs.define
class TLSLink:
    server: Any          # TLSMemoryBIOProtocol wrapping an MQTTProtocol
    client: Any          # TLSMemoryBIOProtocol wrapping a Recorder
    recorder: Recorder
    pump: Any
    mqtt: Any            # the MQTTProtocol (Twisted drops its reference at close)

    def send(self, data: bytes) -> None:
        self.client.write(data)
        self.pump.flush()


def tls_connect(broker: Broker, server_options: Any, options: Any,
                tls_factory: Optional[TLSServerFactory] = None) -> TLSLink:
    if tls_factory is None:
        tls_factory = TLSServerFactory(server_options, broker.factory, broker.clock)
    server = tls_factory.buildProtocol(None)
    mqtt = server.wrappedProtocol
    recorder = Recorder()
    client = TLSMemoryBIOFactory(options, True, Factory.forProtocol(lambda: recorder),
                                 broker.clock).buildProtocol(None)
    # Pumping advances the broker's clock, which flushes TLS write buffers.
    pump = connect(server, FakeTransport(server, True), client, FakeTransport(client, False),
                   greet=True, clock=broker.clock)
    pump.flush()
    return TLSLink(server, client, recorder, pump, mqtt)


@pytest.fixture
def pki(tmp_path: Any) -> Pki:
    return Pki.create(str(tmp_path))


def identity_broker(flag: bool = True) -> Broker:
    broker = Broker(settings=SessionSettings(use_identity_as_username=True))
    broker.factory.identity_from_certificate = flag
    return broker


# -- handshakes and identities --------------------------------------------------


def test_verified_client_certificate_cn_becomes_the_user_name(pki):
    """
    use_identity_as_username: after the handshake the session knows the CN,
    and CONNECT is accepted with the CN as user name, whatever CONNECT
    carried (spec 5.4.1: a server may authenticate a client by its TLS
    certificate).
    """
    broker = identity_broker()
    options = load_server_options(pki.certfile, pki.keyfile, pki.cafile, True)
    link = tls_connect(broker, options, client_options(pki, issue(pki.ca, ["alice"])))
    assert link.mqtt.session.peer_identity == "alice"
    link.send(B.connect("c1", username="mallory", password=b"x"))
    assert link.recorder.packets() == [P.ConnAck(0, False)]
    assert link.mqtt.session.username == "alice"


def test_a_tls_subscriber_whose_socket_is_full_has_its_messages_wait_in_its_queue(pki):
    """TLS passes the MQTT protocol on as the producer of the socket's
    transport: while that transport is full (it pauses the producer),
    messages wait in the subscriber's queue, not in TLS or TCP buffers;
    once resumed they go out, in order."""
    broker = Broker()
    options = load_server_options(pki.certfile, pki.keyfile, None, False)
    link = tls_connect(broker, options, client_options(pki))
    link.send(B.connect("sub"))
    link.send(B.subscribe(1, [("t", 0)]))
    assert [type(p) for p in link.recorder.packets()] == [P.ConnAck, P.SubAck]
    link.recorder.data = b""
    socket_transport = link.server.transport
    assert socket_transport.producer is not None
    publisher = broker.connect("pub")
    socket_transport.producer.pauseProducing()   # as a full TCP buffer does
    for n in range(5):
        publisher.send(B.publish("t", b"%d" % n))
    link.pump.flush()
    assert link.recorder.packets() == []
    queue = broker.registry.queues[SubscriberId("", "sub")]
    assert len(queue.pending) == 5
    socket_transport.producer.resumeProducing()
    link.pump.flush()
    assert [p.payload for p in link.recorder.packets()] == [b"%d" % n for n in range(5)]
    assert not queue.pending


def test_identity_not_taken_when_the_listener_does_not_ask_for_it(pki):
    """identity_from_certificate off: a client certificate names nobody (CONNACK 5 then)."""
    broker = identity_broker(flag=False)
    options = load_server_options(pki.certfile, pki.keyfile, pki.cafile, True)
    link = tls_connect(broker, options, client_options(pki, issue(pki.ca, ["alice"])))
    assert link.mqtt.session.peer_identity is None
    link.send(B.connect("c1"))
    assert link.recorder.packets() == [P.ConnAck(P.CONNACK_NOT_AUTHORIZED, False)]


def test_required_certificate_missing_fails_the_handshake(pki):
    """
    require_certificate on: no client certificate, no connection; nothing
    reaches MQTT, and one log line says why.
    """
    broker = identity_broker()
    options = load_server_options(pki.certfile, pki.keyfile, pki.cafile, True)
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        link = tls_connect(broker, options, client_options(pki))
        link.send(B.connect("c1"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    failed = [e for e in events if e.get("log_format", "").startswith("TLS connection")]
    assert len(failed) == 1 and "certificate" in failed[0]["error"]
    assert link.recorder.lost is not None
    assert link.recorder.packets() == []
    assert link.mqtt.session.client_id == ""          # never saw the CONNECT


def test_optional_certificate_absent_is_fine(pki):
    """require_certificate off with cafile: a client without certificate connects."""
    broker = Broker()
    broker.factory.identity_from_certificate = True
    options = load_server_options(pki.certfile, pki.keyfile, pki.cafile, False)
    link = tls_connect(broker, options, client_options(pki))
    link.send(B.connect("c1"))
    assert link.recorder.packets() == [P.ConnAck(0, False)]
    assert link.mqtt.session.peer_identity is None


@pytest.mark.parametrize("rogue_name", ["vmqtw test CA", "another CA"])
@pytest.mark.parametrize("required", [True, False])
def test_certificate_from_another_ca_fails_the_handshake(pki, required, rogue_name):
    """
    A presented certificate must verify against cafile, required or optional
    -- also when the rogue CA copies the real CA's name.
    """
    broker = identity_broker()
    options = load_server_options(pki.certfile, pki.keyfile, pki.cafile, required)
    rogue = issue(make_ca(rogue_name), ["alice"])
    link = tls_connect(broker, options, client_options(pki, rogue))
    link.send(B.connect("c1"))
    assert link.recorder.lost is not None
    assert link.recorder.packets() == []
    assert link.mqtt.session.peer_identity is None


def test_server_sends_intermediate_certificates_from_certfile(pki, tmp_path):
    """certfile = leaf + intermediate: a client trusting only the root still verifies."""
    intermediate = make_ca("vmqtw intermediate", issuer=pki.ca)
    leaf = issue(intermediate, ["server"], ip="127.0.0.1")
    certfile = write(str(tmp_path / "chain.crt"), leaf.cert_pem() + intermediate.cert_pem())
    keyfile = write(str(tmp_path / "chain.key"), leaf.key_pem())
    link = tls_connect(Broker(), load_server_options(certfile, keyfile), client_options(pki))
    link.send(B.connect("c1"))
    assert link.recorder.packets() == [P.ConnAck(0, False)]


def test_tls_versions_below_1_2_disabled_and_1_2_served(pki):
    """
    TLS 1.2 is the oldest version the listener speaks: the context disables
    1.0 and 1.1 itself (a handshake test could not show it -- this OpenSSL
    build refuses to even offer them as a client), and a 1.2-only client is
    served.
    """
    options = load_server_options(pki.certfile, pki.keyfile)
    disabled = options.getContext().set_options(0)       # returns the options in force
    assert disabled & SSL.OP_NO_TLSv1 and disabled & SSL.OP_NO_TLSv1_1
    link = tls_connect(Broker(), options, client_options(
        pki, lowerMaximumSecurityTo=TLSVersion.TLSv1_2))
    link.send(B.connect("c2"))
    assert link.recorder.packets() == [P.ConnAck(0, False)]
    assert link.server.getHandle().get_protocol_version_name() == "TLSv1.2"


def test_stalled_handshake_closed_by_the_connect_timeout(pki):
    """
    A TCP client that never finishes the TLS handshake is closed by the
    CONNECT deadline like a silent plain client (slowloris on TLS): the
    timer starts when TCP connects, not when TLS is done.
    """
    broker = Broker(connect_timeout=10.0)
    tls_factory = TLSServerFactory(load_server_options(pki.certfile, pki.keyfile),
                                   broker.factory, broker.clock)
    server = tls_factory.buildProtocol(None)
    transport = StringTransport()
    server.makeConnection(transport)
    server.dataReceived(b"\x16\x03\x01")          # the first bytes of a ClientHello
    broker.clock.advance(9.9)
    assert not transport.disconnecting
    broker.clock.advance(0.2)
    assert transport.disconnecting


def test_full_listener_refuses_through_tls(pki):
    """listener.max_connections: the TLS wrapper passes the refusal on instead of wrapping None."""
    broker = Broker()
    broker.factory.max_connections = 1
    tls_factory = TLSServerFactory(load_server_options(pki.certfile, pki.keyfile),
                                   broker.factory, broker.clock)
    link = tls_connect(broker, None, client_options(pki), tls_factory)
    assert tls_factory.connections == {link.mqtt}
    assert tls_factory.buildProtocol(None) is None


# -- peer_common_name -------------------------------------------------------------


class CertTransport:
    def __init__(self, cert: Any) -> None:
        self.cert = cert

    def getPeerCertificate(self) -> Any:
        return self.cert


def test_common_name_of_pyopenssl_and_cryptography_certificates(pki):
    cert = issue(pki.ca, ["alice"]).cert
    assert peer_common_name(CertTransport(cert)) == "alice"
    assert peer_common_name(CertTransport(crypto.X509.from_cryptography(cert))) == "alice"


@pytest.mark.parametrize("names", [[], ["alice", "admin"], ["alice\x00admin"]])
def test_no_single_common_name_is_no_identity(pki, names):
    """No CN, two CNs (which one?), a CN with U+0000 [MQTT-1.5.3-2]: no user name at all."""
    assert peer_common_name(CertTransport(issue(pki.ca, names).cert)) is None


def test_no_certificate_or_plain_tcp_is_no_identity():
    assert peer_common_name(CertTransport(None)) is None
    assert peer_common_name(object()) is None


# -- the authenticator ------------------------------------------------------------


def test_authenticator_accepts_identity_without_password(tmp_path):
    """
    A verified certificate is the credential: the password file is not
    consulted, while a plain user name without password still gets
    CONNACK 4 [MQTT-3.2.2-5]; the ACL applies to the CN as user name.
    """
    (tmp_path / "passwd").write_text("")
    (tmp_path / "acl").write_text("user alice\ntopic readwrite alice/#\n")
    auth = BrokerAuthenticator(object(), object(), password_file=str(tmp_path / "passwd"),
                               acl_file=str(tmp_path / "acl"), clock=Clock())
    auth.load()
    assert auth.authenticate(ConnectInfo("c1", "alice", None, None, True, "alice")) == 0
    assert auth.authenticate(ConnectInfo("c1", "alice", None, None, True)) == \
        P.CONNACK_BAD_USERNAME_OR_PASSWORD
    assert auth.can_publish("c1", "alice", "alice/x")
    assert not auth.can_publish("c1", "alice", "bob/x")


# -- configuration errors: one sentence naming the key and the file ---------------


def _pem_garbage(tmp_path: Any) -> str:
    return write(str(tmp_path / "garbage.pem"), b"hello, not PEM\n")


@pytest.mark.parametrize("case, key, fragment", [
    ("missing certfile", "listener.ssl.certfile", "cannot read"),
    ("garbage certfile", "listener.ssl.certfile", "no PEM certificate"),
    ("missing keyfile", "listener.ssl.keyfile", "cannot read"),
    ("garbage keyfile", "listener.ssl.keyfile", "no PEM private key"),
    ("encrypted keyfile", "listener.ssl.keyfile", "encrypted"),
    ("mismatched keyfile", "listener.ssl.keyfile", "is not the private key"),
    ("missing cafile", "listener.ssl.cafile", "cannot read"),
    ("empty cafile", "listener.ssl.cafile", "no PEM certificate"),
])
def test_unusable_files_are_one_sentence_naming_key_and_file(pki, tmp_path, case, key, fragment):
    files = dict(certfile=pki.certfile, keyfile=pki.keyfile, cafile=pki.cafile)
    name = key.rsplit(".", 1)[1]
    if case.startswith("missing"):
        files[name] = str(tmp_path / "nonexistent.pem")
    elif case.startswith("garbage"):
        files[name] = _pem_garbage(tmp_path)
    elif case == "encrypted keyfile":
        files[name] = write(str(tmp_path / "enc.key"), pki.server.key_pem(b"secret"))
    elif case == "mismatched keyfile":
        files[name] = write(str(tmp_path / "other.key"), issue(pki.ca, ["x"]).key_pem())
    elif case == "empty cafile":
        files[name] = write(str(tmp_path / "empty.pem"), b"")
    with pytest.raises(ConfigError) as error:
        load_server_options(files["certfile"], files["keyfile"], files["cafile"], True)
    message = str(error.value)
    assert key in message and files[name] in message and fragment in message
    assert "\n" not in message


def test_require_certificate_without_cafile_is_an_error(pki):
    with pytest.raises(ConfigError, match="listener.ssl.cafile"):
        load_server_options(pki.certfile, pki.keyfile, None, True)


def _config(tmp_path: Any, **settings: str) -> Any:
    text = "".join("%s = %s\n" % (k.replace("__", "."), v) for k, v in settings.items())
    return parse_config(text, "vernemq.conf", cwd=str(tmp_path))


def test_options_from_config(pki, tmp_path):
    """No TLS listener, no TLS options; with one, the files are loaded (and verified)."""
    assert server_options_from_config(_config(tmp_path)) is None
    config = _config(tmp_path, listener__ssl__default="127.0.0.1:8883",
                     listener__ssl__certfile=pki.certfile, listener__ssl__keyfile=pki.keyfile,
                     listener__ssl__cafile=pki.cafile, listener__ssl__require_certificate="on")
    options = server_options_from_config(config)
    assert options.verify and options.requireCertificate


def test_identity_without_cafile_is_an_error(pki, tmp_path):
    """
    use_identity_as_username without cafile would refuse every client: the
    configuration is refused, naming the line of the key.
    """
    with pytest.raises(ConfigError, match=r":\d+: listener.ssl.use_identity_as_username: .*cafile"):
        _config(tmp_path, listener__ssl__default="127.0.0.1:8883",
                listener__ssl__certfile=pki.certfile, listener__ssl__keyfile=pki.keyfile,
                listener__ssl__use_identity_as_username="on")


# -- optional: mutual TLS between cluster nodes (real reactor, loopback aliases) --

FAST = dict(backoff_min=0.05, backoff_max=0.2, heartbeat_interval=0.2,
            heartbeat_timeout=1.0, connect_timeout=0.5)
COOKIE = b"cluster-cookie-for-tls-tests"


def cluster_tls(directory: str, ca: Issued, name: str, ip: str) -> ClusterTLS:
    """A node's ClusterTLS: its certificate (CN = name, IP SAN = ip) and the CA."""
    os.makedirs(directory, exist_ok=True)
    node = issue(ca, [name], ip=ip, node=True)
    base = os.path.join(directory, name)
    return ClusterTLS.load(write(base + ".crt", node.cert_pem()),
                           write(base + ".key", node.key_pem()),
                           write(base + ".ca", ca.cert_pem()))


@pytest.fixture
def cluster(tmp_path: Any) -> Any:
    """TcpTransports on the real reactor, each with its own ClusterTLS; stopped at teardown."""
    from twisted.internet import reactor
    made: List[TcpTransport] = []
    events: List[dict] = []

    def make(name: str, ip: str, ca: Issued, cert_ip: Optional[str] = None) -> TcpTransport:
        tls = cluster_tls(str(tmp_path / name), ca, name, cert_ip or ip)
        transport = TcpTransport(name, COOKIE, (ip, 0), reactor, tls=tls, **FAST)
        made.append(transport)
        transport.start()
        return transport

    def tls_failures(direction: Optional[str] = None) -> int:
        return sum(1 for e in events
                   if e.get("log_format", "").startswith("TLS connection {direction}")
                   and direction in (None, e["direction"]))

    make.reactor = reactor
    make.tls_failures = tls_failures
    globalLogPublisher.addObserver(events.append)
    try:
        yield make
    finally:
        globalLogPublisher.removeObserver(events.append)
        pytest_twisted.blockon(defer.DeferredList([t.stop() for t in made]))


@pytest_twisted.ensureDeferred
async def test_cluster_links_over_mutual_tls(cluster):
    """Both nodes' certificates from the cluster CA: the link comes up over TLS, casts flow."""
    ca = make_ca("cluster CA")
    a = cluster("a@n", "127.0.0.2", ca)
    b = cluster("b@n", "127.0.0.3", ca)
    got: List[Any] = []
    b.register_cast_handler("ch", lambda peer, message: got.append((peer, message)))
    a.set_peer_address("b@n", b.address)
    await wait_until_deferred(cluster.reactor, lambda: a.connected("b@n") and b.connected("a@n"),
                              5, what="TLS link")
    assert a.cast("b@n", "ch", b"over tls")
    await wait_until_deferred(cluster.reactor, lambda: got, 5, what="cast")
    assert got == [("a@n", b"over tls")]
    # Both ends of the link really are TLS, each seeing the other's certificate.
    link = b._peers["a@n"].link
    assert peer_common_name(link.transport) == "a@n"
    assert peer_common_name(a._peers["b@n"].link.transport) == "b@n"


@pytest_twisted.ensureDeferred
async def test_cluster_peer_certificate_for_another_address_refused(cluster):
    """
    service-identity: the dialer refuses a listener whose certificate (same
    CA) names another address, although the cookie would be right.
    """
    ca = make_ca("cluster CA")
    a = cluster("a@n", "127.0.0.2", ca)
    b = cluster("b@n", "127.0.0.3", ca, cert_ip="127.0.0.9")
    a.set_peer_address("b@n", b.address)
    await wait_until_deferred(cluster.reactor, lambda: cluster.tls_failures("to") >= 2, 5,
                              what="two refused TLS dials")
    assert not a.connected("b@n") and not b.connected("a@n")
    assert b.counters.handshake_failures == 0       # the cookie exchange never started


@pytest_twisted.ensureDeferred
async def test_cluster_node_from_another_ca_refused(cluster):
    """A node whose certificate another CA signed never links, whichever side dials."""
    a = cluster("a@n", "127.0.0.2", make_ca("cluster CA"))
    rogue = cluster("r@n", "127.0.0.3", make_ca("cluster CA"))
    rogue.set_peer_address("a@n", a.address)
    a.set_peer_address("r@n", rogue.address)
    await wait_until_deferred(cluster.reactor, lambda: cluster.tls_failures() >= 4, 5,
                              what="refused TLS dials both ways")
    assert not a.connected("r@n") and not rogue.connected("a@n")
    assert a.counters.handshake_failures == rogue.counters.handshake_failures == 0


def test_cluster_tls_errors_name_the_cluster_keys(tmp_path):
    ca = make_ca("cluster CA")
    tls_dir = str(tmp_path / "n")
    cluster_tls(tls_dir, ca, "n", "127.0.0.2")
    with pytest.raises(ConfigError, match="cluster.tls.cafile"):
        ClusterTLS.load(os.path.join(tls_dir, "n.crt"), os.path.join(tls_dir, "n.key"),
                        str(tmp_path / "missing.ca"))
