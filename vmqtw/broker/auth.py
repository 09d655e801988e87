"""
The broker's authenticator: VerneMQ's ``vmq_passwd`` and ``vmq_acl`` plugins
composed the way VerneMQ chains its auth hooks, behind the small
``Authenticator`` protocol of :mod:`vmqtw.mqtt.session`.

CONNECT (``plugins.vmq_passwd``, ``allow_anonymous``):

* passwd on, user name given: checked against the password file → CONNACK 0,
  or 4 (bad user name or password).  The PBKDF2 check costs ~150 ms of CPU,
  so it runs in a thread pool the wiring owns and never on the reactor thread.
* passwd on, no user name: CONNACK 5 unless ``allow_anonymous`` is on.
* passwd off: ``allow_anonymous`` decides for everyone (0 or 5) -- with no
  plugin able to accept a client, VerneMQ answers "not authorized".
* TLS ``use_identity_as_username``: the verified client certificate's CN
  is the user name and the certificate the credential -- CONNACK 0 without
  a password check, whatever the plugins; the ACL applies to the CN.

PUBLISH / SUBSCRIBE / delivery (``plugins.vmq_acl``): the current
:class:`~vmqtw.auth.acl.Acl` snapshot decides; with the plugin off everything
is allowed.  :attr:`BrokerAuthenticator.can_read` is ``None`` when the ACL is
off, so that sessions skip the per-delivery check entirely then.

Both files are watched (:class:`~vmqtw.auth.reloader.FileWatcher`) and
re-read on SIGHUP; a file that cannot be read keeps the previous snapshot in
force.  Each check reads ``self.passwords``/``self.acl`` once: snapshots are
immutable and replaced whole, so a check never sees half a reload.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from vmqtw.auth.acl import Acl
from vmqtw.auth.passwd import PasswordFile, VerifyCache
from vmqtw.auth.reloader import FileWatcher
from vmqtw.config import Config, ConfigError
from vmqtw.mqtt import packets as P
from vmqtw.mqtt.session import ConnectInfo
from vmqtw.ratelimit import LogRateLimiter

__all__ = ["AuthCounters", "BrokerAuthenticator", "DEFAULT_RELOAD_INTERVAL",
           "DEFAULT_MAX_PENDING_CHECKS"]

#: Seconds between checks of the password and ACL files (VerneMQ: 10 s).
DEFAULT_RELOAD_INTERVAL = 10.0

#: Password checks queued for the thread pool at most; beyond that a CONNECT
#: gets CONNACK 3 at once, so a connect flood with user names cannot pile up
#: minutes of PBKDF2 work (and memory) behind the pool.
DEFAULT_MAX_PENDING_CHECKS = 1000

#: Seconds between two warnings of one kind (refused CONNECT, denied
#: PUBLISH, denied SUBSCRIBE); those in between are counted in the next.
WARNING_INTERVAL = 10.0

#: A watched file: (config key, plugin switch, path, load(path), install(snapshot)).
#: ``install`` takes what ``load`` returns; the list mixes password files and
#: ACLs, so the snapshot type between the two is ``Any``.
_WatchedFile = Tuple[str, str, str, Callable[[str], Any], Callable[[Any], None]]


@attrs.define(slots=True)
class AuthCounters:
    """What the authenticator refused, for metrics and tests."""

    bad_credentials: int = 0
    not_authorized: int = 0
    overloaded: int = 0
    publish_denied: int = 0
    subscribe_denied: int = 0
    delivery_denied: int = 0


class BrokerAuthenticator:
    """
    The authenticator of a node; see the module docstring.

    ``reactor`` must provide ``callFromThread`` (for the pool's results) and
    ``IReactorTime`` (the clock driving the file watchers, unless ``clock``
    is given).  ``pool`` is a started ``ThreadPool`` whenever
    ``password_file`` is given; the wiring starts and stops it.
    """

    log = Logger()

    __slots__ = ("reactor", "clock", "pool", "allow_anonymous", "password_file",
                 "acl_file", "reload_interval", "max_pending_checks", "passwords", "acl",
                 "counters", "can_read", "_cache", "_pending_checks", "_watchers",
                 "_fallback_loops", "warnings")

    def __init__(self, reactor: Any, pool: Any = None, *, allow_anonymous: bool = False,
                 password_file: Optional[str] = None, acl_file: Optional[str] = None,
                 reload_interval: float = DEFAULT_RELOAD_INTERVAL,
                 max_pending_checks: int = DEFAULT_MAX_PENDING_CHECKS,
                 clock: Optional[IReactorTime] = None,
                 cache: Optional[VerifyCache] = None) -> None:
        if password_file is not None and pool is None:
            raise ValueError("a password file needs a thread pool for the checks")
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.pool = pool
        self.allow_anonymous = allow_anonymous
        #: None when ``plugins.vmq_passwd`` is off.
        self.password_file = password_file
        #: None when ``plugins.vmq_acl`` is off.
        self.acl_file = acl_file
        self.reload_interval = reload_interval
        self.max_pending_checks = max_pending_checks
        # Until load(): no user and no rule, i.e. deny -- never allow by accident.
        self.passwords: PasswordFile = PasswordFile.parse("")
        self.acl: Acl = Acl()
        self.counters = AuthCounters()
        #: The delivery-time read check for sessions, or None with the ACL off
        #: (docs/bad-input.md, case 34: a reload may narrow granted subscriptions).
        self.can_read: Optional[Callable[[str, Optional[str], str], bool]] = (
            self._can_read if acl_file is not None else None)
        self._cache = cache if cache is not None else VerifyCache()
        self._pending_checks = 0
        self._watchers: List[FileWatcher[Any]] = []
        self._fallback_loops: List[LoopingCall] = []
        #: Refusals and denials are warned about at most once per kind and
        #: interval, with the count of those left out.
        self.warnings = LogRateLimiter(WARNING_INTERVAL)

    @classmethod
    def from_config(cls, config: Config, reactor: Any, pool: Any = None,
                    **kwargs: Any) -> "BrokerAuthenticator":
        """The authenticator ``config`` asks for (plugins, files, anonymity)."""
        return cls(reactor, pool, allow_anonymous=config.allow_anonymous,
                   password_file=(config.vmq_passwd_password_file
                                  if config.plugins_vmq_passwd else None),
                   acl_file=config.vmq_acl_acl_file if config.plugins_vmq_acl else None,
                   **kwargs)

    # -- files ------------------------------------------------------------------

    def _load_passwords(self, path: str) -> PasswordFile:
        return PasswordFile.load(path, cache=self._cache)

    def _set_passwords(self, snapshot: PasswordFile) -> None:
        self.passwords = snapshot

    def _set_acl(self, snapshot: Acl) -> None:
        self.acl = snapshot

    def _files(self) -> List[_WatchedFile]:
        files: List[_WatchedFile] = []
        if self.password_file is not None:
            files.append(("vmq_passwd.password_file", "plugins.vmq_passwd",
                          self.password_file, self._load_passwords, self._set_passwords))
        if self.acl_file is not None:
            files.append(("vmq_acl.acl_file", "plugins.vmq_acl",
                          self.acl_file, Acl.load, self._set_acl))
        return files

    def load(self) -> None:
        """
        Read the files of the plugins that are on, now.  Called by the wiring
        before anything listens, so that a node whose password or ACL file is
        missing refuses to start instead of running with nobody (or
        everybody) let in.  Raises :class:`ConfigError` with one sentence.
        """
        for key, plugin, path, load, install in self._files():
            try:
                install(load(path))
            except (OSError, UnicodeDecodeError) as error:
                reason = getattr(error, "strerror", None) or str(error)
                raise ConfigError(
                    "cannot read {} {!r} ({}); create it or set {} = off".format(
                        key, path, reason, plugin)) from None

    def start(self) -> None:
        """Start watching the files for changes (after :meth:`load`)."""
        for key, plugin, path, load, install in self._files():
            watcher: FileWatcher[Any] = FileWatcher(path, load, install, self.clock,
                                                   self.reload_interval)
            self._watchers.append(watcher)
            try:
                watcher.start()
            except Exception:
                # Gone since load(): keep that version and look again later.
                self.log.failure("cannot read {path}; keeping the version read at startup",
                                 path=path)
                loop = LoopingCall(watcher.poll)
                loop.clock = self.clock
                loop.start(self.reload_interval, now=False)
                self._fallback_loops.append(loop)

    def stop(self) -> None:
        for watcher in self._watchers:
            watcher.stop()
        for loop in self._fallback_loops:
            if loop.running:
                loop.stop()
        self._watchers = []
        self._fallback_loops = []

    def reload(self) -> None:
        """Re-read every file now (SIGHUP); a bad file keeps the old snapshot."""
        if not self._watchers:
            self.log.info("reload requested: no auth file to re-read")
        for watcher in self._watchers:
            watcher.reload()

    # -- CONNECT ------------------------------------------------------------------

    def authenticate(self, info: ConnectInfo) -> Any:
        """A CONNACK return code, or a Deferred of one for a password check."""
        if info.identity is not None:
            # use_identity_as_username: the TLS handshake verified a client
            # certificate signed by listener.ssl.cafile; that is the proof,
            # no password is checked.  The ACL still applies to the CN.
            return P.CONNACK_ACCEPTED
        if info.username is None:
            if self.allow_anonymous:
                return P.CONNACK_ACCEPTED
            return self._refused(info, P.CONNACK_NOT_AUTHORIZED, "anonymous")
        if self.password_file is None:
            # No plugin that could check the name: only anonymity decides.
            if self.allow_anonymous:
                return P.CONNACK_ACCEPTED
            return self._refused(info, P.CONNACK_NOT_AUTHORIZED, "no auth plugin")
        if info.password is None:
            return self._refused(info, P.CONNACK_BAD_USERNAME_OR_PASSWORD, "no password")
        if self._pending_checks >= self.max_pending_checks:
            self.counters.overloaded += 1
            self.log.warn("refusing {client_id}: {count} password checks already queued",
                          client_id=info.client_id, count=self._pending_checks)
            return P.CONNACK_SERVER_UNAVAILABLE
        self._pending_checks += 1
        checked: Deferred = deferToThreadPool(self.reactor, self.pool, self.passwords.check,
                                              info.username, info.password)
        checked.addBoth(self._check_done)
        checked.addCallback(self._checked, info)
        return checked

    def _check_done(self, result: Any) -> Any:
        self._pending_checks -= 1
        return result

    def _checked(self, ok: bool, info: ConnectInfo) -> int:
        if ok:
            return P.CONNACK_ACCEPTED
        return self._refused(info, P.CONNACK_BAD_USERNAME_OR_PASSWORD,
                             "bad user name or password")

    def _refused(self, info: ConnectInfo, code: int, reason: str) -> int:
        if code == P.CONNACK_BAD_USERNAME_OR_PASSWORD:
            self.counters.bad_credentials += 1
        else:
            self.counters.not_authorized += 1
        suppressed = self.warnings.admit("auth", self.clock.seconds())
        if suppressed is not None:
            self.log.warn("refusing {client_id} (user {username}) from {peer}: {reason} "
                          "({suppressed} more refused since the last such line; "
                          "{failures} so far)",
                          client_id=info.client_id, username=info.username, peer=info.peer,
                          reason=reason, suppressed=suppressed,
                          failures=self.counters.bad_credentials + self.counters.not_authorized)
        return code

    # -- topics -------------------------------------------------------------------

    def can_publish(self, client_id: str, username: Optional[str], topic: str) -> bool:
        if self.acl_file is None:
            return True
        if self.acl.can_publish(client_id, username, topic):
            return True
        self.counters.publish_denied += 1
        self._denied("publish", client_id, topic, self.counters.publish_denied)
        return False

    def can_subscribe(self, client_id: str, username: Optional[str], flt: str) -> bool:
        if self.acl_file is None:
            return True
        if self.acl.can_subscribe(client_id, username, flt):
            return True
        self.counters.subscribe_denied += 1
        self._denied("subscribe", client_id, flt, self.counters.subscribe_denied)
        return False

    def _denied(self, action: str, client_id: str, topic: str, total: int) -> None:
        suppressed = self.warnings.admit(action, self.clock.seconds())
        if suppressed is not None:
            self.log.warn("the ACL denies {client_id} to {action} {topic} ({suppressed} more "
                          "{action} denials since the last such line; {total} so far)",
                          client_id=client_id, action=action, topic=topic,
                          suppressed=suppressed, total=total)

    def _can_read(self, client_id: str, username: Optional[str], topic: str) -> bool:
        if self.acl.can_read(client_id, username, topic):
            return True
        self.counters.delivery_denied += 1
        return False
