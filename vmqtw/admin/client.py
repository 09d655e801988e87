"""
A blocking admin client of a node's ``listener.vmq.clustering``.

Plain sockets, no reactor: the command line runs once and exits, and
``twistd vmqtw-admin`` runs it inside ``makeService`` before any reactor
turns.  It proves ``distributed_cookie`` with the same
:class:`~vmqtw.cluster.auth.Handshake` as a node, under a name starting
with :data:`~vmqtw.cluster.auth.ADMIN_PREFIX` so the node does not take it
for a cluster member, then sends ``call`` frames and waits for the replies.
While it waits it sends a ping every second: the node closes links that
stay silent past its heartbeat timeout, and a join may take seconds.

With TLS between nodes (``cluster.tls.*``) the node's clustering listener
speaks only TLS and wants a client certificate, so the client wraps its
socket with stdlib :mod:`ssl` (:func:`tls_context`) before the cookie
handshake: it presents the node's own certificate and checks the node's
against ``cluster.tls.cafile`` and the clustering address, as a peer node
would.
"""
from __future__ import annotations

import os
import socket
import ssl
import time
from typing import Any, Callable, Optional, Tuple

from vmqtw.cluster import auth, wire
from vmqtw.cluster.auth import ADMIN_PREFIX

__all__ = ["AdminError", "NodeUnreachable", "CookieMismatch", "CommandFailed", "AdminClient",
           "admin_name", "tls_context", "COMMAND_ERROR"]

#: Exception type name the node's admin handlers use for operator errors;
#: the text after it is shown as is.
COMMAND_ERROR = "AdminCommandError"

Address = Tuple[str, int]


class AdminError(Exception):
    """Anything that stops an admin command; the message is one sentence."""


class NodeUnreachable(AdminError):
    """No node answers at the clustering address, or it went away."""


class CookieMismatch(AdminError):
    """The node refused our proof of ``distributed_cookie``."""


class CommandFailed(AdminError):
    """The node ran the command and said no."""


def admin_name(pid: Optional[int] = None, rand: Callable[[int], bytes] = os.urandom) -> str:
    """A fresh handshake name: unique, so two admins never look like one."""
    return "%s%d-%s" % (ADMIN_PREFIX, os.getpid() if pid is None else pid, rand(4).hex())


#: Listening hosts that name no single address (the client dials loopback).
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def tls_context(certfile: str, keyfile: str, cafile: str, address: Address) -> ssl.SSLContext:
    """
    The client side of cluster TLS for reaching the node listening at
    ``address``: the node's certificate and key as our identity, its
    certificate checked against ``cafile`` and, unless the listener is a
    wildcard, against the address itself (an IP SAN; Python's ``ssl``
    matches IP addresses given as ``server_hostname``).  A wildcard
    listener is reached on loopback, which a node certificate need not
    name; the chain is still checked, and the cookie handshake with the
    expected node name still proves who answers.  Unreadable or unusable
    files raise :class:`AdminError` naming the key.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = address[0] not in WILDCARD_HOSTS
    try:
        context.load_verify_locations(cafile=cafile)
    except (OSError, ValueError) as e:
        raise AdminError("cluster.tls.cafile %r cannot be used (%s)." % (cafile, _os_reason(e))) \
            from None
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ValueError) as e:
        raise AdminError("cluster.tls.certfile %r with cluster.tls.keyfile %r cannot be used (%s)."
                         % (certfile, keyfile, _os_reason(e))) from None
    return context


def _os_reason(error: BaseException) -> str:
    """
    The short reason of an OSError or SSLError: OpenSSL's verify message
    (``IP address mismatch, ...``) or its reason code in words
    (``tlsv13 alert certificate required``) rather than the errno and
    source-line noise of ``str()``.
    """
    verify_message = getattr(error, "verify_message", None)
    if verify_message:
        return str(verify_message).rstrip(".")
    reason = getattr(error, "reason", None)
    if isinstance(error, ssl.SSLError) and reason:
        return str(reason).replace("_", " ").lower()
    return str(getattr(error, "strerror", None) or error)


def _connect_host(host: str) -> str:
    """A wildcard listener is reached on loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _where(address: Address) -> str:
    host, port = address
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


class _Closed(Exception):
    """The node closed the connection; the message is the reason."""


class _TLSFailed(_Closed):
    """TLS ended the connection (an alert from the node, a bad record)."""


class AdminClient:
    """
    ``with AdminClient(address, cookie, node) as c: c.call("admin.cluster.show")``.

    ``node`` is the expected node name (``nodename``): the handshake
    fails if someone else answers.  ``tls`` (from :func:`tls_context`)
    wraps the connection in TLS first, for a node with ``cluster.tls``.
    """

    def __init__(self, address: Address, cookie: bytes, node: str, timeout: float = 10.0,
                 name: Optional[str] = None, nonce_source: Callable[[int], bytes] = os.urandom,
                 ping_interval: float = 1.0, tls: Optional[ssl.SSLContext] = None) -> None:
        self.address = (_connect_host(address[0]), int(address[1]))
        self.cookie = cookie.encode("utf-8") if isinstance(cookie, str) else cookie
        self.node = node
        self.timeout = timeout
        self.name = name if name is not None else admin_name()
        self.ping_interval = ping_interval
        self.tls = tls
        self._nonce_source = nonce_source
        self._sock: Optional[socket.socket] = None
        self._decoder = wire.FrameDecoder(wire.HANDSHAKE_MAX_FRAME_SIZE)
        self._call_ids = 0
        self._last_sent = 0.0

    # -- connection ------------------------------------------------------
    def connect(self) -> "AdminClient":
        where = _where(self.address)
        try:
            self._sock = socket.create_connection(self.address, timeout=self.timeout)
        except ConnectionResetError as e:
            # Someone listens there and dropped us at once: a node refusing
            # this address (rate-limited after wrong cookies), not no node.
            raise NodeUnreachable(
                "The node at %s closed the connection during the handshake (%s); after repeated "
                "wrong cookies it refuses this address for a while." % (
                    where, e.strerror or e)) from None
        except OSError as e:
            raise NodeUnreachable("No node is running at %s (%s); start it or check "
                                  "listener.vmq.clustering." % (where, e.strerror or e)) from None
        if self.tls is not None:
            self._start_tls(where)
        hs = auth.Handshake(role=auth.INITIATOR, node=self.name, cookie=self.cookie,
                            nonce=self._nonce_source(auth.NONCE_SIZE), expected_peer=self.node)
        deadline = time.monotonic() + self.timeout
        try:
            self._send(hs.start())
            while not hs.established:
                frame = self._read_frame(deadline, "the handshake", ping=False)
                self._send(hs.receive(frame))
        except auth.HandshakeRefused as e:
            self.close()
            if e.reason == "authentication failed":
                raise CookieMismatch("The node at %s refused: distributed_cookie does not "
                                     "match." % (where,)) from None
            raise AdminError("The node at %s refused the admin connection: %s." % (where, e.reason)) \
                from None
        except _TLSFailed as e:
            self.close()
            raise AdminError(
                "The node at %s refused our TLS certificate (%s); check that its cluster.tls.cafile "
                "signed our cluster.tls.certfile." % (where, e)) from None
        except _Closed as e:
            self.close()
            if self.tls is not None and str(e) == "end of stream":
                # TLS 1.3: the node checks our certificate after our side of
                # the handshake is done, and may just hang up.
                raise AdminError(
                    "The node at %s closed the TLS connection during the handshake; check that "
                    "its cluster.tls.cafile signed our cluster.tls.certfile (or, after repeated "
                    "wrong cookies, it refuses this address for a while)." % (where,)) from None
            raise NodeUnreachable(
                "The node at %s closed the connection during the handshake (%s); after repeated "
                "wrong cookies it refuses this address for a while." % (where, e)) from None
        except auth.HandshakeFailed as e:
            self.close()
            if e.reason.startswith("expected node"):
                raise AdminError("The node at %s is not %s (%s); check nodename." % (
                    where, self.node, e.reason)) from None
            raise AdminError("The node at %s broke the handshake: %s." % (where, e.reason)) from None
        except BaseException:
            self.close()
            raise
        self._decoder.max_frame_size = wire.DEFAULT_MAX_FRAME_SIZE
        return self

    def _start_tls(self, where: str) -> None:
        """Wrap the connected socket in TLS, or close it and raise one sentence."""
        assert self._sock is not None and self.tls is not None
        try:
            self._sock = self.tls.wrap_socket(self._sock, server_hostname=self.address[0])
        except ssl.SSLCertVerificationError as e:
            self.close()
            raise AdminError("The node at %s presented a certificate this client does not trust "
                             "(%s); check cluster.tls.cafile and the node's cluster.tls.certfile."
                             % (where, _os_reason(e))) from None
        except (OSError, ValueError) as e:
            self.close()
            raise AdminError("The TLS handshake with the node at %s failed (%s); is cluster.tls "
                             "set the same way on the node?" % (where, _os_reason(e))) from None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> "AdminClient":
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- calls -------------------------------------------------------------
    def call(self, method: str, args: Tuple[Any, ...] = (), timeout: Optional[float] = None) -> Any:
        """The reply's value; :class:`CommandFailed` when the handler failed."""
        if self._sock is None:
            raise AdminError("The admin client is not connected.")
        try:
            return self._call(method, args, timeout)
        except _Closed as e:
            self.close()
            raise NodeUnreachable("The node at %s closed the connection before the reply to %s "
                                  "(%s)." % (_where(self.address), method, e)) from None

    def pause(self, seconds: float) -> None:
        """
        Keep the link alive for ``seconds`` without a call (between the
        progress polls of ``cluster leave -k``): the node closes links that
        stay silent past its heartbeat timeout.
        """
        if self._sock is None:
            raise AdminError("The admin client is not connected.")
        deadline = time.monotonic() + seconds
        try:
            while True:
                try:
                    self._read_frame(deadline, "", ping=True)
                except NodeUnreachable:
                    return   # the deadline passed: what we waited for
        except _Closed as e:
            self.close()
            raise NodeUnreachable("The node at %s closed the connection (%s)." % (
                _where(self.address), e)) from None

    def _call(self, method: str, args: Tuple[Any, ...], timeout: Optional[float]) -> Any:
        self._call_ids += 1
        call_id = self._call_ids
        self._send([wire.call(call_id, method, tuple(args))])
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self._read_frame(deadline, "the reply to " + method, ping=True)
            if frame[0] == wire.KIND_REPLY and frame[1] == call_id:
                _, _, ok, value = frame
                if ok:
                    return value
                raise CommandFailed(_failure_sentence(value))
            # pings, casts and stray replies: nothing for us

    # -- frames -------------------------------------------------------------
    def _send(self, frames: Any) -> None:
        if frames:
            assert self._sock is not None
            try:
                self._sock.sendall(b"".join(wire.encode_frame(f) for f in frames))
                self._last_sent = time.monotonic()
            except ssl.SSLError as e:
                raise _TLSFailed(_os_reason(e)) from None
            except OSError as e:
                raise _Closed(e.strerror or str(e)) from None

    def _read_frame(self, deadline: float, what: str, ping: bool) -> wire.Frame:
        assert self._sock is not None
        where = _where(self.address)
        while True:
            try:
                frame = self._decoder.next_frame()
            except wire.ProtocolError as e:
                raise AdminError("The node at %s sent garbage: %s." % (where, e)) from None
            if frame is not None:
                return frame
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                raise NodeUnreachable("The node at %s did not answer %s in time." % (where, what))
            if ping:
                # By time since our last write, not by a quiet socket: the
                # node's own pings keep our socket busy but not its timer.
                until_ping = self._last_sent + self.ping_interval - now
                if until_ping <= 0:
                    self._send([wire.ping()])
                    continue
                left = min(left, until_ping)
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                continue
            except ssl.SSLError as e:
                raise _TLSFailed(_os_reason(e)) from None
            except OSError as e:
                data = b""
                reason = e.strerror or str(e)
            else:
                reason = "end of stream"
            if not data:
                raise _Closed(reason)
            self._decoder.push(data)


def _failure_sentence(value: Any) -> str:
    """A handler's ``"Type: text"`` failure as the sentence to show."""
    text = value if isinstance(value, str) else repr(value)
    kind, sep, rest = text.partition(": ")
    if sep and kind == COMMAND_ERROR:
        return rest
    if sep and kind == "UnknownMethod":
        return "The node does not know this admin command (%s); is it an older version?" % (rest,)
    return "The node failed to run the command: %s." % (text.rstrip("."),)
