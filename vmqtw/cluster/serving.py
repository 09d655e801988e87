"""
:class:`MqttServing`: a node serves MQTT only while it belongs to a cluster
it has not been removed from.

A node removed from its cluster (``vmqtw-admin cluster leave``) must not go
on as a one-node cluster of its own: its clients would publish into a
cluster nobody else sees, and when it joined again one client id could
have two queues.  So its MQTT listeners close (their connections with
them) the moment it learns of the removal, stay closed across restarts
(:attr:`~vmqtw.metadata.membership.PeerService.removed` is persisted), and
open again when it joins a cluster.
"""
from __future__ import annotations

from typing import Any, FrozenSet, List, Sequence

from twisted.application.service import IService, Service
from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.logger import Logger

__all__ = ["MqttServing"]


class MqttServing(Service):
    """
    The MQTT listeners of a node as one step of its service tree: started
    in order and stopped in reverse like the tree's, and closed while
    ``peers`` (a :class:`~vmqtw.metadata.membership.PeerService`, None for
    a static member list) says this node was removed.
    """

    log = Logger()

    def __init__(self, listeners: Sequence[IService], peers: Any = None,
                 name: str = "mqtt-listeners") -> None:
        self.setName(name)
        self.listeners: List[IService] = list(listeners)
        self.peers = peers
        #: True while the listeners run.
        self.serving = False
        #: True once :meth:`suspend` closed them for a leave, until the
        #: node restarts (or joins a cluster again after the leave).
        self.suspended = False
        if peers is not None:
            peers.on_removed(self._removed)
            peers.on_change(self._members_changed)

    def _allowed(self) -> bool:
        return not self.suspended and (self.peers is None or not self.peers.removed)

    def suspend(self) -> Any:
        """
        Close the listeners and their connections while this node is
        drained for a leave (``cluster leave -k``): no client may start or
        keep a session here.  A Deferred firing once they are closed.
        """
        self.suspended = True
        if self.running and self.serving:
            self.log.warn("this node is leaving the cluster: its MQTT listeners are stopped "
                          "and its clients disconnected, to reconnect to the other nodes")
        return self._close()

    def startService(self) -> None:
        Service.startService(self)
        if self._allowed():
            self._open()
        else:
            self.log.warn("this node was removed from its cluster: it serves no MQTT until it "
                          "joins a cluster again (vmqtw-admin cluster join discovery-node=...)")

    def stopService(self) -> Any:
        Service.stopService(self)
        return self._close()

    def _open(self) -> None:
        self.serving = True
        for listener in self.listeners:
            listener.startService()

    @inlineCallbacks
    def _close(self) -> Any:
        if not self.serving:
            return
        self.serving = False
        for listener in reversed(self.listeners):
            if listener.running:
                self.log.info("stopping {name}", name=listener.name)
                yield maybeDeferred(listener.stopService)

    def _removed(self) -> None:
        # Removed now: the leave's suspension gives way to "removed", which
        # a join ends.
        self.suspended = False
        if self.running and self.serving:
            self.log.warn("this node left the cluster: its MQTT listeners are stopped and its "
                          "clients disconnected until it joins a cluster again")
            self._close()

    def _members_changed(self, members: FrozenSet[str]) -> None:
        if self.running and not self.serving and self._allowed():
            self.log.info("this node joined a cluster: its MQTT listeners start again")
            self._open()
