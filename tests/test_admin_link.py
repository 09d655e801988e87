"""
The blocking admin client against a real :class:`TcpTransport` on the
reactor (the client runs in a thread): the cookie handshake, refusals,
rate limiting, pings during a long call, and that an admin connection is
never taken for a cluster member (no peer-up/down, forgotten on close).
"""
from __future__ import annotations

import io
from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads

from tests.clusterharness import free_port
from tests.waiting import wait_until_deferred
from vmqtw.admin import cli
from vmqtw.admin.client import AdminClient, CookieMismatch, NodeUnreachable
from vmqtw.admin.server import register_admin_handlers
from vmqtw.cluster import auth
from vmqtw.cluster.auth import is_admin_name
from vmqtw.cluster.link import TcpTransport
from vmqtw.metadata.node import MetadataNode

COOKIE = b"admin-test-cookie"
NODE = "vmqtw@127.0.0.1"
FAST = dict(backoff_min=0.05, backoff_max=0.2, heartbeat_interval=0.2,
            heartbeat_timeout=1.0, connect_timeout=0.5)


class Served:
    def __init__(self, transport: TcpTransport, cluster: MetadataNode) -> None:
        self.transport = transport
        self.cluster = cluster
        self.events: List[str] = []
        transport.add_peer_listener(lambda p: self.events.append("up " + p),
                                    lambda p: self.events.append("down " + p))
        self.status_changes = 0

        def changed() -> None:
            self.status_changes += 1
        cluster.peers.on_status(changed)

    @property
    def address(self) -> tuple:
        return self.transport.address

    def client(self, cookie: bytes = COOKIE, node: str = NODE, **kw: Any) -> AdminClient:
        return AdminClient(self.address, cookie, node, timeout=5.0, **kw)


@pytest.fixture
def served():
    from twisted.internet import reactor
    made: List[Served] = []

    def make(**kw: Any) -> Served:
        transport = TcpTransport(NODE, COOKIE, ("127.0.0.1", 0), reactor, **dict(FAST, **kw))
        cluster = MetadataNode(NODE, transport, reactor, gc_interval=None)
        register_admin_handlers(transport, cluster, clock=reactor)
        cluster.start()
        transport.start()
        s = Served(transport, cluster)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.cluster.stop()
        pytest_twisted.blockon(defer.DeferredList([s.transport.stop() for s in made]))


def in_thread(function: Any, *args: Any) -> defer.Deferred:
    return threads.deferToThread(function, *args)


def show(client: AdminClient) -> Any:
    with client:
        return client.call("admin.cluster.show")


@pytest_twisted.ensureDeferred
async def test_admin_connection_is_not_a_cluster_member(served):
    node = served()
    result = await in_thread(show, node.client())
    assert result == ((NODE, True),)
    from twisted.internet import reactor
    await wait_until_deferred(reactor, lambda: node.transport.open_connections == 0, 5,
                              what="admin connection closed")
    assert node.events == []            # no peer up/down for membership, plumtree, readiness
    assert node.status_changes == 0
    assert node.cluster.peers.cluster_status() == [(NODE, True)]
    assert not [p for p in node.transport.known_peers() if is_admin_name(p)]


@pytest_twisted.ensureDeferred
async def test_wrong_cookie_is_refused_with_one_sentence_then_rate_limited(served):
    node = served(limiter=auth.FailureLimiter(max_failures=2))
    where = "127.0.0.1:%d" % (node.address[1],)
    for _ in range(2):
        with pytest.raises(CookieMismatch) as info:
            await in_thread(show, node.client(cookie=b"wrong"))
        assert str(info.value) == "The node at %s refused: distributed_cookie does not match." % (
            where,)
    with pytest.raises(NodeUnreachable) as info:
        await in_thread(show, node.client())  # even the right cookie, while blocked
    assert "closed the connection during the handshake" in str(info.value)
    assert node.transport.counters.refused_rate_limited == 1


@pytest_twisted.ensureDeferred
async def test_pings_keep_a_long_call_alive(served):
    """
    The node closes links silent for heartbeat_timeout (1 s here) and pings
    every 0.2 s itself: the client must ping by its own clock anyway.
    """
    from twisted.internet import reactor
    node = served()
    node.transport.register_call_handler(
        "admin.slow", lambda caller: task.deferLater(reactor, 1.6, lambda: "slow"))

    def slow() -> Any:
        with node.client(ping_interval=0.5) as c:
            return c.call("admin.slow")

    assert await in_thread(slow) == "slow"


@pytest_twisted.ensureDeferred
async def test_someone_else_answering_is_named(served):
    node = served()
    with pytest.raises(Exception) as info:
        await in_thread(show, node.client(node="vmqtw@10.9.9.9"))
    assert "is not vmqtw@10.9.9.9" in str(info.value) and "check nodename" in str(info.value)


def write_config(path: Any, port: int, cookie: str = COOKIE.decode()) -> str:
    path.write_text("nodename = %s\ndistributed_cookie = %s\n"
                    "listener.vmq.clustering = 127.0.0.1:%d\n" % (NODE, cookie, port))
    return str(path)


@pytest_twisted.ensureDeferred
async def test_cli_run_prints_the_table_and_json(served, tmp_path):
    node = served()
    config = write_config(tmp_path / "vernemq.conf", node.address[1])

    def run(*argv: str) -> tuple:
        out, err = io.StringIO(), io.StringIO()
        code = cli.run(list(argv), out, err)
        return code, out.getvalue(), err.getvalue()

    code, out, err = await in_thread(run, "--config", config, "cluster", "show")
    assert (code, err) == (0, "")
    assert "| %s | true    |" % (NODE,) in out.splitlines()
    code, out, err = await in_thread(run, "--config", config, "--format=json", "cluster",
                                     "leave", "node=vmqtw@127.0.0.99")
    assert code == 1 and out == ""
    assert err == ("vmqtw-admin: vmqtw@127.0.0.99 is not a member of the cluster; "
                   "the members are vmqtw@127.0.0.1.\n")


def test_cli_with_no_node_running(tmp_path):
    config = write_config(tmp_path / "vernemq.conf", free_port())
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["--config", config, "cluster", "show"], out, err) == 1
    assert err.getvalue().startswith("vmqtw-admin: No node is running at 127.0.0.1:")
    assert err.getvalue().count("\n") == 1 and out.getvalue() == ""
