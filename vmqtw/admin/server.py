"""
The node side of ``vmqtw-admin``: call handlers on the cluster transport.

``admin.cluster.show``, ``admin.cluster.join(seed, host, port)``,
``admin.cluster.leave(node, accept_loss)`` and ``admin.node.status`` answer
only callers whose handshake name starts with ``admin:`` (the admin
client): a cluster peer has no business steering this node.  Operator
mistakes raise :class:`AdminCommandError`, whose text the client shows as
is.  One call answers peers: :data:`OFFLINE_COUNTS`, how many offline
messages a node holds, which the node running a leave asks the leaving
node.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from vmqtw.cluster.auth import is_admin_name
from vmqtw.metadata.membership import SelfJoin

__all__ = ["AdminCommandError", "AdminHandlers", "register_admin_handlers", "OFFLINE_COUNTS"]

log = Logger()

#: Peer call: ``(offline messages, sessions holding them)`` of the node asked.
OFFLINE_COUNTS = "membership.offline_counts"


class AdminCommandError(Exception):
    """An operator mistake or refusal; the message is one sentence."""


def _where(host: str, port: int) -> str:
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


class AdminHandlers:
    """
    The admin commands of one node.  ``cluster`` is the
    :class:`~vmqtw.metadata.node.MetadataNode`; ``readiness`` (optional)
    adds the netsplit counters to ``admin.node.status``.
    """

    def __init__(self, transport: Any, cluster: Any, clock: IReactorTime,
                 readiness: Any = None, registry: Any = None,
                 connect_timeout: float = 5.0, poll_interval: float = 0.05,
                 call_timeout: float = 5.0) -> None:
        self.transport = transport
        self.cluster = cluster
        self.clock = clock
        self.readiness = readiness
        self.registry = registry
        self.connect_timeout = connect_timeout
        self.poll_interval = poll_interval
        self.call_timeout = call_timeout

    def register(self) -> None:
        for method, handler in (("admin.cluster.show", self.show),
                                ("admin.cluster.join", self.join),
                                ("admin.cluster.leave", self.leave),
                                ("admin.node.status", self.status)):
            self.transport.register_call_handler(method, self._guarded(handler))
        self.transport.register_call_handler(OFFLINE_COUNTS, self.offline_counts)

    def _guarded(self, handler: Any) -> Any:
        def guarded(caller: str, *args: Any) -> Any:
            if not is_admin_name(caller):
                raise AdminCommandError("Admin commands are only accepted from admin clients.")
            return handler(caller, *args)
        return guarded

    @property
    def _peers(self) -> Any:
        peers = self.cluster.peers
        if peers is None:
            raise AdminCommandError("This node has a static member list; it cannot join or leave.")
        return peers

    # -- commands -----------------------------------------------------------
    def show(self, caller: str) -> List[Tuple[str, bool]]:
        """``[(node, running)]`` for every member, sorted by name."""
        return [(node, bool(running)) for node, running in self._peers.cluster_status()]

    def status(self, caller: str) -> Dict[str, Any]:
        peers = self._peers
        status: Dict[str, Any] = {
            "node": self.cluster.node,
            "members": sorted(peers.members()),
            "ready": bool(peers.ready),
            "connected": [p for p in self.transport.connected_peers() if not is_admin_name(p)],
        }
        if self.readiness is not None:
            status["netsplits_detected"] = self.readiness.netsplits_detected
            status["netsplits_resolved"] = self.readiness.netsplits_resolved
        registry = self.registry
        if registry is not None:
            queues = registry.queues.values()
            counters = registry.counters
            status.update({
                "sessions_online": len(registry.sessions),
                "sessions_offline": sum(1 for queue in queues if not queue.online),
                "messages_queued": sum(queue.size() for queue in queues),
                "subscriptions": len(registry.trie),
                "retained": len(registry.retained),
                "messages_published": registry.published,
                "messages_forwarded": registry.forwarded,
                "messages_from_other_nodes": registry.received_remote,
                "dropped_online": counters.dropped_online,
                "dropped_offline": counters.dropped_offline,
                "dropped_qos0_offline": counters.dropped_qos0_offline,
                "dropped_unauthorized": counters.dropped_unauthorized,
                "expired_sessions": counters.expired_sessions,
                "retried": counters.retried,
            })
            dataplane = registry.dataplane
            if dataplane is not None:
                plane = dataplane.counters
                status.update({
                    "cluster_backlog": {peer: {"messages": count, "bytes": size}
                                        for peer, (count, size) in dataplane.backlog().items()},
                    "cluster_publishes_refused_backlog_full": plane.refused_backlog_full,
                    "cluster_qos0_dropped": plane.dropped_qos0,
                    "cluster_messages_resent": plane.resent,
                    "cluster_duplicates_dropped": plane.duplicates_dropped,
                    "cluster_messages_restored": plane.restored,
                    "cluster_messages_dropped_node_left": plane.dropped_node_left,
                })
        return status

    def offline_counts(self, caller: str) -> Tuple[int, int]:
        """``(messages, sessions)``: what this node's offline persistent sessions hold."""
        registry = self.registry
        if registry is None:
            return (0, 0)
        sizes = [queue.size() for queue in registry.queues.values() if not queue.online]
        return (sum(sizes), sum(1 for size in sizes if size))

    def leave(self, caller: str, node: Any, accept_loss: Any = False) -> defer.Deferred:
        """
        Remove ``node``.  A running node is asked first what it holds: its
        offline messages would be lost, so the leave is refused unless
        ``accept_loss`` (``--yes``).  A node that is down cannot be asked;
        it leaves, and its stored messages are lost with it.  Either way
        the persistent sessions it held move to the other nodes
        (:meth:`Subscriptions.rehome`), so their clients find them.
        """
        if not isinstance(node, str):
            return defer.fail(AdminCommandError("The node to leave must be a node name."))
        peers = self._peers
        if node not in peers.members():
            return defer.fail(AdminCommandError(
                "%s is not a member of the cluster; the members are %s." % (
                    node, ", ".join(sorted(peers.members())))))
        me = self.cluster.node
        down = node != me and not self.transport.connected(node)
        if down:
            counts: defer.Deferred = defer.succeed((0, 0))
        elif node == me:
            counts = defer.succeed(self.offline_counts(caller))
        else:
            counts = self.transport.call(node, OFFLINE_COUNTS, (), self.call_timeout)

            def unanswered(failure: Any) -> Any:
                raise AdminCommandError(
                    "%s did not say how many offline messages it holds (%s); try again, or "
                    "stop it first." % (node, failure.getErrorMessage()))
            counts.addErrback(unanswered)

        def decide(answer: Any) -> Dict[str, Any]:
            messages, sessions = int(answer[0]), int(answer[1])
            if messages and not accept_loss:
                raise AdminCommandError(
                    "%s holds %d offline message%s for %d session%s, which would be lost: run "
                    "cluster leave again with --yes to accept that (-k, which moves them to "
                    "the other nodes, is not available yet)." % (
                        node, messages, "" if messages == 1 else "s", sessions,
                        "" if sessions == 1 else "s"))
            moved = self._remove(node, me)
            log.info("{node} removed from the cluster by {caller} ({down}); {moved} persistent "
                     "sessions moved to the other nodes, {lost} offline messages lost",
                     node=node, caller=caller, down="down" if down else "running",
                     moved=moved, lost=messages)
            return {"node": node, "members": sorted(peers.members()), "down": down,
                    "messages_lost": messages, "sessions_lost": sessions,
                    "sessions_moved": moved}
        return counts.addCallback(decide)

    def _remove(self, node: str, me: str) -> int:
        """Remove ``node`` and re-home its sessions; how many moved."""
        peers = self._peers
        subscriptions = getattr(self.registry, "subscription_table", None)
        survivors = sorted(peers.members() - {node})
        moved = 0
        if node == me and subscriptions is not None:
            # Written while still a member, so the broadcast reaches the others.
            moved, _ended = subscriptions.rehome(node, survivors)
        peers.leave(node)
        if node != me and subscriptions is not None:
            # Written once ``node`` is out, so the broadcast skips it.
            moved, _ended = subscriptions.rehome(node, survivors)
        return moved

    def join(self, caller: str, seed: Any, host: Any, port: Any) -> defer.Deferred:
        """
        Join the cluster of ``seed`` listening at ``(host, port)``.

        :meth:`PeerService.join` needs a link to the seed, which the
        transport only dials once it knows the address; so: set the
        address, wait (bounded) for the link, then join.  A seed that never
        answers is forgotten again, so the node does not keep dialing it.
        """
        if not (isinstance(seed, str) and isinstance(host, str) and type(port) is int):
            return defer.fail(AdminCommandError("cluster join needs a node name, a host and a port."))
        peers = self._peers
        if seed == self.cluster.node:
            return defer.fail(AdminCommandError("A node cannot join itself: %s is this node." % (seed,)))
        address = (host, port)
        already = seed in peers.members()
        self.transport.set_peer_address(seed, address)
        unreachable = AdminCommandError(
            "The discovery node %s cannot be reached at %s (is it running, with the same "
            "distributed_cookie?)." % (seed, _where(host, port)))

        def joined(members: Any) -> List[str]:
            log.info("joined the cluster of {seed} by {caller}: {members}", seed=seed,
                     caller=caller, members=", ".join(sorted(members)))
            return sorted(members)

        def failed(failure: Any) -> Any:
            if not already and seed not in peers.members():
                self.transport.set_peer_address(seed, None)
            if failure.check(AdminCommandError):
                return failure
            if failure.check(SelfJoin):
                raise AdminCommandError("A node cannot join itself: %s is this node." % (seed,))
            log.info("join of {seed} failed: {why}", seed=seed, why=failure.getErrorMessage())
            raise unreachable

        d = self._wait_connected(seed, unreachable)
        d.addCallback(lambda _: peers.join(seed, address))
        d.addCallbacks(joined, failed)
        return d

    def _wait_connected(self, peer: str, error: Exception) -> defer.Deferred:
        """Fires once the link to ``peer`` is up; fails with ``error`` after the timeout."""
        if self.transport.connected(peer):
            return defer.succeed(None)
        result: defer.Deferred = defer.Deferred()
        deadline = self.clock.seconds() + self.connect_timeout

        def poll() -> None:
            if self.transport.connected(peer):
                loop.stop()
                result.callback(None)
            elif self.clock.seconds() >= deadline:
                loop.stop()
                result.errback(error)

        loop = LoopingCall(poll)
        loop.clock = self.clock
        loop.start(self.poll_interval, now=False)
        return result


def register_admin_handlers(transport: Any, cluster: Any, registry: Any = None,
                            readiness: Any = None, clock: Optional[IReactorTime] = None,
                            connect_timeout: float = 5.0) -> AdminHandlers:
    """Register the admin call handlers of one node; the wiring calls this once."""
    handlers = AdminHandlers(transport, cluster, clock if clock is not None else cluster.clock,
                             readiness=readiness, registry=registry,
                             connect_timeout=connect_timeout)
    handlers.register()
    return handlers
