"""
Waiting for several stores at once, on the per-message path.

A publish may have to wait for many writes (a persistent subscriber's
copy, another node's outbox) before its PUBACK goes out, and usually waits
for none or one: :func:`joined` only builds a ``gatherResults`` when there
really are several, so the common cases allocate nothing extra.
"""
from __future__ import annotations

from typing import List, Optional

from twisted.internet.defer import Deferred, gatherResults

__all__ = ["joined"]


def joined(waits: Optional[List[Deferred]]) -> Optional[Deferred]:
    """None for no waits, the one Deferred itself, or one that fires when all
    have (and fails when any failed)."""
    if not waits:
        return None
    if len(waits) == 1:
        return waits[0]
    return gatherResults(waits, consumeErrors=True)
