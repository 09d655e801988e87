"""
End to end: vmq_passwd and vmq_acl in a real ``twistd -n vmqtw`` node with
real paho-mqtt clients -- password file, CONNACK codes, the ``%c``/``%u``
wildcard bypass attempt, and ACL changes while the node runs (file watcher
and SIGHUP).
"""
from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

from tests.clusterharness import free_port
from tests.nodeharness import TWISTD
from tests.waiting import wait_until
from vmqtw.auth.passwd import hash_password

USERS = {"alice": "wonderland", "bob": "builder", "+": "plus", "x": "ex"}

ACL = """\
pattern readwrite clients/%c/#
pattern readwrite users/%u/#
topic write shared/#
topic read shared/#
"""


def auth_node(nodes: Any, acl: str = ACL, **settings: str) -> Any:
    directory = nodes.tmp_path / "node"
    directory.mkdir()
    (directory / "vmq.passwd").write_text("".join(
        "%s:%s\n" % (user, hash_password(pw, iterations=1000)) for user, pw in USERS.items()))
    (directory / "vmq.acl").write_text(acl)
    options = dict(allow_anonymous="off", plugins__vmq_passwd="on",
                   vmq_passwd__password_file="./vmq.passwd", plugins__vmq_acl="on",
                   vmq_acl__acl_file="./vmq.acl")
    options.update(settings)
    return nodes.node("node", **options)


def client(nodes: Any, node: Any, client_id: str, user: Any = None, password: Any = None) -> Any:
    """A paho client that connected (or was refused); see ``connack``."""
    c = nodes.client(node, client_id, connect=False)
    c.client.reconnect_delay_set(60, 60)      # no reconnects while a test looks
    if user is not None:
        c.client.username_pw_set(user, password)
    return c.connect(refused_ok=True)


def connack(c: Any) -> int:
    """The MQTT 3.1.1 CONNACK return code of the first answer paho saw."""
    return _CONNACK_NAMES[c.connacks[0][1].getName()]


# paho 2 reports 3.1.1 CONNACK codes as MQTT 5 reason codes; compare by name.
_CONNACK_NAMES = {"Success": 0, "Unsupported protocol version": 1,
                  "Client identifier not valid": 2, "Server unavailable": 3,
                  "Bad user name or password": 4, "Not authorized": 5}


def test_wrong_password_gets_4_no_credentials_5_right_password_0(nodes):
    """[MQTT-3.2.2-5], bad-input case 33: CONNACK 4 / 5 / 0 from the password file."""
    node = auth_node(nodes)
    assert connack(client(nodes, node, "c1", "alice", "WRONG")) == 4
    assert connack(client(nodes, node, "c2", "nobody", "wonderland")) == 4
    assert connack(client(nodes, node, "c3")) == 5
    assert connack(client(nodes, node, "c4", "alice", "wonderland")) == 0


def test_client_id_hash_cannot_read_other_clients_topics(nodes):
    """CVE-2017-7650: client id '#' with 'pattern readwrite clients/%c/#' gets nothing of x's."""
    node = auth_node(nodes)
    victim = client(nodes, node, "x", "x", "ex")
    assert connack(victim) == 0
    assert victim.subscribe(("clients/x/#", 1)) == [1]
    attacker = client(nodes, node, "#", "alice", "wonderland")
    assert connack(attacker) == 0
    assert attacker.subscribe(("clients/x/#", 1), ("clients/#", 1), ("clients/+/data", 1)) \
        == [0x80, 0x80, 0x80]
    attacker.publish("clients/x/cmd", b"evil", qos=1)       # PUBACKed, dropped
    victim.publish("clients/x/data", b"mine", qos=1)
    assert victim.wait_for(1) == [("clients/x/data", b"mine", 1, False)]
    assert attacker.received() == []


def test_username_plus_cannot_widen_percent_u(nodes):
    """CVE-2017-7650: user '+' with 'pattern readwrite users/%u/#' reaches no one's tree."""
    node = auth_node(nodes)
    attacker = client(nodes, node, "c1", "+", "plus")
    assert connack(attacker) == 0
    assert attacker.subscribe(("users/+/#", 0), ("users/alice/#", 0)) == [0x80, 0x80]
    alice = client(nodes, node, "c2", "alice", "wonderland")
    assert alice.subscribe(("users/alice/#", 0)) == [0]


def _narrowed(publisher: Any, subscriber: Any, rounds: list) -> bool:
    """One probe: a message on shared/secret, then a marker on shared/ok.  True once
    the marker arrives with the secret withheld (the new ACL is in force)."""
    n = len(rounds)
    rounds.append(n)
    publisher.publish("shared/secret", b"s%d" % n, qos=1)
    publisher.publish("shared/ok", b"m%d" % n, qos=1)
    wait_until(lambda: ("shared/ok", b"m%d" % n, 1, False) in subscriber.received(), 10,
               what="marker %d" % n)
    return ("shared/secret", b"s%d" % n, 1, False) not in subscriber.received()


def test_acl_file_rewritten_while_running_narrows_live_subscription(nodes):
    """
    Bad-input case 34: the ACL file changes under a running node; within the
    watcher's interval (10 s) a live 'shared/#' subscriber stops receiving
    what the new file no longer lets it read.
    """
    node = auth_node(nodes)
    subscriber = client(nodes, node, "sub", "bob", "builder")
    assert subscriber.subscribe(("shared/#", 1)) == [1]
    publisher = client(nodes, node, "pub", "alice", "wonderland")
    rounds: list = []
    assert not _narrowed(publisher, subscriber, rounds)       # old ACL: secret delivered
    with open(os.path.join(node.directory, "vmq.acl"), "a") as acl:
        acl.write("topic deny shared/secret\n")
    wait_until(lambda: _narrowed(publisher, subscriber, rounds), 20, interval=0.2,
               what="the rewritten ACL to take effect")


def test_sighup_rereads_acl_at_once(nodes):
    """
    ``kill -HUP`` re-reads the ACL even when the change keeps the file's
    size and mtime (which the periodic check cannot see).
    """
    node = auth_node(nodes, acl=ACL + "topic write open/aaa\n")
    path = os.path.join(node.directory, "vmq.acl")
    subscriber = client(nodes, node, "sub", "bob", "builder")
    assert subscriber.subscribe(("shared/#", 1)) == [1]
    before = os.stat(path)
    with open(path, "w") as acl:
        acl.write(ACL.replace("topic read shared/#", "topic read shared/ok")
                  + "topic write open/bb\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    node.process.send_signal(signal.SIGHUP)
    publisher = client(nodes, node, "pub", "alice", "wonderland")
    rounds: list = []
    wait_until(lambda: _narrowed(publisher, subscriber, rounds), 5, interval=0.1,
               what="SIGHUP to reload the ACL")
    assert node.process.poll() is None


def test_missing_password_file_refuses_to_start(tmp_path):
    """A node with plugins.vmq_passwd on and no password file exits non-zero, naming both."""
    config = tmp_path / "vernemq.conf"
    # A free clustering port: the default (44053) may be another node's.
    config.write_text("listener.tcp.default = 127.0.0.1:0\nplatform_data_dir = ./data\n"
                      "listener.vmq.clustering = 127.0.0.1:%d\n" % free_port()
                      + "plugins.vmq_passwd = on\nvmq_passwd.password_file = ./missing.passwd\n")
    result = subprocess.run([TWISTD, "-n", "--pidfile=", "vmqtw", "--config", str(config)],
                            cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "vmq_passwd.password_file" in result.stderr
    assert "missing.passwd" in result.stderr
    assert "Traceback" not in result.stderr
