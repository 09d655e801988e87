"""
Tests of the multi-process/partition helpers in tests/clusterharness.py:
they must really cut links, really kill processes, and always clean up.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Optional, Tuple

import pytest
import pytest_twisted

from tests.clusterharness import (BACKEND_ENV, FaultyProxy, NFT_TABLE,
                                  Partition, Partitions, ProcessGroup,
                                  describe_backend, free_port, loopback_ip,
                                  loopback_ips, nft_available,
                                  nft_unusable_reason, partition_backend,
                                  spawn)
from tests.waiting import wait_until, wait_until_deferred


def listener(ip: str) -> socket.socket:
    s = socket.create_server((ip, 0))
    s.settimeout(0.5)
    return s


def can_connect(src: str, dst: socket.socket,
                address: Optional[Tuple[str, int]] = None,
                timeout: float = 0.3) -> bool:
    """
    True when a byte sent on a TCP connection from ``src`` to ``address``
    (default: ``dst`` itself, else a proxy in front of it) reaches the
    listener ``dst``, and the listener sees ``src`` as the dialer.
    """
    c = socket.socket()
    c.settimeout(timeout)
    try:
        c.bind((src, 0))
        c.connect(address or dst.getsockname())
        c.sendall(b"x")
        peer, where = dst.accept()
        with peer:
            peer.settimeout(timeout)
            assert where[0] == src
            return peer.recv(1) == b"x"
    except (socket.timeout, TimeoutError):
        return False
    finally:
        c.close()


def table_exists() -> bool:
    return subprocess.run(["nft", "list", "table", "inet", NFT_TABLE],
                          capture_output=True).returncode == 0


needs_nft = pytest.mark.skipif(
    not nft_available(),
    reason="about nft itself; nft is not usable here: %s"
    % (nft_unusable_reason(),))


def test_free_port_is_bindable_on_an_alias():
    port = free_port("127.0.0.2")
    with socket.create_server(("127.0.0.2", port)):
        pass


def test_loopback_ip_range():
    assert loopback_ip(3) == "127.0.0.3"
    assert loopback_ips(3) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    with pytest.raises(ValueError):
        loopback_ip(0)


def test_wait_until_returns_value_or_times_out():
    box = iter([0, 0, "yes"])
    assert wait_until(lambda: next(box), timeout=1.0, interval=0) == "yes"
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="thing"):
        wait_until(lambda: False, timeout=0.05, what="thing")
    assert time.monotonic() - start < 1.0


@pytest_twisted.ensureDeferred
async def test_wait_until_deferred_lets_the_reactor_run():
    from twisted.internet import reactor
    fired = []
    reactor.callLater(0.02, fired.append, True)
    assert await wait_until_deferred(reactor, lambda: fired, timeout=2.0)
    with pytest.raises(TimeoutError):
        await wait_until_deferred(reactor, lambda: False, timeout=0.05)


def test_partition_rules_cover_both_directions_between_groups():
    p = Partition([["127.0.0.2"], ["127.0.0.3", "127.0.0.4"]])
    assert sorted(p.pairs()) == [
        ("127.0.0.2", "127.0.0.3"), ("127.0.0.2", "127.0.0.4"),
        ("127.0.0.3", "127.0.0.2"), ("127.0.0.4", "127.0.0.2")]
    one = Partition([["127.0.0.2"], ["127.0.0.3"]], one_way=True)
    assert one.pairs() == [("127.0.0.2", "127.0.0.3")]
    assert "hook output" in p.ruleset()
    with pytest.raises(ValueError):
        Partition([["127.0.0.2"]])


def test_partition_cuts_between_groups_only_and_heals(partitions):
    """On the run's back end: cross-group links are cut, in-group ones
    are not, and healing (or leaving the block) restores them."""
    servers = [listener(ip) for ip in ("127.0.0.13", "127.0.0.14")]
    try:
        srv3, srv4 = servers
        at3 = partitions.front("127.0.0.13", srv3.getsockname())
        at4 = partitions.front("127.0.0.14", srv4.getsockname())
        assert can_connect("127.0.0.12", srv3, at3)
        with partitions.cut([["127.0.0.12"], ["127.0.0.13", "127.0.0.14"]]
                            ) as p:
            if partitions.backend == "nft":
                assert table_exists()
            assert not can_connect("127.0.0.12", srv3, at3)
            assert not can_connect("127.0.0.12", srv4, at4)
            assert can_connect("127.0.0.13", srv4, at4)  # same group
            p.heal()
            assert can_connect("127.0.0.12", srv3, at3)
            p.cut()
            assert not can_connect("127.0.0.12", srv3, at3)
        if partitions.backend == "nft":
            assert not table_exists()
        assert can_connect("127.0.0.12", srv3, at3)
    finally:
        for s in servers:
            s.close()


def test_the_backend_is_nft_when_usable_unless_forced(monkeypatch):
    forced = os.environ.get(BACKEND_ENV, "auto")
    expected = "nft" if forced != "proxy" and nft_available() else "proxy"
    assert partition_backend() == expected
    assert describe_backend().startswith("partitions: " + expected + " (")
    monkeypatch.setenv(BACKEND_ENV, "proxy")
    assert partition_backend() == "proxy"
    monkeypatch.setenv(BACKEND_ENV, "bogus")
    with pytest.raises(pytest.UsageError):
        partition_backend()


def test_proxy_backend_blackholes_existing_links_and_keeps_them_dead():
    """
    On the proxy back end a cut silences an established connection
    without closing it (as a DROP); a connection that lost bytes stays
    dead after the heal, and a new one forwards.  A one-way cut blocks
    only the earlier group's packets.
    """
    srv = listener("127.0.0.17")
    made = Partitions("proxy")
    try:
        at = made.front("127.0.0.17", srv.getsockname())
        assert at[0] == "127.0.0.17" and at != srv.getsockname()
        c = socket.create_connection(at, timeout=2,
                                     source_address=("127.0.0.16", 0))
        peer, where = srv.accept()
        assert where[0] == "127.0.0.16"  # the dialer's IP, not the proxy's
        peer.settimeout(0.3)
        try:
            c.sendall(b"one")
            assert peer.recv(10) == b"one"
            with made.cut([["127.0.0.16"], ["127.0.0.17"]]):
                c.sendall(b"lost")
                with pytest.raises(socket.timeout):
                    peer.recv(10)
                assert not can_connect("127.0.0.16", srv, at)
            c.sendall(b"after")
            with pytest.raises(socket.timeout):
                peer.recv(10)
            peer.sendall(b"back")  # the other direction lost nothing
            c.settimeout(2)
            assert c.recv(10) == b"back"
            assert can_connect("127.0.0.16", srv, at)
        finally:
            c.close()
            peer.close()
        with made.cut([["127.0.0.17"], ["127.0.0.16"]], one_way=True):
            assert not can_connect("127.0.0.16", srv, at)  # no SYN-ACK
        with made.cut([["127.0.0.18"], ["127.0.0.19"]]):
            assert can_connect("127.0.0.16", srv, at)  # other IPs
    finally:
        made.close()
        srv.close()


@needs_nft
def test_partition_table_removed_when_the_test_body_fails():
    with pytest.raises(RuntimeError):
        with Partition([["127.0.0.12"], ["127.0.0.13"]]):
            assert table_exists()
            raise RuntimeError("test failed inside the partition")
    assert not table_exists()


@needs_nft
def test_partitions_take_turns_and_a_waiting_one_leaves_the_table():
    """A second Partition waits for the first; giving up must not heal."""
    with Partition([["127.0.0.12"], ["127.0.0.13"]]):
        with pytest.raises(TimeoutError):
            with Partition([["127.0.0.14"], ["127.0.0.15"]],
                           lock_timeout=0.1):
                pass
        assert table_exists()
    with Partition([["127.0.0.14"], ["127.0.0.15"]], lock_timeout=0.1):
        assert table_exists()
    assert not table_exists()


def test_faulty_proxy_forwards_blackholes_and_heals():
    srv = listener("127.0.0.3")
    try:
        with FaultyProxy(srv.getsockname(), listen=("127.0.0.3", 0)) as proxy:
            c = socket.create_connection(proxy.address, timeout=2)
            peer, _ = srv.accept()
            peer.settimeout(0.2)
            try:
                c.sendall(b"one")
                assert peer.recv(10) == b"one"
                proxy.cut()
                c.sendall(b"lost")
                with pytest.raises(socket.timeout):
                    peer.recv(10)
                proxy.heal()
                c.sendall(b"two")  # this connection lost bytes: dead
                with pytest.raises(socket.timeout):
                    peer.recv(10)
            finally:
                c.close()
                peer.close()
            c = socket.create_connection(proxy.address, timeout=2)
            peer, _ = srv.accept()
            peer.settimeout(2)
            try:
                c.sendall(b"new")
                assert peer.recv(10) == b"new"
                peer.sendall(b"back")
                c.settimeout(2)
                assert c.recv(10) == b"back"
            finally:
                c.close()
                peer.close()
    finally:
        srv.close()


STUBBORN = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "while True: time.sleep(1)\n")


def test_process_group_logs_output_and_kills_stubborn_processes(tmp_path):
    group = ProcessGroup(str(tmp_path / "logs"), grace=0.3)
    with pytest.raises(RuntimeError):
        with group:
            proc = group.spawn([sys.executable, "-c", STUBBORN],
                               name="stubborn")
            wait_until(lambda: "ready" in proc.log_text(), timeout=10)
            raise RuntimeError("the test failed")
    assert not proc.alive()
    assert proc.process.returncode == -9  # SIGTERM ignored -> SIGKILL
    assert os.path.exists(tmp_path / "logs" / "stubborn.log")


def test_spawn_terminates_politely_first(tmp_path):
    proc = spawn([sys.executable, "-c",
                  "import time; print('up', flush=True); time.sleep(60)"],
                 str(tmp_path), name="polite")
    try:
        wait_until(lambda: "up" in proc.log_text(), timeout=10)
    finally:
        code = proc.terminate(grace=5)
    assert code == -15


def test_process_group_fixture(process_group):
    proc = process_group.spawn([sys.executable, "-c", "print('hi')"],
                               name="hi")
    wait_until(lambda: not proc.alive(), timeout=10)
    assert proc.log_text().strip() == "hi"
