"""
Tests for vmqtw.auth.passwd (hashing, the password file) and vmqtw.auth.reloader.

Iteration counts are kept low (``FAST``) everywhere except the one test that
checks the default, so the file runs in about a second.
"""
from __future__ import annotations

import base64
import hashlib
import os
import threading

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from vmqtw.auth.passwd import (
    DEFAULT_ITERATIONS, PasswordFile, _Entry, Pbkdf2Hash, VerifyCache, hash_password, parse_hash,
    verify_password,
)
from vmqtw.auth.reloader import FileWatcher

FAST = 50

# Generated with mosquitto 2.0.11's mosquitto_passwd (-b; and -H sha512 for bob):
# interoperability with files operators already have.
MOSQUITTO_ALICE = ("$7$101$A/TZyWOR5ZDtLRsX$sMswk9yVYnSZcAO6Xb123ZuX0HvlabVesA3aplKgxWsz36Mr"
                   "ocOnxuhDj1S5H1OWa/qGhzDzHQjoRDfYe8Drjw==")  # 's3cret pass'
MOSQUITTO_BOB = ("$6$g5CovLNrYS7xErnI$3DSpMQpFJCUORhe1mE7/qbppT9rJ1EkPyd5OUs/ksdjJam02jickr"
                 "bh2VYoVzvAs6m1W2782SMZPn1EF14Ycww==")  # 'hunter2'


# -- hashing -----------------------------------------------------------------

def test_default_hash_is_pbkdf2_sha512_with_at_least_100k_iterations():
    """The one slow test: the default must make guessing expensive."""
    encoded = hash_password("correct horse")
    scheme, iterations, salt, digest = encoded.split("$")[1:]
    assert scheme == "7"
    assert int(iterations) == DEFAULT_ITERATIONS >= 100_000
    assert len(base64.b64decode(salt)) == 12
    assert len(base64.b64decode(digest)) == 64
    assert verify_password("correct horse", encoded)


def test_roundtrip_and_wrong_password():
    encoded = hash_password("pa55", iterations=FAST)
    assert verify_password("pa55", encoded)
    assert verify_password(b"pa55", encoded)
    assert not verify_password("pa56", encoded)
    assert not verify_password("", encoded)
    assert not verify_password("pa55 ", encoded)


def test_hash_is_pbkdf2_of_the_given_salt():
    """Encoding matches an independent PBKDF2-HMAC-SHA512 computation."""
    salt = bytes(range(12))
    encoded = hash_password("pw", iterations=7, salt=salt)
    expected = hashlib.pbkdf2_hmac("sha512", b"pw", salt, 7, 64)
    assert encoded == "$7$7${}${}".format(base64.b64encode(salt).decode(),
                                          base64.b64encode(expected).decode())


def test_salt_is_random():
    assert hash_password("same", iterations=FAST) != hash_password("same", iterations=FAST)


def test_mosquitto_generated_hashes_verify():
    assert verify_password("s3cret pass", MOSQUITTO_ALICE)
    assert not verify_password("s3cret pas", MOSQUITTO_ALICE)
    assert verify_password("hunter2", MOSQUITTO_BOB)
    assert not verify_password("hunter3", MOSQUITTO_BOB)


def test_legacy_sha512_vector_computed_here():
    """``$6$`` is SHA512(password + salt), base64 salt and digest."""
    salt = b"0123456789ab"
    digest = hashlib.sha512(b"legacy" + salt).digest()
    encoded = "$6${}${}".format(base64.b64encode(salt).decode(),
                                base64.b64encode(digest).decode())
    assert verify_password("legacy", encoded)
    assert not verify_password("Legacy", encoded)


@pytest.mark.parametrize("encoded", [
    "", "plaintext", "$7$", "$7$abc$AAAA$AAAA", "$7$0$AAAA$AAAA", "$7$10$$AAAA",
    "$7$10$!!!$AAAA", "$6$AAAA$AAAA", "$5$AAAA$AAAA", "$7$10$AAAA$AAAA$extra",
])
def test_malformed_hashes_never_verify_and_never_raise(encoded):
    assert not verify_password("", encoded)
    assert not verify_password("AAAA", encoded)
    with pytest.raises(ValueError):
        parse_hash(encoded)


@settings(max_examples=25, deadline=None)
@given(password=st.binary(max_size=40), other=st.binary(max_size=40))
def test_roundtrip_property(password, other):
    """
    A password verifies against its own hash and no other -- up to trailing
    NUL bytes: HMAC pads keys shorter than its block with zeros, so PBKDF2
    (and mosquitto, whose format this is) cannot tell ``pw`` from
    ``pw + b"\\0"``.  That gives an attacker nothing: both must be known.
    """
    encoded = hash_password(password, iterations=2)
    assert verify_password(password, encoded)
    assert verify_password(other, encoded) == (other.rstrip(b"\0") == password.rstrip(b"\0"))


# -- password file -----------------------------------------------------------

def _file_text():
    return "\n".join([
        "# a comment, never a user",
        "",
        "   ",
        "alice:" + MOSQUITTO_ALICE,
        "bob:" + MOSQUITTO_BOB,
        "carol:" + hash_password("c", iterations=FAST),
        "  # indented comment:with-colon",
        "sensor+1:" + hash_password("w", iterations=FAST),
        "",
    ])


def test_blank_and_comment_lines_are_not_users():
    """CVE-2018-12551: a blank line must never become a user with an empty password."""
    pw = PasswordFile.parse(_file_text(), "pw")
    assert sorted(pw.users()) == ["alice", "bob", "carol", "sensor+1"]
    assert pw.warnings == ()
    assert not pw.check("", "")
    assert not pw.check("#", "")
    assert not pw.check("# a comment, never a user", "")


def test_check_users():
    pw = PasswordFile.parse(_file_text(), "pw")
    assert pw.check("alice", "s3cret pass")
    assert pw.check("bob", "hunter2")
    assert pw.check("carol", "c")
    assert pw.check("sensor+1", b"w")
    assert not pw.check("carol", "C")
    assert not pw.check("nobody", "c")
    assert not pw.check("Carol", "c")


def test_malformed_lines_are_skipped_with_file_and_line(tmp_path):
    path = tmp_path / "vmq.passwd"
    path.write_text("\n".join([
        "good:" + hash_password("g", iterations=FAST),   # 1
        "no-colon-here",                                  # 2
        "plain:password",                                 # 3 (mosquitto's unhashed form)
        ":" + hash_password("x", iterations=FAST),        # 4 empty user name
        "good:" + hash_password("other", iterations=FAST),  # 5 duplicate
        "nohash:",                                        # 6
    ]) + "\n")
    with capturedLogs() as events:
        pw = PasswordFile.load(str(path))
    assert list(pw.users()) == ["good"]
    assert pw.check("good", "g")
    assert not pw.check("good", "other")     # the first entry wins
    assert not pw.check("plain", "password")
    for lineno in (2, 3, 4, 5, 6):
        assert any("{}:{}:".format(path, lineno) in w for w in pw.warnings), lineno
    logged = [e for e in events if "problem" in e]
    assert len(logged) == 5
    assert all(e["log_level"].name == "warn" for e in logged)


def test_unreadable_file_raises(tmp_path):
    with pytest.raises(OSError):
        PasswordFile.load(str(tmp_path / "missing"))


def test_cache_hits_only_for_the_same_password_and_hash():
    cache = VerifyCache(maxsize=2)
    text = "u:" + hash_password("p", iterations=FAST)
    pw = PasswordFile.parse(text, cache=cache)
    assert not pw.check("u", "wrong")
    assert len(cache) == 0                       # failures are never cached
    assert pw.check("u", "p")
    assert len(cache) == 1
    assert cache.hit("u", b"p", pw.entries["u"].encoded)
    assert not cache.hit("u", b"q", pw.entries["u"].encoded)
    # Same user, new hash (password changed): the old success must not count.
    pw2 = PasswordFile.parse("u:" + hash_password("new", iterations=FAST), cache=cache)
    assert not pw2.check("u", "p")
    assert pw2.check("u", "new")


def test_cache_skips_pbkdf2_on_a_hit():
    """A hit must not run the KDF: prove it with an entry whose hash is bogus
    but whose success was cached (only possible through the cache)."""
    cache = VerifyCache()
    encoded = hash_password("p", iterations=FAST)
    cache.add("u", b"p", encoded)
    bogus = _Entry(encoded, Pbkdf2Hash(FAST, b"salt", b"\x00" * 64))
    pw = PasswordFile({"u": bogus}, cache=cache)
    assert pw.check("u", "p")
    assert not PasswordFile({"u": bogus}).check("u", "p")


def test_cache_is_bounded():
    cache = VerifyCache(maxsize=2)
    for i in range(5):
        cache.add("u%d" % i, b"p", "h")
    assert len(cache) == 2
    assert cache.hit("u4", b"p", "h") and not cache.hit("u0", b"p", "h")


def test_unknown_user_costs_a_kdf_run():
    """No user enumeration by timing: an unknown user runs the decoy PBKDF2
    with the file's iteration count."""
    pw = PasswordFile.parse("u:" + hash_password("p", iterations=FAST * 3))
    assert pw._decoy.iterations == FAST * 3


def test_check_is_thread_safe():
    cache = VerifyCache()
    pw = PasswordFile.parse("\n".join(
        "u%d:%s" % (i, hash_password("p%d" % i, iterations=FAST)) for i in range(8)),
        cache=cache)
    errors = []

    def worker(i):
        try:
            for _ in range(20):
                assert pw.check("u%d" % i, "p%d" % i)
                assert not pw.check("u%d" % i, "x")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- reloader ----------------------------------------------------------------

def _write(path, text):
    """Replace the file with a new inode so the change is always visible."""
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, str(path))


def test_watcher_loads_at_start_and_reloads_on_change(tmp_path):
    path = tmp_path / "vmq.passwd"
    _write(path, "a:" + hash_password("1", iterations=FAST) + "\n")
    clock = Clock()
    seen = []
    w = FileWatcher(str(path), PasswordFile.load, seen.append, clock, interval=10.0)
    try:
        first = w.start()
        assert seen == [first] and w.current is first
        assert list(first.users()) == ["a"]

        clock.advance(10)
        assert len(seen) == 1                    # unchanged file: not re-read

        _write(path, "b:" + hash_password("2", iterations=FAST) + "\n")
        clock.advance(9.9)
        assert len(seen) == 1                    # not yet time
        clock.advance(0.1)
        assert len(seen) == 2
        assert list(w.current.users()) == ["b"]
    finally:
        w.stop()
    assert not clock.getDelayedCalls()


def test_watcher_keeps_old_snapshot_when_file_breaks(tmp_path):
    path = tmp_path / "vmq.passwd"
    _write(path, "a:" + hash_password("1", iterations=FAST) + "\n")
    clock = Clock()
    seen = []
    w = FileWatcher(str(path), PasswordFile.load, seen.append, clock, interval=1.0)
    try:
        good = w.start()
        path.write_bytes(b"\xff\xfe not utf-8\n")   # cannot be decoded
        with capturedLogs() as events:
            clock.advance(1)
            clock.advance(1)
            clock.advance(1)
        assert w.current is good and seen == [good]
        assert len([e for e in events if e["log_level"].name in ("error", "critical")]) == 1

        os.unlink(path)                              # vanished: keep it, one error
        with capturedLogs() as events:
            clock.advance(1)
            clock.advance(1)
        assert w.current is good
        assert len([e for e in events if e["log_level"].name == "error"]) == 1

        _write(path, "c:" + hash_password("3", iterations=FAST) + "\n")
        clock.advance(1)
        assert list(w.current.users()) == ["c"] and len(seen) == 2
    finally:
        w.stop()


def test_watcher_reload_forces_a_read(tmp_path):
    """SIGHUP: re-read even when the file signature looks the same."""
    path = tmp_path / "f"
    path.write_text("x")
    loads = []

    def load(p):
        loads.append(p)
        return len(loads)

    clock = Clock()
    seen = []
    w = FileWatcher(str(path), load, seen.append, clock)
    try:
        w.start()
        assert w.reload() is True
        assert seen == [1, 2] and w.current == 2
        clock.advance(10)
        assert seen == [1, 2]
    finally:
        w.stop()


def test_watcher_start_raises_when_file_missing(tmp_path):
    clock = Clock()
    w = FileWatcher(str(tmp_path / "missing"), PasswordFile.load, lambda s: None, clock)
    with pytest.raises(OSError):
        w.start()
    assert not clock.getDelayedCalls()
