"""
End to end: a real ``twistd -n vmqtw`` process with real LevelDB, and real
paho-mqtt clients (raw sockets where paho would not misbehave on purpose).
"""
from __future__ import annotations

import os
import stat
import subprocess
import time

from tests.nodeharness import TWISTD
from vmqtw.testing.rawclient import RawClient


def raw_connect(node, client_id, **kwargs):
    return RawClient.connect(node.host, node.port, client_id, timeout=5, **kwargs)


def test_qos_0_1_2_between_paho_clients(nodes):
    """[MQTT-4.3.1-1], [MQTT-4.3.2-1], [MQTT-4.3.3-1]: all three QoS levels deliver."""
    node = nodes.node()
    subscriber = nodes.client(node, "sub")
    assert subscriber.subscribe(("q/#", 2)) == [2]
    publisher = nodes.client(node, "pub")
    for qos in (0, 1, 2):
        publisher.publish("q/%d" % qos, b"m%d" % qos, qos)
    received = sorted(subscriber.wait_for(3))
    assert received == [("q/0", b"m0", 0, False), ("q/1", b"m1", 1, False),
                        ("q/2", b"m2", 2, False)]


def test_retained_message_on_subscribe(nodes):
    """[MQTT-3.3.1-6]/[MQTT-3.3.1-8]: a new subscriber gets the retained message, RETAIN=1."""
    node = nodes.node()
    publisher = nodes.client(node, "pub")
    publisher.publish("status/door", b"open", 1, retain=True)
    publisher.publish("status/door", b"closed", 1, retain=True)
    subscriber = nodes.client(node, "sub")
    subscriber.subscribe(("status/+", 1))
    assert subscriber.wait_for(1) == [("status/door", b"closed", 1, True)]
    publisher.publish("status/door", b"", 1, retain=True)
    late = nodes.client(node, "late")
    late.subscribe(("status/+", 1))
    publisher.publish("status/window", b"x", 0)
    assert late.wait_for(1) == [("status/window", b"x", 0, False)]


def test_will_on_abnormal_close_not_on_disconnect(nodes):
    """[MQTT-3.1.2-8], [MQTT-3.14.4-3]."""
    node = nodes.node()
    watcher = nodes.client(node, "watcher")
    watcher.subscribe(("wills/#", 1))
    polite = nodes.client(node, "polite", will=("wills/polite", b"bye", 1, False))
    polite.disconnect()
    sock = raw_connect(node, "rude", will_topic="wills/rude", will_message=b"dead", will_qos=1)
    sock.close()
    assert watcher.wait_for(1) == [("wills/rude", b"dead", 1, False)]
    # The polite client's will must never come: a later will arrives after
    # everything before it, so two wills in this order prove it did not.
    sock2 = raw_connect(node, "rude2", will_topic="wills/rude2", will_message=b"dead2")
    sock2.close()
    assert [m[0] for m in watcher.wait_for(2)] == ["wills/rude", "wills/rude2"]


def test_keepalive_expiry_closes_and_fires_will(nodes):
    """[MQTT-3.1.2-24]: 1.5 × keepalive of silence and the broker closes the connection."""
    node = nodes.node()
    watcher = nodes.client(node, "watcher")
    watcher.subscribe(("wills/#", 0))
    sock = raw_connect(node, "sleepy", keepalive=1, will_topic="wills/sleepy",
                       will_message=b"timeout")
    started = time.monotonic()
    assert sock.closed_by_peer(timeout=10)
    assert time.monotonic() - started >= 1.4
    assert watcher.wait_for(1) == [("wills/sleepy", b"timeout", 0, False)]


def test_takeover_closes_the_old_connection(nodes):
    """[MQTT-3.1.4-2]: the same client id connecting again takes over."""
    node = nodes.node()
    watcher = nodes.client(node, "watcher")
    watcher.subscribe(("wills/#", 0))
    old = raw_connect(node, "same", will_topic="wills/same", will_message=b"old")
    new = nodes.client(node, "same")
    assert old.closed_by_peer(timeout=10)
    assert watcher.wait_for(1) == [("wills/same", b"old", 0, False)]
    new.subscribe(("t", 0))
    nodes.client(node, "pub").publish("t", b"to-new", 0)
    assert new.wait_for(1) == [("t", b"to-new", 0, False)]


def test_dollar_topics(nodes):
    """[MQTT-4.7.2-1]: '#' does not match '$SYS/..'; clients cannot publish into $SYS."""
    node = nodes.node()
    everything = nodes.client(node, "all")
    everything.subscribe(("#", 0))
    sys_watcher = nodes.client(node, "sys")
    sys_watcher.subscribe(("$SYS/#", 0), ("normal", 0))
    publisher = nodes.client(node, "pub")
    publisher.publish("$SYS/fake", b"no", 1)
    publisher.publish("normal", b"yes", 1)
    assert everything.wait_for(1) == [("normal", b"yes", 0, False)]
    # The $SYS publish came first; by the time "normal" arrives it would have.
    assert sys_watcher.wait_for(1) == [("normal", b"yes", 0, False)]


def test_persistent_session_gets_offline_messages(nodes):
    """[MQTT-3.1.2-4]/[MQTT-3.2.2-2]: offline QoS 1 messages and session present."""
    node = nodes.node()
    subscriber = nodes.client(node, "persist", clean_session=False)
    subscriber.subscribe(("offline/#", 1))
    subscriber.disconnect()
    publisher = nodes.client(node, "pub")
    for i in range(10):
        publisher.publish("offline/%d" % i, b"%d" % i, 1)
    back = nodes.client(node, "persist", clean_session=False)
    assert back.session_present
    assert [m[1] for m in back.wait_for(10)] == [b"%d" % i for i in range(10)]


def test_bad_input_closes_only_that_connection(nodes):
    """A malformed packet closes its connection; the node serves others, no traceback."""
    node = nodes.node()
    subscriber = nodes.client(node, "sub")
    subscriber.subscribe(("t", 0))
    bad = RawClient.open(node.host, node.port, timeout=5)
    bad.send(b"\x30\xff\xff\xff\xff\x7f")
    assert bad.closed_by_peer(timeout=10)
    nodes.client(node, "pub").publish("t", b"alive", 0)
    assert subscriber.wait_for(1) == [("t", b"alive", 0, False)]
    assert "Traceback" not in node.log()


def test_sigterm_shuts_down_cleanly_listeners_first(nodes):
    node = nodes.node()
    client = nodes.client(node, "c")
    client.subscribe(("t", 0))
    # twistd re-raises SIGTERM on its way out, so -15 is a clean exit too.
    assert node.stop() in (0, -15)
    log = node.log()
    assert "Traceback" not in log
    order = [log.index(line) for line in (
        "stopping listener.tcp.default", "Port %d Closed" % node.port,
        "stopping registry", "stopping message-store", "Server Shut Down")]
    assert order == sorted(order), log


def test_bad_config_refused_with_file_line_key(tmp_path):
    """Bad config: FILE:LINE: key: what is wrong; allowed: ..., non-zero exit."""
    config = tmp_path / "bad.conf"
    config.write_text("allow_anonymous = on\nmax_inflight_messages = ten\n")
    result = subprocess.run([TWISTD, "-n", "--pidfile=", "vmqtw", "--config", str(config)],
                            cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "%s:2: max_inflight_messages:" % config in output
    assert "allowed:" in output
    assert "Traceback" not in output


def test_data_directory_is_owner_only(nodes):
    """platform_data_dir is created with owner-only permissions (0700)."""
    node = nodes.node()
    mode = stat.S_IMODE(os.stat(os.path.join(node.directory, "data")).st_mode)
    assert mode == 0o700
