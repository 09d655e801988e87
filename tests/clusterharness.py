"""
Helpers for tests that run real nodes: ports, loopback aliases, network
partitions and subprocesses that are always cleaned up.

Every node runs on its own loopback alias (127.0.0.2, .3, ...: the whole of
127/8 answers on ``lo`` without setup).  :class:`Partition` cuts links
between groups of those addresses with a private nft table; because an nft
DROP only blackholes packets of an established connection, what notices a
cut is the cluster link's heartbeat, exactly as on a real network.  Where
``nft`` is not usable (not root, not installed) :class:`FaultyProxy` gives
the same effect for one link by sitting in the middle of it.

Every resource these helpers create is removed in ``finally``/``__exit__``
even when the test fails.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import (Any, Callable, Dict, Iterable, List, Optional, Sequence,
                    Tuple)

import pytest
from twisted.internet import defer, task

__all__ = ["free_port", "loopback_ip", "loopback_ips", "wait_until",
           "wait_until_deferred", "nft_available", "Partition", "FaultyProxy",
           "Spawned", "spawn",
           "ProcessGroup", "process_group", "NFT_TABLE"]

NFT_TABLE = "vmqtwtest"
#: Abstract unix socket name serialising partitions of parallel tests.
LOCK_NAME_TEMPLATE = "\0vmqtw-%s-nft-lock"


def loopback_ip(n: int) -> str:
    """The ``n``-th loopback alias, ``127.0.0.n`` (n in 1..254)."""
    if not 1 <= n <= 254:
        raise ValueError("loopback alias index out of range: %r" % (n,))
    return "127.0.0.%d" % (n,)


def loopback_ips(count: int, first: int = 2) -> List[str]:
    """``count`` consecutive aliases from ``127.0.0.<first>``: one per node."""
    return [loopback_ip(first + i) for i in range(count)]


def free_port(host: str = "127.0.0.1") -> int:
    """
    A TCP port that was free on ``host`` a moment ago.

    The kernel picks it; there is a small race until the caller binds it,
    which is why nodes that can listen on port 0 should rather do that.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0,
               interval: float = 0.02, what: str = "condition") -> Any:
    """
    Poll ``predicate`` until it returns something true; return that.

    For waiting on *other processes* from plain (non-reactor) test code;
    raises ``TimeoutError`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError("%s not reached within %ss" % (what, timeout))
        time.sleep(interval)


def wait_until_deferred(reactor: Any, predicate: Callable[[], Any],
                        timeout: float = 10.0, interval: float = 0.01,
                        what: str = "condition") -> defer.Deferred:
    """
    Like :func:`wait_until` but without blocking the reactor: a Deferred
    that fires with the first true value of ``predicate`` or fails with
    ``TimeoutError``.  For pytest-twisted tests on the real reactor.
    """
    deadline = reactor.seconds() + timeout

    @defer.inlineCallbacks
    def poll() -> Any:
        while True:
            value = predicate()
            if value:
                return value
            if reactor.seconds() >= deadline:
                raise TimeoutError("%s not reached within %ss"
                                   % (what, timeout))
            yield task.deferLater(reactor, interval, lambda: None)

    return poll()


# -- partitions with nft -----------------------------------------------------

def _nft(*args: str, stdin: Optional[str] = None,
         check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["nft", *args], input=stdin, capture_output=True,
                          text=True, timeout=10, check=check)


def nft_available() -> bool:
    """True when ``nft`` exists and we may change the ruleset (root)."""
    if shutil.which("nft") is None or os.geteuid() != 0:
        return False
    try:
        return _nft("list", "tables", check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _try_bind(sock: socket.socket, name: str) -> bool:
    try:
        sock.bind(name)
        return True
    except OSError:
        return False


class Partition:
    """
    Cut every link between different ``groups`` of loopback IPs.

    ``Partition([["127.0.0.2"], ["127.0.0.3", "127.0.0.4"]])`` drops packets
    from .2 to .3/.4 and back; links inside a group keep working.
    ``one_way=True`` drops only packets from earlier groups to later ones.
    Use as a context manager; :meth:`heal` deletes the table early and
    :meth:`cut` cuts again.  The table is deleted in ``__exit__`` whatever
    happens, and a leftover table of a crashed run is replaced on entry.
    Parallel test processes take turns through a lock (the table name
    is shared), so keep partitions short; and pick loopback IPs no other
    concurrently running test uses, since the rules hit every socket.
    """

    def __init__(self, groups: Sequence[Iterable[str]], *,
                 one_way: bool = False, table: str = NFT_TABLE,
                 lock_timeout: float = 60.0) -> None:
        self.groups = [list(g) for g in groups]
        if len(self.groups) < 2:
            raise ValueError("a partition needs at least two groups")
        self.one_way = one_way
        self.table = table
        self.active = False
        self.lock_timeout = lock_timeout
        self._lock_sock: Optional[socket.socket] = None

    def pairs(self) -> List[Tuple[str, str]]:
        """(source, destination) pairs whose packets are dropped."""
        out = []
        for i, gi in enumerate(self.groups):
            for j, gj in enumerate(self.groups):
                if i == j or (self.one_way and j < i):
                    continue
                out.extend((a, b) for a in gi for b in gj)
        return out

    def ruleset(self) -> str:
        """The nft script that creates the table (one atomic transaction)."""
        rules = "\n".join("    ip saddr %s ip daddr %s drop" % pair
                          for pair in self.pairs())
        return ("table inet %s {\n  chain out {\n"
                "    type filter hook output priority 0; policy accept;\n"
                "%s\n  }\n}\n" % (self.table, rules))

    def cut(self) -> None:
        """(Re)create the table with this partition's rules."""
        self._lock()
        _nft("delete", "table", "inet", self.table, check=False)
        self.active = True  # before nft: a half-applied table gets deleted
        _nft("-f", "-", stdin=self.ruleset())

    def heal(self) -> None:
        """Delete the table: every link works again."""
        _nft("delete", "table", "inet", self.table, check=False)
        self.active = False

    def _lock(self) -> None:
        # Parallel test workers share one table name: take turns.  The lock
        # is an abstract unix socket name: no file to clean up, and the
        # kernel releases it when a crashed holder dies.
        if self._lock_sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            wait_until(lambda: _try_bind(sock, LOCK_NAME_TEMPLATE
                                         % (self.table,)),
                       timeout=self.lock_timeout, interval=0.05,
                       what="the nft partition lock")
        except BaseException:
            sock.close()
            raise
        self._lock_sock = sock

    def close(self) -> None:
        """Heal and let other processes partition again."""
        if self._lock_sock is None:
            return  # never cut: the table, if any, is someone else's
        try:
            self.heal()
        finally:
            if self._lock_sock is not None:
                self._lock_sock.close()  # releases the lock
                self._lock_sock = None

    def __enter__(self) -> "Partition":
        self._lock()
        try:
            self.cut()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- fallback: a fault-injecting TCP proxy -----------------------------------

class FaultyProxy:
    """
    A TCP forwarder from ``listen`` to ``target`` that can blackhole traffic.

    Point one node at the proxy instead of its peer; ``cut()`` then silently
    discards bytes in both directions (or only ``"up"``: client to target,
    ``"down"``: target to client) without closing the sockets -- what an nft
    DROP does -- and ``heal()`` forwards again.  Runs in threads so it works
    beside any reactor; ``close()`` (or ``__exit__``) stops everything.
    """

    def __init__(self, target: Tuple[str, int],
                 listen: Tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.target = target
        self._server = socket.create_server(listen)
        self._server.settimeout(0.1)
        self.address: Tuple[str, int] = self._server.getsockname()[:2]
        self._cut: Dict[str, bool] = {"up": False, "down": False}
        self._closed = threading.Event()
        self._sockets: List[socket.socket] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def cut(self, direction: str = "both") -> None:
        for d in (("up", "down") if direction == "both" else (direction,)):
            self._cut[d] = True

    def heal(self) -> None:
        self._cut["up"] = self._cut["down"] = False

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.settimeout(0.1)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst, d in ((client, upstream, "up"),
                                (upstream, client, "down")):
                t = threading.Thread(target=self._pipe, args=(src, dst, d),
                                     daemon=True)
                self._threads.append(t)
                t.start()

    def _pipe(self, src: socket.socket, dst: socket.socket,
              direction: str) -> None:
        try:
            while not self._closed.is_set():
                try:
                    data = src.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                if not self._cut[direction]:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        with self._lock:
            for s in self._sockets:
                s.close()
        for t in self._threads:
            t.join(timeout=2)

    def __enter__(self) -> "FaultyProxy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- subprocesses ------------------------------------------------------------

class Spawned:
    """A started subprocess whose output goes to ``log_path``."""

    def __init__(self, name: str, process: subprocess.Popen,
                 log_path: str) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        with open(self.log_path, "r", errors="replace") as f:
            return f.read()

    def terminate(self, grace: float = 5.0) -> Optional[int]:
        """
        SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit
        code.  Signals go to the process group the child leads (it was
        started in its own session), so its children die too.
        """
        p = self.process
        if p.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                p.wait(timeout=grace)
        else:
            self._signal(signal.SIGKILL)  # leftover grandchildren
        return p.returncode

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def spawn(args: Sequence[str], log_dir: str, name: Optional[str] = None,
          env: Optional[Dict[str, str]] = None,
          cwd: Optional[str] = None) -> Spawned:
    """
    Start ``args`` in a new session with stdout+stderr appended to
    ``log_dir/<name>.log``.  Prefer :class:`ProcessGroup` so it is killed.
    """
    name = name or os.path.basename(args[0])
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, "%s.log" % (name,))
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(args), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
            start_new_session=True)
    return Spawned(name, process, log_path)


class ProcessGroup:
    """
    Subprocesses of one test; ``close()`` (or ``__exit__``) terminates all of
    them, SIGTERM then SIGKILL, even when the test failed.
    """

    def __init__(self, log_dir: str, grace: float = 5.0) -> None:
        self.log_dir = log_dir
        self.grace = grace
        self.processes: List[Spawned] = []

    def spawn(self, args: Sequence[str], name: Optional[str] = None,
              **kw: Any) -> Spawned:
        proc = spawn(args, self.log_dir, name=name, **kw)
        self.processes.append(proc)
        return proc

    def close(self) -> Dict[str, Optional[int]]:
        """Stop every process (in reverse start order); name -> exit code."""
        codes: Dict[str, Optional[int]] = {}
        errors = []
        for proc in reversed(self.processes):
            try:
                codes[proc.name] = proc.terminate(self.grace)
            except Exception as e:  # keep stopping the others
                errors.append(e)
        self.processes.clear()
        if errors:
            raise errors[0]
        return codes

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@pytest.fixture
def process_group(tmp_path: Any) -> Any:
    """A :class:`ProcessGroup` logging under ``tmp_path/logs``."""
    group = ProcessGroup(str(tmp_path / "logs"))
    try:
        yield group
    finally:
        group.close()
