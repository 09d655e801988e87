"""
Password hashing and the mosquitto-compatible password file (VerneMQ's ``vmq_passwd``).

A password file holds one ``username:HASH`` per line.  ``HASH`` is mosquitto 2's
``$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>`` (what we write) or
mosquitto's legacy ``$6$<base64 salt>$<base64 SHA512(password + salt)>`` (read
only, so files written by ``mosquitto_passwd`` keep working).

Why PBKDF2 with a *high* count: the file is the thing an attacker steals; each
guess must cost them real CPU.  OWASP recommends 210,000 iterations of
PBKDF2-HMAC-SHA512, which is also why :meth:`PasswordFile.check` takes
~150 ms and the broker must run it in a thread pool
(``deferToThreadPool(reactor, pool, pwfile.check, user, password)``).  Every
object here is either immutable or guarded by a lock, so that is safe.

Nothing here crashes the broker on a bad file: a malformed line is skipped with
a warning naming ``file:line``; only an unreadable file raises (the reloader then
keeps the previous snapshot).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from types import MappingProxyType
from typing import Iterator, Mapping, Optional, Tuple, Union

import attrs
from twisted.logger import Logger

__all__ = [
    "DEFAULT_ITERATIONS", "SALT_LENGTH", "hash_password", "verify_password",
    "parse_hash", "Pbkdf2Hash", "Sha512Hash", "VerifyCache", "PasswordFile",
    "line_username",
]

log = Logger()

#: OWASP's 2023 recommendation for PBKDF2-HMAC-SHA512.
DEFAULT_ITERATIONS = 210_000
#: mosquitto uses 12 random salt bytes; so do we, for byte-compatible files.
SALT_LENGTH = 12
_DIGEST_LENGTH = 64

Secret = Union[str, bytes]


def _as_bytes(password: Secret) -> bytes:
    # MQTT passwords are binary data; text typed at a prompt is UTF-8.
    return password.encode("utf-8") if isinstance(password, str) else bytes(password)


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@attrs.frozen(slots=True)
class Pbkdf2Hash:
    """mosquitto 2 ``$7$``: PBKDF2-HMAC-SHA512."""

    iterations: int
    salt: bytes
    digest: bytes

    def matches(self, password: bytes) -> bool:
        got = hashlib.pbkdf2_hmac("sha512", password, self.salt, self.iterations,
                                  len(self.digest))
        return hmac.compare_digest(got, self.digest)

    def encode(self) -> str:
        return "$7${}${}${}".format(
            self.iterations, base64.b64encode(self.salt).decode("ascii"),
            base64.b64encode(self.digest).decode("ascii"))


@attrs.frozen(slots=True)
class Sha512Hash:
    """mosquitto's legacy ``$6$``: one round of SHA512(password + salt).  Read only:
    it is far too fast to resist guessing, so we never write it."""

    salt: bytes
    digest: bytes

    def matches(self, password: bytes) -> bool:
        got = hashlib.sha512(password + self.salt).digest()
        return hmac.compare_digest(got, self.digest)

    def encode(self) -> str:
        return "$6${}${}".format(base64.b64encode(self.salt).decode("ascii"),
                                 base64.b64encode(self.digest).decode("ascii"))


ParsedHash = Union[Pbkdf2Hash, Sha512Hash]


def parse_hash(encoded: str) -> ParsedHash:
    """Decode an encoded hash once (at load time), so checks do no parsing.

    Raises ``ValueError`` with a short reason for anything we do not understand.
    """
    parts = encoded.split("$")
    if len(parts) == 5 and parts[0] == "" and parts[1] == "7":
        iterations_text, salt_text, digest_text = parts[2:]
        if not iterations_text.isdigit() or int(iterations_text) < 1:
            raise ValueError("bad iteration count")
        try:
            salt, digest = _b64decode(salt_text), _b64decode(digest_text)
        except (binascii.Error, ValueError):
            raise ValueError("bad base64") from None
        if not salt or not digest:
            raise ValueError("empty salt or hash")
        return Pbkdf2Hash(int(iterations_text), salt, digest)
    if len(parts) == 4 and parts[0] == "" and parts[1] == "6":
        try:
            salt, digest = _b64decode(parts[2]), _b64decode(parts[3])
        except (binascii.Error, ValueError):
            raise ValueError("bad base64") from None
        if len(digest) != _DIGEST_LENGTH:
            raise ValueError("SHA512 hash must be 64 bytes")
        return Sha512Hash(salt, digest)
    raise ValueError("unknown hash format (expected $7$ or $6$)")


def hash_password(password: Secret, iterations: int = DEFAULT_ITERATIONS,
                  salt: Optional[bytes] = None) -> str:
    """Return mosquitto 2's ``$7$`` encoding of *password* with a fresh random salt.

    *iterations* is lowered only in tests; *salt* is given only for known vectors.
    """
    if iterations < 1:
        raise ValueError("iterations must be positive")
    if salt is None:
        salt = os.urandom(SALT_LENGTH)
    digest = hashlib.pbkdf2_hmac("sha512", _as_bytes(password), salt, iterations,
                                 _DIGEST_LENGTH)
    return Pbkdf2Hash(iterations, salt, digest).encode()


def verify_password(password: Secret, encoded: str) -> bool:
    """True when *password* matches *encoded* (constant-time compare).

    An encoding we cannot parse never matches (and never raises): a broken file
    entry must deny, not crash.
    """
    try:
        parsed = parse_hash(encoded)
    except ValueError:
        return False
    return parsed.matches(_as_bytes(password))


class VerifyCache:
    """A small thread-safe LRU of *successful* verifications.

    Why: a reconnect storm would otherwise cost ~150 ms of CPU per client.  Why it
    is safe: the key is an HMAC under a per-process random key of (user, password,
    encoded hash), so a changed password or hash never hits an old entry, and the
    cache holds nothing that helps an attacker guess a password offline.
    """

    __slots__ = ("_key", "_entries", "_lock", "_maxsize")

    def __init__(self, maxsize: int = 1024) -> None:
        self._key = os.urandom(32)
        self._entries: "OrderedDict[bytes, None]" = OrderedDict()
        self._lock = threading.Lock()
        self._maxsize = maxsize

    def _tag(self, username: str, password: bytes, encoded: str) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (username.encode("utf-8"), password, encoded.encode("ascii")):
            mac.update(len(part).to_bytes(4, "big"))
            mac.update(part)
        return mac.digest()

    def hit(self, username: str, password: bytes, encoded: str) -> bool:
        tag = self._tag(username, password, encoded)
        with self._lock:
            if tag in self._entries:
                self._entries.move_to_end(tag)
                return True
        return False

    def add(self, username: str, password: bytes, encoded: str) -> None:
        tag = self._tag(username, password, encoded)
        with self._lock:
            self._entries[tag] = None
            self._entries.move_to_end(tag)
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def line_username(line: str) -> Optional[str]:
    """The user a password-file line names, or None for blank and ``#`` lines.

    Shared with the ``vmqtw-passwd`` tool so that both read lines the same way.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    username, sep, _ = text.partition(":")
    return username if sep and username else None


@attrs.frozen(slots=True)
class _Entry:
    encoded: str
    parsed: ParsedHash


@attrs.frozen(slots=True)
class PasswordFile:
    """An immutable snapshot of a password file; :meth:`check` is thread-safe."""

    entries: Mapping[str, _Entry]
    source: str = "<memory>"
    warnings: Tuple[str, ...] = ()
    cache: Optional[VerifyCache] = attrs.field(default=None, eq=False)
    # Checked against for unknown users, so that "no such user" takes as long as
    # "wrong password" and does not reveal which users exist.
    _decoy: Pbkdf2Hash = attrs.field(eq=False, factory=lambda: Pbkdf2Hash(
        DEFAULT_ITERATIONS, os.urandom(SALT_LENGTH), os.urandom(_DIGEST_LENGTH)))

    @classmethod
    def parse(cls, text: str, filename: str = "<memory>",
              cache: Optional[VerifyCache] = None) -> "PasswordFile":
        entries: dict = {}
        warnings = []

        def warn(lineno: int, reason: str) -> None:
            message = "{}:{}: {}; line ignored".format(filename, lineno, reason)
            warnings.append(message)
            log.warn("password file {problem}", problem=message)

        for lineno, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            username, sep, encoded = stripped.partition(":")
            if not sep or not username:
                warn(lineno, "expected username:hash")
                continue
            try:
                parsed = parse_hash(encoded)
            except ValueError as e:
                warn(lineno, "bad hash for user {!r} ({})".format(username, e))
                continue
            if username in entries:
                warn(lineno, "duplicate user {!r}, the first entry wins".format(username))
                continue
            entries[username] = _Entry(encoded, parsed)

        iterations = [e.parsed.iterations for e in entries.values()
                      if isinstance(e.parsed, Pbkdf2Hash)]
        decoy = Pbkdf2Hash(max(iterations) if iterations else DEFAULT_ITERATIONS,
                           os.urandom(SALT_LENGTH), os.urandom(_DIGEST_LENGTH))
        return cls(MappingProxyType(entries), filename, tuple(warnings), cache, decoy)

    @classmethod
    def load(cls, path: str, cache: Optional[VerifyCache] = None) -> "PasswordFile":
        """Read *path* (UTF-8).  Raises ``OSError``/``UnicodeDecodeError`` if the
        file cannot be read at all; bad lines only warn."""
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return cls.parse(text, str(path), cache)

    def users(self) -> Iterator[str]:
        return iter(self.entries)

    def __contains__(self, username: object) -> bool:
        return username in self.entries

    def check(self, username: str, password: Secret) -> bool:
        """True when *username* exists and *password* matches.  CPU-heavy: call it
        from a thread pool, never on the reactor thread."""
        secret = _as_bytes(password)
        entry = self.entries.get(username)
        if entry is None:
            self._decoy.matches(secret)
            return False
        if self.cache is not None and self.cache.hit(username, secret, entry.encoded):
            return True
        ok = entry.parsed.matches(secret)
        if ok and self.cache is not None:
            self.cache.add(username, secret, entry.encoded)
        return ok
