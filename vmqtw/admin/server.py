"""
The node side of ``vmqtw-admin``: call handlers on the cluster transport.

``admin.cluster.show``, ``admin.cluster.join(seed, host, port)``,
``admin.cluster.leave(node, accept_loss)``, ``admin.cluster.drain(node,
interval, wait_limit)``, ``admin.cluster.drain_status(node)`` and
``admin.node.status`` answer only callers whose handshake name starts with
``admin:`` (the admin client): a cluster peer has no business steering this
node.  Operator mistakes raise :class:`AdminCommandError`, whose text the
client shows as is.  Three calls answer peers, for the node running a
leave: :data:`OFFLINE_COUNTS` (how many offline messages the leaving node
holds), :data:`DRAIN` and :data:`DRAIN_STATUS` (``cluster leave -k`` runs
the drain on the leaving node, :mod:`vmqtw.broker.drain`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from vmqtw.admin.inspect import (SESSION_COLUMNS, SUBSCRIPTION_COLUMNS, retain_rows, select,
                                 session_rows)
from vmqtw.broker.subscriptions import record_owner
from vmqtw.cluster.auth import is_admin_name
from vmqtw.config import RUNTIME_KEYS, ConfigError, parse_runtime_value
from vmqtw.topic import validate_filter
from vmqtw.types import SubscriberId
from vmqtw.metadata.membership import SelfJoin

__all__ = ["AdminCommandError", "AdminHandlers", "register_admin_handlers", "OFFLINE_COUNTS",
           "DRAIN", "DRAIN_STATUS", "REHOME", "SESSION_ROWS", "SESSION_DISCONNECT",
           "SETTING_SET", "SETTING_SHOW", "ListenerInfo"]

log = Logger()

#: Peer call: ``(offline messages, sessions holding them)`` of the node asked.
OFFLINE_COUNTS = "membership.offline_counts"
#: Peer call: ``(interval, wait_limit)`` -> the drain's progress (a dict):
#: the node asked starts draining itself for ``cluster leave -k``.
DRAIN = "membership.drain"
#: Peer call: ``()`` -> the progress of the node's drain.
DRAIN_STATUS = "membership.drain_status"
#: Peer call: ``(filters, per_subscription, limit)`` -> the node's session
#: rows passing ``filters`` (``session show`` asks every member).
SESSION_ROWS = "admin.peer.session_rows"
#: Peer call: ``(mountpoint, client_id, cleanup)`` -> ``(was connected,
#: ended)``: the node the session is registered on closes it.
SESSION_DISCONNECT = "admin.peer.session_disconnect"
#: Peer call: ``(assignments)`` -> ``[[key, value now in force]]``: ``set``
#: without ``--local`` asks every member to apply ``[[key, text]]``.
SETTING_SET = "admin.peer.setting_set"
#: Peer call: ``(keys)`` -> ``[[key, value in force]]`` (``show KEY``).
SETTING_SHOW = "admin.peer.setting_show"
#: Peer call: ``(gone, survivors)`` -> how many persistent sessions of
#: ``gone`` the node asked now keeps (it rewrote its share of the records).
REHOME = "membership.rehome"


class AdminCommandError(Exception):
    """An operator mistake or refusal; the message is one sentence."""


@attrs.frozen
class ListenerInfo:
    """One listener as ``listener show`` lists it, with its service to steer."""

    kind: str                         # mqtt, mqtts, mqttws, mqttwss, http
    address: Tuple[str, int]
    service: Any                      # a vmqtw.service.ListenerService
    mountpoint: str = ""
    max_connections: int = -1

    def row(self) -> Dict[str, Any]:
        service = self.service
        return {"type": self.kind, "status": "running" if service.accepting else "stopped",
                "ip": self.address[0], "port": self.address[1], "mountpoint": self.mountpoint,
                "max_conns": self.max_connections, "active_conns": service.connection_count(),
                "name": service.name}


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
                 call_timeout: float = 5.0, drain: Any = None, metrics: Any = None) -> None:
        self.transport = transport
        self.cluster = cluster
        self.clock = clock
        self.readiness = readiness
        self.registry = registry
        self.connect_timeout = connect_timeout
        self.poll_interval = poll_interval
        self.call_timeout = call_timeout
        #: This node's :class:`~vmqtw.broker.drain.Drain` (None: it cannot
        #: be drained, e.g. no MQTT here to stop).
        self.drain = drain
        #: This node's metrics registry (prometheus_client), for ``metrics show``.
        self.metrics = metrics
        #: This node's listeners (``listener show/stop/start``).
        self.listeners: List[ListenerInfo] = []
        #: The plugins in force on this node (``plugin show``), rows of
        #: :func:`vmqtw.admin.inspect.plugin_rows`.
        self.plugins: List[Dict[str, Any]] = []
        #: This node's :class:`~vmqtw.admin.settings.RuntimeSettings`
        #: (``set`` / ``show``); None where nothing can change at run time.
        self.settings: Any = None

    def register(self) -> None:
        for method, handler in (("admin.cluster.show", self.show),
                                ("admin.cluster.join", self.join),
                                ("admin.cluster.leave", self.leave),
                                ("admin.cluster.drain", self.drain_node),
                                ("admin.cluster.drain_status", self.drain_status),
                                ("admin.node.status", self.status),
                                ("admin.session.show", self.session_show),
                                ("admin.session.disconnect", self.session_disconnect),
                                ("admin.retain.show", self.retain_show),
                                ("admin.metrics.show", self.metrics_show),
                                ("admin.listener.show", self.listener_show),
                                ("admin.listener.stop", self.listener_stop),
                                ("admin.listener.start", self.listener_start),
                                ("admin.plugin.show", self.plugin_show),
                                ("admin.setting.set", self.setting_set),
                                ("admin.setting.show", self.setting_show)):
            self.transport.register_call_handler(method, self._guarded(handler))
        self.transport.register_call_handler(OFFLINE_COUNTS, self.offline_counts)
        self.transport.register_call_handler(DRAIN, self._drain_here)
        self.transport.register_call_handler(DRAIN_STATUS, self._drain_status_here)
        self.transport.register_call_handler(REHOME, self._rehome_here)
        self.transport.register_call_handler(SESSION_ROWS, self._session_rows_here)
        self.transport.register_call_handler(SESSION_DISCONNECT, self._disconnect_here)
        self.transport.register_call_handler(SETTING_SET, self._setting_set_here)
        self.transport.register_call_handler(SETTING_SHOW, self._setting_show_here)

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
                    "cluster_messages_orphaned_node_left": plane.orphaned_node_left,
                    "cluster_messages_outboxed": plane.outboxed,
                })
        return status

    def offline_counts(self, caller: str) -> Tuple[int, int]:
        """``(messages, sessions)``: what this node's offline persistent sessions hold."""
        registry = self.registry
        if registry is None or getattr(registry, "shared_store", False):
            return (0, 0)   # (a shared store keeps them for the other nodes)
        sizes = [queue.size() for queue in registry.queues.values() if not queue.online]
        return (sum(sizes), sum(1 for size in sizes if size))

    # -- sessions and retained messages ------------------------------------------
    def session_show(self, caller: str, filters: Any, columns: Any,
                     limit: Any) -> defer.Deferred:
        """
        ``session show``: the sessions of every member passing ``filters``
        (``[(column, value)]``), cut to ``columns``, at most ``limit`` rows,
        sorted by client id.  ``{"rows": [...], "unreachable": [nodes]}``.
        """
        if not (isinstance(filters, (list, tuple)) and isinstance(columns, (list, tuple))
                and (limit is None or isinstance(limit, int))):
            return defer.fail(AdminCommandError("session show needs filters, columns and a "
                                                "limit."))
        wanted = [tuple(pair) for pair in filters]
        per_subscription = any(c in SUBSCRIPTION_COLUMNS for c in columns) or any(
            c in SUBSCRIPTION_COLUMNS for c, _v in wanted)
        me = self.cluster.node
        asked: List[defer.Deferred] = []
        unreachable: List[str] = []
        for member in sorted(self.cluster.members()):
            if member == me:
                asked.append(defer.succeed(self._session_rows_here(caller, wanted,
                                                                   per_subscription, limit)))
            elif self.transport.connected(member):
                def no_answer(_failure: Any, member: str = member) -> List[Any]:
                    unreachable.append(member)
                    return []
                asked.append(self.transport.call(member, SESSION_ROWS,
                                                 (wanted, per_subscription, limit),
                                                 self.call_timeout).addErrback(no_answer))
            else:
                unreachable.append(member)

        def merged(parts: List[Any]) -> Dict[str, Any]:
            rows = [row for part in parts for row in (part or [])]
            rows.sort(key=lambda r: (r.get("mountpoint", ""), r.get("client_id", ""),
                                     r.get("node", ""), str(r.get("topic", ""))))
            return {"rows": select(rows, (), list(columns), limit),
                    "unreachable": sorted(unreachable)}
        return defer.gatherResults(asked).addCallback(merged)

    def _session_rows_here(self, caller: str, filters: Any, per_subscription: Any,
                           limit: Any) -> List[Dict[str, Any]]:
        if self.registry is None:
            return []
        rows = session_rows(self.registry, self.cluster.node, bool(per_subscription))
        return select(rows, [tuple(pair) for pair in filters], SESSION_COLUMNS,
                      limit if isinstance(limit, int) else None)

    def session_disconnect(self, caller: str, client_id: Any, mountpoint: Any,
                           cleanup: Any) -> defer.Deferred:
        """
        ``session disconnect client-id=ID``: the node the session is
        registered on (its subscriber record says) closes the connection;
        with ``cleanup`` the session ends.
        """
        if not (isinstance(client_id, str) and isinstance(mountpoint, str)):
            return defer.fail(AdminCommandError("session disconnect needs a client id."))
        registry = self.registry
        if registry is None:
            return defer.fail(AdminCommandError("This node runs no broker."))
        sid = SubscriberId(mountpoint, client_id)
        owner = record_owner(registry.subscription_table.record(sid))
        if owner is None and sid in registry.queues:
            owner = self.cluster.node
        if owner is None:
            return defer.fail(AdminCommandError(
                "There is no session of client id %r%s." % (
                    client_id, " on mountpoint %r" % (mountpoint,) if mountpoint else "")))
        if owner == self.cluster.node:
            answer: defer.Deferred = defer.succeed(
                self._disconnect_here(caller, mountpoint, client_id, bool(cleanup)))
        elif self.transport.connected(owner):
            answer = self.transport.call(owner, SESSION_DISCONNECT,
                                         (mountpoint, client_id, bool(cleanup)),
                                         self.call_timeout)
        else:
            return defer.fail(AdminCommandError(
                "The session of %r is on %s, which is not reachable now." % (client_id, owner)))

        def said(result: Any) -> Dict[str, Any]:
            connected, ended = result
            return {"client_id": client_id, "node": owner, "was_online": bool(connected),
                    "ended": bool(ended)}
        return answer.addCallback(said)

    def _disconnect_here(self, caller: str, mountpoint: Any, client_id: Any,
                         cleanup: Any) -> Tuple[bool, bool]:
        if self.registry is None:
            return (False, False)
        result: Tuple[bool, bool] = self.registry.disconnect(
            SubscriberId(str(mountpoint), str(client_id)), bool(cleanup))
        return result

    def retain_show(self, caller: str, topic_filter: Any, columns: Any,
                    limit: Any) -> Dict[str, Any]:
        """``retain show``: the retained messages matching ``topic_filter`` (replicated: this
        node's view is the cluster's)."""
        if not (isinstance(topic_filter, str) and isinstance(columns, (list, tuple))):
            raise AdminCommandError("retain show needs a topic filter and columns.")
        registry = self.registry
        if registry is None:
            return {"rows": []}
        if not validate_filter(topic_filter):
            raise AdminCommandError("%r is not a valid topic filter." % (topic_filter,))
        rows = retain_rows(registry.retained.match(topic_filter))
        return {"rows": select(rows, (), list(columns),
                               limit if isinstance(limit, int) else None)}

    def metrics_show(self, caller: str) -> List[Tuple[str, float, str]]:
        """``metrics show``: ``(name, value, description)`` of every sample, read now."""
        if self.metrics is None:
            raise AdminCommandError("This node keeps no metrics.")
        samples: List[Tuple[str, float, str]] = []
        for family in self.metrics.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue   # prometheus_client's creation timestamps
                samples.append((sample.name, float(sample.value), family.documentation))
        samples.sort()
        return samples

    def listener_show(self, caller: str) -> List[Dict[str, Any]]:
        """``listener show``: this node's listeners (VerneMQ's columns)."""
        return [info.row() for info in self.listeners]

    def _listener(self, address: Any, port: Any) -> ListenerInfo:
        for info in self.listeners:
            if info.address == (address, port):
                return info
        raise AdminCommandError(
            "No listener on %s:%s; the listeners are %s." % (
                address, port, ", ".join("%s:%d" % info.address for info in self.listeners)
                or "none"))

    def listener_stop(self, caller: str, address: Any, port: Any, kill: Any) -> defer.Deferred:
        """``listener stop address= port= [-k]``: stop accepting (and with -k close)."""
        try:
            info = self._listener(address, port)
        except AdminCommandError:
            return defer.fail()
        log.info("listener {name} stopped by {caller}{kill}", name=info.service.name,
                 caller=caller, kill=" with its connections" if kill else "")
        return info.service.pause_accepting(bool(kill)).addCallback(lambda _: info.row())

    def listener_start(self, caller: str, address: Any, port: Any) -> defer.Deferred:
        """``listener start address= port=``: accept again (a configured listener)."""
        try:
            info = self._listener(address, port)
        except AdminCommandError:
            return defer.fail()

        def failed(failure: Any) -> Any:
            raise AdminCommandError("%s cannot listen on %s:%d again: %s." % (
                info.service.name, address, port, failure.getErrorMessage().rstrip(".")))
        log.info("listener {name} started by {caller}", name=info.service.name, caller=caller)
        return info.service.resume_accepting().addCallbacks(lambda _: info.row(), failed)

    # -- plugins and run-time settings ---------------------------------------------
    def plugin_show(self, caller: str) -> List[Dict[str, Any]]:
        """``plugin show``: the message store, metadata store and auth plugins in force here."""
        return [dict(row) for row in self.plugins]

    def setting_set(self, caller: str, assignments: Any, local: Any) -> defer.Deferred:
        """
        ``set KEY=VALUE ...``: every value is checked here first (nothing
        changes anywhere if one is wrong), then applied on this node and,
        unless ``local``, on every other member.  ``{"nodes": [where it is
        in force], "values": [[key, value]]}``; a member that does not
        answer keeps its value and the command fails naming it.
        """
        try:
            pairs = self._assignments(assignments)
        except AdminCommandError:
            return defer.fail()

        def done(result: Tuple[List[Tuple[str, Any]], List[str]]) -> Dict[str, Any]:
            answers, unreachable = result
            nodes = [node for node, _values in answers]
            said = ", ".join("%s=%s" % (key, text) for key, text in pairs)
            if unreachable:
                raise AdminCommandError(
                    "%s is in force on %s, but %s did not answer and keep%s the old value." % (
                        said, ", ".join(nodes) or "no node", ", ".join(unreachable),
                        "s" if len(unreachable) == 1 else ""))
            values = answers[0][1] if answers else []
            log.info("{caller} set {said} on {nodes}", caller=caller, said=said,
                     nodes=", ".join(nodes))
            return {"nodes": nodes, "values": values}
        return self._on_members(bool(local), SETTING_SET, (pairs,),
                                lambda: self._setting_set_here(caller, pairs)).addCallback(done)

    def setting_show(self, caller: str, keys: Any, local: Any) -> defer.Deferred:
        """
        ``show KEY ...``: each member's value in force (``local``: this
        node's only); no keys shows every run-time key.  ``{"rows": [{node,
        key, value}], "unreachable": [nodes]}``.
        """
        if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) for k in keys):
            return defer.fail(AdminCommandError("show needs the keys to show."))
        wanted = list(keys) or list(RUNTIME_KEYS)
        for key in wanted:
            if key not in RUNTIME_KEYS:
                return defer.fail(AdminCommandError(
                    "%s is not a run-time setting; show knows %s." % (
                        key, ", ".join(RUNTIME_KEYS))))

        def rows(result: Tuple[List[Tuple[str, Any]], List[str]]) -> Dict[str, Any]:
            answers, unreachable = result
            return {"rows": [{"node": node, "key": key, "value": value}
                             for node, values in answers for key, value in values],
                    "unreachable": unreachable}
        return self._on_members(bool(local), SETTING_SHOW, (wanted,),
                                lambda: self._setting_show_here(caller, wanted)).addCallback(rows)

    def _assignments(self, assignments: Any) -> List[Tuple[str, str]]:
        """``[[key, text]]`` checked by the schema's types, or one sentence why not."""
        if self.settings is None:
            raise AdminCommandError("This node has no run-time settings.")
        if not isinstance(assignments, (list, tuple)) or not assignments:
            raise AdminCommandError("set needs KEY=VALUE.")
        pairs: List[Tuple[str, str]] = []
        for pair in assignments:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                    and all(isinstance(p, str) for p in pair)):
                raise AdminCommandError("set needs KEY=VALUE.")
            key, text = pair
            try:
                parse_runtime_value(key, text)
            except ConfigError as e:
                raise AdminCommandError(str(e)) from None
            pairs.append((key, text))
        return pairs

    def _setting_set_here(self, caller: str, assignments: Any) -> List[Tuple[str, str]]:
        pairs = self._assignments(assignments)
        return [(key, self.settings.set(key, text)) for key, text in pairs]

    def _setting_show_here(self, caller: str, keys: Any) -> List[Tuple[str, str]]:
        if self.settings is None:
            raise AdminCommandError("This node has no run-time settings.")
        return [(key, self.settings.show(key)) for key in keys if key in RUNTIME_KEYS]

    def _on_members(self, local: bool, method: str, args: Tuple[Any, ...],
                    here: Any) -> defer.Deferred:
        """
        ``here()`` on this node and, unless ``local``, ``method(*args)`` on
        every other member, concurrently.  Fires with ``([(node, answer)]
        sorted by node, [members that did not answer])``; this node's own
        failure fails the whole.
        """
        me = self.cluster.node
        members = [me] if local else sorted(set(self.cluster.members()) | {me})
        unreachable: List[str] = []
        asked: List[defer.Deferred] = []
        def of(member: str) -> Callable[[Any], Tuple[str, Any]]:
            return lambda answer: (member, answer)

        for member in members:
            if member == me:
                asked.append(defer.maybeDeferred(here).addCallback(of(member)))
            elif self.transport.connected(member):
                def no_answer(failure: Any, member: str = member) -> None:
                    log.info("{member} did not answer {method}: {why}", member=member,
                             method=method, why=failure.getErrorMessage())
                    unreachable.append(member)
                asked.append(self.transport.call(member, method, args, self.call_timeout)
                             .addCallbacks(of(member), no_answer))
            else:
                unreachable.append(member)

        def gathered(answers: List[Any]) -> Tuple[List[Tuple[str, Any]], List[str]]:
            return ([answer for answer in answers if answer is not None],
                    sorted(unreachable))
        return defer.gatherResults(asked, consumeErrors=True).addCallbacks(
            gathered, lambda failure: failure.value.subFailure)

    # -- cluster leave -k ------------------------------------------------------
    def drain_node(self, caller: str, node: Any, interval: Any, wait_limit: Any) -> defer.Deferred:
        """
        Start draining ``node`` for ``cluster leave -k``: it stops serving
        MQTT and moves every session it holds to the other nodes (see
        :mod:`vmqtw.broker.drain`).  The drain's progress.
        """
        if not (isinstance(interval, (int, float)) and isinstance(wait_limit, (int, float))):
            return defer.fail(AdminCommandError("cluster leave -k needs an interval and a timeout "
                                                "in seconds."))
        return self._ask_leaving(node, DRAIN, (float(interval), float(wait_limit)),
                                 lambda: self._drain_here(caller, interval, wait_limit))

    def drain_status(self, caller: str, node: Any) -> defer.Deferred:
        """The progress of ``node``'s drain."""
        return self._ask_leaving(node, DRAIN_STATUS, (),
                                 lambda: self._drain_status_here(caller))

    def _ask_leaving(self, node: Any, method: str, args: Tuple[Any, ...],
                     here: Any) -> defer.Deferred:
        if not isinstance(node, str):
            return defer.fail(AdminCommandError("The node to leave must be a node name."))
        peers = self._peers
        members = peers.members()
        if node not in members:
            return defer.fail(AdminCommandError(
                "%s is not a member of the cluster; the members are %s." % (
                    node, ", ".join(sorted(members)))))
        if members == frozenset([node]):
            return defer.fail(AdminCommandError(
                "%s is the only member: there is no other node to move its sessions to." % (node,)))
        if node == self.cluster.node:
            return defer.maybeDeferred(here)
        if not self.transport.connected(node):
            return defer.fail(AdminCommandError(
                "%s is not running, so -k cannot move what it holds: start it and run cluster "
                "leave -k again, or leave it without -k (its stored messages are lost)." % (node,)))

        def unanswered(failure: Any) -> Any:
            if failure.check(AdminCommandError):
                return failure
            raise AdminCommandError("%s did not answer (%s); run cluster leave -k again." % (
                node, failure.getErrorMessage()))
        return self.transport.call(node, method, args, self.call_timeout).addErrback(unanswered)

    def _drain_here(self, caller: str, interval: Any, wait_limit: Any) -> Dict[str, Any]:
        if self.drain is None:
            raise AdminCommandError("%s cannot be drained (it serves no MQTT)." % (
                self.cluster.node,))
        progress: Dict[str, Any] = self.drain.start(float(interval), float(wait_limit)).as_dict()
        return progress

    def _drain_status_here(self, caller: str) -> Dict[str, Any]:
        if self.drain is None:
            raise AdminCommandError("%s cannot be drained (it serves no MQTT)." % (
                self.cluster.node,))
        progress: Dict[str, Any] = self.drain.progress().as_dict()
        return progress

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

        def decide(answer: Any) -> defer.Deferred:
            messages, sessions = int(answer[0]), int(answer[1])
            if messages and not accept_loss:
                raise AdminCommandError(
                    "%s holds %d offline message%s for %d session%s, which would be lost: run "
                    "cluster leave again with -k to move them to the other nodes first, or "
                    "with --yes to accept their loss." % (
                        node, messages, "" if messages == 1 else "s", sessions,
                        "" if sessions == 1 else "s"))

            def report(moved: int) -> Dict[str, Any]:
                log.info("{node} removed from the cluster by {caller} ({down}); {moved} "
                         "persistent sessions moved to the other nodes, {lost} offline "
                         "messages lost", node=node, caller=caller,
                         down="down" if down else "running", moved=moved, lost=messages)
                return {"node": node, "members": sorted(peers.members()), "down": down,
                        "messages_lost": messages, "sessions_lost": sessions,
                        "sessions_moved": moved,
                        "store_shared": bool(getattr(self.registry, "shared_store", False))}
            return self._remove(node, me).addCallback(report)
        return counts.addCallback(decide)

    def _remove(self, node: str, me: str) -> defer.Deferred:
        """
        Remove ``node`` and re-home its sessions; fires with how many
        moved.  A node leaving itself asks the others first (while it is a
        member their writes reach it); a node removed by another is asked
        nothing, the others re-home once it is out.
        """
        peers = self._peers
        survivors = sorted(peers.members() - {node})
        if node == me:
            rehomed = self._rehome_everywhere(node, survivors)
            return rehomed.addCallback(lambda moved: (peers.leave(node), moved)[1])
        peers.leave(node)
        return self._rehome_everywhere(node, survivors)

    def _rehome_everywhere(self, gone: str, survivors: List[str]) -> defer.Deferred:
        """
        Every survivor rewrites its share of the records of ``gone``
        (:meth:`Subscriptions.rehome`); this node writes the share of a
        survivor it cannot ask.  Fires with the sessions moved.
        """
        subscriptions = getattr(self.registry, "subscription_table", None)
        if subscriptions is None or not survivors:
            return defer.succeed(0)
        me = self.cluster.node

        def here(homes: List[str]) -> int:
            moved: int = subscriptions.rehome(gone, survivors, homes)[0]
            return moved

        asked: List[defer.Deferred] = []
        for survivor in survivors:
            if survivor == me or not self.transport.connected(survivor):
                asked.append(defer.maybeDeferred(here, [survivor]))
                continue
            call = self.transport.call(survivor, REHOME, (gone, survivors), self.call_timeout)

            def unanswered(failure: Any, survivor: str = survivor) -> int:
                log.warn("{survivor} did not re-home its share of the sessions of {gone} "
                         "({why}): this node does", survivor=survivor, gone=gone,
                         why=failure.getErrorMessage())
                return here([survivor])
            asked.append(call.addErrback(unanswered))
        return defer.gatherResults(asked).addCallback(lambda counts: sum(int(c) for c in counts))

    def _rehome_here(self, caller: str, gone: Any, survivors: Any) -> int:
        """A peer ran ``cluster leave`` of ``gone``: our share of its sessions live here now."""
        subscriptions = getattr(self.registry, "subscription_table", None)
        if subscriptions is None or not isinstance(gone, str) \
                or not isinstance(survivors, (list, tuple)):
            return 0
        moved: int = subscriptions.rehome(gone, list(survivors), [self.cluster.node])[0]
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
        d.addCallbacks(self._synced_with(seed), failed)
        d.addCallback(joined)
        return d

    def _synced_with(self, seed: str) -> Any:
        """
        After the join: one anti-entropy exchange with ``seed`` before the
        command says Done, so this node knows the cluster's subscriptions
        and sessions (and the cluster this node's) -- a client connecting
        here right after the join finds its session, and a client id with
        a session on both sides ends with one (the record's versions merge
        to one owner; the other node hands its queue over).  Bounded: if
        the exchange fails, the periodic ones finish the job.
        """
        def sync(members: Any) -> Any:
            aae = getattr(self.cluster, "aae", None)
            if aae is None:
                return members
            exchanged = aae.exchange(seed)
            exchanged.addTimeout(self.call_timeout * 2, self.clock)

            def done(_: Any) -> Any:
                return members

            def failed(failure: Any) -> Any:
                log.warn("first metadata exchange with {seed} after the join failed: {why}",
                         seed=seed, why=failure.getErrorMessage())
                return members
            return exchanged.addCallbacks(done, failed)
        return sync

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
                            connect_timeout: float = 5.0, drain: Any = None,
                            metrics: Any = None) -> AdminHandlers:
    """Register the admin call handlers of one node; the wiring calls this once."""
    handlers = AdminHandlers(transport, cluster, clock if clock is not None else cluster.clock,
                             readiness=readiness, registry=registry,
                             connect_timeout=connect_timeout, drain=drain, metrics=metrics)
    handlers.register()
    return handlers
