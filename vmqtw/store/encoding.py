"""
Byte layouts of the bundled message stores (pure: no I/O, no clock).

Kept apart from :mod:`vmqtw.store.leveldb` so the key order that the store's
correctness rests on (one subscriber's index entries are contiguous and sorted
by insertion) can be checked with property tests, without a database.

Key space (LevelDB sorts keys bytewise)::

    msg/<ref>                                  -> encode_message(msg)
    idx/<len(mp)><mp><len(cid)><cid>/<seq>     -> ref

Both SubscriberId fields are UTF-8 with a 4-byte big-endian length in front,
so no character of a mountpoint or client id (``/`` included, even NUL) can
make one subscriber's prefix a prefix of another's.  ``seq`` is an 8-byte
big-endian counter shared by all subscribers: bytewise order is numeric order,
so a prefix scan returns a subscriber's refs in the order they were written.

Messages are msgpack arrays with a leading format version, never pickle: the
file format must be readable by future versions and must not execute code.
Version 1 (8 fields) is a message without MQTT 5.0 properties, written as
before them, so a store written by older code opens and older code can read
what 3.1.1 traffic writes; version 2 adds a ninth field, the PUBLISH
property block (:func:`vmqtw.mqtt.properties.pack_message_properties`).
"""
from __future__ import annotations

import struct
from typing import Tuple

import msgpack

from vmqtw.mqtt.properties import pack_message_properties, unpack_message_properties
from vmqtw.types import Message, SubscriberId

__all__ = ["MSG_PREFIX", "IDX_PREFIX", "FORMAT_VERSION", "StoreNotOpen",
           "encode_subscriber", "decode_subscriber", "idx_prefix", "idx_key",
           "parse_idx_key", "msg_key", "encode_message", "decode_message"]

MSG_PREFIX = b"msg/"
IDX_PREFIX = b"idx/"
#: The newest message format written (see the module docstring).
FORMAT_VERSION = 2
#: The format of a message without properties (the only one before v5).
FORMAT_VERSION_PLAIN = 1

_LEN = struct.Struct(">I")
_SEQ = struct.Struct(">Q")


class StoreNotOpen(RuntimeError):
    """
    A store was used before ``open()`` fired or after ``close()``: a bug in
    the caller's lifecycle, reported loudly instead of as an empty store.
    """


def encode_subscriber(sid: SubscriberId) -> bytes:
    """Length-prefixed UTF-8 of mountpoint then client id."""
    mp = sid.mountpoint.encode("utf-8", "surrogatepass")
    cid = sid.client_id.encode("utf-8", "surrogatepass")
    return b"".join((_LEN.pack(len(mp)), mp, _LEN.pack(len(cid)), cid))


def decode_subscriber(data: bytes, offset: int = 0) -> Tuple[SubscriberId, int]:
    """Inverse of :func:`encode_subscriber`; returns the id and end offset."""
    (n,) = _LEN.unpack_from(data, offset)
    offset += 4
    mp = data[offset:offset + n]
    offset += n
    (m,) = _LEN.unpack_from(data, offset)
    offset += 4
    cid = data[offset:offset + m]
    offset += m
    if len(mp) != n or len(cid) != m:
        raise ValueError("truncated subscriber id")
    return (SubscriberId(mp.decode("utf-8", "surrogatepass"),
                         cid.decode("utf-8", "surrogatepass")), offset)


def idx_prefix(sid: SubscriberId) -> bytes:
    """The prefix shared by every index key of ``sid`` (and nobody else)."""
    return IDX_PREFIX + encode_subscriber(sid) + b"/"


def idx_key(prefix: bytes, seq: int) -> bytes:
    """Index key from :func:`idx_prefix` and an insertion counter."""
    return prefix + _SEQ.pack(seq)


def parse_idx_key(key: bytes) -> Tuple[SubscriberId, int]:
    """``(subscriber id, seq)`` of an index key; ``ValueError`` if malformed."""
    if not key.startswith(IDX_PREFIX):
        raise ValueError("not an index key: %r" % (key[:16],))
    try:
        sid, end = decode_subscriber(key, len(IDX_PREFIX))
    except struct.error as e:
        raise ValueError("malformed index key") from e
    if key[end:end + 1] != b"/" or len(key) != end + 1 + _SEQ.size:
        raise ValueError("malformed index key")
    (seq,) = _SEQ.unpack_from(key, end + 1)
    return sid, seq


def msg_key(ref: bytes) -> bytes:
    """Key of the single stored copy of message ``ref``."""
    return MSG_PREFIX + ref


def encode_message(msg: Message) -> bytes:
    """
    The stored form of everything but ``ref`` (it is in the key) and
    ``origin`` (only meaningful while a message is in transit).
    """
    if msg.properties is None:
        return msgpack.packb(
            (FORMAT_VERSION_PLAIN, msg.topic, msg.payload, msg.qos, msg.retain,
             msg.dup, msg.timestamp, msg.mountpoint), use_bin_type=True)
    return msgpack.packb(
        (FORMAT_VERSION, msg.topic, msg.payload, msg.qos, msg.retain,
         msg.dup, msg.timestamp, msg.mountpoint,
         pack_message_properties(msg.properties)), use_bin_type=True)


def decode_message(ref: bytes, data: bytes) -> Message:
    """Inverse of :func:`encode_message`; reads both format versions."""
    fields = msgpack.unpackb(data, raw=False, use_list=False)
    version = fields[0] if fields else None
    if version == FORMAT_VERSION_PLAIN and len(fields) == 8:
        _, topic, payload, qos, retain, dup, timestamp, mountpoint = fields
        properties = None
    elif version == FORMAT_VERSION and len(fields) == 9:
        _, topic, payload, qos, retain, dup, timestamp, mountpoint, packed = fields
        properties = unpack_message_properties(packed)
    else:
        raise ValueError("unknown message format %r" % (fields[:1],))
    return Message(ref=ref, topic=topic, payload=payload, qos=qos,
                   retain=retain, dup=dup, timestamp=timestamp,
                   mountpoint=mountpoint, properties=properties)
