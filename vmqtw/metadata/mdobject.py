"""
Metadata objects: a DVV set whose values are ``(boxed, ts, node)``.

``ts`` comes from the store's injected clock and ``node`` is the writing
node's name; last-writer-wins orders siblings by ``(ts, node, encoding)``,
so every replica picks the same winner without coordination (the encoding
only breaks the tie of one node writing twice within one clock tick).

``boxed`` is ``(value,)`` for a write and ``()`` (:data:`DELETED`) for a
delete: plain data that every transport carries, and no user value
(``None`` included) can be mistaken for a tombstone.

Pure: no clock reads, no I/O; the store passes ``ts`` in.
"""
from __future__ import annotations

import hashlib
from typing import Any, Optional, Tuple

from vmqtw.metadata import dvvset
from vmqtw.metadata.codec import encode

__all__ = ["DELETED", "MDObject", "modify", "resolve", "winner",
           "merge", "is_stale", "equal_context", "context", "hash_bytes",
           "is_tombstone", "value_of"]

#: The boxed value of a delete; a write boxes its value as ``(value,)``.
DELETED: Tuple[()] = ()

#: A DVV clock of ``(value, ts, node)`` triples.
MDObject = dvvset.Clock
Context = dvvset.Context


def lww_key(entry: Tuple[Any, float, str]) -> Tuple[float, str, bytes]:
    """The LWW order of one sibling: newest ts, then node, then bytes."""
    return (entry[1], entry[2], encode(entry[0]))


def modify(obj: Optional[MDObject], boxed: tuple, actor: Any, ts: float,
           node: str, counter: Optional[int] = None) -> MDObject:
    """
    A local write of ``boxed`` (``(value,)``, or :data:`DELETED`): its
    context is the local object's join, so it supersedes every local
    sibling (siblings only arise from merges).  ``counter`` is the dot to
    use if larger than the key's next one.
    """
    entry = (tuple(boxed), ts, node)
    if obj is None:
        return dvvset.update(dvvset.new(entry), actor, counter)
    return dvvset.update_server(
        dvvset.new_with_context(dvvset.join(obj), entry), obj, actor,
        counter)


def winner(obj: MDObject) -> Tuple[Any, float, str]:
    """The LWW sibling ``(value, ts, node)``."""
    vals = dvvset.values(obj)
    if len(vals) == 1:
        return vals[0]
    return max(vals, key=lww_key)


def value_of(obj: Optional[MDObject]) -> Any:
    """The visible value: the LWW winner, ``None`` for absent or deleted."""
    if obj is None:
        return None
    boxed = winner(obj)[0]
    return boxed[0] if boxed else None


def resolve(obj: MDObject) -> MDObject:
    """
    Collapse siblings to the LWW winner, keeping the causal history.

    Deterministic on purpose: every replica resolving the same conflict
    computes the identical object, so concurrent read repairs on several
    nodes converge at once instead of creating fresh siblings (which a
    resolution written as a new event would do).  Losing values' dots stay
    covered by the counters, so they can never come back.
    """
    return dvvset.lww(lww_key, obj)


def merge(local: Optional[MDObject], remote: MDObject
          ) -> Tuple[bool, MDObject]:
    """
    Merge ``remote`` into ``local``: ``(changed, result)``.  Older or equal
    remotes change nothing; anything else is synced.
    """
    if local is None:
        return True, remote
    if dvvset.less(remote, local) or dvvset.equal(remote, local):
        return False, local
    result = dvvset.sync(local, remote)
    if result == local:
        # e.g. our resolved copy against the unresolved siblings it covers
        return False, local
    return True, result


def context(obj: MDObject) -> Context:
    """The causal context (join) of ``obj``."""
    return dvvset.join(obj)


def is_stale(obj: Optional[MDObject], ctx: Context) -> bool:
    """True when ``obj`` has seen everything ``ctx`` names."""
    return obj is not None and dvvset.context_descends(dvvset.join(obj), ctx)


def equal_context(obj: Optional[MDObject], ctx: Context) -> bool:
    """True when ``obj``'s context is exactly ``ctx``."""
    return obj is not None and dvvset.join(obj) == tuple(ctx)


def is_tombstone(obj: MDObject) -> bool:
    """True when every sibling is a delete."""
    vals = dvvset.values(obj)
    return bool(vals) and all(not v[0] for v in vals)


def hash_bytes(encoded: bytes) -> bytes:
    """The 160-bit blake2b digest of an object's canonical encoding."""
    return hashlib.blake2b(encoded, digest_size=20).digest()
