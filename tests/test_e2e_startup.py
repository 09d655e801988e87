"""
Real ``twistd vmqtw`` processes that cannot start: a taken MQTT, clustering
(or HTTP) port, a data directory another node holds.  In the foreground
(``-n``) and daemonized (a pidfile in the test's directory), the command
exits non-zero with one sentence naming the key and the cause, prints no
traceback, and leaves no process behind.
"""
from __future__ import annotations

import os
import socket
import subprocess
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from tests.clusterharness import free_ports
from tests.nodeharness import TWISTD
from tests.waiting import wait_until

HOST = "127.0.0.1"


def processes_using(path: str) -> List[int]:
    """Every process whose command line names ``path`` (the node's config)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                if path.encode() in handle.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def run_twistd(directory: Any, settings: Dict[str, str], daemon: bool,
               name: str = "vernemq.conf") -> Tuple[subprocess.CompletedProcess, str]:
    config = directory / name
    config.write_text("".join("%s = %s\n" % item for item in settings.items()))
    mode = (["--pidfile=%s" % (directory / "twistd.pid"), "--logfile=%s" % (directory / "node.log")]
            if daemon else ["-n", "--pidfile="])
    pidfile = directory / "twistd.pid"
    try:
        result = subprocess.run([TWISTD, *mode, "vmqtw", "--config", str(config)],
                                cwd=str(directory), capture_output=True, text=True, timeout=60)
        # A daemon that failed after the fork may still be exiting when
        # its parent has returned.
        wait_until(lambda: not processes_using(str(config)) and not pidfile.exists(),
                   15, what="the node's processes to end and its pidfile to go")
    finally:
        for pid in processes_using(str(config)):
            os.kill(pid, 9)
    assert not pidfile.exists()
    return result, str(config)


def base_settings(port: int, cluster_port: int) -> Dict[str, str]:
    return {"listener.tcp.default": "%s:%d" % (HOST, port),
            "listener.vmq.clustering": "%s:%d" % (HOST, cluster_port),
            "allow_anonymous": "on", "platform_data_dir": "./data"}


@pytest.fixture
def taken() -> Iterator[socket.socket]:
    """A port another process listens on (this one, for the test)."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))
        sock.listen()
        yield sock
    finally:
        sock.close()


def assert_one_sentence(result: subprocess.CompletedProcess, sentence: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "vmqtw: " + sentence in result.stderr, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("daemon", [False, True], ids=["nodaemon", "daemon"])
@pytest.mark.parametrize("key", ["listener.tcp.default", "listener.vmq.clustering",
                                 "listener.http.default", "listener.ws.default"])
def test_a_taken_port_ends_the_node_with_one_sentence(tmp_path: Any, taken: socket.socket,
                                                      daemon: bool, key: str) -> None:
    port, cluster_port = free_ports(HOST, 2)
    settings = base_settings(port, cluster_port)
    taken_port = taken.getsockname()[1]
    settings[key] = "%s:%d" % (HOST, taken_port)
    result, _config = run_twistd(tmp_path, settings, daemon)
    assert_one_sentence(result, "%s %s:%d cannot listen: address already in use"
                        % (key, HOST, taken_port))


@pytest.mark.parametrize("daemon", [False, True], ids=["nodaemon", "daemon"])
def test_a_second_node_on_a_data_dir_in_use_ends_with_one_sentence(nodes: Any, tmp_path: Any,
                                                                   daemon: bool) -> None:
    first = nodes.node()
    data_dir = os.path.join(first.directory, "data")
    second = tmp_path / "second"
    second.mkdir()
    settings = base_settings(*free_ports(HOST, 2))
    settings["platform_data_dir"] = data_dir
    result, _config = run_twistd(second, settings, daemon)
    assert_one_sentence(result, "platform_data_dir %s is in use by another vmqtw node "
                        "(LevelDB lock held)" % data_dir)
    assert first.accepting()      # the first node never noticed


def test_a_data_dir_that_is_a_file_ends_with_one_sentence(tmp_path: Any) -> None:
    (tmp_path / "data").write_text("not a directory")
    result, _config = run_twistd(tmp_path, base_settings(*free_ports(HOST, 2)), False)
    assert_one_sentence(result, "platform_data_dir %s cannot be used: it is not a directory"
                        % (tmp_path / "data"))


@pytest.mark.parametrize("daemon", [False, True], ids=["nodaemon", "daemon"])
def test_a_message_store_in_use_fails_the_start_after_the_fork(tmp_path: Any,
                                                               daemon: bool) -> None:
    """
    The message store opens as a step of the running node (after twistd
    forked): its failure still ends the command non-zero, the sentence in
    the node's log, and every step that had started is closed again.
    """
    import plyvel
    store = tmp_path / "data" / "msgstore"
    store.mkdir(parents=True)
    holder = plyvel.DB(str(store), create_if_missing=True)    # another process holds it
    try:
        result, _config = run_twistd(tmp_path, base_settings(*free_ports(HOST, 2)), daemon)
    finally:
        holder.close()
    sentence = ("platform_data_dir %s is in use by another vmqtw node (LevelDB lock held)"
                % (tmp_path / "data"))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    log = output if not daemon else (tmp_path / "node.log").read_text()
    assert sentence in log, log
    assert "Traceback" not in log, log
    if daemon:
        # twistd's parent says what its daemon reported (its first 100 bytes).
        assert "An error has occurred" in result.stderr, output


@pytest.mark.parametrize("daemon", [False, True], ids=["nodaemon", "daemon"])
def test_a_missing_certificate_ends_with_one_sentence(tmp_path: Any, daemon: bool) -> None:
    settings = base_settings(*free_ports(HOST, 2))
    missing = tmp_path / "missing.crt"
    settings.update({"listener.ssl.default": "%s:%d" % (HOST, free_ports(HOST, 1)[0]),
                     "listener.ssl.certfile": str(missing),
                     "listener.ssl.keyfile": str(tmp_path / "missing.key")})
    result, _config = run_twistd(tmp_path, settings, daemon)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    [line] = [line for line in result.stderr.splitlines() if line.startswith("vmqtw: ")]
    assert "listener.ssl.certfile" in line and str(missing) in line, output
    assert not (tmp_path / "data").exists()          # refused before anything opened


def _locks_held_by(pid: int) -> List[int]:
    """Inodes of the POSIX locks ``pid`` holds (from /proc/locks)."""
    held = []
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            if fields[1] == "->":      # a waiter, not a holder
                continue
            if fields[1] == "POSIX" and int(fields[4]) == pid:
                held.append(int(fields[5].split(":")[2]))
    return held


def test_a_daemonized_node_holds_its_leveldb_locks_itself(tmp_path: Any) -> None:
    """
    twistd forks to daemonize, and a child inherits no fcntl lock (nor
    the thread that compacts a LevelDB): the daemon itself must hold the
    lock of each of its LevelDBs, so that a second node on the same
    directory is refused rather than writing beside it.
    """
    port, cluster_port = free_ports(HOST, 2)
    config = tmp_path / "vernemq.conf"
    config.write_text("".join("%s = %s\n" % item
                              for item in base_settings(port, cluster_port).items()))
    pidfile = tmp_path / "twistd.pid"
    try:
        started = subprocess.run([TWISTD, "--pidfile=%s" % pidfile,
                                  "--logfile=%s" % (tmp_path / "node.log"), "vmqtw",
                                  "--config", str(config)],
                                 cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
        assert started.returncode == 0, started.stdout + started.stderr

        def accepting() -> bool:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_until(accepting, 30, what="the daemonized node to listen")
        daemon = int(pidfile.read_text())
        held = _locks_held_by(daemon)
        for store in ("metadata", "msgstore"):
            inode = os.stat(tmp_path / "data" / store / "LOCK").st_ino
            assert inode in held, "the daemon does not hold %s/LOCK" % store
    finally:
        for pid in processes_using(str(config)):
            os.kill(pid, 9)
        wait_until(lambda: not processes_using(str(config)), 15, what="the daemon to end")
