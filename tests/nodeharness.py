"""
Real broker processes for end-to-end tests: ``twistd -n vmqtw`` on a free
port with its own config file and LevelDB directory, real paho-mqtt
clients, bounded polls instead of sleeps, and every process killed in the
fixture's teardown even when the test fails.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any, Dict, List, Optional

import paho.mqtt.client as mqtt
import pytest

from tests.clusterharness import Partitions, reserved_ports
from tests.waiting import wait_until

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Node:
    """One ``twistd -n vmqtw`` process in its own directory."""

    def __init__(self, directory: str, settings: Dict[str, str], host: str = "127.0.0.1",
                 partitions: Optional[Partitions] = None) -> None:
        self.directory = directory
        self.host = host
        # Both ports (and the proxy of the proxy back end) from one
        # allocation: every probe stays bound until all are chosen.
        with reserved_ports(host, 2) as (self.port, cluster_port):
            self.settings = {
                "listener.tcp.default": "%s:%d" % (host, self.port),
                "listener.vmq.clustering": "%s:%d" % (host, cluster_port),
                "allow_anonymous": "on",
                "platform_data_dir": "./data",
                "log.console.level": "debug",
            }
            if partitions is not None:
                advertised = partitions.front(host, (host, cluster_port))
                if advertised != (host, cluster_port):
                    self.settings["listener.vmq.clustering.advertise"] = "%s:%d" % advertised
        self.settings.update(settings)
        self.config_path = os.path.join(directory, "vernemq.conf")
        self.log_path = os.path.join(directory, "node.log")
        self.process: Optional[subprocess.Popen] = None
        #: Extra environment of the process (e.g. PYTHONPATH for a plugin).
        self.env: Dict[str, str] = {}
        os.makedirs(directory, exist_ok=True)

    def write_config(self) -> None:
        with open(self.config_path, "w") as handle:
            for key, value in self.settings.items():
                handle.write("%s = %s\n" % (key, value))

    def start(self, wait: bool = True, pidfile: bool = False) -> "Node":
        """``pidfile``: let twistd write ``twistd.pid`` in the node's directory."""
        self.write_config()
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [TWISTD, "-n", *(() if pidfile else ("--pidfile=",)), "vmqtw",
             "--config", self.config_path],
            cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, **self.env) if self.env else None)
        log.close()
        if wait:
            wait_until(self.accepting, 20, what="node to accept on %d" % self.port)
        return self

    def accepting(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError("node exited with %s:\n%s" % (self.process.returncode, self.log()))
        try:
            socket.create_connection((self.host, self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


class Nodes:
    """Fixture object: makes nodes and kills all of them at teardown."""

    def __init__(self, tmp_path: Any, partitions: Optional[Partitions] = None) -> None:
        self.tmp_path = tmp_path
        self.partitions = partitions
        self.nodes: List[Node] = []
        self.clients: List[mqtt.Client] = []

    def node(self, name: str = "node", start: bool = True, host: str = "127.0.0.1",
             **settings: str) -> Node:
        node = Node(str(self.tmp_path / name), {k.replace("__", "."): v
                                                  for k, v in settings.items()}, host=host,
                    partitions=self.partitions)
        self.nodes.append(node)
        return node.start() if start else node

    def client(self, node: Node, client_id: str, clean_session: bool = True,
               **kwargs: Any) -> "PahoClient":
        client = PahoClient(node, client_id, clean_session, **kwargs)
        self.clients.append(client.client)
        return client

    def close(self) -> None:
        for client in self.clients:
            try:
                client.loop_stop()
                client.disconnect()
            except Exception:
                pass
        for node in self.nodes:
            node.kill9()


class PahoClient:
    """A paho-mqtt client on its own network thread, recording what arrives."""

    def __init__(self, node: Node, client_id: str, clean_session: bool = True,
                 keepalive: int = 60, will: Optional[tuple] = None,
                 connect: bool = True) -> None:
        self.node = node
        self.messages: List[mqtt.MQTTMessage] = []
        self.connacks: List[Any] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=clean_session, protocol=mqtt.MQTTv311)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.keepalive = keepalive
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos, retain)
        if connect:
            self.connect()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(message)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:
        with self.lock:
            self.connacks.append((flags.session_present, reason))

    def connect(self, refused_ok: bool = False) -> "PahoClient":
        """Connect and wait for the CONNACK; a refusal fails unless ``refused_ok``."""
        count = len(self.connacks)
        self.client.connect(self.node.host, self.node.port, self.keepalive)
        self.client.loop_start()
        wait_until(lambda: len(self.connacks) > count, 10, what="CONNACK")
        reason = self.connacks[-1][1]
        if not refused_ok and getattr(reason, "is_failure", False):
            # Say so here: paho would go on and drop every later packet
            # silently (a SUBSCRIBE would just never get its SUBACK).
            raise AssertionError("%s refused the CONNECT of %s: %s" % (
                self.node.host, self.client._client_id.decode(), reason))
        return self

    @property
    def session_present(self) -> bool:
        return bool(self.connacks[-1][0])

    def subscribe(self, *filters: tuple) -> List[int]:
        granted: List[Any] = []
        done = threading.Event()

        def on_subscribe(client: Any, userdata: Any, mid: int, codes: Any,
                         properties: Any = None) -> None:
            granted.extend(code.value for code in codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe(list(filters))
        assert done.wait(10), "no SUBACK"
        return granted

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos, retain)
        info.wait_for_publish(10)
        assert info.is_published()

    def received(self) -> List[tuple]:
        with self.lock:
            return [(m.topic, m.payload, m.qos, bool(m.retain)) for m in self.messages]

    def wait_for(self, count: int, timeout: float = 10.0) -> List[tuple]:
        wait_until(lambda: len(self.messages) >= count, timeout,
                   what="%d messages (have %d)" % (count, len(self.messages)))
        return self.received()

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def nodes(tmp_path: Any, partitions: Partitions) -> Any:
    """Nodes of one test, each fronted on the partition back end."""
    group = Nodes(tmp_path, partitions)
    try:
        yield group
    finally:
        group.close()
