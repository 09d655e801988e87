"""
Cluster membership: :class:`PeerService`.

Who is in the cluster is configuration, kept in an add-wins ORSWOT of
node names that every member gossips and persists; who is *reachable* is
liveness, taken from the transport's peer up/down events.  The broker
reads both: ``cluster_status()`` for ``vmq-admin cluster show`` and
``ready`` (every member running) to refuse operations during a netsplit.

The state also carries each node's clustering address ``(host, port)``,
written only by that node itself (last writer wins by its own clock), so a
node that joins through one seed learns where to reach every other member
and tells its transport.  It is the address the node *advertises*
(``listener.vmq.clustering.advertise``, by default its listener), which
differs from where it listens behind NAT, port forwarding or a test proxy.

Actors: a new ORSWOT actor per boot (the clock grows by one entry per
boot, which is cheap), as VerneMQ's peer service does.  A node that
learns it was removed deletes its state file and starts afresh as a
single-node cluster with a new actor, so it can join again.  It also
writes ``peer_service/removed`` (:attr:`PeerService.removed`), which only a
join clears: the broker does not serve MQTT while it is set, across
restarts too.

A node removed while it was down learns it as soon as a link to a former
member comes up: on every link up a node sends its state to that member,
and a member that removed it answers with the state that says so (see
:meth:`PeerService._on_gossip`), instead of waiting for a gossip round.
"""
from __future__ import annotations

import os
import random
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

import msgpack
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from vmqtw.metadata import orswot
from vmqtw.metadata.orswot import NotPresent

__all__ = ["PeerService", "NotPresent", "SelfJoin"]

log = Logger()

Address = Tuple[str, int]


def _as_address(address: Any) -> Address:
    """``(host, port)`` from a pair in any sequence (msgpack gives lists)."""
    host, port = address
    return (host, port)


class SelfJoin(ValueError):
    """A node cannot join itself."""


class PeerService:
    """
    Membership of one node.  ``data_dir`` (optional) holds
    ``peer_service/cluster_state``; ``address`` is this node's advertised
    clustering ``(host, port)``: where the other nodes dial it.
    """

    def __init__(self, node: str, transport: Any, clock: IReactorTime,
                 rng: Optional[random.Random] = None,
                 data_dir: Optional[str] = None,
                 address: Optional[Address] = None,
                 gossip_interval: float = 15.0,
                 call_timeout: float = 5.0) -> None:
        self.node = node
        self.transport = transport
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.address = _as_address(address) if address is not None else None
        self.gossip_interval = gossip_interval
        self.call_timeout = call_timeout
        self._path = (os.path.join(data_dir, "peer_service", "cluster_state")
                      if data_dir is not None else None)
        self._removed_path = (os.path.join(data_dir, "peer_service", "removed")
                              if data_dir is not None else None)
        #: True once this node learnt it was removed, until it joins again.
        self.removed = (self._removed_path is not None
                        and os.path.exists(self._removed_path))
        self._listeners: List[Callable[[FrozenSet[str]], None]] = []
        self._status_listeners: List[Callable[[], None]] = []
        self._removed_listeners: List[Callable[[], None]] = []
        self._running: set = set()
        self._applied: Dict[str, Address] = {}
        self._loop: Optional[LoopingCall] = None
        #: node -> (ts, (host, port))
        self.addresses: Dict[str, Tuple[float, Address]] = {}
        self.actor = self._new_actor()
        self.state = self._load()
        if self.address is not None:
            self._set_own_address()
        self._members = orswot.value(self.state)
        transport.register_call_handler("peer_get_state", self._rpc_state)
        transport.register_cast_handler("peer_gossip", self._on_gossip)
        transport.add_peer_listener(self._peer_up, self._peer_down)

    # -- persistence ------------------------------------------------------------
    def _new_actor(self) -> str:
        return "%s/%016x" % (self.node, self.rng.getrandbits(64))

    def _fresh(self) -> orswot.ORSWOT:
        return orswot.add(orswot.new(), self.node, self.actor)

    def _load(self) -> orswot.ORSWOT:
        if self._path is None or not os.path.exists(self._path):
            return self._fresh()
        with open(self._path, "rb") as f:
            saved = msgpack.unpackb(f.read(), use_list=False, raw=False)
        state, addresses = saved
        self._merge_addresses(addresses)
        if not orswot.contains(state, self.node):
            state = orswot.add(state, self.node, self.actor)
        return state

    def _save(self) -> None:
        if self._path is None:
            return
        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        tmp = self._path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(msgpack.packb((self.state, self._wire_addresses()),
                                  use_bin_type=True))
        os.replace(tmp, self._path)

    def _forget_file(self) -> None:
        if self._path is not None and os.path.exists(self._path):
            os.remove(self._path)

    def _set_removed(self, removed: bool) -> None:
        """Remember (on disk too) whether this node was removed and not joined since."""
        self.removed = removed
        path = self._removed_path
        if path is None:
            return
        if removed:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb"):
                pass
        elif os.path.exists(path):
            os.remove(path)

    # -- addresses ------------------------------------------------------------------
    def _set_own_address(self) -> None:
        address = self.address
        if address is None:
            return  # no address of our own to announce
        current = self.addresses.get(self.node)
        if current is None or current[1] != address:
            ts = self.clock.seconds()
            if current is not None and ts <= current[0]:
                ts = current[0] + 1e-6
            self.addresses[self.node] = (ts, address)

    def _wire_addresses(self) -> tuple:
        return tuple((n, ts, a[0], a[1])
                     for n, (ts, a) in sorted(self.addresses.items()))

    def _merge_addresses(self, wire: tuple) -> bool:
        changed = False
        for node, ts, host, port in wire:
            if node == self.node and self.address is not None:
                continue
            current = self.addresses.get(node)
            if current is None or (ts, (host, port)) > (current[0],
                                                        current[1]):
                self.addresses[node] = (ts, (host, port))
                changed = True
        return changed

    def address_of(self, node: str) -> Optional[Address]:
        entry = self.addresses.get(node)
        return entry[1] if entry is not None else None

    def _apply_addresses(self) -> None:
        """Tell the transport where members listen; forget non-members."""
        for node in sorted(self._members - {self.node}):
            address = self.address_of(node)
            if address is not None and self._applied.get(node) != address:
                self._applied[node] = address
                self.transport.set_peer_address(node, address)
        for node in sorted(set(self._applied) - self._members):
            del self._applied[node]
            self.transport.set_peer_address(node, None)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._apply_addresses()
        self._loop = LoopingCall(self.gossip)
        self._loop.clock = self.clock
        self._loop.start(self.gossip_interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    # -- queries -----------------------------------------------------------------------
    def members(self) -> FrozenSet[str]:
        return self._members

    def on_change(self, listener: Callable[[FrozenSet[str]], None]) -> None:
        """``listener(members)`` after every membership change."""
        self._listeners.append(listener)

    def on_removed(self, listener: Callable[[], None]) -> None:
        """``listener()`` when this node learns it left the cluster."""
        self._removed_listeners.append(listener)

    def on_status(self, listener: Callable[[], None]) -> None:
        """``listener()`` whenever a peer's liveness changes."""
        self._status_listeners.append(listener)

    def cluster_status(self) -> List[Tuple[str, bool]]:
        """``[(node, running)]`` for every member, sorted."""
        return [(n, n == self.node or n in self._running)
                for n in sorted(self._members)]

    @property
    def ready(self) -> bool:
        """True when every member is running (no netsplit)."""
        return all(running for _, running in self.cluster_status())

    # -- changes -------------------------------------------------------------------------
    def _changed(self) -> None:
        if not orswot.contains(self.state, self.node):
            log.info("{node} was removed from the cluster", node=self.node)
            self._forget_file()
            self._set_removed(True)
            self.actor = self._new_actor()
            self.state = self._fresh()
            self._running.clear()
            for removed_listener in list(self._removed_listeners):
                removed_listener()
        else:
            self._save()
        members = orswot.value(self.state)
        if members != self._members:
            self._members = members
            self._apply_addresses()
            for listener in list(self._listeners):
                listener(members)
        else:
            self._apply_addresses()

    def _wire(self) -> tuple:
        return (self.state, self._wire_addresses())

    def _absorb(self, wire: tuple) -> bool:
        state, addresses = wire
        merged = orswot.merge(self.state, state)
        moved = self._merge_addresses(addresses)
        if merged == self.state and not moved:
            return False
        before = self._members
        self.state = merged
        self._changed()
        if self._members != before and self.node in self._members:
            # membership changes are rare: spread them at once instead of
            # waiting for random gossip rounds (terminates: a node only
            # resends when the merge changed its own state)
            self._send_all()
        return True

    def _send_all(self, extra: Tuple[str, ...] = ()) -> None:
        wire = self._wire()
        for node in sorted((self._members | set(extra)) - {self.node}):
            self.transport.cast(node, "peer_gossip", wire)

    def join(self, seed: str, address: Address) -> defer.Deferred:
        """
        Join the cluster ``seed`` (listening at ``address``) belongs to:
        fetch its state, adopt it with ourselves added, persist, notify,
        tell every member.

        Why adopt rather than merge: our own history may say the seed
        (or we) were removed, and an ORSWOT merge would honour that -- a
        join that silently leaves us outside.  A node is in one cluster;
        joining another replaces what it knew.  For a fresh node this is
        the same as a merge.
        """
        if seed == self.node:
            return defer.fail(SelfJoin(seed))
        self._applied[seed] = _as_address(address)
        self.transport.set_peer_address(seed, _as_address(address))
        # Over TCP the link needs a connect and a handshake first: wait for
        # it (bounded by call_timeout) instead of failing the first call.
        d = self._when_connected(seed, self.clock.seconds() + self.call_timeout)
        d.addCallback(lambda _: self.transport.call(seed, "peer_get_state", (),
                                                    self.call_timeout))

        def got(wire: tuple) -> FrozenSet[str]:
            state, addresses = wire
            self.state = orswot.add(
                state, self.node, self.actor,
                after=orswot.counter(self.state, self.actor))
            self._merge_addresses(addresses)
            if self.removed:
                self._set_removed(False)
            self._changed()
            self._send_all()
            return self._members
        return d.addCallback(got)

    def _when_connected(self, peer: str, deadline: float,
                        interval: float = 0.02) -> defer.Deferred:
        """Fires once ``peer``'s link is up, or at ``deadline`` anyway."""
        if self.transport.connected(peer) or self.clock.seconds() >= deadline:
            return defer.succeed(None)
        return task.deferLater(self.clock, interval, self._when_connected, peer, deadline,
                               interval)

    def leave(self, node: str) -> None:
        """
        Remove ``node`` (raises :class:`NotPresent` if unknown here) and
        tell every member, the leaving node included.
        """
        self.state = orswot.remove(self.state, node)
        self._send_all(extra=(node,))
        self._changed()

    def gossip(self) -> None:
        """Send our state to one random other member."""
        others = sorted(self._members - {self.node})
        if others:
            try:
                self.transport.cast(self.rng.choice(others), "peer_gossip",
                                    self._wire())
            except Exception:
                log.failure("gossip failed")

    def _rpc_state(self, peer: str) -> tuple:
        return self._wire()

    def _on_gossip(self, peer: str, wire: tuple) -> None:
        """
        Merge a member's state.  From a non-member only when it has seen
        our current add (a node that just joined through someone else);
        a stale node that still counts us in -- e.g. one we removed that
        missed the news -- is ignored, and told, if we did see its
        current add: then it was removed, and our state says so.
        """
        if peer in self._members:
            self._absorb(wire)
            return
        state = wire[0]
        mine = orswot.dots(self.state, self.node)
        if mine and set(mine) <= set(orswot.dots(state, self.node)):
            self._absorb(wire)
        if peer not in self._members and orswot.seen(
                self.state, orswot.dots(state, peer)):
            self.transport.cast(peer, "peer_gossip", self._wire())

    # -- liveness ----------------------------------------------------------------------------
    def _peer_up(self, peer: str) -> None:
        self._running.add(peer)
        if peer in self._members:
            # Our view at once: a member that removed us while we were
            # down answers with the state that says so (see _on_gossip).
            self.transport.cast(peer, "peer_gossip", self._wire())
        for listener in list(self._status_listeners):
            listener()

    def _peer_down(self, peer: str) -> None:
        self._running.discard(peer)
        for listener in list(self._status_listeners):
            listener()
