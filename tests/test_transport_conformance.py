"""
The transport conformance kit (:mod:`vmqtw.testing.transport`) run against
both transports: the in-memory one on a ``task.Clock`` and the TCP one on the
real reactor over loopback, so the two cannot drift apart.
"""
from __future__ import annotations

import subprocess
import sys
from typing import Any, Callable, List

import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from tests.waiting import wait_until_deferred
from vmqtw.cluster.link import TcpTransport
from vmqtw.testing.memory_transport import InMemoryNetwork, InMemoryTransport
from vmqtw.testing.transport import TransportConformance

COOKIE = b"conformance-cookie"

#: Fast timers: tests never wait for the defaults.
FAST = dict(backoff_min=0.05, backoff_max=0.2, heartbeat_interval=0.2,
            heartbeat_timeout=1.0, connect_timeout=0.5)


class TestInMemoryTransport(TransportConformance):
    """Simulated time: every wait advances the clock in 10 ms steps."""

    def setup_method(self) -> None:
        self.clock = Clock()
        self.network = InMemoryNetwork(self.clock)
        self.made: List[Any] = []

    def make_transport(self, name: str) -> InMemoryTransport:
        transport = self.network.transport(name)
        transport.start()
        return transport

    def address_of(self, transport: Any) -> Any:
        return (transport.node, 0)

    def wait_until(self, predicate: Callable[[], Any], what: str,
                   timeout: float = 10.0) -> "defer.Deferred[None]":
        deadline = self.clock.seconds() + timeout
        self.clock.advance(0)
        while not predicate():
            if self.clock.seconds() >= deadline:
                return defer.fail(AssertionError(
                    "%s not reached within %ss (simulated)" % (what, timeout)))
            self.clock.advance(0.01)
        return defer.succeed(None)

    def cut(self, a: Any, b: Any) -> None:
        self.network.partition([[a.node], [b.node]])

    def teardown_method(self) -> None:
        for transport in self.made:
            transport.stop()


class TestTcpTransport(TransportConformance):
    """The real reactor on loopback; bounded polls, never sleeps."""

    def setup_method(self) -> None:
        from twisted.internet import reactor
        self.reactor = reactor
        self.made: List[Any] = []

    def make_transport(self, name: str) -> TcpTransport:
        transport = TcpTransport(name, COOKIE, ("127.0.0.1", 0),
                                 self.reactor, **FAST)
        transport.start()
        return transport

    def address_of(self, transport: Any) -> Any:
        return transport.address

    def wait_until(self, predicate: Callable[[], Any], what: str,
                   timeout: float = 10.0) -> "defer.Deferred[Any]":
        return wait_until_deferred(self.reactor, predicate, timeout,
                                   what=what)

    def cut(self, a: Any, b: Any) -> None:
        a._peers[b.node].link.transport.abortConnection()

    def teardown_method(self) -> None:
        pytest_twisted.blockon(defer.DeferredList(
            [t.stop() for t in self.made]))


def test_testing_imports_nothing_beyond_install_requires() -> None:
    """
    The kit, the in-memory transport, the simulation and the raw client, packet
    builder and in-process broker of the benchmarks load without
    pytest, hypothesis or pytest-twisted (third-party test suites and the
    benchmarks use them with only the package installed).
    """
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('pytest', '_pytest', 'hypothesis',"
        " 'pytest_twisted', 'tests'):\n"
        "            raise ImportError('test-only module ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import vmqtw.testing.transport, vmqtw.testing.memory_transport\n"
        "import vmqtw.testing.simulation, vmqtw.testing.metadata\n"
        "import vmqtw.testing.rawclient, vmqtw.testing.mqttbytes, vmqtw.testing.inprocess_broker\n")
    done = subprocess.run([sys.executable, "-c", blocker],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
