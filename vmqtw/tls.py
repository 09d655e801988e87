"""
TLS for the MQTT listeners (``listener.ssl.<name>``) and, optionally, for
the links between cluster nodes.

The pieces, all of them adapters around pyOpenSSL/Twisted:

* :func:`load_server_options` turns the PEM files named by
  ``listener.ssl.certfile``/``keyfile``/``cafile`` into Twisted
  ``CertificateOptions``.  The files are read and cross-checked *now*, at
  startup, and every problem becomes one :class:`~vmqtw.config.ConfigError`
  sentence naming the key and the file: a broker that would only find out at
  the first handshake that its key does not match its certificate fails
  every client, far from the cause.
* :class:`TLSServerFactory` wraps an ``MQTTFactory`` so that the listener's
  connection limit and the listener service's "close everything at stop"
  keep working through the TLS layer.
* :func:`peer_common_name` reads the CN of the client certificate that the
  handshake verified, for ``listener.ssl.use_identity_as_username``.
* :class:`ClusterTLS` and :class:`TLSClientFactory`: mutual TLS for
  :class:`~vmqtw.cluster.link.TcpTransport`, the dialer checking the
  listener's certificate against the dialed address with service-identity.
* Both factories log one line when TLS ends a connection (bad certificate,
  failed handshake), which the application layers never see.

Client certificates (``cafile`` set): OpenSSL checks them during the
handshake against the CAs of ``cafile`` (``VERIFY_PEER``).  With
``require_certificate`` on, a client without one fails the handshake
(``VERIFY_FAIL_IF_NO_PEER_CERT``); with it off the certificate is optional,
but one that *is* presented must still verify.  So any certificate a TLS
connection reports after its handshake is a verified one.  Without
``cafile`` the server never asks for a client certificate.
"""
from __future__ import annotations

from typing import Any, List, Optional, Set, Tuple

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_ip_address
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import (Certificate, CertificateOptions, KeyPair, PrivateCertificate,
                                  TLSVersion, optionsForClientTLS, trustRootFromCertificates)
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory

from vmqtw.config import Config, ConfigError

__all__ = ["load_server_options", "server_options_from_config", "TLSServerFactory",
           "peer_common_name", "ClusterTLS", "TLSClientFactory", "check_node_certificate",
           "cluster_tls_from_config", "wss_options_from_config"]

log = Logger()


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise ConfigError(f"cannot read {key} {path!r} ({error.strerror or error}); "
                          f"check the path and its permissions") from None


def _certificates(key: str, path: str) -> List[x509.Certificate]:
    data = _read(key, path)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ConfigError(f"{key} {path!r} holds no PEM certificate "
                          f"(expected '-----BEGIN CERTIFICATE-----' blocks)")
    return certificates


def _private_key(key: str, path: str) -> Any:
    data = _read(key, path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography's way of saying "encrypted, and no password given".
        raise ConfigError(f"{key} {path!r} is an encrypted private key; "
                          f"vmqtw needs it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{key} {path!r} holds no PEM private key "
                          f"(expected a '-----BEGIN ... PRIVATE KEY-----' block)") from None


def _public_der(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _identity(certfile: str, keyfile: str, prefix: str) -> Tuple[List[x509.Certificate], Any]:
    """The certificate chain of ``certfile`` and the key of ``keyfile``, checked to match."""
    chain = _certificates(f"{prefix}.certfile", certfile)
    private_key = _private_key(f"{prefix}.keyfile", keyfile)
    if _public_der(private_key.public_key()) != _public_der(chain[0].public_key()):
        raise ConfigError(f"{prefix}.keyfile {keyfile!r} is not the private key of the "
                          f"first certificate in {prefix}.certfile {certfile!r}")
    return chain, private_key


def load_server_options(certfile: str, keyfile: str, cafile: Optional[str] = None,
                        require_certificate: bool = False, *,
                        prefix: str = "listener.ssl") -> CertificateOptions:
    """
    Server-side TLS options from PEM files, checked now.

    ``certfile`` holds the server certificate first, then any intermediate
    CA certificates to send along; ``keyfile`` its unencrypted private key;
    ``cafile`` the CAs that client certificates must chain to (``None``: no
    client certificates are requested).  TLS 1.2 is the oldest version
    accepted.  Raises :class:`ConfigError` with one sentence naming the key
    (``<prefix>.certfile`` ...) and the file for anything unreadable,
    unparsable or mismatched.
    """
    if require_certificate and cafile is None:
        raise ConfigError(f"{prefix}.require_certificate is on but {prefix}.cafile "
                          f"is not set; client certificates cannot be checked without it")
    chain, private_key = _identity(certfile, keyfile, prefix)
    verify: dict = {}
    if cafile is not None:
        authorities = _certificates(f"{prefix}.cafile", cafile)
        verify = dict(verify=True, requireCertificate=require_certificate,
                      caCerts=[crypto.X509.from_cryptography(ca) for ca in authorities])
    try:
        options = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(private_key),
            certificate=crypto.X509.from_cryptography(chain[0]),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
            raiseMinimumTo=TLSVersion.TLSv1_2,
            **verify)
        # Build the OpenSSL context now: whatever OpenSSL still objects to
        # (a key type it cannot use, say) stops the node at startup.
        options.getContext()
    except (SSL.Error, ValueError, TypeError) as error:
        raise ConfigError(f"{prefix}.certfile {certfile!r} and {prefix}.keyfile "
                          f"{keyfile!r} cannot be used for TLS ({error})") from None
    return options


@attrs.define(frozen=True, slots=True)
class ClusterTLS:
    """
    Mutual TLS for the links between nodes (:class:`~vmqtw.cluster.link.TcpTransport`).

    Every node holds a certificate from the cluster's CA whose subject
    alternative names cover its clustering address (an IP SAN for
    127.0.0.2, a DNS SAN for a host name), usable for both TLS server and
    client authentication.  The listening side requires a client
    certificate from ``cafile``; the dialing side checks the listener's
    certificate against ``cafile`` *and* the address it dialed, with
    service-identity (via ``optionsForClientTLS``), so a node with a valid
    certificate for another address cannot pose as this peer.  TLS comes
    under the cookie handshake, not instead of it: the cookie still proves
    membership of this cluster.
    """

    server_options: CertificateOptions
    authority: Any            # an IOpenSSLTrustRoot built from cafile
    identity: PrivateCertificate

    @classmethod
    def load(cls, certfile: str, keyfile: str, cafile: str, *,
             prefix: str = "cluster.tls") -> "ClusterTLS":
        """Read and check the files now; :class:`ConfigError` naming ``<prefix>.<key>``."""
        server_options = load_server_options(certfile, keyfile, cafile, True, prefix=prefix)
        chain, private_key = _identity(certfile, keyfile, prefix)
        authorities = _certificates(f"{prefix}.cafile", cafile)
        authority = trustRootFromCertificates(
            [Certificate(crypto.X509.from_cryptography(ca)) for ca in authorities])
        identity = PrivateCertificate.fromCertificateAndKeyPair(
            Certificate(crypto.X509.from_cryptography(chain[0])),
            KeyPair(crypto.PKey.from_cryptography_key(private_key)))
        return cls(server_options, authority, identity)

    def client_creator(self, host: str) -> Any:
        """TLS options for dialing the peer at ``host`` (an IP address or DNS name)."""
        return optionsForClientTLS(host, trustRoot=self.authority,
                                   clientCertificate=self.identity)


def server_options_from_config(config: Config) -> Optional[CertificateOptions]:
    """
    The options of the node's TLS listeners, or ``None`` when it has none.

    ``use_identity_as_username`` without ``cafile`` would refuse every
    client (no certificate is ever asked for), so that is a ConfigError too.
    """
    if not config.ssl_listeners:
        return None
    if config.listener_ssl_certfile is None or config.listener_ssl_keyfile is None:
        raise ConfigError("a TLS listener needs listener.ssl.certfile and listener.ssl.keyfile")
    if config.listener_ssl_use_identity_as_username and config.listener_ssl_cafile is None:
        raise ConfigError("listener.ssl.use_identity_as_username is on but listener.ssl.cafile "
                          "is not set; without it no client certificate is ever asked for")
    return load_server_options(config.listener_ssl_certfile, config.listener_ssl_keyfile,
                               config.listener_ssl_cafile,
                               config.listener_ssl_require_certificate)


def wss_options_from_config(config: Config) -> Optional[CertificateOptions]:
    """
    The options of the node's WebSocket TLS listeners (their own
    ``listener.wss.*`` keys, as in VerneMQ), or ``None`` when it has none.
    """
    if not config.wss_listeners:
        return None
    if config.listener_wss_certfile is None or config.listener_wss_keyfile is None:
        raise ConfigError("a WebSocket TLS listener needs listener.wss.certfile and "
                          "listener.wss.keyfile")
    if config.listener_wss_use_identity_as_username and config.listener_wss_cafile is None:
        raise ConfigError("listener.wss.use_identity_as_username is on but listener.wss.cafile "
                          "is not set; without it no client certificate is ever asked for")
    return load_server_options(config.listener_wss_certfile, config.listener_wss_keyfile,
                               config.listener_wss_cafile,
                               config.listener_wss_require_certificate, prefix="listener.wss")


class _ServerTLSProtocol(BufferingTLSTransport):
    """
    Twisted's TLS protocol, plus one log line when TLS itself ends a
    connection (failed handshake, refused certificate, certificate for
    another address, bad record): the application never sees such a peer,
    and "why was my certificate refused?" is the first question an
    operator asks.
    """

    direction = "from"

    def connectionLost(self, reason: Any = None) -> None:
        # Twisted keeps the TLS error in ``_reason`` and hands it to the
        # wrapped protocol; read it (defensively: a private attribute).
        failure = getattr(self, "_reason", None) or reason
        if failure is not None and failure.check(SSL.Error, VerificationError):
            peer = self.transport.getPeer() if self.transport is not None else None
            log.info("TLS connection {direction} {peer} failed: {error}",
                     direction=self.direction,
                     peer=(getattr(peer, "host", None), getattr(peer, "port", None)),
                     error=failure.getErrorMessage())
        super().connectionLost(reason)


class _ClientTLSProtocol(_ServerTLSProtocol):
    direction = "to"


class TLSServerFactory(TLSMemoryBIOFactory):
    """
    Server-side TLS around a protocol factory that may refuse connections.

    Twisted's wrapper would wrap the ``None`` a full listener returns and
    fail later; here a refusal stays a refusal (Twisted closes the socket).
    ``connections`` is the wrapped factory's, so that
    :class:`~vmqtw.service.ListenerService` can still close every client
    when the listener stops.  ``clock`` is where Twisted schedules the
    flush of small writes it gathers into one TLS record (the reactor; a
    ``task.Clock`` in tests).
    """

    noisy = False
    protocol = _ServerTLSProtocol

    def __init__(self, options: Any, wrapped_factory: Any, clock: IReactorTime) -> None:
        super().__init__(options, False, wrapped_factory, clock)

    @property
    def connections(self) -> Set[Any]:
        return getattr(self.wrappedFactory, "connections", set())

    def buildProtocol(self, addr: Any) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)


class TLSClientFactory(TLSMemoryBIOFactory):
    """
    Client-side TLS around a dialing factory (cluster links), logging why
    TLS ended a connection like the server side does.  ``creator`` comes
    from :meth:`ClusterTLS.client_creator`.
    """

    noisy = False
    protocol = _ClientTLSProtocol

    def __init__(self, creator: Any, wrapped_factory: Any, clock: IReactorTime) -> None:
        super().__init__(creator, True, wrapped_factory, clock)


def peer_common_name(transport: Any) -> Optional[str]:
    """
    The common name of the peer's certificate on a TLS ``transport``, or
    ``None`` (not TLS, no certificate, no CN, or more than one CN -- an
    ambiguous identity is no identity).  Only meaningful once the handshake
    completed on a listener that verifies client certificates; then the
    certificate is one a CA of ``listener.ssl.cafile`` signed.
    """
    get_certificate = getattr(transport, "getPeerCertificate", None)
    if get_certificate is None:
        return None
    certificate = get_certificate()
    if certificate is None:
        return None
    if isinstance(certificate, crypto.X509):
        certificate = certificate.to_cryptography()
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    name = names[0].value
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    # MQTT strings cannot carry U+0000 [MQTT-1.5.3-2]; neither can a user name.
    if not name or "\x00" in name:
        return None
    return name


#: Hosts that name no single address: a certificate cannot match them.
_WILDCARD_HOSTS = ("0.0.0.0", "::")

_NODE_USAGES = ((ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
                (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"))


def check_node_certificate(certificate: x509.Certificate, certfile: str, host: str,
                           address_key: str = "listener.vmq.clustering") -> None:
    """
    Refuse, at startup, a node certificate the other nodes would refuse at
    every handshake: one whose subject alternative names miss the
    clustering address ``host`` (the address peers dial and check), or
    whose extended key usage lacks serverAuth or clientAuth (a node is the
    TLS server of the links it accepts and the client of those it dials).
    Otherwise the node would start and its links would just never come up,
    with the reason only in the peers' logs.  A wildcard ``host`` names no
    address, so only the usages are checked then.
    """
    key = "cluster.tls.certfile"
    if host not in _WILDCARD_HOSTS:
        try:
            verify_certificate_ip_address(certificate, host)
        except (CertificateError, VerificationError):
            raise ConfigError(
                f"{key} {certfile!r} has no subject alternative name for {host}, this node's "
                f"{address_key} address, so the other nodes would refuse it") from None
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return  # no extended key usage: every usage is allowed
    missing = [name for oid, name in _NODE_USAGES if oid not in usage]
    if missing:
        raise ConfigError(
            f"{key} {certfile!r} does not allow {' and '.join(missing)} in its extended key "
            f"usage; a node certificate needs both serverAuth and clientAuth")


def cluster_tls_from_config(config: Config) -> Optional[ClusterTLS]:
    """
    The mutual TLS of the node's cluster links, or ``None`` when
    ``cluster.tls.certfile`` is not set.  The files are read and checked
    now, and every problem is one :class:`ConfigError` sentence.
    """
    certfile = config.cluster_tls_certfile
    if certfile is None:
        return None
    if config.cluster_tls_keyfile is None or config.cluster_tls_cafile is None:
        # parse_config refuses this; a Config built in code may not have been parsed.
        raise ConfigError("TLS between nodes needs cluster.tls.keyfile and cluster.tls.cafile "
                          "as well as cluster.tls.certfile")
    tls = ClusterTLS.load(certfile, config.cluster_tls_keyfile, config.cluster_tls_cafile)
    # The other nodes check the address they dial: the advertised one.
    address_key = ("listener.vmq.clustering.advertise"
                   if config.listener_vmq_clustering_advertise is not None
                   else "listener.vmq.clustering")
    check_node_certificate(tls.identity.original.to_cryptography(), certfile,
                           config.cluster_advertised_address[0], address_key)
    return tls
