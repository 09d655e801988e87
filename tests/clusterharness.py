"""
Helpers for tests that run real nodes: ports, loopback aliases, network
partitions and subprocesses that are always cleaned up.

Every node runs on its own loopback alias (127.0.0.2, .3, ...: the whole of
127/8 answers on ``lo`` without setup) and binds it as the source of the
links it dials.  Partitions cut links between groups of those addresses on
one of two back ends, chosen once per run (:func:`partition_backend`):

- **nft**, where it is usable (root, the binary, and a table can really be
  added): :class:`Partition` puts DROP rules in a private table.  An nft
  DROP only blackholes packets of an established connection, so what
  notices a cut is the cluster link's heartbeat, exactly as on a real
  network.
- **proxy** everywhere else (a laptop, a non-root user): a
  :class:`FaultyProxy` in front of each node's clustering listener, which
  the node advertises instead of the listener; it blackholes the same
  pairs of IPs.

Tests use one API, the ``partitions`` fixture (:class:`Partitions`):
register each node with ``front()``, cut with ``with partitions.cut(...)``.
``VMQTW_PARTITION_BACKEND=nft|proxy`` forces a back end (default: auto).

Every resource these helpers create is removed in ``finally``/``__exit__``
even when the test fails.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
from typing import (Any, Callable, Dict, FrozenSet, Iterable, Iterator, List,
                    Optional, Sequence, Set, Tuple)

import pytest

from tests.waiting import wait_until

__all__ = ["free_port", "free_ports", "reserved_ports", "loopback_ip", "loopback_ips",
           "nft_available", "nft_unusable_reason",
           "partition_backend", "describe_backend", "Partition", "ProxyCut",
           "Partitions", "partitions", "FaultyProxy", "BACKEND_ENV",
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


@contextlib.contextmanager
def reserved_ports(host: str = "127.0.0.1", count: int = 1
                   ) -> Iterator[List[int]]:
    """
    ``count`` distinct TCP ports on ``host``, each held bound until the
    block ends.

    Everything that must not get one of them (a proxy binding port 0, the
    node's other listeners) is set up inside the block; two separate
    probes, each released at once, can return the same port twice.
    """
    probes: List[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probes.append(s)
            s.bind((host, 0))
        yield [s.getsockname()[1] for s in probes]
    finally:
        for s in probes:
            s.close()


def free_ports(host: str = "127.0.0.1", count: int = 1) -> List[int]:
    """
    ``count`` distinct TCP ports that were free on ``host`` a moment ago:
    all chosen while every probe is still bound, so they never collide
    with each other.  There is a small race until the caller binds them,
    which is why nodes that can listen on port 0 should rather do that.
    """
    with reserved_ports(host, count) as ports:
        return ports


def free_port(host: str = "127.0.0.1") -> int:
    """One port of :func:`free_ports`."""
    return free_ports(host, 1)[0]


# -- partitions with nft -----------------------------------------------------

def _nft(*args: str, stdin: Optional[str] = None,
         check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["nft", *args], input=stdin, capture_output=True,
                          text=True, timeout=10, check=check)


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


# -- the proxy back end: a fault-injecting TCP proxy -------------------------

#: ``blocked(source_ip, destination_ip)``: are packets between them dropped?
BlockPolicy = Callable[[str, str], bool]


class _Connection:
    """One proxied connection: the client socket, the upstream one (None when
    it was accepted during a cut and never reached its node) and the
    directions that lost bytes."""

    def __init__(self, client: socket.socket, client_ip: str) -> None:
        self.client = client
        self.client_ip = client_ip
        self.upstream: Optional[socket.socket] = None
        self.dead: Set[str] = set()
        self.pipes_left = 0

    def sockets(self) -> List[socket.socket]:
        return [s for s in (self.client, self.upstream) if s is not None]


class FaultyProxy:
    """
    A TCP forwarder from ``listen`` to ``target`` that can blackhole traffic.

    It fronts one node (``fronts``: that node's IP, by default the target's
    host): the dialing node is the client's source IP, so a connection
    carries bytes from the client IP to ``fronts`` ("up") and back
    ("down").  A direction is blocked when :meth:`cut` said so or when
    ``policy(source_ip, destination_ip)`` says so (the proxy back end
    shares one policy between the proxies of a test).  Bytes in a blocked
    direction are discarded and the sockets stay open -- what an nft DROP
    does -- and, because a stream with a hole in it is no longer TCP, that
    direction of that connection stays dead until the connection closes:
    the nodes find out by their heartbeat and dial again, and the new
    connection forwards once :meth:`heal` (or the policy) unblocks it.  A
    connection accepted while blocked never reaches the target (as a
    dropped SYN), so the target sees no half-finished handshake.  A close
    in a blocked direction is not passed on either.

    The upstream socket binds the client's source IP, so the target sees
    the dialer's real address (its handshake rate limiter counts per IP).
    Runs in threads so it works beside any reactor; ``close()`` (or
    ``__exit__``) stops every thread and socket.
    """

    def __init__(self, target: Tuple[str, int],
                 listen: Tuple[str, int] = ("127.0.0.1", 0), *,
                 fronts: Optional[str] = None,
                 policy: Optional[BlockPolicy] = None) -> None:
        self.target = target
        self.fronts = fronts if fronts is not None else target[0]
        self.policy = policy
        self._server = socket.create_server(listen)
        self._server.settimeout(0.1)
        self.address: Tuple[str, int] = self._server.getsockname()[:2]
        self._cut: Dict[str, bool] = {"up": False, "down": False}
        self._closed = threading.Event()
        self._connections: List[_Connection] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True,
                                          name="proxy-accept")]
        self._threads[0].start()

    def cut(self, direction: str = "both") -> None:
        """Blackhole ``"up"`` (client to target), ``"down"`` or both."""
        for d in (("up", "down") if direction == "both" else (direction,)):
            self._cut[d] = True

    def heal(self) -> None:
        """New connections (and directions that lost nothing) forward again."""
        self._cut["up"] = self._cut["down"] = False

    def blocked(self, client_ip: str, direction: str) -> bool:
        if self._cut[direction]:
            return True
        if self.policy is None:
            return False
        if direction == "up":
            return self.policy(client_ip, self.fronts)
        return self.policy(self.fronts, client_ip)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, peer = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn = _Connection(client, peer[0])
            with self._lock:
                if self._closed.is_set():
                    client.close()
                    return
                self._connections.append(conn)
            if self.blocked(conn.client_ip, "up") or \
                    self.blocked(conn.client_ip, "down"):
                conn.dead.update(("up", "down"))
                self._start_pipes(conn, [(client, None, "up")])
                continue
            try:
                conn.upstream = socket.create_connection(
                    self.target, timeout=5,
                    source_address=(conn.client_ip, 0))
            except OSError:
                self._close_connection(conn)
                continue
            self._start_pipes(conn, [(client, conn.upstream, "up"),
                                     (conn.upstream, client, "down")])

    def _start_pipes(self, conn: _Connection,
                     pipes: List[Tuple[socket.socket, Optional[socket.socket],
                                       str]]) -> None:
        # Count every pipe before any starts: the last one to end closes
        # the connection's sockets.
        for src, _dst, _direction in pipes:
            src.settimeout(0.1)
        conn.pipes_left = len(pipes)
        threads = [threading.Thread(target=self._pipe, args=(conn, *pipe),
                                    daemon=True, name="proxy-" + pipe[2])
                   for pipe in pipes]
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads += threads
        for t in threads:
            t.start()

    def _pipe(self, conn: _Connection, src: socket.socket,
              dst: Optional[socket.socket], direction: str) -> None:
        try:
            while not self._closed.is_set():
                try:
                    data = src.recv(65536)
                except socket.timeout:
                    continue
                if direction not in conn.dead and \
                        self.blocked(conn.client_ip, direction):
                    conn.dead.add(direction)
                if not data:
                    if direction not in conn.dead and dst is not None:
                        dst.shutdown(socket.SHUT_WR)  # pass the close on
                    break
                if direction not in conn.dead and dst is not None:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                conn.pipes_left -= 1
                done = conn.pipes_left == 0
            if done:
                self._close_connection(conn)

    def _close_connection(self, conn: _Connection) -> None:
        for s in conn.sockets():
            s.close()
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for conn in connections:
            self._close_connection(conn)
        for t in threads:
            t.join(timeout=2)

    def __enter__(self) -> "FaultyProxy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- one partition API over either back end ----------------------------------

BACKEND_ENV = "VMQTW_PARTITION_BACKEND"
#: Set by the first process of a run (the xdist controller) for its workers:
#: why nft is not usable, or "" when it is.
_NFT_REASON_ENV = "VMQTW_PARTITION_NFT_UNUSABLE"
_nft_checked: List[str] = []


def nft_unusable_reason() -> str:
    """
    Why nft cannot cut links here ("" when it can), found once per run by
    actually adding and deleting a table: the binary may exist while the
    kernel or the user's privileges refuse it.
    """
    if not _nft_checked:
        reason = os.environ.get(_NFT_REASON_ENV)
        if reason is None:
            reason = _probe_nft()
            os.environ[_NFT_REASON_ENV] = reason
        _nft_checked.append(reason)
    return _nft_checked[0]


def _probe_nft() -> str:
    if shutil.which("nft") is None:
        return "nft not installed"
    if os.geteuid() != 0:
        return "not root"
    probe = "vmqtwprobe%d" % (os.getpid(),)
    try:
        made = _nft("add", "table", "inet", probe, check=False)
        if made.returncode != 0:
            return "nft refused a table: %s" % (made.stderr.strip(),)
        _nft("delete", "table", "inet", probe, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return "nft failed: %s" % (e,)
    return ""


def nft_available() -> bool:
    """True when nft can cut links here (root, the binary, a table works)."""
    return nft_unusable_reason() == ""


def partition_backend() -> str:
    """
    ``"nft"`` or ``"proxy"``, the same for the whole run: nft when it is
    usable, unless ``VMQTW_PARTITION_BACKEND=nft|proxy`` forces one.
    """
    forced = os.environ.get(BACKEND_ENV, "auto")
    if forced not in ("auto", "nft", "proxy"):
        raise pytest.UsageError("%s must be nft, proxy or auto, not %r"
                                % (BACKEND_ENV, forced))
    if forced == "proxy":
        return "proxy"
    if forced == "nft" and not nft_available():
        raise pytest.UsageError("%s=nft, but nft is not usable: %s"
                                % (BACKEND_ENV, nft_unusable_reason()))
    return "nft" if nft_available() else "proxy"


def describe_backend() -> str:
    """One line for the pytest header: which back end cuts links, and why."""
    backend = partition_backend()
    if backend == "nft":
        version = _nft("--version", check=False).stdout.strip()
        return "partitions: nft (root, %s)" % (version or "nft",)
    reason = nft_unusable_reason()
    if reason:
        return "partitions: proxy (nft not usable: %s)" % (reason,)
    return "partitions: proxy (forced by %s=proxy)" % (BACKEND_ENV,)


class ProxyCut:
    """
    A partition on the proxy back end: every proxy of the test blackholes
    the pairs of :meth:`Partition.pairs`.  Same surface as
    :class:`Partition` (``cut``, ``heal``, context manager); no lock is
    needed, since the proxies belong to one test.
    """

    def __init__(self, partitions: "Partitions",
                 groups: Sequence[Iterable[str]], one_way: bool) -> None:
        self.rules = Partition(groups, one_way=one_way)  # pairs only
        self.partitions = partitions
        self.active = False

    def cut(self) -> None:
        self.partitions._blocked = frozenset(self.rules.pairs())
        self.active = True

    def heal(self) -> None:
        self.partitions._blocked = frozenset()
        self.active = False

    def __enter__(self) -> "ProxyCut":
        self.cut()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.heal()


class Partitions:
    """
    The ``partitions`` fixture: cut links between nodes on the run's back
    end, with one API.

    Every node (or transport, or replica) registers its clustering
    listener with :meth:`front` and tells the others the address it
    returns (``listener.vmq.clustering.advertise``, ``--advertise``, the
    address given to ``set_peer_address``).  On nft that is the listener
    itself; on the proxy back end it is a :class:`FaultyProxy` on the
    node's IP in front of it, so every link between nodes passes through
    exactly one proxy, the dialed node's.  ``with partitions.cut(groups):``
    then blackholes every link whose two IPs are in different groups,
    existing and new (``one_way``: only from earlier groups to later
    ones); leaving the block, or ``heal()``, restores them.  ``close()``
    stops every proxy.
    """

    def __init__(self, backend: Optional[str] = None, table: str = NFT_TABLE) -> None:
        self.backend = backend or partition_backend()
        #: The nft table (a suite with long cuts uses its own, so it never
        #: waits for other tests' turns on the shared one).
        self.table = table
        self.proxies: List[FaultyProxy] = []
        self._blocked: FrozenSet[Tuple[str, str]] = frozenset()

    def _policy(self, source: str, destination: str) -> bool:
        return (source, destination) in self._blocked

    def front(self, ip: str, address: Tuple[str, int]) -> Tuple[str, int]:
        """The address other nodes must dial to reach the node at
        ``address`` (whose links leave from ``ip``)."""
        if self.backend == "nft":
            return (address[0], address[1])
        proxy = FaultyProxy(address, listen=(ip, 0), fronts=ip,
                            policy=self._policy)
        self.proxies.append(proxy)
        return proxy.address

    def cut(self, groups: Sequence[Iterable[str]], *,
            one_way: bool = False) -> Any:
        """A context manager that cuts on entry and heals on exit."""
        if self.backend == "nft":
            return Partition(groups, one_way=one_way, table=self.table)
        return ProxyCut(self, groups, one_way)

    def close(self) -> None:
        proxies, self.proxies = self.proxies, []
        errors = []
        for proxy in proxies:
            try:
                proxy.close()
            except Exception as e:  # keep closing the others
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def partitions() -> Iterator[Partitions]:
    """A :class:`Partitions` whose proxies are closed at teardown."""
    made = Partitions()
    try:
        yield made
    finally:
        made.close()


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
