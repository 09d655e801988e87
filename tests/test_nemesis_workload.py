"""
The nemesis workload's clients against a scripted broker (no vmqtw node):
what they do when the broker closes their connection.
"""
from __future__ import annotations

import socket
import threading
from typing import Any, cast

import attrs

from tests.nemesis.workload import Racer, Subscriber
from tests.waiting import wait_until


@attrs.define
class _Node:
    """What a workload client reads of a node."""

    host: str
    port: int


class _TakingOverBroker:
    """
    Accepts MQTT connections on 127.0.0.1, answers each CONNECT with
    CONNACK 0 (session present) and then closes it, as a broker closes a
    connection that another one took over.  Counts the connections.
    """

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.accepted += 1
            with conn:
                conn.settimeout(5)
                conn.recv(1024)   # the CONNECT (one small packet)
                conn.sendall(b"\x20\x02\x01\x00")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


def test_a_racer_connection_taken_over_stays_down() -> None:
    """
    registration-races counts the live connections of one client id after
    each round: a connection the broker closed (taken over) must not come
    back by itself -- paho's loop reconnects after a second unless told not
    to, took the session back, and rounds then never settled (and sometimes
    counted two live connections).
    """
    broker = _TakingOverBroker()
    racer = Racer(cast(Any, _Node("127.0.0.1", broker.port)), "racer")
    try:
        racer.connect()
        # paho forgets its loop thread once the loop gives up; one that
        # reconnects keeps it.
        wait_until(lambda: racer.client._thread is None, 5.0,
                   what="the taken-over client's loop to end")
        assert broker.accepted == 1
        assert not racer.client.is_connected()
    finally:
        racer.client.loop_stop()
        broker.close()


def test_the_clients_of_other_endpoints_still_reconnect() -> None:
    """Publishers and subscribers keep paho's reconnection (the other scenarios need it)."""
    broker = _TakingOverBroker()
    sub = Subscriber(cast(Any, _Node("127.0.0.1", broker.port)), "sub")
    try:
        sub.connect()
        wait_until(lambda: broker.accepted >= 2, 10.0, what="a reconnection")
    finally:
        sub.client.disconnect()
        sub.client.loop_stop()
        broker.close()
