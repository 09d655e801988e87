"""
Confirmed replication of one key: "every reachable node has this version".

Plumtree spreads a change in the background and anti-entropy repairs what
it missed, which is right for convergence but says nothing about *when* a
peer has the change.  A SUBACK needs exactly that: once it is sent, a
publish on any node must reach the new subscriber, so every node that can
be reached must already route the new filter.  :meth:`Confirmer.confirm`
hands the key's current object to every connected member directly, and its
Deferred fires once each has merged it (merging fires the store's change
events, which update that node's routing before it replies) or after a
bounded wait, so a slow or dying peer delays a SUBACK by at most
``timeout``.  Nodes that cannot be reached are not waited for: a netsplit
is the readiness check's business, and anti-entropy brings them the change
after the heal.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from vmqtw.interfaces import IClusterTransport
from vmqtw.metadata.store import ReplicatedMetadataStore

__all__ = ["Confirmer", "METHOD"]

log = Logger(namespace="vmqtw.metadata.confirm")

#: The cluster call a node answers once it merged the object it was given.
METHOD = "md_confirm"


class Confirmer:
    """Push one key's object to every connected member and wait for them."""

    def __init__(self, node: str, store: ReplicatedMetadataStore,
                 transport: IClusterTransport, members: Callable[[], Iterable[str]],
                 timeout: float = 2.0) -> None:
        self.node = node
        self.store = store
        self.transport = transport
        self.members = members
        self.timeout = timeout
        #: ``before_reply(peer)``: called before this node confirms to ``peer``,
        #: to write out what it still holds for ``peer`` (the data plane's
        #: frames of this turn), so the confirmation cannot overtake them.
        self.before_reply: Optional[Callable[[str], None]] = None
        #: Confirmations asked for, and those that did not come in time.
        self.asked = 0
        self.missed = 0

    def start(self) -> None:
        self.transport.register_call_handler(METHOD, self._merge)

    def confirm(self, prefix: Tuple[str, str], key: Any) -> Deferred:
        """
        A Deferred firing (never failing) with the number of peers that
        confirmed, once every connected member merged ``key``'s current
        object or ``timeout`` passed.
        """
        obj = self.store.raw(prefix, key)
        transport = self.transport
        peers = [peer for peer in self.members()
                 if peer != self.node and transport.connected(peer)]
        if obj is None or not peers:
            return succeed(0)
        self.asked += len(peers)
        calls = [transport.call(peer, METHOD, (prefix[0], prefix[1], key, obj), self.timeout)
                 for peer in peers]
        return DeferredList(calls, consumeErrors=True).addCallback(self._count)

    def _count(self, results: Any) -> int:
        confirmed = sum(1 for ok, _ in results if ok)
        self.missed += len(results) - confirmed
        return confirmed

    def _merge(self, peer: str, p1: str, p2: str, key: Any, obj: Any) -> bool:
        self.store.merge_object((p1, p2), key, obj)
        if self.before_reply is not None:
            self.before_reply(peer)
        return True
