"""
The broker's authenticator (vmq_passwd + vmq_acl) in process: real sessions,
registry and queues over ``StringTransport``; password checks through a
thread pool stand-in the test drives by hand; file reloads on a ``Clock``.
"""
from __future__ import annotations

import os
import signal
from typing import Any, List, Optional

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from vmqtw.testing import mqttbytes as B
from vmqtw.testing.inprocess_broker import Broker, only
from vmqtw import tap
from vmqtw.auth.acl import Acl
from vmqtw.auth.passwd import hash_password
from vmqtw.broker.auth import BrokerAuthenticator
from vmqtw.broker.queue import QueueLimits
from vmqtw.config import ConfigError
from vmqtw.mqtt import packets as P


class ManualPool:
    """``callInThreadWithCallback`` that runs the work when the test says so."""

    def __init__(self) -> None:
        self.calls: List[tuple] = []

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append((on_result, f, args, kwargs))

    def run_all(self) -> int:
        calls, self.calls = self.calls, []
        for on_result, f, args, kwargs in calls:
            try:
                result = f(*args, **kwargs)
            except BaseException:
                on_result(False, Failure())
            else:
                on_result(True, result)
        return len(calls)


class ThreadlessClock(Clock):
    """A Clock that is also the reactor the pool reports back to."""

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


PASSWORDS = {"alice": "wonderland", "bob": "builder", "+": "plus"}


def write_passwd(path: Any, users: dict = PASSWORDS) -> str:
    path.write_text("".join("%s:%s\n" % (name, hash_password(pw, iterations=1000))
                            for name, pw in users.items()))
    return str(path)


class Setup:
    """An authenticator on a Broker, with its pool and clock."""

    def __init__(self, tmp_path: Any, *, anonymous: bool = False, passwd: bool = False,
                 acl: Optional[str] = None, limits: QueueLimits = QueueLimits(),
                 interval: float = 1.0) -> None:
        self.clock = ThreadlessClock()
        self.pool = ManualPool()
        self.acl_path = tmp_path / "vmq.acl"
        if acl is not None:
            self.acl_path.write_text(acl)
        password_file = write_passwd(tmp_path / "vmq.passwd") if passwd else None
        self.auth = BrokerAuthenticator(
            self.clock, self.pool if passwd else None, allow_anonymous=anonymous,
            password_file=password_file,
            acl_file=str(self.acl_path) if acl is not None else None,
            reload_interval=interval)
        self.auth.load()
        self.broker = Broker(limits=limits, authenticator=self.auth)

    def connack(self, client_id: str = "c1", **kwargs: Any) -> Optional[int]:
        """CONNECT; run queued password checks; the CONNACK code (or None)."""
        client = self.broker.client()
        client.send(B.connect(client_id, **kwargs))
        self.pool.run_all()
        packets = client.received()
        self.last = client
        return packets[0].return_code if packets else None

    def connect(self, client_id: str, **kwargs: Any) -> Any:
        assert self.connack(client_id, **kwargs) == 0
        return self.last

    def subscribe(self, client: Any, *filters: tuple) -> List[int]:
        client.send(B.subscribe(7, list(filters)))
        packets = client.received()
        suback = only(packets, P.SubAck)
        client.backlog = [p for p in packets if p is not suback]
        return suback.return_codes


# -- CONNECT -----------------------------------------------------------------


def test_passwd_off_anonymous_on_accepts_everyone(tmp_path):
    """allow_anonymous on without vmq_passwd: CONNACK 0 with or without a user name."""
    s = Setup(tmp_path, anonymous=True)
    assert s.connack("a") == 0
    assert s.connack("b", username="mallory", password=b"x") == 0


def test_passwd_off_anonymous_off_refuses_everyone(tmp_path):
    """[MQTT-3.2.2-5]: no plugin can accept a client: CONNACK 5, connection closed."""
    s = Setup(tmp_path, anonymous=False)
    assert s.connack("a") == P.CONNACK_NOT_AUTHORIZED
    assert s.last.closed
    assert s.connack("b", username="alice", password=b"wonderland") == P.CONNACK_NOT_AUTHORIZED


def test_right_password_accepted_only_after_the_pool_check(tmp_path):
    """[MQTT-3.1.4-2]: the PBKDF2 check runs in the pool; CONNACK 0 when it says yes."""
    s = Setup(tmp_path, passwd=True)
    client = s.broker.client()
    client.send(B.connect("c1", username="alice", password=b"wonderland"))
    assert client.received() == []          # nothing decided on the reactor thread
    assert len(s.pool.calls) == 1
    s.pool.run_all()
    assert client.received() == [P.ConnAck(0, False)]
    assert not client.closed


def test_packets_pipelined_behind_a_pending_check_are_handled_after_connack(tmp_path):
    """[MQTT-3.1.4-5]: a SUBSCRIBE sent right after CONNECT is answered after CONNACK 0."""
    s = Setup(tmp_path, passwd=True)
    client = s.broker.client()
    client.send(B.connect("c1", username="alice", password=b"wonderland")
                + B.subscribe(3, [("t", 1)]))
    assert client.received() == []
    s.pool.run_all()
    packets = client.received()
    assert packets[0] == P.ConnAck(0, False)
    assert packets[1] == P.SubAck(3, [1])


@pytest.mark.parametrize("username, password", [
    ("alice", b"WONDERLAND"),     # wrong password
    ("alice", b""),               # empty password
    ("carol", b"wonderland"),     # no such user
    ("alice", None),              # user name without password
])
def test_bad_credentials_get_connack_4(tmp_path, username, password):
    """[MQTT-3.2.2-5]: a wrong user name or password gets CONNACK 4 and the socket closes."""
    s = Setup(tmp_path, passwd=True, anonymous=True)
    assert s.connack("c1", username=username, password=password) == \
        P.CONNACK_BAD_USERNAME_OR_PASSWORD
    assert s.last.closed
    assert s.auth.counters.bad_credentials == 1


def test_passwd_on_no_username_refused_unless_anonymous_allowed(tmp_path):
    """Bad-input case 33: an anonymous CONNECT gets CONNACK 5 while allow_anonymous is off."""
    assert Setup(tmp_path, passwd=True).connack("anon") == P.CONNACK_NOT_AUTHORIZED
    assert Setup(tmp_path, passwd=True, anonymous=True).connack("anon") == 0


def test_blank_password_file_lines_are_no_user(tmp_path):
    """Bad-input case 33: an empty user name never authenticates, blank lines notwithstanding."""
    s = Setup(tmp_path, passwd=True)
    (tmp_path / "vmq.passwd").write_text("\n  \n:%s\n" % hash_password("", iterations=1000))
    s.auth.load()
    assert s.connack("c1", username="", password=b"") == P.CONNACK_BAD_USERNAME_OR_PASSWORD


def test_too_many_queued_checks_get_server_unavailable(tmp_path):
    """A connect flood cannot queue unbounded PBKDF2 work: CONNACK 3 beyond the cap."""
    s = Setup(tmp_path, passwd=True)
    s.auth.max_pending_checks = 2
    clients = [s.broker.client() for _ in range(3)]
    for i, client in enumerate(clients):
        client.send(B.connect("c%d" % i, username="alice", password=b"wonderland"))
    assert clients[2].received() == [P.ConnAck(P.CONNACK_SERVER_UNAVAILABLE, False)]
    assert s.pool.run_all() == 2
    assert [c.received() for c in clients[:2]] == [[P.ConnAck(0, False)]] * 2
    # The slots are free again.
    assert s.connack("c9", username="bob", password=b"builder") == 0


def test_check_raising_in_the_pool_refuses_with_server_unavailable(tmp_path):
    """A failing check (a bug, not the client's fault) never lets the client in."""
    s = Setup(tmp_path, passwd=True)

    class Broken:
        def check(self, username: str, password: bytes) -> bool:
            raise RuntimeError("boom")

    s.auth.passwords = Broken()  # type: ignore[assignment]
    assert s.connack("c1", username="alice", password=b"wonderland") == \
        P.CONNACK_SERVER_UNAVAILABLE


def test_missing_file_at_load_is_one_sentence_naming_key_and_file(tmp_path):
    """A node whose ACL or password file is missing must not start."""
    for kwargs, key in ((dict(password_file=str(tmp_path / "no.passwd")),
                         "vmq_passwd.password_file"),
                        (dict(acl_file=str(tmp_path / "no.acl")), "vmq_acl.acl_file")):
        auth = BrokerAuthenticator(ThreadlessClock(), ManualPool(), **kwargs)
        with pytest.raises(ConfigError) as raised:
            auth.load()
        message = str(raised.value)
        assert key in message and "no." in message and "\n" not in message


# -- ACL: publish / subscribe ------------------------------------------------------

ACL = """\
topic read #
topic write allowed/#
pattern readwrite clients/%c/#
pattern readwrite users/%u/#
"""


def test_acl_off_allows_everything_and_skips_the_read_check(tmp_path):
    s = Setup(tmp_path, anonymous=True)
    assert s.auth.can_read is None
    assert s.auth.can_publish("c", None, "any/topic")
    assert s.auth.can_subscribe("c", None, "#")


def test_denied_qos1_publish_is_acknowledged_but_not_delivered(tmp_path):
    """[MQTT-4.3.2-2]: a denied QoS 1 PUBLISH still gets PUBACK; nobody receives it."""
    s = Setup(tmp_path, anonymous=True, acl=ACL)
    subscriber = s.connect("sub")
    assert s.subscribe(subscriber, ("#", 1)) == [1]
    publisher = s.connect("pub")
    publisher.send(B.publish("secret/x", b"no", qos=1, packet_id=5))
    assert publisher.received() == [P.PubAck(5)]
    publisher.send(B.publish("allowed/x", b"yes", qos=1, packet_id=6))
    assert publisher.received() == [P.PubAck(6)]
    assert [(p.topic, p.payload) for p in subscriber.publishes()] == [("allowed/x", b"yes")]
    assert s.auth.counters.publish_denied == 1


def test_denied_qos2_publish_still_gets_pubrec(tmp_path):
    """[MQTT-4.3.3-1]: a denied QoS 2 PUBLISH is answered PUBREC, then PUBCOMP."""
    s = Setup(tmp_path, anonymous=True, acl=ACL)
    publisher = s.connect("pub")
    publisher.send(B.publish("secret/x", b"no", qos=2, packet_id=9))
    assert publisher.received() == [P.PubRec(9)]
    publisher.send(B.pubrel(9))
    assert publisher.received() == [P.PubComp(9)]


def test_denied_filter_gets_suback_0x80_others_granted(tmp_path):
    """[MQTT-3.9.3-2]: 0x80 only for the filter the ACL denies; nothing routed to it."""
    s = Setup(tmp_path, anonymous=True, acl="topic read a/#\n")
    client = s.connect("c1")
    assert s.subscribe(client, ("a/b", 1), ("b/#", 0), ("a/+/c", 2)) == [1, 0x80, 2]
    assert "b/#" not in s.broker.registry.subscriptions(client.protocol.session.subscriber_id)
    assert s.auth.counters.subscribe_denied == 1


def test_empty_acl_denies_everything(tmp_path):
    """Bad-input case 33: an empty ACL file is no rule, so everything is denied."""
    s = Setup(tmp_path, anonymous=True, acl="")
    client = s.connect("c1")
    assert s.subscribe(client, ("#", 0), ("a", 0)) == [0x80, 0x80]
    assert not s.auth.can_publish("c1", None, "a")


def test_will_on_a_denied_topic_refuses_connect(tmp_path):
    """Bad-input case 29: a will the client may not publish is refused with CONNACK 5."""
    s = Setup(tmp_path, anonymous=True, acl=ACL)
    assert s.connack("c1", will_topic="secret/will", will_message=b"x") == \
        P.CONNACK_NOT_AUTHORIZED
    assert s.connack("c2", will_topic="allowed/will", will_message=b"x") == 0


def test_client_id_hash_cannot_widen_a_percent_c_pattern(tmp_path):
    """CVE-2017-7650: client id '#' gets no pattern rule, so no 'clients/...' access."""
    s = Setup(tmp_path, anonymous=False, passwd=True, acl="pattern readwrite clients/%c/#\n")
    attacker = s.connect("#", username="alice", password=b"wonderland")
    assert s.subscribe(attacker, ("clients/x/#", 0), ("clients/#", 0), ("clients/+/y", 0)) \
        == [0x80, 0x80, 0x80]
    victim = s.connect("x", username="bob", password=b"builder")
    assert s.subscribe(victim, ("clients/x/#", 1)) == [1]
    attacker.send(B.publish("clients/x/cmd", b"evil", qos=1, packet_id=1))
    assert attacker.received() == [P.PubAck(1)]
    assert victim.publishes() == []
    victim.send(B.publish("clients/x/data", b"mine"))
    assert [p.payload for p in victim.publishes()] == [b"mine"]
    assert attacker.publishes() == []


def test_username_plus_cannot_widen_a_percent_u_pattern(tmp_path):
    """CVE-2017-7650: user name '+' gets no %u rule: 'users/+/#' and others' trees denied."""
    s = Setup(tmp_path, passwd=True, acl="pattern readwrite users/%u/#\n")
    attacker = s.connect("c1", username="+", password=b"plus")
    assert s.subscribe(attacker, ("users/+/#", 0), ("users/alice/#", 0)) == [0x80, 0x80]
    assert not s.auth.can_publish("c1", "+", "users/alice/x")
    alice = s.connect("c2", username="alice", password=b"wonderland")
    assert s.subscribe(alice, ("users/alice/#", 0)) == [0]


# -- reloads and the read side ------------------------------------------------


def test_acl_change_on_disk_takes_effect_at_the_next_poll(tmp_path):
    """Files are re-read when they change: a new grant works after one interval."""
    s = Setup(tmp_path, anonymous=True, acl="topic write a\n", interval=5.0)
    s.auth.start()
    try:
        assert not s.auth.can_publish("c", None, "b")
        s.acl_path.write_text("topic write a\ntopic write b\n")
        s.clock.advance(4.9)
        assert not s.auth.can_publish("c", None, "b")
        s.clock.advance(0.2)
        assert s.auth.can_publish("c", None, "b")
    finally:
        s.auth.stop()
    assert not s.clock.getDelayedCalls()


def test_password_change_on_disk_takes_effect(tmp_path):
    """A changed password file: the old password stops working after the poll."""
    s = Setup(tmp_path, passwd=True)
    s.auth.start()
    try:
        assert s.connack("c1", username="alice", password=b"wonderland") == 0
        write_passwd(tmp_path / "vmq.passwd", {"alice": "new-and-longer-password"})
        s.clock.advance(1.0)
        assert s.connack("c2", username="alice", password=b"wonderland") == 4
        assert s.connack("c3", username="alice", password=b"new-and-longer-password") == 0
    finally:
        s.auth.stop()


def test_reload_rereads_a_change_polling_cannot_see(tmp_path):
    """SIGHUP's reload() re-reads unconditionally (same size and mtime: polls miss it)."""
    s = Setup(tmp_path, anonymous=True, acl="topic write aaa\n", interval=1.0)
    s.auth.start()
    try:
        before = os.stat(s.acl_path)
        s.acl_path.write_text("topic write bbb\n")
        os.utime(s.acl_path, ns=(before.st_atime_ns, before.st_mtime_ns))
        s.clock.advance(1.0)
        assert s.auth.can_publish("c", None, "aaa")      # the poll saw no change
        s.auth.reload()
        assert s.auth.can_publish("c", None, "bbb")
        assert not s.auth.can_publish("c", None, "aaa")
    finally:
        s.auth.stop()


def test_unreadable_new_version_keeps_the_previous_acl(tmp_path):
    """A file that cannot be read never takes access away or grants it by accident."""
    s = Setup(tmp_path, anonymous=True, acl="topic write a\n")
    s.auth.start()
    try:
        s.acl_path.write_bytes(b"topic write \xff\n")   # not UTF-8
        s.clock.advance(1.0)
        s.auth.reload()
        assert s.auth.can_publish("c", None, "a")
    finally:
        s.auth.stop()


def test_file_gone_between_load_and_start_keeps_startup_version_and_polls(tmp_path):
    s = Setup(tmp_path, anonymous=True, acl="topic write a\n")
    os.unlink(s.acl_path)
    s.auth.start()
    try:
        assert s.auth.can_publish("c", None, "a")
        s.acl_path.write_text("topic write b\n")
        s.clock.advance(1.0)
        assert s.auth.can_publish("c", None, "b")
    finally:
        s.auth.stop()
    assert not s.clock.getDelayedCalls()


def test_acl_reload_narrows_a_live_subscription_at_delivery(tmp_path):
    """
    Bad-input case 34 (CVE-2021-34434): a subscription granted under the old
    ACL gets nothing the new ACL forbids -- QoS 0 and 1 alike -- and a denied
    QoS 1 message does not keep its in-flight slot (window of 1 here).
    """
    s = Setup(tmp_path, anonymous=True, acl="topic readwrite sensors/#\n",
              limits=QueueLimits(max_inflight_messages=1))
    s.auth.start()
    try:
        subscriber = s.connect("sub")
        assert s.subscribe(subscriber, ("sensors/#", 1)) == [1]
        publisher = s.connect("pub")
        s.acl_path.write_text("topic write sensors/#\ntopic read sensors/open\n")
        s.clock.advance(1.0)
        publisher.send(B.publish("sensors/secret", b"s0", qos=0))
        publisher.send(B.publish("sensors/secret", b"s1", qos=1, packet_id=1))
        publisher.send(B.publish("sensors/open", b"o1", qos=1, packet_id=2))
        s.broker.clock.advance(0)
        publishes = subscriber.publishes()
        assert [(p.topic, p.payload, p.qos) for p in publishes] == [("sensors/open", b"o1", 1)]
        queue = subscriber.protocol.session.queue
        assert list(queue.inflight) == [publishes[0].packet_id]
        subscriber.send(B.puback(publishes[0].packet_id))
        assert queue.inflight == {} and not queue.pending
        assert s.auth.counters.delivery_denied == 2
    finally:
        s.auth.stop()


def test_many_denied_qos1_deliveries_in_a_row_drain_without_recursion(tmp_path):
    """
    Thousands of queued QoS 1 messages denied by a reload behind a window of
    one: each frees its slot, none is sent, and the allowed one behind them
    arrives (no stall, no recursion through the queue's send loop).
    """
    s = Setup(tmp_path, anonymous=True, acl="topic readwrite t/#\n",
              limits=QueueLimits(max_inflight_messages=1, max_online_messages=5000))
    subscriber = s.connect("sub")
    assert s.subscribe(subscriber, ("t/#", 1)) == [1]
    publisher = s.connect("pub")
    data = b"".join(B.publish("t/no", b"x", qos=1, packet_id=i + 1) for i in range(3000))
    publisher.send(data + B.publish("t/yes", b"y", qos=1, packet_id=3001))
    first = subscriber.publishes()
    assert [p.topic for p in first] == ["t/no"]
    s.auth.acl = Acl.parse("topic write t/#\ntopic read t/yes\n")
    subscriber.send(B.puback(first[0].packet_id))
    s.broker.clock.advance(0)
    assert [p.topic for p in subscriber.publishes()] == ["t/yes"]
    assert s.auth.counters.delivery_denied == 2999


def test_retained_message_rechecked_at_delivery(tmp_path):
    """Bad-input case 34: a retained message on a topic the ACL now denies is not sent."""
    s = Setup(tmp_path, anonymous=True, acl="topic readwrite r/#\n")
    publisher = s.connect("pub")
    publisher.send(B.publish("r/secret", b"old", retain=True))
    s.auth.acl = Acl.parse("topic readwrite r/#\ntopic deny r/secret\n")
    subscriber = s.connect("sub")
    assert s.subscribe(subscriber, ("r/#", 0)) == [0]
    assert subscriber.publishes() == []


# -- the SIGHUP wiring -----------------------------------------------------------


class TriggerReactor:
    """Records system event triggers and cross-thread calls."""

    def __init__(self) -> None:
        self.triggers: List[tuple] = []
        self.from_thread: List[Any] = []

    def addSystemEventTrigger(self, phase: str, event: str, f: Any, *args: Any) -> None:
        self.triggers.append((phase, event, f, args))

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.from_thread.append(f)

    def fire(self, phase: str, event: str) -> None:
        for p, e, f, args in list(self.triggers):
            if (p, e) == (phase, event):
                f(*args)


def test_sighup_calls_reload_on_the_reactor_thread_and_is_uninstalled():
    reactor = TriggerReactor()
    reloads: List[int] = []

    def reload() -> None:
        reloads.append(1)

    original = signal.getsignal(signal.SIGHUP)
    try:
        tap._reload_on_sighup(reactor, reload)
        assert signal.getsignal(signal.SIGHUP) is original   # not before the reactor runs
        reactor.fire("after", "startup")
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100000):           # the handler runs between bytecodes
            if reactor.from_thread:
                break
        assert reactor.from_thread == [reload]
        assert reloads == []              # only queued for the reactor thread
        reactor.fire("after", "shutdown")
        assert signal.getsignal(signal.SIGHUP) is original
    finally:
        signal.signal(signal.SIGHUP, original)
