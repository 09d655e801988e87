"""
A cluster of real ``twistd -n vmqtw`` nodes and the faults the nemesis
inflicts on it: cut/heal links, kill -9 and restart (same data directory
and ports), SIGSTOP and SIGCONT.

Nodes run on loopback aliases from 127.0.0.100 up, which no other test
uses, so the suite's nft rules never hit another test's sockets.  They are
joined with the ``vmqtw-admin`` command line as a user would, and use the
fast metadata timings of the other end-to-end tests so a split is noticed
(and healed) within seconds.  :meth:`Cluster.close` removes every process
and rule, even after a failure.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set

from tests.nemesis.network import NetworkFaults
from tests.nodeharness import Node
from tests.waiting import wait_until
from vmqtw.admin.cli import execute
from vmqtw.admin.client import AdminError
from vmqtw.admin.commands import parse_args
from vmqtw.config import load_config

__all__ = ["Cluster", "FIRST_IP", "FAST_METADATA"]

BIN = os.path.dirname(sys.executable)
#: 127.0.0.<FIRST_IP> is node 0; no other test runs nodes there.
FIRST_IP = 100
#: The timings of tests/test_e2e_cluster.py: quick gossip and repair.
#: Queues are unbounded: a bounded queue drops what a slow subscriber cannot
#: take by design (``max_online_messages``, counted as ``dropped_online``),
#: and the suite judges the cluster, not that policy.
FAST_METADATA: Dict[str, str] = {
    "metadata.lazy_tick": "200ms", "metadata.exchange_tick": "500ms",
    "metadata.gossip_interval": "300ms", "log.console.level": "info",
    "distributed_cookie": "nemesis-cookie",
    "max_online_messages": "-1", "max_offline_messages": "-1",
}


class Cluster:
    """
    ``size`` nodes in ``directory``, started and joined by :meth:`start`.

    ``settings`` are added to every node's configuration (for example
    ``{"allow_publish_during_netsplit": "on"}``).
    """

    def __init__(self, directory: str, size: int = 3,
                 settings: Optional[Mapping[str, str]] = None,
                 network: Optional[NetworkFaults] = None,
                 first_ip: int = FIRST_IP) -> None:
        self.directory = directory
        self.network = network if network is not None else NetworkFaults()
        self.paused: Set[int] = set()
        #: Nodes that left the cluster for good (``cluster leave``): not
        #: restarted, not counted by :meth:`healthy`.
        self.gone: Set[int] = set()
        self.nodes: List[Node] = []
        for i in range(size):
            host = "127.0.0.%d" % (first_ip + i,)
            node_settings = dict(FAST_METADATA, nodename="vmqtw@" + host)
            node_settings.update(settings or {})
            self.nodes.append(Node(os.path.join(directory, "node%d" % (i,)),
                                   node_settings, host=host,
                                   partitions=self.network.partitions))

    # -- life cycle -------------------------------------------------------

    def start(self, timeout: float = 30.0) -> "Cluster":
        """Start every node, join them to node 0, wait until all run."""
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            wait_until(node.accepting, timeout, what="%s to accept" % (self.name(node),))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            done = self.admin(node, "cluster", "join", "discovery-node=" + self.cluster_address(first))
            if done.returncode != 0:
                raise AssertionError("join of %s failed: %s" % (self.name(node), done.stderr))
        self.wait_healthy(timeout)
        return self

    def close(self) -> None:
        """Heal, wake and kill everything; safe after any failure."""
        try:
            self.network.close()
        finally:
            for i in sorted(self.paused):
                self._signal(i, signal.SIGCONT)
            self.paused.clear()
            for node in self.nodes:
                node.kill9()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- observation ------------------------------------------------------

    @staticmethod
    def name(node: Node) -> str:
        return node.settings["nodename"]

    @staticmethod
    def cluster_address(node: Node) -> str:
        port = node.settings["listener.vmq.clustering"].rsplit(":", 1)[1]
        return "%s:%s" % (node.settings["nodename"], port)

    @staticmethod
    def admin(node: Node, *argv: str) -> subprocess.CompletedProcess:
        """The ``vmqtw-admin`` command line as a subprocess, as a user runs it."""
        return subprocess.run([os.path.join(BIN, "vmqtw-admin"), "--config", node.config_path, *argv],
                              cwd=node.directory, capture_output=True, text=True, timeout=60)

    @staticmethod
    def show(node: Node) -> Optional[List[tuple]]:
        """``cluster show`` on ``node`` in-process: ``[(name, running)]``, None if unreachable."""
        try:
            out = execute(parse_args(["--format=json", "cluster", "show"]),
                          load_config(node.config_path))
        except AdminError:
            return None
        return sorted((row["Node"], row["Running"]) for row in json.loads(out)["table"])

    def queue_drops(self) -> int:
        """
        Messages every node's queues dropped by their limits (``node status``
        ``dropped_online`` + ``dropped_offline``): a loss the queue policy
        explains, reported beside what the checker finds.
        """
        total = 0
        for node in self.members():   # a node that left is not asked (it may be dead)
            out = execute(parse_args(["--format=json", "node", "status"]),
                          load_config(node.config_path))
            values = {row["Key"]: row["Value"] for row in json.loads(out)["table"]}
            total += int(values.get("dropped_online", 0)) + int(values.get("dropped_offline", 0))
        return total

    def members(self) -> List[Node]:
        """The nodes that belong to the cluster (all but those that left)."""
        return [n for i, n in enumerate(self.nodes) if i not in self.gone]

    def healthy(self) -> bool:
        """Every member runs and sees every member running."""
        members = self.members()
        everyone = sorted((self.name(n), True) for n in members)
        return all(n.process is not None and self.show(n) == everyone for n in members)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        wait_until(self.healthy, timeout, interval=0.2, what="every node to see all running")

    # -- faults -----------------------------------------------------------

    def cut(self, groups: Sequence[Iterable[int]], one_way: bool = False) -> None:
        """Cut links between groups of node indices: ``cut([[2], [0, 1]])``."""
        self.network.cut([[self.nodes[i].host for i in g] for g in groups], one_way=one_way)

    def isolate(self, index: int) -> None:
        """Cut node ``index`` off from all the others."""
        rest = [i for i in range(len(self.nodes)) if i != index]
        self.cut([[index], rest])

    def heal(self) -> None:
        self.network.heal()

    def kill9(self, index: int) -> None:
        """SIGKILL: no shutdown code runs, only what is on disk survives."""
        self.paused.discard(index)
        self.nodes[index].kill9()

    def restart(self, index: int, timeout: float = 30.0, wait: bool = True) -> None:
        """Start a killed node again: same directory, data and ports."""
        node = self.nodes[index]
        node.start(wait=False)
        if wait:
            wait_until(node.accepting, timeout, what="%s to accept again" % (self.name(node),))

    # -- membership -------------------------------------------------------

    def leave(self, index: int, via: int = 0, *flags: str) -> subprocess.CompletedProcess:
        """``cluster leave node=<index>`` run on node ``via``; the node is gone from then on."""
        done = self.admin(self.nodes[via], "cluster", "leave",
                          "node=" + self.name(self.nodes[index]), *flags)
        if done.returncode == 0:
            self.gone.add(index)
        return done

    def join(self, index: int, via: int = 0) -> subprocess.CompletedProcess:
        """``cluster join`` of node ``index`` to node ``via``'s cluster; a member again."""
        done = self.admin(self.nodes[index], "cluster", "join",
                          "discovery-node=" + self.cluster_address(self.nodes[via]))
        if done.returncode == 0:
            self.gone.discard(index)
        return done

    def pause(self, index: int) -> None:
        """SIGSTOP: the process holds its sockets but answers nothing."""
        self._signal(index, signal.SIGSTOP)
        self.paused.add(index)

    def resume(self, index: int) -> None:
        self._signal(index, signal.SIGCONT)
        self.paused.discard(index)

    def _signal(self, index: int, sig: int) -> None:
        process = self.nodes[index].process
        if process is not None and process.poll() is None:
            os.kill(process.pid, sig)
