"""
Merkle trees over the metadata, one per full prefix, for anti-entropy.

Layout per prefix: ``segments`` leaf segments (a key's segment is its
blake2b digest modulo ``segments``); a segment's hash covers its sorted
``(key_enc, object_hash)`` pairs; ``width`` consecutive segments form a
bucket; the prefix's top hash covers its bucket hashes; the root covers the
sorted ``(prefix, top)`` pairs.  Two replicas compare roots, then tops, then
buckets, then segments, and only exchange keys of differing segments.

Why lazy: an insert only records the leaf and marks its segment dirty, so the
write path stays O(1); :meth:`HashTree.update` rehashes dirty segments and
their ancestors when an exchange needs fresh hashes.  Pure: no I/O, no clock;
rebuilt from the store at start (it is a cache of the data, never persisted).
"""
from __future__ import annotations

import hashlib
from typing import Dict, Iterable, List, Optional, Set, Tuple

from vmqtw.metadata.codec import encode

__all__ = ["HashTree"]

Prefix = Tuple[str, str]
_EMPTY = b""


def _h(parts: Iterable[bytes]) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


class _PrefixTree:
    __slots__ = ("segments", "seg_hash", "bucket_hash", "top", "dirty",
                 "count")

    def __init__(self, nsegs: int, width: int) -> None:
        self.segments: Dict[int, Dict[bytes, bytes]] = {}
        self.seg_hash: List[bytes] = [_EMPTY] * nsegs
        self.bucket_hash: List[bytes] = [_EMPTY] * (nsegs // width)
        self.top: bytes = _EMPTY
        self.dirty: Set[int] = set()
        self.count = 0


class HashTree:
    """Merkle trees of every prefix; see the module docstring."""

    def __init__(self, segments: int = 1024, width: int = 32) -> None:
        if segments % width:
            raise ValueError("segments must be a multiple of width")
        self.nsegs = segments
        self.width = width
        self.nbuckets = segments // width
        self._prefixes: Dict[Prefix, _PrefixTree] = {}
        self._root: Optional[bytes] = _h(())

    def segment_of(self, key_enc: bytes) -> int:
        """The leaf segment of an encoded key."""
        digest = hashlib.blake2b(key_enc, digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.nsegs

    # -- writes -------------------------------------------------------------
    def insert(self, prefix: Prefix, key_enc: bytes, obj_hash: bytes) -> None:
        """Record (or replace) the hash of one key."""
        tree = self._prefixes.get(prefix)
        if tree is None:
            tree = self._prefixes[prefix] = _PrefixTree(self.nsegs, self.width)
        seg = self.segment_of(key_enc)
        leaves = tree.segments.get(seg)
        if leaves is None:
            leaves = tree.segments[seg] = {}
        if key_enc not in leaves:
            tree.count += 1
        leaves[key_enc] = obj_hash
        tree.dirty.add(seg)
        self._root = None

    def delete(self, prefix: Prefix, key_enc: bytes) -> None:
        """Forget one key; a prefix without keys disappears entirely, so a
        replica that collected its tombstones equals one that never had
        them."""
        tree = self._prefixes.get(prefix)
        if tree is None:
            return
        seg = self.segment_of(key_enc)
        leaves = tree.segments.get(seg)
        if not leaves or key_enc not in leaves:
            return
        del leaves[key_enc]
        tree.count -= 1
        if not leaves:
            del tree.segments[seg]
        if tree.count == 0:
            del self._prefixes[prefix]
        else:
            tree.dirty.add(seg)
        self._root = None

    # -- hashing -------------------------------------------------------------
    def update(self) -> None:
        """Rehash dirty segments, their buckets, tops and the root."""
        for tree in self._prefixes.values():
            if not tree.dirty:
                continue
            buckets = set()
            for seg in tree.dirty:
                leaves = tree.segments.get(seg)
                if leaves:
                    tree.seg_hash[seg] = _h(
                        k + v for k, v in sorted(leaves.items()))
                else:
                    tree.seg_hash[seg] = _EMPTY
                buckets.add(seg // self.width)
            tree.dirty.clear()
            for b in buckets:
                start = b * self.width
                segs = tree.seg_hash[start:start + self.width]
                # an empty bucket hashes as never touched, so the tree of
                # a set of keys does not depend on its history
                tree.bucket_hash[b] = _h(segs) if any(segs) else _EMPTY
            tree.top = _h(tree.bucket_hash)
        if self._root is None:
            self._root = _h(encode(p) + self._prefixes[p].top
                            for p in sorted(self._prefixes))

    def root(self) -> bytes:
        """The root hash (call :meth:`update` first for fresh values)."""
        if self._root is None:
            self.update()
        root = self._root
        assert root is not None  # update() always computes it
        return root

    def prefixes(self) -> Tuple[Tuple[Prefix, bytes], ...]:
        """``((prefix, top), ...)`` of every non-empty prefix, updated."""
        self.update()
        return tuple((p, self._prefixes[p].top) for p in sorted(self._prefixes))

    def buckets(self, prefix: Prefix) -> Tuple[bytes, ...]:
        """Bucket hashes of ``prefix``; ``()`` when the prefix is empty."""
        self.update()
        tree = self._prefixes.get(prefix)
        return tuple(tree.bucket_hash) if tree is not None else ()

    def segment_hashes(self, prefix: Prefix, bucket: int) -> Tuple[bytes, ...]:
        """The ``width`` segment hashes of one bucket."""
        self.update()
        tree = self._prefixes.get(prefix)
        if tree is None:
            return (_EMPTY,) * self.width
        start = bucket * self.width
        return tuple(tree.seg_hash[start:start + self.width])

    def key_hashes(self, prefix: Prefix, segments: Iterable[int]
                   ) -> Tuple[Tuple[bytes, bytes], ...]:
        """``((key_enc, obj_hash), ...)`` of the given segments."""
        tree = self._prefixes.get(prefix)
        if tree is None:
            return ()
        out: List[Tuple[bytes, bytes]] = []
        for seg in segments:
            leaves = tree.segments.get(seg)
            if leaves:
                out.extend(leaves.items())
        return tuple(out)

    def key_count(self, prefix: Prefix) -> int:
        tree = self._prefixes.get(prefix)
        return tree.count if tree is not None else 0

    def diff_buckets(self, prefix: Prefix,
                      remote_buckets: Tuple[bytes, ...]) -> List[int]:
        """Buckets whose hash differs from ``remote_buckets``."""
        local = self.buckets(prefix)
        out = []
        for b in range(self.nbuckets):
            lh = local[b] if local else _EMPTY
            rh = remote_buckets[b] if remote_buckets else _EMPTY
            if lh != rh:
                out.append(b)
        return out
