"""
Re-read a configuration file (password file, ACL) when it changes or on SIGHUP.

VerneMQ re-reads its passwd and acl files every 10 seconds; we do the same with a
``LoopingCall`` on an injected clock, comparing (device, inode, size, mtime)
instead of re-parsing every time: editors that write a new file and rename it
change the inode, in-place writers change the size or mtime.

The rule that matters for a broker: a file that cannot be loaded never takes
access away or grants it by accident.  The previous snapshot stays in force and
one error is logged per bad version of the file (not one per poll).
"""
from __future__ import annotations

import os
from typing import Callable, Generic, Optional, Tuple, TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["FileWatcher"]

T = TypeVar("T")
Signature = Tuple[int, int, int, int]


def _signature(path: str) -> Signature:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatcher(Generic[T]):
    """Hold the current snapshot ``load(path)`` of a file and refresh it.

    ``on_change(snapshot)`` is called every time a new snapshot is installed,
    the first one included, so the wiring needs a single code path.
    """

    log = Logger()

    def __init__(self, path: str, load: Callable[[str], T],
                 on_change: Callable[[T], object], clock: IReactorTime,
                 interval: float = 10.0) -> None:
        self.path = path
        self.interval = interval
        self.current: Optional[T] = None
        self._load = load
        self._on_change = on_change
        self._clock = clock
        self._seen: Optional[Signature] = None   # version we loaded (or failed on)
        self._loop: Optional[LoopingCall] = None

    def start(self) -> T:
        """Load the file now and start polling.

        The first load raises on failure (a broker configured with a password or
        ACL file it cannot read should not start); the wiring decides.
        """
        signature = _signature(self.path)
        snapshot = self._load(self.path)
        self._install(snapshot, signature)
        loop = LoopingCall(self.poll)
        loop.clock = self._clock
        loop.start(self.interval, now=False)
        self._loop = loop
        return snapshot

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def poll(self) -> bool:
        """Reload if the file looks different from the version last seen.
        Returns True when a new snapshot was installed.  Never raises."""
        try:
            signature = _signature(self.path)
        except OSError as e:
            if self._seen != (-1, -1, -1, -1):
                self._seen = (-1, -1, -1, -1)
                self.log.error("cannot stat {path}: {error}; keeping the previous version",
                               path=self.path, error=e)
            return False
        if signature == self._seen:
            return False
        return self._reload(signature)

    def reload(self) -> bool:
        """Reload unconditionally (SIGHUP).  Returns True on success.  Never raises."""
        try:
            signature = _signature(self.path)
        except OSError as e:
            self.log.error("cannot stat {path}: {error}; keeping the previous version",
                           path=self.path, error=e)
            return False
        return self._reload(signature)

    def _reload(self, signature: Signature) -> bool:
        try:
            snapshot = self._load(self.path)
        except Exception:
            self._seen = signature
            self.log.failure("cannot load {path}; keeping the previous version",
                             path=self.path)
            return False
        try:
            self._install(snapshot, signature)
        except Exception:
            self.log.failure("applying the new version of {path} failed", path=self.path)
        return True

    def _install(self, snapshot: T, signature: Signature) -> None:
        # If the file changed while we read it, remember the older signature so
        # that the next poll reads it again.
        try:
            after = _signature(self.path)
        except OSError:
            after = signature
        self._seen = signature if after == signature else (-2, -2, -2, -2)
        self.current = snapshot
        self.log.info("loaded {path}", path=self.path)
        self._on_change(snapshot)
