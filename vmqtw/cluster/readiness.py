"""
Is the cluster whole?  VerneMQ's netsplit detection, read on every
CONNECT, PUBLISH, SUBSCRIBE and UNSUBSCRIBE.

The answer is cached and recomputed only when membership or a peer's
liveness changes, so the per-message check is one attribute read.  There is
no quorum, as in VerneMQ: any unreachable member means not ready.
"""
from __future__ import annotations

from typing import Any

from twisted.logger import Logger


class Readiness:
    """``readiness()`` is True while every member is reachable."""

    log = Logger()

    def __init__(self, peers: Any) -> None:
        self.peers = peers
        self.ready = True
        self.netsplits_detected = 0
        self.netsplits_resolved = 0
        peers.on_status(self.update)
        peers.on_change(lambda _members: self.update())
        self.update()

    def __call__(self) -> bool:
        return self.ready

    def update(self) -> None:
        ready = bool(self.peers.ready)
        if ready == self.ready:
            return
        self.ready = ready
        if ready:
            self.netsplits_resolved += 1
            self.log.info("cluster is whole again: every member is reachable")
        else:
            self.netsplits_detected += 1
            down = [node for node, running in self.peers.cluster_status() if not running]
            self.log.warn("netsplit detected: {down} unreachable", down=", ".join(down))
