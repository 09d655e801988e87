"""
Start-up failures an operator can act on: one sentence naming the
configuration key and the cause, a non-zero exit, no traceback.

Why this module: twistd gives a plugin two moments to fail.  In
``makeService`` (before twistd forks when it daemonizes) a ``SystemExit``
prints its message and the command exits non-zero; this is where what can
be checked early is checked (:func:`probe_listeners`, and the LevelDB
locks, :func:`probe_leveldb_lock`; the LevelDBs themselves open after the
fork, since a child inherits neither their locks nor their threads).  In ``startService``
(after the fork, before the daemon tells its parent it started) an
exception makes the parent exit 1.  Past that, with the reactor running,
only the process's own exit status is left (:class:`ExitStatus`): twistd
itself always ends with 0.

Each cause is turned into a :class:`StartupError` where it is known which
key it belongs to (a port to its listener's key, a LevelDB lock to
``platform_data_dir``); the service tree logs a StartupError as its
sentence alone, and anything else with its traceback (a bug, not an
operator's problem).
"""
from __future__ import annotations

import atexit
import errno
import os
import socket
import sys
from types import TracebackType
from typing import Any, Callable, Iterable, List, Optional, Tuple, Type

__all__ = ["ExitStatus", "StartupError", "install_excepthook", "leveldb_sentence",
           "listen_sentence", "listener_addresses", "probe_leveldb_lock", "probe_listen",
           "probe_listeners",
           "startup_error"]


class StartupError(Exception):
    """The node cannot start; ``str()`` is the one sentence for the operator."""


def _cause(error: BaseException) -> str:
    """``[Errno 98] Address already in use`` → ``address already in use``."""
    if isinstance(error, OSError) and error.errno is not None:
        return os.strerror(error.errno).lower()
    text = str(error)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]  # plyvel renders its bytes message as bytes
    return text


def listen_sentence(key: str, host: str, port: int, error: BaseException) -> str:
    """``listener.tcp.default 127.0.0.1:1883 cannot listen: address already in use``."""
    shown = "[%s]" % host if ":" in host else host
    return "%s %s:%d cannot listen: %s" % (key, shown, port, _cause(error))


def leveldb_sentence(data_dir: str, path: str, error: BaseException) -> str:
    """
    A LevelDB under ``platform_data_dir`` that cannot be opened.  A held
    lock is the usual cause (a second node started on the same directory),
    and is said so: LevelDB's own words for it ("lock .../LOCK: already
    held by process" in one process, "Resource temporarily unavailable"
    from another) do not tell an operator what to do.
    """
    text = _cause(error)
    if "/LOCK" in text and ("already held" in text or "temporarily unavailable" in text):
        return "platform_data_dir %s is in use by another vmqtw node (LevelDB lock held)" % data_dir
    if text.startswith("IO error: "):
        text = text[len("IO error: "):]
    return "platform_data_dir %s cannot be used: %s cannot be opened (%s)" % (data_dir, path, text)


def startup_error(failure_or_error: Any, key: str, host: str = "", port: int = 0) -> Any:
    """
    The StartupError for ``failure_or_error`` (a Failure or an exception)
    of the listener ``key`` on ``host:port``, or the value itself when it
    is not a listening failure.  Meant for errbacks: ``d.addErrback(lambda
    f: raise_(startup_error(f, key, host, port)))``.
    """
    from twisted.internet.error import CannotListenError
    error = getattr(failure_or_error, "value", failure_or_error)
    if isinstance(error, CannotListenError):
        cause = error.socketError if error.socketError is not None else error
        return StartupError(listen_sentence(key, host or error.interface,
                                            port or error.port, cause))
    if isinstance(error, OSError) and not isinstance(error, StartupError):
        return StartupError(listen_sentence(key, host, port, error))
    return error


def listener_addresses(config: Any) -> List[Tuple[str, str, int]]:
    """Every (key, host, port) the node listens on, as its configuration names them."""
    found: List[Tuple[str, str, int]] = []
    for prefix, listeners in (("listener.tcp.", config.tcp_listeners),
                              ("listener.ssl.", config.ssl_listeners),
                              ("listener.ws.", getattr(config, "ws_listeners", {})),
                              ("listener.wss.", getattr(config, "wss_listeners", {})),
                              ("listener.http.", getattr(config, "http_listeners", {}))):
        for name, (host, port) in sorted(listeners.items()):
            found.append((prefix + name, host, port))
    host, port = config.listener_vmq_clustering
    found.append(("listener.vmq.clustering", host, port))
    return found


def probe_listen(key: str, host: str, port: int) -> None:
    """
    Raise StartupError when ``host:port`` cannot be bound now, with the
    socket options Twisted's own listening sockets use (``SO_REUSEADDR``,
    so a restart is not refused for connections still in TIME_WAIT).

    A probe, not a reservation: the port is free again when this returns,
    so a process that takes it before the node listens is still caught,
    later, by the listener itself.  Port 0 (any free port) is not probed.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as error:
        raise StartupError(listen_sentence(key, host, port, error)) from None
    finally:
        sock.close()


def probe_listeners(addresses: Iterable[Tuple[str, str, int]],
                    probe: Callable[[str, str, int], None] = probe_listen) -> None:
    """Probe every address; the first that cannot be bound raises StartupError."""
    for key, host, port in addresses:
        probe(key, host, port)


def probe_leveldb_lock(data_dir: str, path: str) -> None:
    """
    Raise StartupError when another process holds the LevelDB at ``path``
    (its ``LOCK`` file, locked with ``fcntl`` as LevelDB itself does), or
    the directory cannot be used.  A probe before twistd forks, so that a
    daemonized start still fails in the foreground with the sentence; the
    LevelDB itself is opened after the fork (a lock is not inherited by a
    child).  Like :func:`probe_listen`, it reserves nothing.
    """
    import fcntl
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(os.path.join(path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise StartupError(leveldb_sentence(data_dir, path, error)) from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise StartupError("platform_data_dir %s is in use by another vmqtw node "
                           "(LevelDB lock held)" % data_dir) from None
    finally:
        os.close(fd)   # closing releases the lock


def data_dir_error(data_dir: str, error: OSError) -> StartupError:
    """``platform_data_dir`` cannot be created or used as a directory."""
    if error.errno in (errno.EEXIST, errno.ENOTDIR) and not os.path.isdir(data_dir):
        return StartupError("platform_data_dir %s cannot be used: it is not a directory"
                            % data_dir)
    return StartupError("platform_data_dir %s cannot be used: %s" % (data_dir, _cause(error)))


class ExitStatus:
    """
    The process's exit status once the reactor runs: twistd returns 0
    whatever happened, so a node that stops because it could not start
    sets a status here, and a handler registered with :mod:`atexit`
    (installed first, so run last, after twistd removed its pidfile and
    closed its logs) ends the process with it.
    """

    def __init__(self, exit: Callable[[int], None] = os._exit) -> None:
        self.code: Optional[int] = None
        self._exit = exit
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            self._installed = True
            atexit.register(self.run)

    def fail(self, code: int = 1) -> None:
        if self.code is None:
            self.code = code

    def run(self) -> None:
        if self.code is not None:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            self._exit(self.code)


def install_excepthook() -> None:
    """
    A StartupError raised out of twistd (from ``startService``, before the
    reactor runs) is printed as ``vmqtw: <sentence>``, not as a traceback;
    every other exception keeps Python's report.  The exit status stays 1.
    """
    previous = sys.excepthook

    def hook(kind: Type[BaseException], value: BaseException,
             traceback: Optional[TracebackType]) -> None:
        if isinstance(value, StartupError):
            sys.stderr.write("vmqtw: %s\n" % (value,))
            sys.stderr.flush()
            return
        previous(kind, value, traceback)

    sys.excepthook = hook
