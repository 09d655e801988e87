"""
The one raw-socket MQTT client of the tests and benchmarks.

Real-process tests need to see what a well-behaved client library hides:
the exact CONNACK, an acknowledgement that does *not* come, the bytes a
broker sends before it closes, and whether (and when) it closes.  Every
such test used to carry its own socket helpers; this is the one they share.

It is deliberately small and blocking (stdlib ``socket``, every wait
bounded by a timeout): bytes to send are built by
:mod:`vmqtw.testing.mqttbytes` (independent of the codec under test); what
arrives is framed here and each *complete* frame is decoded by the codec's
:class:`~vmqtw.mqtt.codec.Decoder`.  Decoding one whole frame at a time
keeps the bytes not yet read as packets available as bytes, so
:meth:`RawClient.read_until_closed` can return exactly what the broker
sent after the last packet a test read.

It wraps any connected stream socket, so a test can hand it an
``ssl.SSLSocket`` it wrapped itself.
"""
from __future__ import annotations

import socket
import time
from typing import Any, List, Optional, Tuple, Type, TypeVar

import attrs

from vmqtw.mqtt import packets as P
from vmqtw.mqtt.codec import Decoder
from vmqtw.testing import mqttbytes as B

__all__ = ["RawClient", "PeerClosed", "ReadTimeout", "ConnectRefused"]

K = TypeVar("K")


class PeerClosed(ConnectionError):
    """The broker closed the connection before the packets asked for came."""

    def __init__(self, message: str, packets: List[P.Packet]) -> None:
        super().__init__(message)
        self.packets = packets


class ReadTimeout(TimeoutError, AssertionError):
    """
    The packets asked for did not come in time.  Also an ``AssertionError``,
    so pytest reports it as the failed expectation it is.
    """

    def __init__(self, message: str, packets: List[P.Packet]) -> None:
        super().__init__(message)
        self.packets = packets


class ConnectRefused(AssertionError):
    """The CONNACK was not the one the caller required."""


def _frame_length(buffer: bytearray) -> Optional[int]:
    """
    Size of the complete frame at the start of ``buffer``, or None if it is
    not complete yet.  A remaining length longer than four bytes is
    returned as the whole buffer, so the decoder reports it as malformed.
    """
    multiplier = 1
    remaining = 0
    for index in range(1, 5):
        if index >= len(buffer):
            return None
        byte = buffer[index]
        remaining += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            total = index + 1 + remaining
            return total if len(buffer) >= total else None
        multiplier *= 128
    return len(buffer)


@attrs.define(slots=True, eq=False)
class RawClient:
    """
    One connection to a broker: send raw bytes, read packets with a bounded
    wait, see the broker close.  ``timeout`` is the default bound of every
    read; ``connack`` is the CONNACK read by :meth:`connect`, if any.
    """

    sock: socket.socket
    timeout: float = 10.0
    connack: Optional[P.ConnAck] = None
    _buffer: bytearray = attrs.field(factory=bytearray, init=False)
    _decoder: Decoder = attrs.field(factory=Decoder, init=False)

    @classmethod
    def open(cls, host: str, port: int, timeout: float = 10.0) -> "RawClient":
        """A TCP connection to ``host:port``; nothing is sent."""
        return cls(socket.create_connection((host, port), timeout=timeout), timeout)

    @classmethod
    def connect(cls, host: str, port: int, client_id: Any = "client", *,
                timeout: float = 10.0, expect: Optional[P.ConnAck] = P.ConnAck(0, False),
                **fields: Any) -> "RawClient":
        """
        Open a connection, send CONNECT (``client_id`` and ``fields`` as
        :func:`vmqtw.testing.mqttbytes.connect` takes them) and read the
        CONNACK into :attr:`connack`.  Unless ``expect`` is None the CONNACK
        must equal it (:class:`ConnectRefused` otherwise, connection closed).
        """
        client = cls.open(host, port, timeout)
        try:
            client.handshake(client_id, expect=expect, **fields)
        except BaseException:
            client.close()
            raise
        return client

    def handshake(self, client_id: Any = "client", *,
                  expect: Optional[P.ConnAck] = P.ConnAck(0, False),
                  **fields: Any) -> P.ConnAck:
        """Send CONNECT on this connection and read its CONNACK (see :meth:`connect`)."""
        self.send(B.connect(client_id, **fields))
        connack = self.next()
        if not isinstance(connack, P.ConnAck):
            raise ConnectRefused("expected a CONNACK for %r, got %r" % (client_id, connack))
        self.connack = connack
        if expect is not None and connack != expect:
            raise ConnectRefused("CONNACK for %r was %r, expected %r"
                                 % (client_id, connack, expect))
        return connack

    # -- sending ---------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send ``data`` whole."""
        self.sock.sendall(data)

    def send_quietly(self, data: bytes) -> bool:
        """Send, ignoring a broker that already closed (it may, mid-way); False if it had."""
        try:
            self.sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            return False
        return True

    # -- reading ---------------------------------------------------------

    def _take(self) -> Optional[P.Packet]:
        """The next packet from what has been received, or None."""
        size = _frame_length(self._buffer)
        if size is None:
            return None
        frame = bytes(self._buffer[:size])
        del self._buffer[:size]
        packets = self._decoder.feed(frame)
        assert len(packets) == 1, packets  # a whole frame is exactly one packet
        return packets[0]

    def _receive(self, deadline: float, what: str, read: List[P.Packet]) -> None:
        """Wait for more bytes until ``deadline``; raise if none come or the peer closed."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise ReadTimeout("timed out waiting for %s after %r" % (what, read), read)
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise ReadTimeout("timed out waiting for %s after %r" % (what, read), read) from None
        except ConnectionResetError:
            data = b""
        if not data:
            raise PeerClosed("closed by the broker while waiting for %s, after %r"
                             % (what, read), read)
        self._buffer.extend(data)

    def next(self, timeout: Optional[float] = None) -> P.Packet:
        """The next packet the broker sends, within ``timeout`` seconds."""
        return self.read(1, timeout)[0]

    def read(self, count: int, timeout: Optional[float] = None) -> List[P.Packet]:
        """
        Exactly the next ``count`` packets, within ``timeout`` seconds for
        all of them.  Raises :class:`ReadTimeout` or :class:`PeerClosed`
        (each carries ``packets``: those read before it).
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        packets: List[P.Packet] = []
        while len(packets) < count:
            packet = self._take()
            if packet is None:
                self._receive(deadline, "%d of %d packets" % (len(packets) + 1, count), packets)
            else:
                packets.append(packet)
        return packets

    def read_until(self, kind: Type[K], timeout: Optional[float] = None) -> List[P.Packet]:
        """
        Packets up to and including the first of class ``kind``, within
        ``timeout`` seconds: ``[...what came before, the match]``.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        packets: List[P.Packet] = []
        while True:
            packet = self._take()
            if packet is None:
                self._receive(deadline, "a %s" % (kind.__name__,), packets)
                continue
            packets.append(packet)
            if isinstance(packet, kind):
                return packets

    def read_until_closed(self, timeout: Optional[float] = None) -> Tuple[bytes, bool]:
        """
        Every byte the broker sends, beyond the packets already read, until
        it closes the connection (``True``) or ``timeout`` passes (``False``).
        A reset is a close too.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return self._drain(), False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return self._drain(), True
            except socket.timeout:
                return self._drain(), False
            if not chunk:
                return self._drain(), True
            self._buffer.extend(chunk)

    def closed_by_peer(self, timeout: Optional[float] = None) -> bool:
        """True once the broker closed the connection within ``timeout`` (what it sent is dropped)."""
        return self.read_until_closed(timeout)[1]

    def _drain(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    # -- closing ---------------------------------------------------------

    def close(self) -> None:
        """Close our end (idempotent)."""
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
