"""
Tests for vmqtw.config: the vernemq.conf schema, its types, its error
messages and the shipped etc/vernemq.conf.
"""
from __future__ import annotations

import re
from pathlib import Path as FsPath

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmqtw import config as cfg
from vmqtw.config import (
    SCHEMA,
    Config,
    ConfigError,
    load_config,
    parse_config,
    render_default_config,
    render_quickstart_config,
)

REPO = FsPath(__file__).resolve().parent.parent
SHIPPED = REPO / "etc" / "vernemq.conf"
F = "etc/vernemq.conf"
# One problem per line: FILE:LINE: key: what is wrong; allowed: what is allowed
PROBLEM_RE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<key>[^:]+): (?P<wrong>.+); allowed: (?P<allowed>.+)$")


def parse(text: str) -> Config:
    return parse_config(text, F, cwd="/srv/vmq")


def one(key: str, value: str) -> Config:
    return parse(f"{key} = {value}\n")


def errors(text: str) -> list[re.Match[str]]:
    """Parse ``text`` expecting failure; every line of the message must have the documented shape."""
    with pytest.raises(ConfigError) as info:
        parse(text)
    lines = str(info.value).split("\n")
    matches = [PROBLEM_RE.match(line) for line in lines]
    assert all(matches), lines
    assert len(info.value.problems) == len(lines)
    return matches  # type: ignore[return-value]


def error_for(key: str, value: str) -> re.Match[str]:
    [m] = errors(f"{key} = {value}\n")
    assert m["file"] == F and m["line"] == "1" and m["key"] == key
    return m


# ---------------------------------------------------------------------------
# Defaults


def test_defaults_match_the_brief() -> None:
    """An empty file yields VerneMQ's defaults (vmqtw's node name and data dir)."""
    c = Config.default(cwd="/srv/vmq")
    assert c.nodename == "vmqtw@127.0.0.1"
    assert c.distributed_cookie == "vmq"
    assert c.tcp_listeners == {"default": ("127.0.0.1", 1883)}
    assert c.ssl_listeners == {}
    assert (c.listener_ssl_certfile, c.listener_ssl_keyfile, c.listener_ssl_cafile) == (None, None, None)
    assert c.listener_ssl_require_certificate is False
    assert c.listener_ssl_use_identity_as_username is False
    assert c.listener_max_connections == 10000
    assert c.listener_vmq_clustering == ("127.0.0.1", 44053)
    assert (c.cluster_tls_certfile, c.cluster_tls_keyfile, c.cluster_tls_cafile) == (None, None, None)
    assert c.platform_data_dir == "./data"
    assert c.data_dir == "/srv/vmq/data"
    assert c.allow_anonymous is False
    assert c.max_client_id_size == 100
    assert c.max_message_size == 0
    assert c.max_inflight_messages == 20
    assert c.max_online_messages == 1000
    assert c.max_offline_messages == 1000
    assert c.queue_type == "fifo"
    assert c.retry_interval == 20.0
    assert c.max_keepalive == 65535.0
    assert c.topic_max_depth == 10
    assert c.max_subscriptions_per_client == 0
    assert c.persistent_client_expiration is None
    assert c.connect_timeout == 10.0
    assert c.message_store == "leveldb"
    assert c.leveldb_sync is False
    assert c.plugins_vmq_passwd is False
    assert c.vmq_passwd_password_file == "./etc/vmq.passwd"
    assert c.plugins_vmq_acl is False
    assert c.vmq_acl_acl_file == "./etc/vmq.acl"
    assert not (c.allow_register_during_netsplit or c.allow_publish_during_netsplit
                or c.allow_subscribe_during_netsplit or c.allow_unsubscribe_during_netsplit)
    assert c.trade_consistency is False
    assert c.coordinate_registrations is True
    assert c.outgoing_clustering_buffer_size == 64 * 1024 * 1024
    assert c.log_console_level == "info"
    assert (c.metadata_lazy_tick, c.metadata_exchange_tick, c.metadata_gossip_interval) == (1.0, 10.0, 15.0)
    assert c.systree_enabled is False
    assert c.source == "<defaults>"


def test_every_setting_has_an_attribute_and_a_doc() -> None:
    c = Config.default()
    for s in SCHEMA:
        assert hasattr(c, s.attr), s.key
        assert len(s.doc) > 20, s.key


def test_config_is_frozen_and_replace_makes_a_copy() -> None:
    c = Config.default()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        c.max_inflight_messages = 5  # type: ignore[misc]
    d = c.replace(max_inflight_messages=5)
    assert (c.max_inflight_messages, d.max_inflight_messages) == (20, 5)


def test_replace_platform_data_dir_re_resolves_data_dir(tmp_path: FsPath, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    d = Config.default().replace(platform_data_dir="./other")
    assert d.data_dir == str(tmp_path / "other")


# ---------------------------------------------------------------------------
# Flags


@pytest.mark.parametrize("text, value", [("on", True), ("off", False)])
def test_flag_accepts_on_off(text: str, value: bool) -> None:
    assert one("allow_anonymous", text).allow_anonymous is value
    assert one("leveldb.sync", text).leveldb_sync is value


@pytest.mark.parametrize("text", ["true", "false", "yes", "1", "ON", "Off", ""])
def test_flag_is_strict(text: str) -> None:
    """VerneMQ's cuttlefish flags are on/off only; anything else names both choices."""
    m = error_for("allow_anonymous", text)
    assert m["allowed"] == "on or off"


# ---------------------------------------------------------------------------
# Integers


@pytest.mark.parametrize("key, text, value", [
    ("max_inflight_messages", "0", 0),
    ("max_inflight_messages", "65535", 65535),
    ("max_offline_messages", "-1", -1),
    ("max_online_messages", "-1", -1),
    ("max_client_id_size", "23", 23),
    ("topic_max_depth", "0", 0),
    ("listener.max_connections", "1", 1),
    ("max_subscriptions_per_client", "100000", 100000),
])
def test_integer_good(key: str, text: str, value: int) -> None:
    assert getattr(one(key, text), key.replace(".", "_")) == value


def test_integer_bad_value_message_is_exact() -> None:
    """The brief's example line, with the range this key really has."""
    with pytest.raises(ConfigError) as info:
        parse("\n" * 11 + "max_inflight_messages = ten\n")
    assert str(info.value) == (
        "etc/vernemq.conf:12: max_inflight_messages: 'ten' is not an integer; "
        "allowed: an integer from 0 to 65535")


@pytest.mark.parametrize("key, text, wrong, allowed", [
    ("max_inflight_messages", "1.5", "'1.5' is not an integer", "an integer from 0 to 65535"),
    ("max_inflight_messages", "+5", "'+5' is not an integer", "an integer from 0 to 65535"),
    ("max_inflight_messages", "1_000", "'1_000' is not an integer", "an integer from 0 to 65535"),
    ("max_inflight_messages", "-1", "'-1' is too small", "an integer from 0 to 65535"),
    ("max_inflight_messages", "65536", "'65536' is too large", "an integer from 0 to 65535"),
    ("max_offline_messages", "-2", "'-2' is too small", "an integer >= -1"),
    ("max_client_id_size", "22", "'22' is too small", "an integer from 23 to 65535"),
    ("listener.max_connections", "0", "'0' is too small", "an integer >= 1"),
    ("topic_max_depth", "", "'' is not an integer", "an integer >= 0"),
])
def test_integer_bad(key: str, text: str, wrong: str, allowed: str) -> None:
    m = error_for(key, text)
    assert (m["wrong"], m["allowed"]) == (wrong, allowed)


# ---------------------------------------------------------------------------
# Byte sizes


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("1024", 1024), ("64KB", 64 * 1024), ("16MB", 16 * 1024**2), ("1GB", 1024**3),
])
def test_bytesize_good(text: str, value: int) -> None:
    assert one("outgoing_clustering_buffer_size", text).outgoing_clustering_buffer_size == value


@pytest.mark.parametrize("text", ["1TB", "64kb", "-1", "1.5MB", "MB", "16 MB", "sixteen"])
def test_bytesize_bad(text: str) -> None:
    m = error_for("outgoing_clustering_buffer_size", text)
    assert m["wrong"] == f"{text!r} is not a byte size"
    assert "KB, MB or GB" in m["allowed"]


def test_max_message_size_is_capped_at_mqtts_own_limit() -> None:
    assert one("max_message_size", "256MB").max_message_size == 256 * 1024**2
    m = error_for("max_message_size", "257MB")
    assert m["wrong"] == "'257MB' is too large"
    assert "from 0 to 256MB" in m["allowed"]


# ---------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize("text, seconds", [
    ("20s", 20.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0), ("1w", 604800.0),
    ("500ms", 0.5), ("1h30m", 5400.0), ("20", 20.0), ("1m1s1ms", 61.001),
])
def test_duration_good(text: str, seconds: float) -> None:
    """A bare integer is the key's unit: connect_timeout = 20 means 20 seconds."""
    assert one("connect_timeout", text).connect_timeout == seconds


def test_retry_interval_bare_integer_is_seconds_as_in_vernemq() -> None:
    assert one("retry_interval", "20").retry_interval == 20.0


def test_bare_integer_uses_the_keys_unit() -> None:
    """metadata.* keys count in milliseconds, like plumtree's tick settings."""
    assert one("metadata.lazy_tick", "1500").metadata_lazy_tick == 1.5
    assert one("connect_timeout", "3").connect_timeout == 3.0
    assert "an integer in milliseconds" in error_for("metadata.lazy_tick", "x")["allowed"]
    assert "an integer in seconds" in error_for("connect_timeout", "x")["allowed"]


@pytest.mark.parametrize("text", ["20x", "-5", "1.5s", "s", "20 s", "never", "1y", "20S", ""])
def test_duration_bad(text: str) -> None:
    m = error_for("retry_interval", text)
    assert m["wrong"] == f"{text!r} is not a duration"
    assert m["allowed"].startswith("a duration such as 500ms, 20s")


@pytest.mark.parametrize("key, text, wrong", [
    ("retry_interval", "0", "'0' is too short"),
    ("retry_interval", "999ms", "'999ms' is too short"),
    ("max_keepalive", "65536", "'65536' is too long"),
    ("connect_timeout", "0s", "'0s' is too short"),
])
def test_duration_bounds(key: str, text: str, wrong: str) -> None:
    assert error_for(key, text)["wrong"] == wrong


def test_max_keepalive_bounds_are_inclusive() -> None:
    assert one("max_keepalive", "65535").max_keepalive == 65535.0
    assert one("max_keepalive", "1s").max_keepalive == 1.0


@pytest.mark.parametrize("text, value", [("never", None), ("1w", 604800.0), ("90", 90.0)])
def test_duration_or_never_good(text: str, value: float | None) -> None:
    assert one("persistent_client_expiration", text).persistent_client_expiration == value


@pytest.mark.parametrize("text", ["Never", "forever", "0", "1y"])
def test_duration_or_never_bad(text: str) -> None:
    m = error_for("persistent_client_expiration", text)
    assert m["allowed"].startswith("never or a duration")


# ---------------------------------------------------------------------------
# Addresses and listeners


@pytest.mark.parametrize("text, value", [
    ("127.0.0.1:1883", ("127.0.0.1", 1883)),
    ("0.0.0.0:1883", ("0.0.0.0", 1883)),
    ("[::1]:1883", ("::1", 1883)),
    ("[::]:8883", ("::", 8883)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("10.0.0.1:65535", ("10.0.0.1", 65535)),
])
def test_address_good(text: str, value: tuple[str, int]) -> None:
    assert one("listener.tcp.default", text).tcp_listeners == {"default": value}
    if value[1] != 1883:
        assert one("listener.vmq.clustering", text).listener_vmq_clustering == value


@pytest.mark.parametrize("text, wrong", [
    ("localhost:1883", "'localhost:1883' does not start with an IP address"),
    ("1.2.3:1883", "'1.2.3:1883' does not start with an IP address"),
    ("[127.0.0.1]:1883", "'[127.0.0.1]:1883' does not start with an IP address"),
    ("127.0.0.1", "'127.0.0.1' is not IP:PORT"),
    ("::1:1883", "'::1:1883' is not IP:PORT"),
    ("[::1]", "'[::1]' is not IP:PORT"),
    ("127.0.0.1:-1", "'127.0.0.1:-1' is not IP:PORT"),
    ("127.0.0.1:65536", "'127.0.0.1:65536' has a port above 65535"),
])
def test_address_bad(text: str, wrong: str) -> None:
    m = error_for("listener.vmq.clustering", text)
    assert m["wrong"] == wrong
    assert m["allowed"].startswith("IP:PORT with an IPv4 address or a bracketed IPv6 address")


def test_advertised_clustering_address_defaults_to_the_listener() -> None:
    """A node behind NAT tells the others an address it does not listen on."""
    plain = one("listener.vmq.clustering", "10.0.0.2:44053")
    assert plain.listener_vmq_clustering_advertise is None
    assert plain.cluster_advertised_address == ("10.0.0.2", 44053)
    natted = parse("listener.vmq.clustering = 0.0.0.0:44053\n"
                   "listener.vmq.clustering.advertise = 203.0.113.7:4405\n")
    assert natted.listener_vmq_clustering == ("0.0.0.0", 44053)
    assert natted.cluster_advertised_address == ("203.0.113.7", 4405)
    assert one("listener.vmq.clustering.advertise", "[2001:db8::7]:44053"
               ).cluster_advertised_address == ("2001:db8::7", 44053)


@pytest.mark.parametrize("text, wrong", [
    ("203.0.113.7:0", "'203.0.113.7:0' has port 0, which other nodes cannot dial"),
    ("node1:44053", "'node1:44053' does not start with an IP address"),
])
def test_advertised_clustering_address_must_be_dialable(text: str, wrong: str) -> None:
    m = error_for("listener.vmq.clustering.advertise", text)
    assert m["wrong"] == wrong
    assert "port from 1 to 65535" in m["allowed"]


def test_any_number_of_named_tcp_listeners_replace_the_default() -> None:
    c = parse("listener.tcp.internal = 10.0.0.1:1883\nlistener.tcp.public = [::]:1884\n")
    assert c.tcp_listeners == {"internal": ("10.0.0.1", 1883), "public": ("::", 1884)}


def test_ssl_listener_with_its_files() -> None:
    c = parse("listener.ssl.default = 127.0.0.1:8883\nlistener.ssl.certfile = /c.pem\n"
              "listener.ssl.keyfile = /k.pem\nlistener.ssl.cafile = /ca.pem\n"
              "listener.ssl.require_certificate = on\n")
    assert c.ssl_listeners == {"default": ("127.0.0.1", 8883)}
    assert (c.listener_ssl_certfile, c.listener_ssl_keyfile, c.listener_ssl_cafile) == ("/c.pem", "/k.pem", "/ca.pem")
    assert c.listener_ssl_require_certificate is True
    assert c.tcp_listeners == {"default": ("127.0.0.1", 1883)}


def test_ssl_listener_without_certificate_is_refused() -> None:
    ms = errors("\nlistener.ssl.x = 127.0.0.1:8883\n")
    assert [(m["line"], m["key"]) for m in ms] == [("2", "listener.ssl.x"), ("2", "listener.ssl.x")]
    assert "needs listener.ssl.certfile" in ms[0]["wrong"]
    assert "needs listener.ssl.keyfile" in ms[1]["wrong"]


def test_require_certificate_without_cafile_is_refused() -> None:
    [m] = errors("listener.ssl.require_certificate = on\n")
    assert m["key"] == "listener.ssl.require_certificate"
    assert "listener.ssl.cafile" in m["wrong"]


def test_cluster_tls_with_its_three_files() -> None:
    c = parse("cluster.tls.certfile = ./etc/node.crt\ncluster.tls.keyfile = ./etc/node.key\n"
              "cluster.tls.cafile = /etc/ca\\#1.pem\n")
    assert (c.cluster_tls_certfile, c.cluster_tls_keyfile, c.cluster_tls_cafile) == (
        "./etc/node.crt", "./etc/node.key", "/etc/ca#1.pem")


def test_cluster_tls_certfile_alone_is_refused_naming_both_missing_files() -> None:
    ms = errors("\n\ncluster.tls.certfile = /n.crt\n")
    assert [(m["line"], m["key"]) for m in ms] == [("3", "cluster.tls.certfile")] * 2
    assert ms[0]["wrong"] == "TLS between nodes needs cluster.tls.keyfile, which is not set"
    assert ms[1]["wrong"] == "TLS between nodes needs cluster.tls.cafile, which is not set"
    assert ms[1]["allowed"] == "cluster.tls.certfile together with cluster.tls.cafile = <PEM file>"


def test_cluster_tls_without_cafile_is_refused() -> None:
    [m] = errors("cluster.tls.certfile = /n.crt\ncluster.tls.keyfile = /n.key\n")
    assert (m["line"], m["key"]) == ("1", "cluster.tls.certfile")
    assert "needs cluster.tls.cafile" in m["wrong"]


def test_cluster_tls_key_or_ca_without_certfile_is_refused() -> None:
    """Half a TLS setup would silently leave the links in plain text: an error, on each line."""
    ms = errors("cluster.tls.cafile = /ca.pem\nnodename = a@b\ncluster.tls.keyfile = /n.key\n")
    assert [(m["line"], m["key"]) for m in ms] == [("1", "cluster.tls.cafile"),
                                                   ("3", "cluster.tls.keyfile")]
    assert all("cluster.tls.certfile is not set" in m["wrong"] for m in ms)


def test_fixed_keys_win_over_name_slots() -> None:
    """listener.ssl.certfile is the certificate path, not a listener named 'certfile'."""
    c = parse("listener.ssl.certfile = ./etc/cert.pem\n")
    assert c.listener_ssl_certfile == "./etc/cert.pem"
    assert c.ssl_listeners == {}


def test_two_listeners_on_one_address_are_refused_naming_both() -> None:
    [m] = errors("listener.tcp.a = 127.0.0.1:2000\nlistener.tcp.b = 127.0.0.1:2000\n")
    assert (m["line"], m["key"]) == ("2", "listener.tcp.b")
    assert m["wrong"] == "127.0.0.1:2000 is already used by listener.tcp.a (line 1)"


def test_clash_with_a_default_is_reported_on_the_line_that_exists() -> None:
    [m] = errors("listener.tcp.a = 127.0.0.1:44053\n")
    assert (m["line"], m["key"]) == ("1", "listener.tcp.a")
    assert m["wrong"] == "127.0.0.1:44053 is already used by listener.vmq.clustering (by default)"


def test_port_zero_may_repeat() -> None:
    c = parse("listener.tcp.a = 127.0.0.1:0\nlistener.tcp.b = 127.0.0.1:0\nlistener.vmq.clustering = 127.0.0.1:0\n")
    assert c.tcp_listeners == {"a": ("127.0.0.1", 0), "b": ("127.0.0.1", 0)}


# ---------------------------------------------------------------------------
# Enums, names, strings, paths


@pytest.mark.parametrize("key, text", [
    ("queue_type", "lifo"), ("queue_type", "fifo"),
    ("log.console.level", "debug"), ("log.console.level", "warning"), ("log.console.level", "error"),
])
def test_enum_good(key: str, text: str) -> None:
    assert getattr(one(key, text), key.replace(".", "_")) == text


@pytest.mark.parametrize("key, text, allowed", [
    ("queue_type", "LIFO", "one of fifo, lifo"),
    ("queue_type", "stack", "one of fifo, lifo"),
    ("log.console.level", "trace", "one of debug, info, warning, error"),
    ("log.console.level", "warn", "one of debug, info, warning, error"),
])
def test_enum_bad(key: str, text: str, allowed: str) -> None:
    m = error_for(key, text)
    assert (m["wrong"], m["allowed"]) == (f"{text!r} is not a valid choice", allowed)


@pytest.mark.parametrize("text", ["leveldb", "memory", "my_store_plugin", "_x1"])
def test_message_store_accepts_any_plugin_name(text: str) -> None:
    assert one("message_store", text).message_store == text


@pytest.mark.parametrize("text", ["1store", "my-store", "a.b", "two words"])
def test_message_store_bad(text: str) -> None:
    m = error_for("message_store", text)
    assert m["allowed"].startswith("leveldb, postgresql, memory or the name of a plugin")


@pytest.mark.parametrize("text", ["a@b", "vmq_1-x@10.0.0.7", "node@host.example.com"])
def test_nodename_good(text: str) -> None:
    assert one("nodename", text).nodename == text


@pytest.mark.parametrize("text", ["vmqtw", "@host", "name@", "a b@c", "a@b@c"])
def test_nodename_bad(text: str) -> None:
    m = error_for("nodename", text)
    assert m["wrong"] == f"{text!r} is not name@host"
    assert m["allowed"].startswith("name@host")


def test_comments_and_escaped_hash() -> None:
    """A '#' after the value starts a comment; '\\#' is a literal '#'."""
    c = parse("  # a comment\n## doc\n\ndistributed_cookie = se\\#cret   # trailing\n"
              "vmq_acl.acl_file=/etc/acl  \r\n")
    assert c.distributed_cookie == "se#cret"
    assert c.vmq_acl_acl_file == "/etc/acl"


@pytest.mark.parametrize("key", ["distributed_cookie", "vmq_acl.acl_file", "platform_data_dir"])
def test_empty_strings_are_refused(key: str) -> None:
    assert error_for(key, "   # only a comment")["wrong"] == "the value is empty"


# ---------------------------------------------------------------------------
# Data dir, netsplit flags


def test_data_dir_is_resolved_against_the_working_directory(tmp_path: FsPath, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "etc" / "vernemq.conf"
    conf.parent.mkdir()
    conf.write_text("platform_data_dir = ./state\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    c = load_config(str(conf))
    assert c.data_dir == str(work / "state")
    assert c.platform_data_dir == "./state"
    assert c.source == str(conf)


def test_absolute_data_dir_is_kept() -> None:
    assert one("platform_data_dir", "/var/lib/vmqtw").data_dir == "/var/lib/vmqtw"


def test_trade_consistency_allows_all_but_register() -> None:
    """As VerneMQ's clustering page says: publish/subscribe/unsubscribe on, new connections still refused."""
    c = one("trade_consistency", "on")
    assert c.allow_publish_during_netsplit and c.allow_subscribe_during_netsplit
    assert c.allow_unsubscribe_during_netsplit
    assert c.allow_register_during_netsplit is False
    c = parse("trade_consistency = on\nallow_publish_during_netsplit = off\n")
    assert c.allow_publish_during_netsplit is True
    r = Config.default().replace(trade_consistency=True)
    assert (r.allow_publish_during_netsplit, r.allow_register_during_netsplit) == (True, False)


def test_netsplit_flags_individually() -> None:
    c = parse("allow_register_during_netsplit = on\nallow_unsubscribe_during_netsplit = on\n")
    assert (c.allow_register_during_netsplit, c.allow_publish_during_netsplit,
            c.allow_subscribe_during_netsplit, c.allow_unsubscribe_during_netsplit) == (True, False, False, True)


# ---------------------------------------------------------------------------
# Structural errors


def test_unknown_key_suggests_the_closest() -> None:
    m = error_for("max_inflight_message", "5")
    assert m["wrong"] == "unknown key (did you mean max_inflight_messages?)"


def test_unknown_key_suggestion_keeps_the_listener_name() -> None:
    m = error_for("listener.tpc.public", "127.0.0.1:1")
    assert m["wrong"] == "unknown key (did you mean listener.tcp.public?)"


def test_unknown_key_without_a_close_match() -> None:
    assert error_for("zzzzzz", "1")["wrong"] == "unknown key"


def test_listener_names_cannot_contain_dots() -> None:
    m = error_for("listener.tcp.a.b", "127.0.0.1:1")
    assert m["wrong"].startswith("unknown key")


def test_duplicate_key_names_the_first_line() -> None:
    ms = errors("retry_interval = 20\n\nretry_interval = 30\n")
    assert [(m["line"], m["key"], m["wrong"]) for m in ms] == [
        ("3", "retry_interval", "set twice (first on line 1)")]
    assert ms[0]["allowed"] == "each key once"


def test_duplicate_named_listener() -> None:
    [m] = errors("listener.tcp.a = 127.0.0.1:1\nlistener.tcp.a = 127.0.0.1:2\n")
    assert (m["line"], m["wrong"]) == ("2", "set twice (first on line 1)")


def test_line_without_equals() -> None:
    [m] = errors("allow_anonymous on\n")
    assert (m["line"], m["key"], m["wrong"]) == ("1", "allow_anonymous", "'allow_anonymous on' has no '='")
    [m] = errors("a:b c\n")
    assert (m["key"], m["wrong"]) == ("(no key)", "'a:b c' has no '='")


def test_line_without_key_and_bad_key() -> None:
    ms = errors("= on\nallow anonymous = on\n")
    assert [(m["line"], m["key"]) for m in ms] == [("1", "(no key)"), ("2", "(no key)")]
    assert ms[1]["wrong"] == "'allow anonymous' is not a valid key"


def test_all_problems_are_reported_together_in_line_order() -> None:
    text = "\n".join([
        "nodename = foo",                      # 1 bad value
        "max_inflight_message = 5",            # 2 unknown
        "retry_interval = 20",                 # 3 fine
        "retry_interval = 30",                 # 4 duplicate
        "just words",                          # 5 no '='
        "listener.ssl.x = 127.0.0.1:8883",     # 6 needs cert + key (cross check)
        "allow_anonymous = yes",               # 7 bad flag
    ]) + "\n"
    ms = errors(text)
    assert [(m["line"], m["key"]) for m in ms] == [
        ("1", "nodename"), ("2", "max_inflight_message"), ("4", "retry_interval"),
        ("5", "just"), ("6", "listener.ssl.x"), ("6", "listener.ssl.x"), ("7", "allow_anonymous")]
    assert {m["file"] for m in ms} == {F}


def test_line_numbers_count_newlines_only() -> None:
    """A form feed must not shift line numbers away from what an editor shows."""
    [m] = errors("# page\x0cbreak\nqueue_type = stack\n")
    assert m["line"] == "2"


def test_missing_file_is_one_sentence(tmp_path: FsPath) -> None:
    path = tmp_path / "nope.conf"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert message == f"The configuration file {path} does not exist."
    assert info.value.problems == ()


def test_non_utf8_file_is_one_sentence(tmp_path: FsPath) -> None:
    path = tmp_path / "bad.conf"
    path.write_bytes(b"nodename = \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "\n" not in str(info.value) and "not UTF-8" in str(info.value)


# ---------------------------------------------------------------------------
# The rendered template and the shipped file


def _keys_in(text: str) -> set[str]:
    """Keys set or commented out (``# key = value``) in a rendered file."""
    found = set()
    for line in text.split("\n"):
        m = re.match(r"^(?:# )?([A-Za-z0-9_.-]+) = ", line)
        if m:
            found.add(m.group(1))
    return found


def _covers(keys: set[str], setting: cfg.Setting) -> bool:
    if not setting.templated:
        return setting.key in keys
    return any(setting.matches(k) is not None for k in keys)


def test_rendered_defaults_parse_back_to_the_defaults() -> None:
    """The template and the schema cannot disagree: rendering every default parses to Config.default()."""
    text = render_default_config()
    assert parse_config(text, "<defaults>", cwd="/x") == Config.default(cwd="/x")


def test_rendered_template_documents_every_key() -> None:
    text = render_default_config()
    keys = _keys_in(text)
    for s in SCHEMA:
        assert _covers(keys, s), s.key
    blocks = text.split("\n\n")
    for s in SCHEMA:
        key = s.concrete_key()
        [block] = [b for b in blocks if re.search(rf"^(# )?{re.escape(key)} = ", b, re.M)]
        assert "## Default: " in block and "## Acceptable values:" in block, key
        assert s.doc.split()[0] in block, key


def test_every_name_templated_key_is_an_address() -> None:
    """parse_config keeps ``<name>`` keys as ``{name: (host, port)}``; only listeners may be templated."""
    templated = [s for s in SCHEMA if s.templated]
    assert templated and all(isinstance(s.type, cfg.Address) for s in templated)


def test_render_refuses_overrides_for_unknown_keys() -> None:
    with pytest.raises(ValueError):
        render_default_config({"no_such_key": "1"})


def test_shipped_file_is_the_quickstart_rendering() -> None:
    """
    etc/vernemq.conf is generated; regenerate it with
    .venv/bin/python -c "from vmqtw.config import render_quickstart_config as r; open('etc/vernemq.conf','w').write(r())"
    """
    assert SHIPPED.read_text(encoding="utf-8") == render_quickstart_config()


def test_shipped_file_parses_and_mentions_every_key() -> None:
    c = load_config(str(SHIPPED), cwd="/opt/vmq")
    assert c.allow_anonymous is True
    assert c.tcp_listeners == {"default": ("127.0.0.1", 1883)}
    assert c.nodename == "vmqtw@127.0.0.1"
    assert c.data_dir == "/opt/vmq/data"
    text = SHIPPED.read_text(encoding="utf-8")
    keys = _keys_in(text)
    for s in SCHEMA:
        assert _covers(keys, s), s.key
    # The anonymous quick-start switch carries its warning right above it.
    before = text.split("\nallow_anonymous = on\n")[0].rsplit("##", 1)[1]
    assert "127.0.0.1" in before and "QUICK START ONLY" in before


# Keys that config.py itself turns into other values: platform_data_dir
# becomes Config.data_dir, trade_consistency turns on three flags.
_CONSUMED_IN_CONFIG = {"platform_data_dir", "trade_consistency"}


def _read_outside_config() -> set[str]:
    """Config attributes some code outside vmqtw/config.py reads (``.attr``)."""
    sources = [p for p in (REPO / "vmqtw").rglob("*.py") if p.name != "config.py" or p.parent.name != "vmqtw"]
    sources += list((REPO / "twisted").rglob("*.py"))
    text = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    return {s.attr for s in SCHEMA if re.search(rf"\.{re.escape(s.attr)}\b", text)}


def test_every_key_is_read_by_the_code_or_marked_not_yet_in_effect() -> None:
    """
    Nothing promised that does not exist: a key some code reads is set in the
    shipped file; a key nothing reads is ``pending``, documented as not yet
    in effect and only commented out.  Once code reads a pending key, its
    mark must go (this test fails until it does).
    """
    read = _read_outside_config() | _CONSUMED_IN_CONFIG
    text = SHIPPED.read_text(encoding="utf-8")
    blocks = text.split("\n\n")
    for s in SCHEMA:
        key = s.concrete_key()
        [block] = [b for b in blocks if re.search(rf"^(# )?{re.escape(key)} = ", b, re.M)]
        if s.pending is None:
            assert s.attr in read, f"{s.key}: nothing reads Config.{s.attr}; mark it pending"
            assert cfg.PENDING_NOTE.split(":")[0] not in block, s.key
        else:
            assert s.attr not in read, f"{s.key} is read now: drop its pending mark"
            assert re.search(rf"^# {re.escape(key)} = ", block, re.M), s.key
            assert not re.search(rf"^{re.escape(key)} = ", block, re.M), s.key
            assert cfg.PENDING_NOTE.split(":")[0] in block, s.key


def test_coordinate_registrations_is_shipped_on_and_read() -> None:
    """Issue 17: registrations are coordinated (on by default, as VerneMQ)."""
    assert one("coordinate_registrations", "off").coordinate_registrations is False
    text = SHIPPED.read_text(encoding="utf-8")
    assert "\ncoordinate_registrations = on\n" in text
    assert "not yet coordinated" not in text


# ---------------------------------------------------------------------------
# Properties


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**12))
def test_duration_render_parse_round_trip(ms: int) -> None:
    d = cfg.Duration(unit="s")
    seconds = ms / 1000
    assert d.parse(d.render(seconds)) == seconds


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["w", "d", "h", "m", "s", "ms"])),
                min_size=1, max_size=4))
def test_duration_parts_add_up(parts: list[tuple[int, str]]) -> None:
    factor = {"w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert cfg.Duration().parse(text) == sum(n * factor[u] for n, u in parts) / 1000


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**50))
def test_bytesize_render_parse_round_trip(n: int) -> None:
    b = cfg.ByteSize()
    assert b.parse(b.render(n)) == n


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**7), st.integers(0, 2**28))
def test_round_trip_through_a_whole_file(ms: int, size: int) -> None:
    """Render a value into a file, parse the file: the same value comes back."""
    seconds = max(ms, 1000) / 1000
    text = render_default_config({
        "retry_interval": cfg.Duration().render(seconds),
        "outgoing_clustering_buffer_size": cfg.ByteSize().render(size),
    })
    c = parse_config(text, F)
    assert (c.retry_interval, c.outgoing_clustering_buffer_size) == (seconds, size)


_LINE = st.one_of(
    st.text(alphabet="abcz_.-=#\\@:[]0123456789 \t\r\x0c", max_size=30),
    st.sampled_from([s.concrete_key() for s in SCHEMA]).flatmap(
        lambda k: st.text(alphabet="abclo0123456789smhMBK.:[]@#\\ -n", max_size=20).map(lambda v: f"{k} = {v}")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, max_size=12))
def test_any_text_gives_a_config_or_well_formed_errors(lines: list[str]) -> None:
    """Whatever the file holds, the parser answers with a Config or with one well-formed line per problem."""
    try:
        parse_config("\n".join(lines), F)
    except ConfigError as e:
        for line in str(e).split("\n"):
            m = PROBLEM_RE.match(line)
            assert m and m["file"] == F and 1 <= int(m["line"]) <= max(1, len(lines)), line


def test_heartbeat_settings_bound_the_detection_of_a_silent_link() -> None:
    config = parse("cluster.heartbeat_interval = 250ms\ncluster.heartbeat_timeout = 1s\n")
    assert (config.cluster_heartbeat_interval, config.cluster_heartbeat_timeout) == (0.25, 1.0)
    default = parse("")
    assert (default.cluster_heartbeat_interval, default.cluster_heartbeat_timeout) == (1.0, 3.0)


def test_a_heartbeat_timeout_not_longer_than_the_interval_is_refused() -> None:
    [match] = errors("cluster.heartbeat_interval = 2s\ncluster.heartbeat_timeout = 2s\n")
    assert match.group("key") == "cluster.heartbeat_timeout"
    assert "longer than cluster.heartbeat_interval" in match.group(0)
