"""
Frames of the inter-node link, without any I/O.

Every frame is a 4-byte big-endian length followed by a msgpack body.  The
body is a tuple whose first element is the frame kind; the rest depends on
the kind (see the ``KIND_*`` constants and the builder functions).  msgpack
is compact, fast and -- unlike pickle -- cannot run code on decode.  Lists
are decoded as tuples (``use_list=False``) so that the plain-data messages of
``IClusterTransport`` arrive exactly as the sender built them.

The decoder is fed arbitrary chunks of bytes and returns whole frames; any
violation (oversize length, undecodable body, unknown kind, wrong arity) is
a :class:`ProtocolError`, after which the caller must close the link: there
is no way to resynchronise a length-prefixed stream.
"""
from __future__ import annotations

import struct
from typing import Any, List, Optional, Tuple

import msgpack

__all__ = [
    "ProtocolError", "FrameDecoder", "encode_frame", "encode_body",
    "DEFAULT_MAX_FRAME_SIZE", "HANDSHAKE_MAX_FRAME_SIZE",
    "KIND_HELLO", "KIND_PROOF", "KIND_REFUSE", "KIND_CAST", "KIND_CALL",
    "KIND_REPLY", "KIND_PING",
    "hello", "proof", "refuse", "cast", "call", "reply", "ping",
]

#: Largest frame body accepted once a link is authenticated.
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
#: Largest frame body accepted before authentication: handshake frames are
#: tiny, and an unauthenticated stranger must not make us buffer 16 MiB.
HANDSHAKE_MAX_FRAME_SIZE = 4096

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size

KIND_HELLO = 0    # (kind, node_name: str, version: int, nonce: bytes)
KIND_PROOF = 1    # (kind, mac: bytes)
KIND_REFUSE = 2   # (kind, reason: str)
KIND_CAST = 3     # (kind, channel: str, message)
KIND_CALL = 4     # (kind, call_id: int, method: str, args: tuple)
KIND_REPLY = 5    # (kind, call_id: int, ok: bool, value_or_error)
KIND_PING = 6     # (kind,)

#: Number of elements (kind included) of each frame kind.
_ARITY = {
    KIND_HELLO: 4, KIND_PROOF: 2, KIND_REFUSE: 2, KIND_CAST: 3,
    KIND_CALL: 4, KIND_REPLY: 4, KIND_PING: 1,
}

Frame = Tuple[Any, ...]


class ProtocolError(Exception):
    """
    The peer sent something that is not a valid frame; close the link.
    """


def encode_body(frame: Frame) -> bytes:
    """
    The msgpack body of ``frame``.

    Raises ``TypeError``/``ValueError`` for values msgpack cannot carry, so a
    caller can refuse an unserialisable message before it reaches the wire.
    """
    return msgpack.packb(frame, use_bin_type=True)


def encode_frame(frame: Frame) -> bytes:
    """``frame`` as bytes ready for the wire: length header + body."""
    body = msgpack.packb(frame, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


def hello(node: str, version: int, nonce: bytes) -> Frame:
    return (KIND_HELLO, node, version, nonce)


def proof(mac: bytes) -> Frame:
    return (KIND_PROOF, mac)


def refuse(reason: str) -> Frame:
    return (KIND_REFUSE, reason)


def cast(channel: str, message: Any) -> Frame:
    return (KIND_CAST, channel, message)


def call(call_id: int, method: str, args: Tuple[Any, ...]) -> Frame:
    return (KIND_CALL, call_id, method, tuple(args))


def reply(call_id: int, ok: bool, value: Any) -> Frame:
    return (KIND_REPLY, call_id, ok, value)


def ping() -> Frame:
    return (KIND_PING,)


class FrameDecoder:
    """
    Turns a byte stream into frames.

    ``max_frame_size`` may be changed between two :meth:`next_frame` calls
    (the link raises it once the handshake is done, so the very next frame
    in the same TCP segment is already judged by the new limit).  It is
    checked against the length header before the body is buffered, so an
    oversize frame is refused without reading it.
    """

    __slots__ = ("max_frame_size", "_buffer", "_offset", "_failed")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._offset = 0
        self._failed = False

    def push(self, data: bytes) -> None:
        """Add received bytes; take frames out with :meth:`next_frame`."""
        if self._offset:
            del self._buffer[:self._offset]
            self._offset = 0
        self._buffer += data

    def next_frame(self) -> Optional[Frame]:
        """
        The next complete frame, or ``None`` when more bytes are needed.

        Raises :class:`ProtocolError` on a bad frame, and again on every
        later call: the stream cannot be resynchronised.
        """
        if self._failed:
            raise ProtocolError("decoder already failed")
        buf, offset = self._buffer, self._offset
        if len(buf) - offset < HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(buf, offset)
        if length > self.max_frame_size:
            self._fail()
            raise ProtocolError(
                "frame of %d bytes exceeds the limit of %d bytes"
                % (length, self.max_frame_size))
        start = offset + HEADER_SIZE
        if len(buf) - start < length:
            return None
        self._offset = start + length
        try:
            return _decode_body(bytes(buf[start:start + length]))
        except ProtocolError:
            self._fail()
            raise

    def _fail(self) -> None:
        self._failed = True
        self._buffer.clear()
        self._offset = 0

    def feed(self, data: bytes) -> List[Frame]:
        """:meth:`push` ``data`` and return every frame now complete."""
        self.push(data)
        frames: List[Frame] = []
        while True:
            frame = self.next_frame()
            if frame is None:
                return frames
            frames.append(frame)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer) - self._offset


def _no_ext(code: int, data: bytes) -> Any:
    """msgpack extension types are not plain data: refuse them."""
    raise ValueError("msgpack extension type %d" % (code,))


def _decode_body(body: bytes) -> Frame:
    try:
        frame = msgpack.unpackb(body, raw=False, use_list=False,
                                strict_map_key=False, ext_hook=_no_ext)
    except Exception as e:  # msgpack raises several unrelated types
        raise ProtocolError("undecodable frame body: %s" % (
            type(e).__name__,)) from None
    if not isinstance(frame, tuple) or not frame:
        raise ProtocolError("frame body is not a non-empty array")
    kind = frame[0]
    if type(kind) is not int or _ARITY.get(kind) != len(frame):
        raise ProtocolError("unknown frame kind or wrong arity: %r/%d" % (
            kind if type(kind) is int else type(kind).__name__, len(frame)))
    return frame
