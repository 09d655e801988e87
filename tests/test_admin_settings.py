"""
``vmqtw-admin set`` / ``show`` and ``plugin show`` without sockets: the
run-time keys and their checks (the configuration file's types and
sentences), where each value takes effect, the node's handlers on fakes
asking the other members, the command lines and the texts.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import attrs
import pytest
from twisted.internet import defer, task
from twisted.logger import LogLevel, PredicateResult

from tests.test_admin import FakePeers, FakeTransport, call, result
from tests.test_queue import Outlet, message
from vmqtw.admin.cli import _call_args
from vmqtw.admin.commands import UsageError, command_help, parse_args
from vmqtw.admin.inspect import PLUGIN_COLUMNS, plugin_rows
from vmqtw.admin.output import render_rows, render_table, set_text
from vmqtw.admin.server import SETTING_SET, SETTING_SHOW, AdminCommandError, AdminHandlers
from vmqtw.admin.settings import RuntimeSettings
from vmqtw.broker.queue import QueueLimits, SubscriberQueue
from vmqtw.config import (RUNTIME_KEYS, SCHEMA, Config, ConfigError, parse_config,
                          parse_runtime_value)
from vmqtw.mqtt.session import SessionSettings
from vmqtw.store.memory import MemoryMessageStore
from vmqtw.types import SubscriberId


# -- the keys ---------------------------------------------------------------------

def test_every_run_time_key_is_a_fixed_key_of_the_schema_and_of_config():
    fixed = {s.key: s.attr for s in SCHEMA if not s.templated}
    names = {a.name for a in attrs.fields(Config)}
    for key in RUNTIME_KEYS:
        assert key in fixed and fixed[key] in names


@pytest.mark.parametrize("key, text, value", [
    ("allow_publish_during_netsplit", "on", True),
    ("trade_consistency", "off", False),
    ("max_inflight_messages", "0", 0),
    ("max_offline_messages", "-1", -1),
    ("log.console.level", "debug", "debug"),
])
def test_values_are_parsed_by_the_schemas_types(key, text, value):
    assert parse_runtime_value(key, text) == value


@pytest.mark.parametrize("key, text, sentence", [
    ("allow_publish_during_netsplit", "yes",
     "allow_publish_during_netsplit: 'yes' is not a flag; allowed: on or off"),
    ("max_inflight_messages", "70000",
     "max_inflight_messages: '70000' is too large; allowed: an integer from 0 to 65535"),
    ("log.console.level", "loud",
     "log.console.level: 'loud' is not a valid choice; allowed: one of debug, info, warning, "
     "error"),
])
def test_a_wrong_value_is_the_configuration_files_sentence(key, text, sentence, tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_runtime_value(key, text)
    assert str(info.value) == sentence
    # ... the very words of the file's error, after its FILE:LINE:
    with pytest.raises(ConfigError) as in_file:
        parse_config("%s = %s\n" % (key, text), "f.conf")
    assert str(in_file.value) == "f.conf:1: " + sentence


def test_a_key_that_cannot_change_at_run_time_or_does_not_exist_is_one_sentence():
    with pytest.raises(ConfigError) as info:
        parse_runtime_value("listener.tcp.default", "127.0.0.1:1")
    assert str(info.value).startswith(
        "listener.tcp.default cannot be changed on a running node: set it in the "
        "configuration file and restart the node (set can change allow_register_during_")
    with pytest.raises(ConfigError) as unknown:
        parse_runtime_value("allow_publsh_during_netsplit", "on")
    assert str(unknown.value).startswith(
        "allow_publsh_during_netsplit: unknown key (did you mean "
        "allow_publish_during_netsplit?); allowed: allow_register_during_netsplit, ")
    assert "\n" not in str(info.value) + str(unknown.value)


# -- where the values take effect ----------------------------------------------------

class FakeRegistry:
    def __init__(self, limits: QueueLimits) -> None:
        self.limits = limits
        self.queues: Dict[SubscriberId, SubscriberQueue] = {}


def runtime(**config: str) -> Tuple[RuntimeSettings, List[SessionSettings], FakeRegistry]:
    parsed = parse_config("".join("%s = %s\n" % (k.replace("__", "."), v)
                                  for k, v in config.items()), "t.conf")
    sessions = [SessionSettings(), SessionSettings(use_identity_as_username=True)]
    registry = FakeRegistry(QueueLimits(max_offline_messages=parsed.max_offline_messages))
    return RuntimeSettings.from_config(parsed, sessions, registry), sessions, registry


def test_netsplit_flags_reach_every_listeners_settings_at_once():
    settings, sessions, _ = runtime()
    assert not any(s.allow_publish_during_netsplit for s in sessions)
    assert settings.set("allow_publish_during_netsplit", "on") == "on"
    assert all(s.allow_publish_during_netsplit for s in sessions)
    assert not any(s.allow_register_during_netsplit for s in sessions)
    settings.set("allow_register_during_netsplit", "on")
    assert all(s.allow_register_during_netsplit for s in sessions)
    settings.set("allow_publish_during_netsplit", "off")
    assert not any(s.allow_publish_during_netsplit for s in sessions)


def test_trade_consistency_turns_the_three_traded_flags_on_and_gives_them_back():
    settings, sessions, _ = runtime(allow_subscribe_during_netsplit="on")
    settings.set("trade_consistency", "on")
    for s in sessions:
        assert (s.allow_publish_during_netsplit, s.allow_subscribe_during_netsplit,
                s.allow_unsubscribe_during_netsplit, s.allow_register_during_netsplit) == (
            True, True, True, False)
    # A traded flag turned off stays on in force while trade_consistency is on.
    assert settings.set("allow_publish_during_netsplit", "off") == "on"
    assert settings.show("allow_publish_during_netsplit") == "on"
    settings.set("trade_consistency", "off")
    for s in sessions:
        assert (s.allow_publish_during_netsplit, s.allow_subscribe_during_netsplit,
                s.allow_unsubscribe_during_netsplit) == (False, True, False)


def test_trade_consistency_on_in_the_file_can_be_turned_off_at_run_time():
    """The flags go back to what the file wrote, not to the folded values."""
    settings, sessions, _ = runtime(trade_consistency="on",
                                    allow_unsubscribe_during_netsplit="on")
    assert all(s.allow_publish_during_netsplit for s in sessions)
    settings.set("trade_consistency", "off")
    for s in sessions:
        assert (s.allow_publish_during_netsplit, s.allow_subscribe_during_netsplit,
                s.allow_unsubscribe_during_netsplit) == (False, False, True)
    assert settings.show("allow_publish_during_netsplit") == "off"


def test_the_shared_subscription_policy_changes_for_the_next_message():
    from vmqtw.broker.shared import SharedGroups
    settings, _, registry = runtime()
    registry.subscription_table = attrs.make_class("Table", ["shared"])(SharedGroups("n@h"))
    assert settings.show("shared_subscription_policy") == "prefer_local"
    assert settings.set("shared_subscription_policy", "local_only") == "local_only"
    assert registry.subscription_table.shared.policy == "local_only"
    with pytest.raises(ConfigError):
        settings.set("shared_subscription_policy", "round_robin")


def test_queue_limits_apply_to_new_sessions_and_to_existing_queues_at_once():
    settings, _, registry = runtime(max_offline_messages="10")
    store = MemoryMessageStore()
    store.open()
    sid = SubscriberId("", "parked")
    queue = SubscriberQueue(sid, False, registry.limits, task.Clock(), store=store)
    registry.queues[sid] = queue
    for n in range(3):
        queue.enqueue(message(n), 1)
    assert settings.set("max_offline_messages", "4") == "4"
    assert registry.limits.max_offline_messages == 4     # new sessions
    assert queue.limits.max_offline_messages == 4        # and this one
    for n in range(3, 8):
        queue.enqueue(message(n), 1)
    assert queue.size() == 4, "nothing already queued is dropped; later arrivals meet 4"
    assert queue.counters.dropped_offline == 4
    settings.set("max_inflight_messages", "1")
    assert queue.limits.max_inflight_messages == 1 and queue.limits.max_offline_messages == 4


def test_a_new_in_flight_window_reaches_connected_clients_at_once():
    """A wider max_inflight_messages fills a connected client's window at
    once, a narrower one sends nothing more until acknowledgements bring
    the count under it, and an MQTT 5.0 client's receive maximum stays the
    upper bound [MQTT-3.3.4-9]."""
    settings, _, registry = runtime()
    settings.set("max_inflight_messages", "2")
    queues = {}
    for name, receive_maximum in (("plain", 0), ("v5", 3)):
        sid = SubscriberId("", name)
        queue = SubscriberQueue(sid, True, registry.limits, task.Clock())
        outlet = Outlet()
        queue.attach(outlet, receive_maximum=receive_maximum)
        registry.queues[sid] = queue
        for n in range(8):
            queue.enqueue(message(n), 1)
        queues[name] = (queue, outlet)
    assert [len(outlet.sent) for _q, outlet in queues.values()] == [2, 2]
    settings.set("max_inflight_messages", "5")
    assert [len(queue.inflight) for queue, _o in queues.values()] == [5, 3]
    settings.set("max_inflight_messages", "1")
    plain, outlet = queues["plain"]
    for packet_id in list(plain.inflight)[:4]:
        plain.puback(packet_id)
    assert len(plain.inflight) == 1 and len(outlet.sent) == 5
    plain.puback(next(iter(plain.inflight)))
    assert len(plain.inflight) == 1 and len(outlet.sent) == 6


def test_the_console_log_level_changes_on_the_filter_in_force():
    settings, _, _ = runtime(log__console__level="warning")
    debug = {"log_level": LogLevel.debug, "log_namespace": "vmqtw.x"}
    warn = {"log_level": LogLevel.warn, "log_namespace": "vmqtw.x"}
    assert settings.log_filter(debug) == PredicateResult.no
    assert settings.log_filter(warn) == PredicateResult.maybe
    assert settings.show("log.console.level") == "warning"
    settings.set("log.console.level", "debug")
    assert settings.log_filter(debug) == PredicateResult.maybe
    assert settings.show("log.console.level") == "debug"


# -- the handlers -------------------------------------------------------------------

class Cluster:
    def __init__(self, node: str, peers: FakePeers, clock: task.Clock) -> None:
        self.node, self.peers, self.clock = node, peers, clock

    def members(self) -> frozenset:
        return self.peers.members()


class PeerTransport(FakeTransport):
    """Answers SETTING_SET / SETTING_SHOW as the other members would (or fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: Dict[str, Any] = {}

    def call(self, peer: str, method: str, args: tuple, timeout: float) -> defer.Deferred:
        self.calls.append((peer, method, args))
        answer = self.answers.get(peer)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        if method == SETTING_SET:
            return defer.succeed([[key, text] for key, text in args[0]])
        return defer.succeed([[key, "off"] for key in args[0]])


def node_handlers(others: Tuple[str, ...] = ("b@h", "c@h")) -> Tuple[AdminHandlers,
                                                                      PeerTransport,
                                                                      RuntimeSettings]:
    clock = task.Clock()
    transport = PeerTransport()
    transport.up = set(others)
    h = AdminHandlers(transport, Cluster("a@h", FakePeers("a@h", others), clock), clock)
    h.settings = runtime()[0]
    h.register()
    return h, transport, h.settings


def test_set_applies_here_and_on_every_other_member():
    _h, transport, settings = node_handlers()
    done = result(call(transport, "admin.setting.set",
                       [["allow_publish_during_netsplit", "on"]], False))
    assert done == {"nodes": ["a@h", "b@h", "c@h"],
                    "values": [("allow_publish_during_netsplit", "on")]}
    assert settings.get("allow_publish_during_netsplit") is True
    assert sorted(peer for peer, method, _ in transport.calls if method == SETTING_SET) == [
        "b@h", "c@h"]
    assert set_text(done) == ("Done: allow_publish_during_netsplit=on on a@h, b@h, c@h "
                              "(until they restart).")


def test_set_local_asks_no_other_member():
    _h, transport, settings = node_handlers()
    done = result(call(transport, "admin.setting.set", [["max_online_messages", "5"]], True))
    assert done["nodes"] == ["a@h"] and transport.calls == []
    assert settings.get("max_online_messages") == 5
    assert set_text(done) == "Done: max_online_messages=5 on a@h (until it restarts)."


def test_a_wrong_value_changes_nothing_anywhere():
    _h, transport, settings = node_handlers()
    failure = result(call(transport, "admin.setting.set",
                          [["max_online_messages", "5"], ["trade_consistency", "maybe"]], False))
    assert failure.check(AdminCommandError)
    assert failure.getErrorMessage() == ("trade_consistency: 'maybe' is not a flag; allowed: "
                                         "on or off")
    assert transport.calls == [] and settings.get("max_online_messages") == 1000


def test_a_member_that_does_not_answer_is_named_and_fails_the_command():
    _h, transport, settings = node_handlers()
    transport.answers["c@h"] = RuntimeError("timeout")
    transport.up.discard("b@h")
    failure = result(call(transport, "admin.setting.set",
                          [["allow_publish_during_netsplit", "on"]], False))
    assert failure.check(AdminCommandError)
    assert failure.getErrorMessage() == (
        "allow_publish_during_netsplit=on is in force on a@h, but b@h, c@h did not answer and "
        "keep the old value.")
    assert settings.get("allow_publish_during_netsplit") is True


def test_show_lists_each_members_value_and_who_did_not_answer():
    _h, transport, _settings = node_handlers()
    transport.answers["c@h"] = RuntimeError("timeout")
    shown = result(call(transport, "admin.setting.show",
                        ["allow_publish_during_netsplit", "max_online_messages"], False))
    assert shown == {"rows": [
        {"node": "a@h", "key": "allow_publish_during_netsplit", "value": "off"},
        {"node": "a@h", "key": "max_online_messages", "value": "1000"},
        {"node": "b@h", "key": "allow_publish_during_netsplit", "value": "off"},
        {"node": "b@h", "key": "max_online_messages", "value": "off"}],
        "unreachable": ["c@h"]}
    local = result(call(transport, "admin.setting.show", [], True))
    assert [row["key"] for row in local["rows"]] == list(RUNTIME_KEYS)
    refused = result(call(transport, "admin.setting.show", ["nodename"], True))
    assert refused.getErrorMessage().startswith("nodename is not a run-time setting; show "
                                                "knows allow_register_during_netsplit")


def test_peers_apply_and_answer_through_their_own_calls():
    _h, transport, settings = node_handlers()
    assert call_peer(transport, SETTING_SET, [["log.console.level", "error"]]) == [
        ("log.console.level", "error")]
    assert settings.get("log.console.level") == "error"
    assert call_peer(transport, SETTING_SHOW, ["log.console.level"]) == [
        ("log.console.level", "error")]


def call_peer(transport: FakeTransport, method: str, *args: Any) -> Any:
    return result(call(transport, method, *args, caller="b@h"))


def test_a_node_without_run_time_settings_says_so():
    h, transport, _ = node_handlers()
    h.settings = None
    failure = result(call(transport, "admin.setting.set", [["trade_consistency", "on"]], True))
    assert failure.getErrorMessage() == "This node has no run-time settings."


# -- command lines and texts -----------------------------------------------------------

def test_set_and_show_command_lines():
    inv = parse_args(["set", "allow_publish_during_netsplit=on", "max_online_messages=10",
                      "--local"])
    assert (inv.command, inv.method) == ("set", "admin.setting.set")
    assert _call_args(inv, None) == ([["allow_publish_during_netsplit", "on"],
                                      ["max_online_messages", "10"]], True)
    show = parse_args(["--format=json", "show", "trade_consistency", "log.console.level"])
    assert (show.command, show.format) == ("show", "json")
    assert _call_args(show, None) == (["trade_consistency", "log.console.level"], False)
    assert _call_args(parse_args(["show"]), None) == ([], False)
    # ``session show`` and the others are still themselves.
    assert parse_args(["session", "show"]).command == "session show"


@pytest.mark.parametrize("argv, sentence", [
    (["set"], "set needs KEY=VALUE, e.g. set allow_publish_during_netsplit=on."),
    (["set", "trade_consistency"], "set takes KEY=VALUE, not 'trade_consistency'."),
    (["set", "trade_consistency=yes"],
     "trade_consistency: 'yes' is not a flag; allowed: on or off"),
    (["set", "nodename=x@y"], "nodename cannot be changed on a running node"),
    (["set", "trade_consistency=on", "trade_consistency=off"],
     "The key trade_consistency is given twice."),
    (["set", "trade_consistency=on", "--yes"], "set takes KEY=VALUE and --local only."),
    (["set", "trade_consistency=on", "--all"], "set does not take --all; it takes --local."),
    (["show", "trade_consistency=on"], "show takes keys without values, not "
                                      "'trade_consistency=on'."),
    (["show", "nodename"], "nodename is not a run-time setting; show knows "),
    (["show", "nodenam"], "nodenam: unknown key (did you mean nodename?)"),
])
def test_set_and_show_mistakes_are_one_sentence(argv, sentence):
    with pytest.raises(UsageError) as info:
        parse_args(argv)
    assert str(info.value).startswith(sentence) and "\n" not in str(info.value)


def test_set_help_says_it_is_not_kept_across_a_restart_and_lists_the_keys():
    text = command_help("vmqtw-admin", "set")
    assert text.startswith("Usage: vmqtw-admin [--config PATH] [--format=human|json] set "
                           "KEY=VALUE [KEY=VALUE ...] [--local]\n")
    flat = " ".join(text.split())
    assert "not kept across a restart" in flat
    for key in RUNTIME_KEYS:
        assert key in flat
    assert "max_inflight_messages (an integer from 0 to 65535)" in flat
    assert parse_args(["set", "--help"]).argument("command") == "set"


def test_show_table_and_json():
    value = {"rows": [{"node": "a@h", "key": "trade_consistency", "value": "on"}],
             "unreachable": ["b@h"]}
    assert render_rows(("node", "key", "value"), value).splitlines() == [
        "+------+-------------------+-------+",
        "| node | key               | value |",
        "+------+-------------------+-------+",
        "| a@h  | trade_consistency | on    |",
        "+------+-------------------+-------+",
        "Not listed: b@h did not answer."]
    assert json.loads(render_rows(("node", "key", "value"), value, "json")) == {
        "type": "table", "table": value["rows"], "unreachable": ["b@h"]}


# -- plugin show ------------------------------------------------------------------------

class Store:
    path = "/data/msgstore"


class Metadata:
    pass


class Authenticator:
    passwords = Metadata()
    acl = Store()


def test_plugin_rows_name_the_plugins_in_force_their_hooks_and_code():
    config = parse_config("plugins.vmq_acl = on\nvmq_acl.acl_file = /etc/vmq.acl\n",
                          "p.conf", cwd="/srv")
    rows = plugin_rows(config, Store(), Metadata(), Authenticator())
    assert [(r["plugin"], r["type"]) for r in rows] == [
        ("leveldb", "message_store"), ("plumtree", "metadata_store"), ("vmq_acl", "auth")]
    assert rows[0]["hooks"] == ["msg_store_write", "msg_store_read", "msg_store_delete",
                                "msg_store_find"]
    assert rows[0]["module"] == "tests.test_admin_settings:Store"
    assert rows[0]["settings"] == "path=/data/msgstore, leveldb.sync=off"
    assert rows[1]["settings"] == "path=/srv/data/metadata"
    assert rows[2] == {"plugin": "vmq_acl", "type": "auth",
                       "hooks": ["auth_on_publish", "auth_on_subscribe"],
                       "module": "tests.test_admin_settings:Store",
                       "settings": "vmq_acl.acl_file=/etc/vmq.acl"}
    assert render_table(PLUGIN_COLUMNS, rows).splitlines()[3].startswith(
        "| leveldb  | message_store  | msg_store_write, msg_store_read, ")


def test_plugin_rows_with_passwords_anonymity_and_a_shared_store_hide_the_dsn():
    config = parse_config("plugins.vmq_passwd = on\nallow_anonymous = on\nmessage_store = "
                          "postgresql\npostgresql.dsn = host=db password=secret\n", "p.conf")
    rows = plugin_rows(config, Store(), Metadata(), Authenticator())
    assert [r["plugin"] for r in rows] == ["postgresql", "plumtree", "vmq_passwd",
                                           "allow_anonymous"]
    assert "secret" not in json.dumps(rows)
    assert rows[2]["hooks"] == ["auth_on_register"]
    assert rows[3]["module"] == "tests.test_admin_settings:Authenticator"


def test_plugin_show_handler_and_command_line():
    h, transport, _ = node_handlers()
    h.plugins = [{"plugin": "memory"}]
    assert result(call(transport, "admin.plugin.show")) == [{"plugin": "memory"}]
    assert parse_args(["plugin", "show"]).method == "admin.plugin.show"
    assert call(transport, "admin.plugin.show", caller="b@h").result.check(AdminCommandError)
