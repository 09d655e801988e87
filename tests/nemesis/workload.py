"""
The load the nemesis runs under: tagged QoS 1 publishers and persistent
QoS 1 subscribers, real paho clients (MQTT 3.1.1) each on its own network
thread, each reconnecting on its own to the node it started on.

Both kinds use ``clean_session=False``: a publisher resends what was not
acknowledged when it reconnects (paho keeps it), a subscriber's broker
session keeps queueing while it is away.  They only *record*; the verdict
is :func:`tests.nemesis.checker.check`'s.

Acknowledgements come from ``on_publish`` (packet id -> sequence number
of the message in flight under it; ``MessageInfo.is_published()`` raises
for a message queued while disconnected, though paho still sends it
later).  Our own lock is never held while calling into paho, so paho's
callbacks (which run under paho's locks) may take it without a deadlock.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import attrs
import paho.mqtt.client as mqtt

from tests.nemesis.checker import (PublisherHistory, Receipt, Sent,
                                   SubscriberHistory, Subscription, parse_tag,
                                   tag)
from tests.nodeharness import Node
from tests.waiting import wait_until

__all__ = ["Publisher", "Subscriber", "Racer", "Workload", "Clock"]

Clock = Callable[[], float]
#: Payload prefix of routing probes, which are not part of the history.
PROBE = b"probe:"


def _client(client_id: str, keepalive_s: int, reconnect: bool = True) -> mqtt.Client:
    """
    A persistent-session MQTT 3.1.1 client; ``reconnect=False``: its loop
    ends when the connection is lost instead of connecting again.
    """
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=False, protocol=mqtt.MQTTv311,
                         reconnect_on_failure=reconnect)
    client.reconnect_delay_set(min_delay=1, max_delay=2)
    return client


class _Endpoint:
    """What publishers and subscribers share: connect, reconnect, stop."""

    #: Whether paho's loop connects again when the connection is lost.
    reconnect = True

    def __init__(self, node: Node, client_id: str, clock: Clock, keepalive: int) -> None:
        self.node = node
        self.client_id = client_id
        self.clock = clock
        self.keepalive = keepalive
        self.lock = threading.Lock()
        #: session_present of every CONNACK, in order.
        self.connacks: List[bool] = []
        self.client = _client(client_id, keepalive, self.reconnect)
        self.client.on_connect = self._on_connect

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:
        if reason == 0:
            with self.lock:
                self.connacks.append(bool(flags.session_present))
            self.connected()

    def connected(self) -> None:
        """Hook: a CONNACK accepted the connection (paho's thread, no paho calls under lock)."""

    def connect(self, timeout: float = 20.0) -> None:
        count = len(self.connacks)
        self.client.connect(self.node.host, self.node.port, self.keepalive)
        self.client.loop_start()
        wait_until(lambda: len(self.connacks) > count, timeout,
                   what="CONNACK for %s" % (self.client_id,))

    def bounce(self) -> None:
        """
        Drop the connection now; paho's loop reconnects and resends what is
        unacknowledged, with DUP.

        A broker that silently drops QoS 1 publishes during a netsplit
        expects the client to resend; an MQTT 3.1.1 client only does so on
        reconnecting, which a real one does when it gives up waiting.  (Not
        ``loop_stop``: paho's loop does not stop while messages are in flight.)
        """
        self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        sock = self.client.socket()
        if isinstance(sock, socket.socket):  # plain TCP here (paho also types websockets)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        """DISCONNECT (bounded wait), then end paho's thread even with messages in flight."""
        try:
            self.client.disconnect()
        except Exception:
            pass
        try:
            wait_until(lambda: not self.client.is_connected(), 2.0, what="disconnect")
        except AssertionError:
            pass
        self._shutdown_socket()
        self.client.loop_stop()

    def move(self, node: Node, abrupt: bool = False, timeout: float = 20.0) -> None:
        """
        Reconnect the session on ``node``: after a DISCONNECT, or
        (``abrupt``) by connecting there while the old connection is still
        open, so the new node takes it over.  The CONNACK must say the
        session was present.
        """
        count = len(self.connacks)
        if abrupt:
            # paho's reconnect closes the old socket as it opens the new one.
            self.client.loop_stop()
        else:
            self.client.disconnect()
            wait_until(lambda: not self.client.is_connected(), 5.0, what="disconnect")
            self.client.loop_stop()
        self.node = node
        # (A publisher resends what was not acknowledged, with DUP.)
        self.client.connect(node.host, node.port, self.keepalive)
        self.client.loop_start()
        wait_until(lambda: len(self.connacks) > count, timeout,
                   what="CONNACK for %s on %s" % (self.client_id, node.host))

    @property
    def sessions_lost(self) -> int:
        """Reconnections that found no session (the broker forgot it)."""
        with self.lock:
            return sum(1 for present in self.connacks[1:] if not present)


class Publisher(_Endpoint):
    """QoS 1 publishes of tagged payloads to ``topic``, at a steady rate when asked."""

    def __init__(self, node: Node, name: str, topic: str, clock: Clock = time.monotonic,
                 keepalive: int = 5, size: int = 64, max_inflight: int = 100) -> None:
        super().__init__(node, name, clock, keepalive)
        self.name = name
        self.topic = topic
        self.size = size
        self.client.max_inflight_messages_set(max_inflight)
        self._next = 0
        self._sent: Dict[int, Sent] = {}
        self._acked: Set[int] = set()
        #: Sequence numbers handed to paho and not acknowledged yet.
        self._pending: Set[int] = set()
        #: Packet id -> sequence number of the message in flight under it.
        self._by_mid: Dict[int, int] = {}
        #: PUBACKs whose packet id was not mapped yet (the ack beat publish()'s return).
        self._early: Set[int] = set()
        self._resent: Set[int] = set()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.client.on_publish = self._on_publish

    def connected(self) -> None:
        if len(self.connacks) > 1:
            # Everything not acknowledged now is sent again, with DUP.
            with self.lock:
                self._resent.update(self._pending)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    properties: Any = None) -> None:
        with self.lock:
            seq = self._by_mid.pop(mid, None)
            if seq is None:
                self._early.add(mid)
            else:
                self._ack_locked(seq)

    def _ack_locked(self, seq: int) -> None:
        self._acked.add(seq)
        self._pending.discard(seq)

    def publish(self, topic: Optional[str] = None) -> int:
        """Hand the next tagged message to paho; returns its sequence number."""
        topic = topic or self.topic
        with self.lock:
            seq = self._next
            self._next += 1
            self._sent[seq] = Sent(topic, self.clock())
            self._pending.add(seq)
        info = self.client.publish(topic, tag(self.name, seq, self.size), qos=1)
        with self.lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self._ack_locked(seq)
            else:
                self._by_mid[info.mid] = seq
        return seq

    def oldest_unacked_age(self) -> float:
        """Seconds since the oldest unacknowledged message was handed to paho (0: none)."""
        with self.lock:
            if not self._pending:
                return 0.0
            return self.clock() - self._sent[min(self._pending)].at

    def start(self, rate: float, resend_after: float = 5.0) -> None:
        """
        Publish ``rate`` messages per second on a thread until :meth:`stop_load`,
        reconnecting (so paho resends) when a PUBACK is ``resend_after``
        seconds overdue, as an application with a publish timeout would.
        """
        def run() -> None:
            interval = 1.0 / rate
            due = time.monotonic()
            checked = due
            while not self._stop.is_set():
                self.publish()
                due += interval
                now = time.monotonic()
                if now - checked >= 1.0:
                    checked = now
                    if self.oldest_unacked_age() >= resend_after:
                        self.bounce()
                        due = max(due, time.monotonic())
                self._stop.wait(max(0.0, due - time.monotonic()))

        self._thread = threading.Thread(target=run, name="pub-" + self.name, daemon=True)
        self._thread.start()

    def stop_load(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def unacked(self) -> int:
        with self.lock:
            return len(self._pending)

    def history(self) -> PublisherHistory:
        with self.lock:
            return PublisherHistory(self.name, dict(self._sent), frozenset(self._acked),
                                    frozenset(self._resent))


def _connection(client: mqtt.Client) -> str:
    """``host:local port`` of ``client``'s connection now ("" if none)."""
    sock = client.socket()
    try:
        return "%s:%d" % (client.host, sock.getsockname()[1]) if sock is not None else ""
    except OSError:
        return ""


class Subscriber(_Endpoint):
    """A persistent QoS 1 subscriber recording (publisher, seq, dup, qos) in arrival order."""

    def __init__(self, node: Node, name: str, clock: Clock = time.monotonic,
                 keepalive: int = 5) -> None:
        super().__init__(node, name, clock, keepalive)
        self.name = name
        self._receipts: List[Receipt] = []
        #: Topics of probe messages seen (not part of the history).
        self.probes: Set[str] = set()
        self._subscriptions: List[Subscription] = []
        self.client.on_message = self._on_message

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        if payload.startswith(PROBE):
            with self.lock:
                self.probes.add(message.topic)
            return
        parsed = parse_tag(payload)
        publisher, seq = parsed if parsed is not None else ("", -1)
        receipt = Receipt(publisher, seq, bool(message.dup), message.qos, _connection(client))
        with self.lock:
            self._receipts.append(receipt)

    def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 10.0) -> float:
        """SUBSCRIBE and wait for the SUBACK; returns when it arrived (the window's start)."""
        done = threading.Event()
        granted: List[int] = []

        def on_subscribe(client: Any, userdata: Any, mid: int, codes: Any,
                         properties: Any = None) -> None:
            granted.extend(code.value for code in codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic_filter, qos)
        if not done.wait(timeout):
            raise AssertionError("no SUBACK for %s on %s" % (topic_filter, self.name))
        at = self.clock()
        if granted and granted[0] >= 0x80:
            raise AssertionError("SUBSCRIBE %s refused on %s" % (topic_filter, self.name))
        with self.lock:
            self._subscriptions.append(Subscription(topic_filter, at))
        return at

    def holds(self, topic_filter: str, since: float) -> None:
        """The session already holds ``topic_filter`` (it came back with it) since ``since``."""
        with self.lock:
            self._subscriptions.append(Subscription(topic_filter, since))


    def probe_topics(self) -> Set[str]:
        with self.lock:
            return set(self.probes)

    def count(self) -> int:
        with self.lock:
            return len(self._receipts)

    def history(self) -> SubscriberHistory:
        with self.lock:
            return SubscriberHistory(self.name, tuple(self._subscriptions), tuple(self._receipts))


class Racer(Subscriber):
    """
    One persistent session that several connections, one per node, claim
    at once (:meth:`race`): everything any of them receives counts for the
    session, and exactly one of them may still be connected afterwards.
    Taken-over connections are not reconnected (paho would otherwise take
    the session back a second later, and the next one back from it: rounds
    would never settle, and a count could catch one connection coming as
    another goes).  Not by calling ``disconnect()`` from ``on_disconnect``:
    paho 2 marks a lost connection as lost *after* that callback, and
    reconnects anyway.
    """

    reconnect = False

    def __init__(self, node: Node, name: str, clock: Clock = time.monotonic,
                 keepalive: int = 5) -> None:
        super().__init__(node, name, clock, keepalive)
        self.clients: List[mqtt.Client] = [self.client]
        #: Connections alive after each round.
        self.survivors: List[int] = []
        #: CONNECTs refused (CONNACK 3 when the coordinator did not answer).
        self.refused = 0

    def _on_race_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                         properties: Any = None) -> None:
        if reason != 0:
            with self.lock:
                self.refused += 1
        self._on_connect(client, userdata, flags, reason, properties)

    def race(self, nodes: Sequence[Node], settle: float = 1.5, timeout: float = 20.0) -> int:
        """One round: a CONNECT on every node at once; returns how many live."""
        count = len(self.connacks)
        old = self.clients
        fresh = []
        for node in nodes:
            client = _client(self.client_id, self.keepalive, reconnect=False)
            client.on_connect = self._on_race_connect
            client.on_message = self._on_message
            client.connect_async(node.host, node.port, self.keepalive)
            fresh.append(client)
        for client in fresh:
            client.loop_start()
        # Every CONNECT answered (accepted, or refused: the client retries),
        # then the takeovers play out (wall clock is the point here).
        wait_until(lambda: len(self.connacks) + self.refused >= count + len(nodes), timeout,
                   what="CONNACKs for %s" % (self.client_id,))
        time.sleep(settle)
        self.clients = old + fresh
        live = [c for c in self.clients if c.is_connected()]
        for client in self.clients:
            if client not in live:
                client.loop_stop()
        self.clients = live or fresh[-1:]
        self.client = self.clients[0]
        self.survivors.append(len(live))
        return len(live)

    def stop(self) -> None:
        for client in self.clients:
            self.client = client
            super().stop()


class Workload:
    """
    Publishers and subscribers on every node of a cluster.

    ``subscribers_per_node`` persistent subscribers per node, each on the
    filter ``<prefix>/#``, subscribed before any load; one publisher per
    node on ``<prefix>/<publisher>`` at ``rate`` messages per second.
    """

    def __init__(self, nodes: Sequence[Node], prefix: str = "nemesis", rate: float = 100.0,
                 subscribers_per_node: int = 1, clock: Clock = time.monotonic) -> None:
        self.prefix = prefix
        self.rate = rate
        self.clock = clock
        self.publishers = [Publisher(node, "pub%d" % i, "%s/pub%d" % (prefix, i), clock)
                           for i, node in enumerate(nodes)]
        self.subscribers = [Subscriber(node, "sub%d.%d" % (i, j), clock)
                            for i, node in enumerate(nodes) for j in range(subscribers_per_node)]
        #: Clients of nodes that left the cluster (see :meth:`retire`).
        self.retired_publishers: List[Publisher] = []
        self.retired_subscribers: List[Subscriber] = []

    def connect(self) -> None:
        for client in [*self.subscribers, *self.publishers]:
            client.connect()

    def subscribe(self) -> None:
        for sub in self.subscribers:
            sub.subscribe(self.prefix + "/#")

    def wait_routed(self, timeout: float = 30.0) -> None:
        """
        Probe (QoS 0, untagged) from every publisher until every subscriber
        gets probes from all of them: the subscriptions are then routed on
        every node, so the load measures the nemesis, not the replication
        delay after SUBACK (scenario subscribe-publish measures that).
        """
        topics = {"%s/probe/%s" % (self.prefix, p.name) for p in self.publishers}

        def routed() -> bool:
            for pub in self.publishers:
                pub.client.publish("%s/probe/%s" % (self.prefix, pub.name), PROBE, qos=0)
            return all(topics <= s.probe_topics() for s in self.subscribers)

        wait_until(routed, timeout, interval=0.2, what="subscriptions routed on every node")

    def start(self) -> None:
        for pub in self.publishers:
            pub.start(self.rate)

    def stop_load(self) -> None:
        for pub in self.publishers:
            pub.stop_load()

    def drain(self, quiet: float = 3.0, timeout: float = 60.0, stall: float = 5.0) -> bool:
        """
        Wait (bounded) until every publish is acknowledged and the receipts
        stop changing for ``quiet`` seconds; publishers whose
        acknowledgements stall for ``stall`` seconds are reconnected so they
        resend.  Returns False when ``timeout`` ran out first.
        """
        deadline = time.monotonic() + timeout
        last: Tuple[int, ...] = ()
        changed = time.monotonic()
        last_acks: Dict[str, Tuple[int, float]] = {}
        while time.monotonic() < deadline:
            now = time.monotonic()
            for pub in self.publishers:
                pending = pub.unacked()
                seen, since = last_acks.get(pub.name, (-1, now))
                if pending != seen:
                    last_acks[pub.name] = (pending, now)
                elif pending and now - since >= stall:
                    pub.bounce()
                    last_acks[pub.name] = (pending, now)
            state = tuple(s.count() for s in self.subscribers) + tuple(
                p.unacked() for p in self.publishers)
            if state != last:
                last, changed = state, now
            elif now - changed >= quiet and not any(p.unacked() for p in self.publishers):
                return True
            time.sleep(0.2)
        return False

    def retire(self, node: Node) -> None:
        """
        ``node`` left the cluster for good: its clients stop, and their
        sessions no longer count -- its subscribers are not judged, and its
        publishers' messages are no longer owed to anyone (a receipt of one
        is still checked for duplicates and order).
        """
        for pub in [p for p in self.publishers if p.node is node]:
            self.publishers.remove(pub)
            self.retired_publishers.append(pub)
            pub.stop_load()
            pub.stop()
        for sub in [s for s in self.subscribers if s.node is node]:
            self.subscribers.remove(sub)
            self.retired_subscribers.append(sub)
            sub.stop()

    def resume(self, client_id: str, node: Node) -> "Subscriber":
        """
        Reconnect the persistent session ``client_id`` (of a node that left)
        on ``node``, judged from its CONNACK on: it must come back with its
        subscription, and get every message acknowledged from then on.
        """
        sub = Subscriber(node, client_id, self.clock)
        sub.name = "%s@%s" % (client_id, node.host)
        sub.connect()
        if not sub.connacks[-1]:
            sub.stop()
            raise AssertionError("%s came back on %s without its session" % (client_id, node.host))
        sub.holds(self.prefix + "/#", self.clock())
        self.subscribers.append(sub)
        return sub

    def stop(self) -> None:
        for client in [*self.publishers, *self.subscribers]:
            client.stop()

    def histories(self) -> Tuple[List[PublisherHistory], List[SubscriberHistory]]:
        retired = [attrs.evolve(p.history(), acked=frozenset()) for p in self.retired_publishers]
        return ([p.history() for p in self.publishers] + retired,
                [s.history() for s in self.subscribers])
