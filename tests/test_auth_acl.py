"""
Tests for vmqtw.auth.acl: mosquitto-style ACL parsing and topic/filter checks.
"""
from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from vmqtw.auth.acl import Acl, filter_covers, topic_matches, valid_filter
from vmqtw.auth.reloader import FileWatcher

ETC_ACL = os.path.join(os.path.dirname(__file__), os.pardir, "etc", "vmq.acl")

ACL_TEXT = """\
# lines before the first 'user' apply to every client (VerneMQ behaviour)
topic read public/#
topic write  announce/+

user alice
topic sensors/#
topic read $SYS/broker/#

user bob
topic write sensors/bob/+
topic deny sensors/bob/secret

# patterns apply to everyone, wherever they appear
pattern read clients/%c/#
pattern write clients/%c/out
pattern readwrite users/%u/#
pattern read both/%u/%c
"""


@pytest.fixture
def acl():
    return Acl.parse(ACL_TEXT, "vmq.acl")


# -- matching primitives ----------------------------------------------------

@pytest.mark.parametrize("filter_,topic,expected", [
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/+", "a/b", True),
    ("a/+", "a", False),
    ("a/+", "a/", True),             # empty level is a level
    ("a/+", "a/b/c", False),
    ("a/#", "a", True),              # [MQTT-4.7.1-2] parent level
    ("a/#", "a/b/c", True),
    ("#", "a/b", True),
    ("+/+", "/a", True),
    ("#", "$SYS/x", False),          # [MQTT-4.7.2-1]
    ("+/x", "$SYS/x", False),        # [MQTT-4.7.2-1]
    ("$SYS/#", "$SYS/x", True),
    ("a/+/#", "a/$x/y", True),       # '$' only matters at the first level
])
def test_topic_matches(filter_, topic, expected):
    assert topic_matches(filter_, topic) is expected


@pytest.mark.parametrize("outer,inner,expected", [
    ("sensors/#", "sensors/+/temp", True),
    ("sensors/#", "sensors/#", True),
    ("sensors/#", "sensors", True),
    ("sensors/#", "#", False),
    ("sensors/#", "+/temp", False),
    ("sensors/+", "sensors/a", True),
    ("sensors/+", "sensors/+", True),
    ("sensors/+", "sensors/#", False),     # '#' also reaches deeper levels
    ("sensors/+", "sensors", False),
    ("sensors/a", "sensors/+", False),
    ("a/+/#", "a/#", False),               # 'a/#' matches 'a'
    ("+/#", "#", True),                    # same set of topics
    ("#", "+/#", True),
    ("#", "a/+/b", True),
    ("#", "$SYS/#", False),                # [MQTT-4.7.2-1]
    ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS/broker/+", True),
    ("$SYS/#", "#", False),
    ("a/b", "a/b", True),
    ("a/b", "a/b/c", False),
    ("a/b/c", "a/b", False),
])
def test_filter_covers(outer, inner, expected):
    assert filter_covers(outer, inner) is expected


_LEVEL = st.sampled_from(["a", "b", "$s", "+", "#"])


@st.composite
def _filters(draw):
    levels = draw(st.lists(_LEVEL, min_size=1, max_size=3))
    # '#' only as the last level.
    levels = [lv for lv in levels[:-1] if lv != "#"] + [levels[-1]]
    return "/".join(levels)


def _topics(max_depth):
    alphabet = ["a", "b", "$s", "z"]
    for depth in range(1, max_depth + 1):
        for levels in itertools.product(alphabet, repeat=depth):
            yield "/".join(levels)


_ALL_TOPICS = list(_topics(4))


@settings(max_examples=200, deadline=None)
@given(outer=_filters(), inner=_filters())
def test_filter_covers_agrees_with_brute_force(outer, inner):
    """covers(outer, inner) iff no topic matched by inner escapes outer.
    Topics up to one level deeper than the filters, over their literals plus a
    fresh one, are enough to find any counter-example."""
    expected = all(topic_matches(outer, t) for t in _ALL_TOPICS if topic_matches(inner, t))
    assert filter_covers(outer, inner) is expected


@pytest.mark.parametrize("filter_,ok", [
    ("a/b", True), ("#", True), ("a/#", True), ("+", True), ("+/+/", True),
    ("", False), ("a/#/b", False), ("a#", False), ("a/b+", False), ("a\x00b", False),
])
def test_valid_filter(filter_, ok):
    assert valid_filter(filter_) is ok


# -- parsing -------------------------------------------------------------------

def test_empty_acl_denies_everything():
    """No rule means denied; an empty file is not 'allow all' (CVE-2018-12550)."""
    for acl in (Acl.parse(""), Acl.parse("# only a comment\n\n")):
        assert not acl.can_publish("c", "u", "a")
        assert not acl.can_subscribe("c", "u", "#")
        assert not acl.can_read("c", None, "a")


def test_malformed_lines_warn_with_file_and_line():
    text = "\n".join([
        "topic a/#",            # 1 ok
        "topic",                # 2 no filter
        "topic read",           # 3 no filter after access
        "topic a/#/b",          # 4 invalid filter
        "user",                 # 5 no name
        "frobnicate x",         # 6 unknown
        "pattern write a+/%c",  # 7 invalid filter
        "topic read b/c",       # 8 ok
    ])
    with capturedLogs() as events:
        acl = Acl.parse(text, "my.acl")
    for lineno in (2, 3, 4, 5, 6, 7):
        assert any(w.startswith("my.acl:{}:".format(lineno)) for w in acl.warnings), lineno
    assert len(acl.warnings) == 6
    assert len([e for e in events if e["log_level"].name == "warn"]) == 6
    assert acl.can_publish("c", None, "a/x")
    assert acl.can_read("c", None, "b/c") and not acl.can_publish("c", None, "b/c")


def test_filter_may_contain_spaces_and_access_word_as_topic():
    acl = Acl.parse("topic read my topic/x\ntopic readable\ntopic\twrite\ttabs/x\n")
    assert acl.can_read("c", None, "my topic/x")
    assert acl.can_publish("c", None, "tabs/x") and not acl.can_read("c", None, "tabs/x")
    assert acl.can_publish("c", None, "readable")


def test_load_from_file(tmp_path):
    path = tmp_path / "vmq.acl"
    path.write_text(ACL_TEXT)
    acl = Acl.load(str(path))
    assert acl.can_publish("c", "alice", "sensors/x")
    with pytest.raises(OSError):
        Acl.load(str(tmp_path / "missing"))


def test_shipped_example_acl_parses_cleanly():
    acl = Acl.load(ETC_ACL)
    assert acl.warnings == ()
    assert acl.all_rules or acl.user_rules or acl.patterns


# -- decisions -------------------------------------------------------------------

@pytest.mark.parametrize("client_id,username,topic,pub,read", [
    # global lines: every client, anonymous included
    ("c1", None, "public/news", False, True),
    ("c1", "alice", "public/news", False, True),
    ("c1", None, "announce/x", True, False),
    ("c1", None, "announce/x/y", False, False),
    # alice's section (readwrite by default) is hers alone
    ("c1", "alice", "sensors/a/temp", True, True),
    ("c1", "bob", "sensors/a/temp", False, False),
    ("c1", None, "sensors/a/temp", False, False),
    ("c1", "alice2", "sensors/a/temp", False, False),
    ("c1", "alice", "$SYS/broker/uptime", False, True),
    # bob: write only, and deny wins
    ("c1", "bob", "sensors/bob/x", True, False),
    ("c1", "bob", "sensors/bob/secret", False, False),
    # %c
    ("dev1", None, "clients/dev1/in", False, True),
    ("dev1", None, "clients/dev1/out", True, True),
    ("dev1", None, "clients/dev2/in", False, False),
    # %u
    ("x", "alice", "users/alice/box", True, True),
    ("x", "alice", "users/bob/box", False, False),
    ("x", None, "users//box", False, False),          # %u never matches anonymous
    # both
    ("c9", "carl", "both/carl/c9", False, True),
    ("c9", "carl", "both/carl/c8", False, False),
    # not topics at all
    ("c1", "alice", "sensors/+", False, False),
    ("c1", "alice", "sensors/#", False, False),
    ("c1", "alice", "", False, False),
])
def test_publish_and_read(acl, client_id, username, topic, pub, read):
    assert acl.can_publish(client_id, username, topic) is pub
    assert acl.can_read(client_id, username, topic) is read


@pytest.mark.parametrize("client_id,username,filter_,allowed", [
    ("c", "alice", "sensors/#", True),
    ("c", "alice", "sensors/+/temp", True),
    ("c", "alice", "#", False),
    ("c", "alice", "+/temp", False),
    ("c", None, "public/+", True),
    ("c", None, "public", True),                 # 'public/#' covers its parent
    ("c", None, "+", False),
    ("c", None, "announce/x", False),            # write-only
    ("c", "alice", "$SYS/broker/#", True),
    ("c", "alice", "$SYS/#", False),
    ("c", "bob", "sensors/bob/+", False),        # bob may not read there
    ("dev1", None, "clients/dev1/#", True),
    ("dev1", None, "clients/+/#", False),
    ("dev1", None, "clients/dev2/#", False),
    ("c", "alice", "sensors/#/x", False),        # invalid filter
])
def test_subscribe(acl, client_id, username, filter_, allowed):
    assert acl.can_subscribe(client_id, username, filter_) is allowed


def test_deny_covering_the_whole_subscription_refuses_it():
    acl = Acl.parse("topic read a/#\ntopic deny a/secret/#\n")
    assert acl.can_subscribe("c", None, "a/#")          # partly denied: filtered on delivery
    assert not acl.can_read("c", None, "a/secret/x")
    assert acl.can_read("c", None, "a/open")
    assert not acl.can_subscribe("c", None, "a/secret/+")


@pytest.mark.parametrize("client_id", ["#", "+", "a/#", "x+y", "dev#"])
def test_wildcard_client_id_never_matches_a_client_id_pattern(client_id):
    """CVE-2017-7650: client id '#' must not turn 'pattern read clients/%c/#' into
    'clients/#/#' (or '+' into a wildcard) and read other clients' topics."""
    acl = Acl.parse("pattern readwrite clients/%c/#\npattern read pub/%u\n")
    assert not acl.can_subscribe(client_id, "u", "clients/#")
    assert not acl.can_subscribe(client_id, "u", "clients/" + client_id + "/#")
    assert not acl.can_subscribe(client_id, "u", "clients/+/#")
    assert not acl.can_read(client_id, "u", "clients/victim/data")
    assert not acl.can_publish(client_id, "u", "clients/victim/data")
    # Patterns that do not use %c still apply to that client.
    assert acl.can_read(client_id, "u", "pub/u")


@pytest.mark.parametrize("username", ["#", "+", "a+", "b/#"])
def test_wildcard_username_never_matches_a_username_pattern(username):
    acl = Acl.parse("pattern readwrite users/%u/#\npattern read own/%c\n")
    assert not acl.can_subscribe("c", username, "users/#")
    assert not acl.can_subscribe("c", username, "users/" + username + "/#")
    assert not acl.can_read("c", username, "users/victim/x")
    assert acl.can_read("c", username, "own/c")


def test_substitution_is_single_pass():
    """A client id containing '%u' is substituted literally, never expanded again."""
    acl = Acl.parse("pattern read x/%c/%u\n")
    assert acl.can_read("%u", "bob", "x/%u/bob")
    assert not acl.can_read("%u", "bob", "x/bob/bob")


def test_user_section_is_exact_and_topic_lines_after_user_belong_to_it():
    acl = Acl.parse("user a b\ntopic t\nuser c\ntopic u\n")
    assert acl.can_publish("x", "a b", "t") and not acl.can_publish("x", "a b", "u")
    assert acl.can_publish("x", "c", "u") and not acl.can_publish("x", "c", "t")
    assert not acl.can_publish("x", "a", "t")


def test_sys_topics_need_an_explicit_rule():
    """[MQTT-4.7.2-1]: 'topic #' does not reach $SYS."""
    acl = Acl.parse("topic #\n")
    assert acl.can_publish("c", None, "a/b")
    assert not acl.can_publish("c", None, "$SYS/x")
    assert not acl.can_read("c", None, "$SYS/x")
    assert not acl.can_subscribe("c", None, "$SYS/#")
    assert acl.can_subscribe("c", None, "#")


def test_acl_file_reload(tmp_path):
    """The ACL is re-read when the file changes; a revoked rule is gone after
    the next poll (the broker then re-checks live subscriptions)."""
    path = tmp_path / "vmq.acl"
    path.write_text("topic a/#\n")
    clock = Clock()
    seen = []
    w = FileWatcher(str(path), Acl.load, seen.append, clock, interval=10.0)
    try:
        w.start()
        assert w.current.can_read("c", None, "a/x")
        tmp = str(path) + ".new"
        with open(tmp, "w") as f:
            f.write("topic b/#\n")
        os.replace(tmp, str(path))
        clock.advance(10)
        assert len(seen) == 2
        assert not w.current.can_read("c", None, "a/x")
        assert w.current.can_read("c", None, "b/x")
    finally:
        w.stop()
