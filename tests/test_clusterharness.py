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

import pytest
import pytest_twisted

from tests.clusterharness import (FaultyProxy, NFT_TABLE, Partition,
                                  ProcessGroup, free_port, loopback_ip,
                                  loopback_ips,
                                  nft_available, process_group, spawn,
                                  wait_until, wait_until_deferred)

__all__ = ["process_group"]  # the fixture, imported to be used here


def listener(ip: str) -> socket.socket:
    s = socket.create_server((ip, 0))
    s.settimeout(2)
    return s


def can_connect(src: str, dst: socket.socket, timeout: float = 0.3) -> bool:
    """True when a TCP connect from ``src`` to ``dst`` completes."""
    c = socket.socket()
    c.settimeout(timeout)
    try:
        c.bind((src, 0))
        c.connect(dst.getsockname())
        dst.accept()[0].close()
        return True
    except (socket.timeout, TimeoutError):
        return False
    finally:
        c.close()


def table_exists() -> bool:
    return subprocess.run(["nft", "list", "table", "inet", NFT_TABLE],
                          capture_output=True).returncode == 0


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


def test_partition_cuts_between_groups_only_and_heals():
    assert nft_available(), "needs nft and root (apt-get install nftables)"
    srv3, srv4 = listener("127.0.0.13"), listener("127.0.0.14")
    try:
        assert can_connect("127.0.0.12", srv3)
        with Partition([["127.0.0.12"], ["127.0.0.13", "127.0.0.14"]]) as p:
            assert table_exists()
            assert not can_connect("127.0.0.12", srv3)
            assert not can_connect("127.0.0.12", srv4)
            assert can_connect("127.0.0.13", srv4)  # same group
            p.heal()
            assert can_connect("127.0.0.12", srv3)
            p.cut()
            assert not can_connect("127.0.0.12", srv3)
        assert not table_exists()
        assert can_connect("127.0.0.12", srv3)
    finally:
        srv3.close()
        srv4.close()


def test_partition_table_removed_when_the_test_body_fails():
    assert nft_available(), "needs nft and root (apt-get install nftables)"
    with pytest.raises(RuntimeError):
        with Partition([["127.0.0.12"], ["127.0.0.13"]]):
            assert table_exists()
            raise RuntimeError("test failed inside the partition")
    assert not table_exists()


def test_partitions_take_turns_and_a_waiting_one_leaves_the_table():
    """A second Partition waits for the first; giving up must not heal."""
    assert nft_available(), "needs nft and root (apt-get install nftables)"
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
        with FaultyProxy(srv.getsockname()) as proxy:
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
                c.sendall(b"two")
                assert peer.recv(10) == b"two"
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
