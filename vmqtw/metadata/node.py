"""
:class:`MetadataNode`: the replicated metadata of one node, assembled.

One place wires store, plumtree, anti-entropy, tombstone GC and membership
to a transport and a clock, so the broker's service tree and the
simulation build nodes the same way.  Start it before the cluster
transport (it only registers handlers and peer addresses) and stop it
after.
"""
from __future__ import annotations

import os
import random
from typing import Any, Callable, FrozenSet, Iterable, Optional, Tuple

from twisted.internet.interfaces import IReactorTime

from vmqtw.metadata.broadcast import PlumtreeBroadcast
from vmqtw.metadata.confirm import Confirmer
from vmqtw.metadata.exchange import AntiEntropy
from vmqtw.metadata.membership import PeerService
from vmqtw.metadata.store import HANDLER, ReplicatedMetadataStore, \
    random_actor
from vmqtw.metadata.tombstone_gc import TombstoneCollector

__all__ = ["MetadataNode"]


class MetadataNode:
    """
    ``store`` (the ``IMetadataStore``), ``broadcast``, ``aae``, ``gc`` and
    ``peers`` (``None`` with a static ``members`` list) of one node.

    ``data_dir`` holds ``metadata/`` (LevelDB) and ``peer_service/``;
    without it everything lives in memory.  Timers default to production
    values (lazy tick 1 s, exchange 10 s, gossip 15 s, GC 10 s).
    """

    def __init__(self, node: str, transport: Any, clock: IReactorTime,
                 data_dir: Optional[str] = None,
                 address: Optional[Tuple[str, int]] = None,
                 rng: Optional[random.Random] = None,
                 members: Optional[Iterable[str]] = None,
                 lazy_tick: float = 1.0, exchange_tick: float = 10.0,
                 gossip_interval: float = 15.0,
                 gc_interval: Optional[float] = 10.0,
                 gc_grace: Optional[float] = None,
                 outstanding_limit: int = 250_000,
                 exchange_on_up_delay: Optional[float] = 1.0,
                 aae_timeout: float = 60.0,
                 actor_factory: Callable[[str], str] = random_actor,
                 open_store_at_start: bool = False) -> None:
        self.node = node
        self.transport = transport
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.store = ReplicatedMetadataStore(
            node, clock,
            os.path.join(data_dir, "metadata") if data_dir else None,
            actor_factory=actor_factory, open_now=not open_store_at_start)
        self.peers: Optional[PeerService] = None
        self._static = frozenset(members) if members is not None else None
        if self._static is None:
            self.peers = PeerService(node, transport, clock, self.rng,
                                     data_dir=data_dir, address=address,
                                     gossip_interval=gossip_interval)
        self.broadcast = PlumtreeBroadcast(
            node, transport, clock, self.rng, self.members(),
            lazy_tick=lazy_tick, exchange_tick=exchange_tick,
            outstanding_limit=outstanding_limit,
            exchange_on_up_delay=exchange_on_up_delay)
        self.broadcast.register_handler(HANDLER, self.store)
        self.store.set_broadcast(self.broadcast.broadcast)
        self.aae = AntiEntropy(self.store, transport, timeout=aae_timeout)
        self.gc_interval = gc_interval
        self.gc = TombstoneCollector(self.store, transport, clock,
                                     self.members,
                                     interval=gc_interval or 10.0,
                                     grace=gc_grace)
        if self.peers is not None:
            self.peers.on_change(self.broadcast.update_members)
            self.peers.on_removed(self.store.wipe)
        #: Confirmed replication of one key (SUBACK after cluster-wide routing).
        self.confirmer = Confirmer(node, self.store, transport, self.members)

    def members(self) -> FrozenSet[str]:
        if self.peers is not None:
            return self.peers.members()
        static = self._static
        assert static is not None  # no peer service: the member list is fixed
        return static | {self.node}

    def start(self) -> None:
        """
        Open the store if ``open_store_at_start`` left it closed (a daemon
        opens its LevelDB after the fork: see
        :meth:`ReplicatedMetadataStore.open`), then start gossip, the
        plumtree ticks and (if enabled) GC.
        """
        self.store.open()
        if self.peers is not None:
            self.peers.start()
        self.broadcast.start()
        self.confirmer.start()
        if self.gc_interval:
            self.gc.start()

    def stop(self) -> None:
        """Stop every timer and close the store."""
        if self.peers is not None:
            self.peers.stop()
        self.broadcast.stop()
        self.gc.stop()
        self.store.close()
