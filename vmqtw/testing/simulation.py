"""
A simulated cluster: N nodes of store + plumtree + anti-entropy (+ GC and
membership) over one :class:`InMemoryNetwork` on one clock.

Used by the deterministic scenario tests and the scale benchmark; nothing
here is needed by a real node (the broker wires the same parts to the TCP
transport and the reactor).
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Iterable, List, Optional

from twisted.internet.task import Clock

from vmqtw.testing.memory_transport import InMemoryNetwork
from vmqtw.metadata.node import MetadataNode
from vmqtw.metadata.store import ReplicatedMetadataStore

__all__ = ["SimNode", "SimCluster"]


class SimNode:
    """One simulated node's parts."""

    def __init__(self, cluster: "SimCluster", name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.running = False
        self.build()

    def build(self) -> None:
        c = self.cluster
        self.transport = c.network.transport(self.name)
        rng = random.Random("%s-%s-%d" % (c.seed, self.name,
                                          c.incarnation(self.name)))
        self.md = MetadataNode(
            self.name, self.transport, c.clock,
            data_dir=(os.path.join(c.data_root, self.name)
                      if c.data_root is not None else None),
            address=c.address(self.name), rng=rng,
            members=None if c.membership else c.members,
            lazy_tick=c.lazy_tick, exchange_tick=c.exchange_tick,
            gossip_interval=c.gossip_interval,
            gc_interval=c.gc_interval, gc_grace=c.gc_grace,
            outstanding_limit=c.outstanding_limit,
            exchange_on_up_delay=c.exchange_on_up_delay,
            aae_timeout=c.aae_timeout,
            actor_factory=c.actor_factory)
        self.store = self.md.store
        self.broadcast = self.md.broadcast
        self.aae = self.md.aae
        self.gc = self.md.gc
        self.peers = self.md.peers

    def start(self) -> None:
        self.md.start()
        if self.peers is None:
            for peer in self.cluster.members:
                if peer != self.name:
                    self.transport.set_peer_address(
                        peer, self.cluster.address(peer))
        self.transport.start()
        self.running = True

    def crash(self) -> None:
        """Stop everything without ceremony, as a killed process."""
        self.transport.stop()
        self.md.stop()
        self.running = False

    def restart(self) -> None:
        self.cluster._incarnations[self.name] = \
            self.cluster.incarnation(self.name) + 1
        self.build()
        self.start()


class SimCluster:
    """
    ``SimCluster(["A", "B", "C"])`` builds and starts the nodes with a
    static membership.  Advance ``cluster.clock`` to move time;
    ``settle()`` delivers everything due now.
    """

    def __init__(self, names: Iterable[str], clock: Optional[Clock] = None,
                 seed: int = 1, lazy_tick: float = 1.0,
                 exchange_tick: float = 10.0,
                 outstanding_limit: int = 250_000,
                 gc_interval: Optional[float] = None,
                 gc_grace: Optional[float] = None,
                 data_root: Optional[str] = None,
                 serialize: bool = True, start: bool = True,
                 exchange_on_up_delay: Optional[float] = 1.0,
                 membership: bool = False,
                 aae_timeout: float = 60.0,
                 gossip_interval: float = 15.0) -> None:
        self.clock = clock if clock is not None else Clock()
        self.members = list(names)
        self.seed = seed
        self.lazy_tick = lazy_tick
        self.exchange_tick = exchange_tick
        self.outstanding_limit = outstanding_limit
        self.gc_interval = gc_interval
        self.gc_grace = gc_grace
        self.exchange_on_up_delay = exchange_on_up_delay
        self.membership = membership
        self.aae_timeout = aae_timeout
        self.gossip_interval = gossip_interval
        self.data_root = data_root
        self.network = InMemoryNetwork(self.clock, serialize=serialize)
        self._incarnations: Dict[str, int] = {}
        self._actors: Dict[str, int] = {}
        self.nodes: Dict[str, SimNode] = {n: SimNode(self, n)
                                          for n in self.members}
        if start:
            for node in self.nodes.values():
                node.start()

    def incarnation(self, name: str) -> int:
        return self._incarnations.get(name, 0)

    def actor_factory(self, node: str) -> str:
        """Readable, deterministic, never repeated actor ids: ``A``, then
        ``A.1``, ``A.2`` ... each time a node needs a new one."""
        n = self._actors.get(node, 0)
        self._actors[node] = n + 1
        return node if n == 0 else "%s.%d" % (node, n)

    def __getitem__(self, name: str) -> SimNode:
        return self.nodes[name]

    def settle(self) -> None:
        """Deliver every message due now, and what they cause."""
        self.clock.advance(0)

    def advance(self, seconds: float, step: Optional[float] = None) -> None:
        """Advance time in steps (default: the lazy tick)."""
        step = step or self.lazy_tick
        left = seconds
        while left > 1e-9:
            d = min(step, left)
            self.clock.advance(d)
            left -= d
        self.clock.advance(0)

    def address(self, name: str) -> tuple:
        return ("mem", self.members.index(name))

    def join(self, name: str, seed: str) -> Any:
        """``name`` joins ``seed``'s cluster (membership mode)."""
        peers = self.nodes[name].peers
        if peers is None:
            raise RuntimeError("SimCluster(membership=True) is needed to join")
        return peers.join(seed, self.address(seed))

    def stores(self) -> List[ReplicatedMetadataStore]:
        return [n.store for n in self.nodes.values() if n.running]

    def roots(self) -> List[bytes]:
        return [s.tree.root() for s in self.stores()]

    def agree(self) -> bool:
        roots = self.roots()
        return all(r == roots[0] for r in roots)

    def close(self) -> None:
        for node in self.nodes.values():
            if node.running:
                node.crash()
