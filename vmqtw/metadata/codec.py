"""
Canonical msgpack encoding of metadata keys and objects.

Why canonical: object hashes feed the Merkle trees of anti-entropy, so two
nodes holding the same object must produce the same bytes.  msgpack of
tuples/str/bytes/int/float is canonical already (one encoding per value);
dicts are not part of the metadata value space (see ``IMetadataStore``).

Decoding uses ``use_list=False`` so tuples come back as tuples, which keeps
keys hashable and values equal to what was written.  No pickle, ever.
"""
from __future__ import annotations

from typing import Any, Tuple

import msgpack

__all__ = ["encode", "decode", "encode_pkey", "decode_pkey",
           "prefix_bytes"]

def encode(obj: Any) -> bytes:
    """The canonical bytes of ``obj`` (plain data, tuples)."""
    return msgpack.packb(obj, use_bin_type=True)


def decode(data: bytes) -> Any:
    """Inverse of :func:`encode`; sequences come back as tuples."""
    return msgpack.unpackb(data, use_list=False, raw=False,
                           strict_map_key=False)


def encode_pkey(prefix: Tuple[str, str], key: Any) -> bytes:
    """
    The storage key of ``key`` in ``prefix``: the encoding of the 3-tuple
    ``(p1, p2, key)``.  Every key of a prefix starts with
    :func:`prefix_bytes`, so a prefix is one contiguous LevelDB range.
    """
    return msgpack.packb((prefix[0], prefix[1], key), use_bin_type=True)


def decode_pkey(data: bytes) -> Tuple[Tuple[str, str], Any]:
    """Inverse of :func:`encode_pkey`: ``((p1, p2), key)``."""
    p1, p2, key = decode(data)
    return (p1, p2), key


def prefix_bytes(prefix: Tuple[str, str]) -> bytes:
    """The byte prefix shared by every :func:`encode_pkey` of ``prefix``."""
    return b"\x93" + encode(prefix[0]) + encode(prefix[1])
