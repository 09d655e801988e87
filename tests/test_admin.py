"""
``vmqtw-admin`` without sockets: command-line parsing, output, the node's
admin handlers on fakes and a ``task.Clock``, and the twistd subcommand.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import pytest
from twisted.internet import defer, task

from vmqtw.admin import tap
from vmqtw.admin.client import COMMAND_ERROR, _failure_sentence
from vmqtw.admin.commands import UsageError, parse_args, parse_node_address
from vmqtw.admin.output import cluster_rows, leave_text, render_table, render_text
from vmqtw.admin.server import OFFLINE_COUNTS, AdminCommandError, AdminHandlers
from vmqtw.errors import PeerUnreachable
from vmqtw.metadata.membership import NotPresent
from vmqtw.types import SubscriberId

ADMIN = "admin:1-abcd"


# -- command line ----------------------------------------------------------------

def test_show_status_and_options_anywhere():
    inv = parse_args(["cluster", "show", "--config", "x.conf", "--format=json"])
    assert (inv.command, inv.method, inv.config, inv.format) == (
        "cluster show", "admin.cluster.show", "x.conf", "json")
    status = parse_args(["--config=y.conf", "cluster", "status"])
    assert status.method == "admin.cluster.show" and status.config == "y.conf"
    assert parse_args(["cluster", "show"]).config == "etc/vernemq.conf"


def test_join_and_leave_arguments():
    join = parse_args(["cluster", "join", "discovery-node=vmqtw@10.0.0.2:4405"])
    assert join.argument("discovery-node") == "vmqtw@10.0.0.2:4405"
    leave = parse_args(["cluster", "leave", "node=vmqtw@10.0.0.3"])
    assert leave.method == "admin.cluster.leave" and leave.argument("node") == "vmqtw@10.0.0.3"


@pytest.mark.parametrize("argv, fragment", [
    ([], "No command given; the commands are: cluster show"),
    (["cluster", "frob"], "Unknown command 'cluster frob'; the commands are: cluster show"),
    (["cluster", "join"], "cluster join needs discovery-node=NAME@HOST[:PORT]."),
    (["cluster", "leave", "nod=x@y"], "cluster leave does not take 'nod'; it takes node=NAME@HOST."),
    (["cluster", "show", "x=1"], "cluster show does not take 'x'; it takes no arguments."),
    (["cluster", "leave", "node="], "needs a value"),
    (["--verbose", "cluster", "show"], "Unknown option --verbose; the options are --config PATH"),
    (["--format=xml", "cluster", "show"], "--format takes human or json"),
    (["cluster", "show", "--config"], "The option --config needs a value."),
])
def test_usage_errors_are_one_sentence_naming_what_is_allowed(argv, fragment):
    with pytest.raises(UsageError) as info:
        parse_args(argv)
    message = str(info.value)
    assert fragment in message
    assert message.endswith(".") and "\n" not in message


def test_node_address():
    assert parse_node_address("vmqtw@127.0.0.5") == ("vmqtw@127.0.0.5", "127.0.0.5", None)
    assert parse_node_address("n-1@host.example:44053") == ("n-1@host.example", "host.example", 44053)
    for bad in ("vmqtw", "@h", "a@b:0", "a@b:70000", "a b@c", "a@b:x"):
        with pytest.raises(UsageError):
            parse_node_address(bad)


# -- output ----------------------------------------------------------------------

def test_table_like_vernemq_and_json():
    rows = cluster_rows([("vmqtw@127.0.0.5", True), ("vmqtw@127.0.0.66", False)])
    assert render_table(("Node", "Running"), rows).splitlines() == [
        "+------------------+---------+",
        "| Node             | Running |",
        "+------------------+---------+",
        "| vmqtw@127.0.0.5  | true    |",
        "| vmqtw@127.0.0.66 | false   |",
        "+------------------+---------+",
    ]
    assert json.loads(render_table(("Node", "Running"), rows, "json")) == {
        "type": "table", "table": [{"Node": "vmqtw@127.0.0.5", "Running": True},
                                   {"Node": "vmqtw@127.0.0.66", "Running": False}]}
    assert json.loads(render_text("Done", "json")) == {"type": "text", "text": "Done"}


def test_failure_sentences():
    assert _failure_sentence(COMMAND_ERROR + ": A node cannot join itself.") == \
        "A node cannot join itself."
    assert "older version" in _failure_sentence("UnknownMethod: 'admin.x'")
    assert _failure_sentence("KeyError: 'x'") == "The node failed to run the command: KeyError: 'x'."


# -- the node's handlers on fakes ---------------------------------------------------

class FakeTransport:
    def __init__(self) -> None:
        self.handlers: Dict[str, Any] = {}
        self.addresses: List[Tuple[str, Optional[tuple]]] = []
        self.up: set = set()
        #: peer -> what its OFFLINE_COUNTS answers (an Exception fails the call)
        self.counts: Dict[str, Any] = {}
        self.calls: List[Tuple[str, str, tuple]] = []

    def call(self, peer: str, method: str, args: tuple, timeout: float) -> defer.Deferred:
        self.calls.append((peer, method, args))
        answer = self.counts[peer]
        return defer.fail(answer) if isinstance(answer, Exception) else defer.succeed(answer)

    def register_call_handler(self, method: str, handler: Any) -> None:
        self.handlers[method] = handler

    def set_peer_address(self, peer: str, address: Optional[tuple]) -> None:
        self.addresses.append((peer, address))

    def connected(self, peer: str) -> bool:
        return peer in self.up

    def connected_peers(self) -> List[str]:
        return sorted(self.up)


class FakePeers:
    def __init__(self, node: str, others: Tuple[str, ...] = ()) -> None:
        self._members = {node, *others}
        self.node = node
        self.joins: List[Tuple[str, tuple]] = []
        self.join_result: Optional[defer.Deferred] = None

    def members(self) -> frozenset:
        return frozenset(self._members)

    def cluster_status(self) -> List[Tuple[str, bool]]:
        return [(n, n == self.node) for n in sorted(self._members)]

    @property
    def ready(self) -> bool:
        return len(self._members) == 1

    def leave(self, node: str) -> None:
        if node not in self._members:
            raise NotPresent(node)
        self._members.discard(node)

    def join(self, seed: str, address: tuple) -> defer.Deferred:
        self.joins.append((seed, address))
        if self.join_result is not None:
            return self.join_result
        self._members.add(seed)
        return defer.succeed(frozenset(self._members))


class FakeCluster:
    def __init__(self, node: str, peers: FakePeers, clock: task.Clock) -> None:
        self.node, self.peers, self.clock = node, peers, clock


class FakeReadiness:
    netsplits_detected = 2
    netsplits_resolved = 1


def handlers(others: Tuple[str, ...] = ()):
    clock = task.Clock()
    transport = FakeTransport()
    peers = FakePeers("a@h", others)
    h = AdminHandlers(transport, FakeCluster("a@h", peers, clock), clock,
                      readiness=FakeReadiness(), connect_timeout=2.0)
    h.register()
    return h, transport, peers, clock


def call(transport: FakeTransport, method: str, *args: Any, caller: str = ADMIN) -> Any:
    return defer.maybeDeferred(transport.handlers[method], caller, *args)


def result(d: defer.Deferred) -> Any:
    out: List[Any] = []
    d.addBoth(out.append)
    assert out, "deferred has not fired"
    return out[0]


def test_show_and_status():
    _, transport, _, _ = handlers(("b@h",))
    assert result(call(transport, "admin.cluster.show")) == [("a@h", True), ("b@h", False)]
    transport.up = {"b@h", ADMIN}
    status = result(call(transport, "admin.node.status"))
    assert status == {"node": "a@h", "members": ["a@h", "b@h"], "ready": False,
                      "connected": ["b@h"], "netsplits_detected": 2, "netsplits_resolved": 1}


def test_only_admin_clients_may_call():
    _, transport, _, _ = handlers()
    failure = result(call(transport, "admin.cluster.show", caller="b@h"))
    assert failure.check(AdminCommandError)


def test_leave_unknown_node_names_the_members():
    _, transport, peers, _ = handlers(("b@h",))
    failure = result(call(transport, "admin.cluster.leave", "z@h"))
    assert failure.check(AdminCommandError)
    assert str(failure.value) == "z@h is not a member of the cluster; the members are a@h, b@h."
    left = result(call(transport, "admin.cluster.leave", "b@h"))
    assert (left["members"], left["down"]) == (["a@h"], True)


def test_join_self_is_refused():
    _, transport, peers, _ = handlers()
    failure = result(call(transport, "admin.cluster.join", "a@h", "127.0.0.1", 1))
    assert failure.check(AdminCommandError) and "cannot join itself" in str(failure.value)
    assert peers.joins == [] and transport.addresses == []


def test_join_waits_for_the_link_then_joins():
    _, transport, peers, clock = handlers()
    d = call(transport, "admin.cluster.join", "b@h", "10.0.0.2", 4405)
    assert transport.addresses == [("b@h", ("10.0.0.2", 4405))]
    clock.advance(0.5)
    assert not d.called and peers.joins == []
    transport.up.add("b@h")
    clock.advance(0.05)
    assert result(d) == ["a@h", "b@h"]
    assert peers.joins == [("b@h", ("10.0.0.2", 4405))]


def test_join_of_an_unreachable_seed_fails_and_forgets_it():
    _, transport, peers, clock = handlers()
    d = call(transport, "admin.cluster.join", "b@h", "10.0.0.2", 4405)
    clock.advance(1.9)
    assert not d.called
    clock.advance(0.2)
    failure = result(d)
    assert failure.check(AdminCommandError)
    assert str(failure.value) == ("The discovery node b@h cannot be reached at 10.0.0.2:4405 "
                                  "(is it running, with the same distributed_cookie?).")
    assert transport.addresses[-1] == ("b@h", None)
    assert peers.joins == []


def test_join_whose_state_fetch_fails_forgets_the_seed():
    _, transport, peers, clock = handlers()
    peers.join_result = defer.fail(PeerUnreachable("b@h went down during the call"))
    transport.up.add("b@h")
    failure = result(call(transport, "admin.cluster.join", "b@h", "10.0.0.2", 4405))
    assert failure.check(AdminCommandError)
    assert transport.addresses[-1] == ("b@h", None)


def test_join_rejects_malformed_arguments():
    _, transport, _, _ = handlers()
    assert result(call(transport, "admin.cluster.join", "b@h", "h", "1")).check(AdminCommandError)


# -- the twistd subcommand ------------------------------------------------------------

def test_twistd_options_run_the_command_with_every_argument_and_exit_with_its_status():
    """The command runs while twistd parses options, before its pidfile check."""
    seen: List[Any] = []
    options = tap.Options()
    options.runner = lambda argv, out, err, prog: seen.append((list(argv), prog)) or 7
    with pytest.raises(SystemExit) as info:
        options.parseOptions(["cluster", "show", "--config", "x.conf"])
    assert info.value.code == 7
    assert seen == [(["cluster", "show", "--config", "x.conf"], "twistd vmqtw-admin")]


def test_twistd_exits_with_the_status_and_one_sentence(capsys):
    with pytest.raises(SystemExit) as info:
        tap.Options().parseOptions(["cluster", "frob"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("twistd vmqtw-admin: Unknown command 'cluster frob'")
    assert err.count("\n") == 1


def test_missing_config_is_one_sentence(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        tap.Options().parseOptions(["--config", str(tmp_path / "nope.conf"), "cluster", "show"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "nope.conf does not exist" in err and err.count("\n") == 1


def test_node_status_reports_the_broker_counters():
    from vmqtw.testing import mqttbytes as B
    from vmqtw.testing.inprocess_broker import Broker

    broker = Broker()
    broker.subscriber("online", ("t/#", 1))
    offline = broker.subscriber("offline", ("t/#", 1), clean_session=False)
    offline.drop()
    broker.connect("p").send(B.publish("t/x", b"m", qos=1, packet_id=1))
    h, transport, _, _ = handlers()
    h.registry = broker.registry
    status = result(call(transport, "admin.node.status"))
    assert (status["sessions_online"], status["sessions_offline"]) == (2, 1)
    assert status["messages_queued"] == 2  # in flight online + waiting offline
    assert status["subscriptions"] == 2 and status["messages_published"] == 1


def test_node_status_reports_the_cluster_backlog_and_refusals():
    from vmqtw.testing import mqttbytes as B
    from vmqtw.testing.inprocess_broker import Cluster
    from vmqtw.mqtt.session import SessionSettings

    cluster = Cluster(["A", "B"], settings=SessionSettings(allow_publish_during_netsplit=True))
    cluster["B"].subscriber("s", ("t", 1))
    cluster.settle()
    cluster.network.partition([["A"], ["B"]])
    cluster["A"].connect("p").send(B.publish("t", b"m", qos=1, packet_id=1))
    cluster.settle(0.1)
    h, transport, _, _ = handlers()
    h.registry = cluster["A"].registry
    status = result(call(transport, "admin.node.status"))
    assert status["cluster_backlog"]["B"]["messages"] == 1
    assert status["cluster_publishes_refused_backlog_full"] == 0


# -- cluster leave: offline messages, dead nodes ------------------------------------------

def test_leave_of_a_running_node_holding_offline_messages_is_refused_without_yes():
    """The leaving node is asked; its offline messages would be lost: one sentence, no leave."""
    _, transport, peers, _ = handlers(("b@h",))
    transport.up.add("b@h")
    transport.counts["b@h"] = (12, 3)
    failure = result(call(transport, "admin.cluster.leave", "b@h"))
    assert failure.check(AdminCommandError)
    assert str(failure.value) == (
        "b@h holds 12 offline messages for 3 sessions, which would be lost: run cluster leave "
        "again with -k to move them to the other nodes first, or with --yes to accept their "
        "loss.")
    assert transport.calls == [("b@h", OFFLINE_COUNTS, ())]
    assert peers.members() == {"a@h", "b@h"}
    left = result(call(transport, "admin.cluster.leave", "b@h", True))
    assert peers.members() == {"a@h"}
    assert leave_text(left) == "Done: 12 offline messages on 3 sessions of b@h are lost, as " \
                               "--yes accepted."


def test_leave_of_a_running_node_without_offline_messages_is_just_done():
    _, transport, peers, _ = handlers(("b@h",))
    transport.up.add("b@h")
    transport.counts["b@h"] = (0, 0)
    left = result(call(transport, "admin.cluster.leave", "b@h"))
    assert peers.members() == {"a@h"} and leave_text(left) == "Done"


def test_leave_of_a_running_node_that_does_not_answer_is_refused():
    _, transport, peers, _ = handlers(("b@h",))
    transport.up.add("b@h")
    transport.counts["b@h"] = PeerUnreachable("b@h")
    failure = result(call(transport, "admin.cluster.leave", "b@h"))
    assert failure.check(AdminCommandError)
    assert str(failure.value).startswith("b@h did not say how many offline messages it holds")
    assert peers.members() == {"a@h", "b@h"}


def test_a_node_counts_its_own_offline_messages():
    """What a node answers when asked, and what it uses to leave itself."""
    from vmqtw.testing import mqttbytes as B
    from vmqtw.testing.inprocess_broker import Broker

    broker = Broker()
    for client_id in ("p1", "p2", "empty"):
        broker.subscriber(client_id, ("t/" + client_id, 1), clean_session=False).drop()
    broker.subscriber("online", ("t/#", 1))
    publisher = broker.connect("pub")
    for n, topic in enumerate(("t/p1", "t/p1", "t/p2"), 1):
        publisher.send(B.publish(topic, b"m", qos=1, packet_id=n))
    h, transport, peers, _ = handlers(("b@h",))
    h.registry = broker.registry
    assert result(call(transport, OFFLINE_COUNTS, caller="b@h")) == (3, 2)
    failure = result(call(transport, "admin.cluster.leave", "a@h"))
    assert failure.check(AdminCommandError)
    assert str(failure.value).startswith("a@h holds 3 offline messages for 2 sessions")


@pytest.mark.parametrize("runner", ["A", "B"])  # the new home runs the leave, or not
def test_leave_of_a_dead_node_moves_its_persistent_sessions_to_the_survivors(runner):
    """
    C is down: it cannot be asked, it leaves, and its persistent session is
    rewritten to a survivor (a stable hash of the client id), which keeps a
    queue for it: what is published meanwhile waits, and the client,
    reconnecting to any node, finds its subscription and its messages.
    """
    from vmqtw.broker.registry import HAND_OVER_WAIT
    from vmqtw.broker.subscriptions import home_node
    from vmqtw.mqtt import packets as P
    from vmqtw.testing import mqttbytes as B
    from vmqtw.testing.inprocess_broker import Cluster

    cluster = Cluster(["A", "B", "C"])
    cluster["C"].subscriber("s", ("t/#", 1), clean_session=False).drop()
    cluster["C"].subscriber("clean", ("t/#", 1))
    cluster.settle()
    cluster["C"].stop()
    cluster.settle()
    h, transport, peers, _ = handlers()
    peers._members = {"A", "B", "C"}
    h.cluster.node = peers.node = runner
    h.registry = cluster[runner].registry
    left = result(call(transport, "admin.cluster.leave", "C"))
    assert (left["down"], left["sessions_moved"]) == (True, 1)
    assert leave_text(left) == (
        "Done: C was down when it left. 1 persistent session it held now lives on the other "
        "nodes (their clients reconnect to any node and find their subscriptions); the offline "
        "messages C stored are lost with the default message store.")
    cluster.settle()
    home = home_node("s", ["A", "B"])
    for name in ("A", "B"):
        record = cluster[name].registry.subscription_table.record(SubscriberId("", "s"))
        assert record == ((home, False, (("t/#", 1),)),)
        assert cluster[name].registry.subscription_table.record(SubscriberId("", "clean")) is None
    assert SubscriberId("", "s") in cluster[home].registry.queues
    cluster["A"].connect("pub").send(B.publish("t/x", b"after", qos=1, packet_id=1))
    cluster.settle()
    other = "A" if home == "B" else "B"
    back = cluster[other].connect("s", clean_session=False)
    assert back.connack.session_present
    cluster.settle(HAND_OVER_WAIT + 1)   # (what C's peers still had for it may come first)
    assert [p.payload for p in back.publishes()] == [b"after"]
    cluster["B"].connect("pub2").send(B.publish("t/y", b"routed", qos=1, packet_id=1))
    cluster.settle()
    assert [p.payload for p in back.publishes()] == [b"routed"]
    assert not [p for p in back.received() if isinstance(p, P.Disconnect)]


def test_leave_texts():
    assert leave_text(["a@h"]) == "Done"   # a node from before the leave report
    assert leave_text({"node": "c@h", "down": False, "messages_lost": 0,
                       "sessions_moved": 2}) == (
        "Done: 2 persistent sessions of c@h now live on the other nodes; their clients "
        "reconnect to any node and find their subscriptions.")
    assert leave_text({"node": "c@h", "down": False, "messages_lost": 1, "sessions_lost": 1,
                       "sessions_moved": 1}) == (
        "Done: 1 offline message on 1 session of c@h are lost, as --yes accepted. 1 "
        "persistent session of c@h now lives on the other nodes; their clients reconnect to "
        "any node and find their subscriptions.")


def test_leave_options():
    assert parse_args(["cluster", "leave", "node=c@h", "--yes"]).yes
    assert not parse_args(["cluster", "leave", "node=c@h"]).yes
    drained = parse_args(["cluster", "leave", "node=c@h", "-k"])
    assert (drained.kill_sessions, drained.interval, drained.timeout) == (True, 5.0, 60.0)
    for argv in (["-k", "-i", "1", "-t", "30"], ["--kill_sessions", "--summary-interval=1",
                                                  "--timeout", "30"]):
        parsed = parse_args(["cluster", "leave", "node=c@h", *argv])
        assert (parsed.kill_sessions, parsed.interval, parsed.timeout) == (True, 1.0, 30.0)
    with pytest.raises(UsageError, match="give one of them"):
        parse_args(["cluster", "leave", "node=c@h", "-k", "--yes"])
    with pytest.raises(UsageError, match="-i and -t go with cluster leave -k"):
        parse_args(["cluster", "leave", "node=c@h", "-t", "5"])
    with pytest.raises(UsageError, match="-k is only for cluster leave"):
        parse_args(["cluster", "show", "-k"])
    for bad in ("0", "-3", "soon", "1e9"):
        with pytest.raises(UsageError, match="-i takes a number of seconds"):
            parse_args(["cluster", "leave", "node=c@h", "-k", "-i", bad])
    with pytest.raises(UsageError, match="-t needs a number of seconds"):
        parse_args(["cluster", "leave", "node=c@h", "-k", "-t"])
    with pytest.raises(UsageError, match="--yes is only for cluster leave"):
        parse_args(["cluster", "show", "--yes"])


class FakeDrain:
    def __init__(self) -> None:
        self.started: List[Tuple[float, float]] = []

    def start(self, interval: float, wait_limit: float) -> Any:
        from vmqtw.broker.drain import DrainProgress
        self.started.append((interval, wait_limit))
        return DrainProgress("waiting", queues=2, messages=5)

    def progress(self) -> Any:
        from vmqtw.broker.drain import DrainProgress
        return DrainProgress("done", moved_queues=2, moved_messages=5)


def test_drain_runs_on_the_leaving_node_itself_or_is_asked_of_it():
    h, transport, _, _ = handlers(("b@h",))
    h.drain = FakeDrain()
    here = result(call(transport, "admin.cluster.drain", "a@h", 1.0, 30.0))
    assert (here["phase"], here["queues"], here["messages"]) == ("waiting", 2, 5)
    assert h.drain.started == [(1.0, 30.0)]
    assert result(call(transport, "admin.cluster.drain_status", "a@h"))["phase"] == "done"
    # Another node: asked over the cluster link, with the same arguments.
    transport.up.add("b@h")
    transport.counts["b@h"] = {"phase": "moving"}
    assert result(call(transport, "admin.cluster.drain", "b@h", 2.0, 8.0)) == {"phase": "moving"}
    assert transport.calls[-1] == ("b@h", "membership.drain", (2.0, 8.0))
    # The peer side of it: a cluster peer may ask (it runs the admin's command).
    assert transport.handlers["membership.drain"]("b@h", 1.0, 2.0)["phase"] == "waiting"


def test_drain_refusals_are_one_sentence():
    h, transport, _, _ = handlers(("b@h",))
    for args, expected in (
            (("ghost@h", 1.0, 2.0), "ghost@h is not a member of the cluster; the members are "
                                    "a@h, b@h."),
            (("b@h", 1.0, 2.0), "b@h is not running, so -k cannot move what it holds: start it "
                                "and run cluster leave -k again, or leave it without -k (its "
                                "stored messages are lost)."),
            (("a@h", "soon", 2.0), "cluster leave -k needs an interval and a timeout in "
                                   "seconds."),
            (("a@h", 1.0, 2.0), "a@h cannot be drained (it serves no MQTT).")):
        failure = result(call(transport, "admin.cluster.drain", *args))
        assert failure.check(AdminCommandError), failure
        assert str(failure.value) == expected
    alone, transport_alone, _, _ = handlers()
    failure = result(call(transport_alone, "admin.cluster.drain", "a@h", 1.0, 2.0))
    assert str(failure.value) == ("a@h is the only member: there is no other node to move its "
                                  "sessions to.")
    transport.up.add("b@h")
    transport.counts["b@h"] = RuntimeError("timed out")
    failure = result(call(transport, "admin.cluster.drain_status", "b@h"))
    assert str(failure.value) == "b@h did not answer (timed out); run cluster leave -k again."
    assert result(call(transport, "admin.cluster.drain", "a@h", 1.0, 2.0,
                       caller="b@h")).check(AdminCommandError)


def test_drain_texts():
    from vmqtw.admin.output import drain_progress_text, drain_timeout_text, drained_text

    progress = {"phase": "moving", "seconds": 2.5, "online": 0, "queues": 3, "messages": 41,
                "unacknowledged": 7, "reconnected": 1, "moved_queues": 2, "moved_messages": 9}
    assert drain_progress_text("c@h", progress) == (
        "c@h, 2.5 s: moving its offline sessions to the other nodes; 0 clients connected, 3 "
        "offline sessions holding 41 messages; 1 session reconnected elsewhere, 2 sessions moved "
        "with 9 messages; 7 messages not yet acknowledged.")
    assert drained_text("c@h", dict(progress, moved_queues=1)) == (
        "Done: c@h left the cluster and serves no MQTT until it joins one again. 1 session "
        "reconnected to other nodes; 1 offline session moved to the other nodes with 9 messages; "
        "no message lost.")
    assert drain_timeout_text("c@h", progress, 60) == (
        "c@h is not drained after 60 s (3 offline sessions holding 41 messages, 7 messages not "
        "yet acknowledged by the other nodes): it has not left the cluster and its MQTT "
        "listeners stay closed; run cluster leave -k again with a larger -t, or restart the node "
        "to serve again.")


def test_each_survivor_rewrites_its_own_share_of_a_dead_nodes_sessions():
    """
    The home of a session writes its record itself (so it routes the
    session's messages before another node sends them there); a survivor
    that does not answer has its share written by the node running the
    leave.
    """
    from vmqtw.admin.server import REHOME
    from vmqtw.broker.subscriptions import home_node
    from vmqtw.testing.inprocess_broker import Cluster

    cluster = Cluster(["A", "B", "C"])
    ids = ["s%d" % n for n in range(8)]
    for client_id in ids:
        cluster["C"].subscriber(client_id, ("t/#", 1), clean_session=False).drop()
    cluster.settle()
    cluster["C"].stop()
    cluster.settle()
    on_b, transport_b, peers_b, _ = handlers()
    on_b.cluster.node = peers_b.node = "B"
    on_b.registry = cluster["B"].registry
    writes: dict = {"A": [], "B": []}
    for name in ("A", "B"):
        table = cluster[name].registry.subscription_table
        original = table.rehome

        def spy(gone, survivors, homes=None, name=name, original=original):
            writes[name].append(list(homes or []))
            return original(gone, survivors, homes)
        table.rehome = spy
    h, transport, peers, _ = handlers()
    peers._members = {"A", "B", "C"}
    h.registry = cluster["A"].registry
    h.cluster.node = peers.node = "A"
    transport.up.add("B")
    transport.call = lambda peer, method, args, timeout: defer.maybeDeferred(
        transport_b.handlers[method], "A", *args)
    left = result(call(transport, "admin.cluster.leave", "C"))
    assert left["sessions_moved"] == len(ids)
    assert writes == {"A": [["A"]], "B": [["B"]]}
    cluster.settle()
    for client_id in ids:
        home = home_node(client_id, ["A", "B"])
        assert SubscriberId("", client_id) in cluster[home].registry.queues, client_id
    # B does not answer: A writes B's share too.
    assert transport_b.handlers[REHOME]("A", "C", ["A", "B"]) == 0   # nothing left to move
    transport.call = lambda peer, method, args, timeout: defer.fail(RuntimeError("timed out"))
    writes["A"].clear()
    peers._members.add("C")
    result(call(transport, "admin.cluster.leave", "C"))
    assert writes["A"] == [["A"], ["B"]]


def test_session_rows_of_a_node_and_their_selection():
    from vmqtw.admin.inspect import SESSION_COLUMNS, select, session_rows
    from vmqtw.testing.inprocess_broker import Broker

    broker = Broker(node="n@h")
    online = broker.subscriber("on", ("a/#", 1), ("b", 0), clean_session=False)
    broker.subscriber("off", ("a/#", 1), clean_session=False).drop()
    broker.connect("pub").send(__import__("vmqtw.testing.mqttbytes", fromlist=["x"]).publish(
        "a/1", b"x", qos=1, packet_id=1))
    rows = session_rows(broker.registry, "n@h")
    assert set(rows[0]) == set(SESSION_COLUMNS) - {"topic", "qos"}
    by_id = {row["client_id"]: row for row in rows}
    assert (by_id["on"]["is_online"], by_id["on"]["peer_host"], by_id["on"]["node"]) == (
        True, "127.0.0.1", "n@h")
    assert (by_id["off"]["is_online"], by_id["off"]["offline_messages"]) == (False, 1)
    assert select(rows, [("is_online", "false")], ["client_id"], None) == [{"client_id": "off"}]
    assert select(rows, [], ["client_id"], 1) == [{"client_id": "off"}]
    per_subscription = session_rows(broker.registry, "n@h", per_subscription=True)
    assert [(r["client_id"], r["topic"], r["qos"]) for r in per_subscription] == [
        ("off", "a/#", 1), ("on", "a/#", 1), ("on", "b", 0), ("pub", "", "")]
    assert online.publishes()


def test_session_and_retain_command_lines():
    from vmqtw.admin.cli import _call_args

    show = parse_args(["session", "show", "--client_id", "--node", "--is_online=true",
                       "--limit=7"])
    assert _call_args(show, None) == ([["is_online", "true"]], ["client_id", "node"], 7)
    assert _call_args(parse_args(["session", "show"]), None) == (
        [], ["client_id", "is_online", "mountpoint", "peer_host", "peer_port", "user"], 100)
    assert _call_args(parse_args(["session", "disconnect", "client-id=x", "--cleanup"]),
                      None) == ("x", "", True)
    assert _call_args(parse_args(["retain", "show", "--topic=a/#", "--payload"]), None) == (
        "a/#", ["payload"], 100)
    for argv, message in (
            (["session", "show", "--frob"], "session show does not take --frob"),
            (["session", "show", "--limit"], "--limit of session show needs a value"),
            (["session", "disconnect"], "session disconnect needs client-id=ID"),
            (["session", "disconnect", "client-id=x", "--cleanup=yes"], "takes no value"),
            (["retain", "show", "--limit=many"], "--limit takes a whole number")):
        with pytest.raises(UsageError, match=message):
            parse_args(argv)


def test_rows_and_disconnect_texts():
    from vmqtw.admin.output import disconnect_text, render_rows

    assert render_rows(["client_id"], {"rows": [], "unreachable": ["c@h"]}) == (
        "No rows.\nNot listed: c@h did not answer.")
    assert json.loads(render_rows(["client_id"], {"rows": [{"client_id": "x"}],
                                                   "unreachable": ["c@h"]}, "json")) == {
        "type": "table", "table": [{"client_id": "x"}], "unreachable": ["c@h"]}
    assert disconnect_text({"client_id": "x", "node": "a@h", "was_online": False,
                            "ended": False}) == (
        "x is not connected (its session stays on a@h; --cleanup ends it).")
    assert disconnect_text({"client_id": "x", "node": "a@h", "was_online": True,
                            "ended": True}) == (
        "Done: the connection of x on a@h is closed; its session ended.")


def test_help_of_one_command_and_version():
    import io

    from vmqtw import __version__
    from vmqtw.admin.cli import run

    out, err = io.StringIO(), io.StringIO()
    assert run(["session", "disconnect", "--help"], out, err) == 0
    text = out.getvalue()
    assert text.startswith("Usage: vmqtw-admin [--config PATH] [--format=human|json] session "
                           "disconnect client-id=ID [mountpoint=NAME] [--OPTION[=VALUE] ...]\n")
    assert "--cleanup ends its session too." in text.replace("\n", " ")
    assert all(len(line) <= 78 for line in text.splitlines()[2:])
    out = io.StringIO()
    assert run(["--help"], out, err) == 0 and "Commands:" in out.getvalue()
    out = io.StringIO()
    assert run(["--version"], out, err) == 0
    assert out.getvalue() == "vmqtw-admin %s\n" % (__version__,)


def test_metrics_texts_and_handler():
    from prometheus_client import CollectorRegistry, Counter

    from vmqtw.admin.output import render_metrics

    samples = [("a_total", 3.0, "things counted"), ("b", 0.5, "a ratio")]
    assert render_metrics(samples) == "a_total = 3\nb = 0.5"
    assert render_metrics(samples, True) == "# things counted\na_total = 3\n# a ratio\nb = 0.5"
    assert json.loads(render_metrics(samples, False, "json"))["table"][0] == {
        "name": "a_total", "value": 3.0}
    h, transport, _, _ = handlers()
    assert result(call(transport, "admin.metrics.show")).check(AdminCommandError)
    registry = CollectorRegistry()
    Counter("frobs", "frobs made", registry=registry).inc(2)
    h.metrics = registry
    assert result(call(transport, "admin.metrics.show")) == [("frobs_total", 2.0, "frobs made")]


def test_listener_command_lines():
    from vmqtw.admin.cli import _call_args

    assert _call_args(parse_args(["listener", "stop", "address=127.0.0.1", "port=1883", "-k"]),
                      None) == ("127.0.0.1", 1883, True)
    assert _call_args(parse_args(["listener", "start", "address=::1", "port=1883"]), None) == (
        "::1", 1883)
    with pytest.raises(UsageError, match="port= takes a port number, not '99999'"):
        parse_args(["listener", "start", "address=a", "port=99999"])
    with pytest.raises(UsageError, match="-k is only for cluster leave and listener stop"):
        parse_args(["listener", "start", "address=a", "port=1", "-k"])
    with pytest.raises(UsageError, match="-i and -t go with cluster leave -k"):
        parse_args(["listener", "stop", "address=a", "port=1", "-k", "-t", "3"])
