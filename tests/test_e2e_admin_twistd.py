"""
``twistd vmqtw-admin`` in the directory of a running ``twistd vmqtw``
node, next to its ``twistd.pid``: twistd's pidfile check must not stop
the admin command, and both entry points answer alike.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from tests.nodeharness import Node

BIN = os.path.dirname(sys.executable)


def _admin(node: Node, twistd: bool, *argv: str) -> subprocess.CompletedProcess:
    command = [os.path.join(BIN, "twistd"), "vmqtw-admin"] if twistd \
        else [os.path.join(BIN, "vmqtw-admin")]
    return subprocess.run(command + list(argv), cwd=node.directory, capture_output=True,
                          text=True, timeout=60)


def test_twistd_admin_works_next_to_a_running_nodes_pidfile(nodes: Any) -> None:
    node = nodes.node("pid", start=False, nodename="vmqtw@127.0.0.1",
                      distributed_cookie="admin-twistd-cookie")
    node.start(pidfile=True)
    assert os.path.exists(os.path.join(node.directory, "twistd.pid"))
    for argv, code in ((("--config", "vernemq.conf", "cluster", "show"), 0),
                       (("--config", "vernemq.conf", "cluster", "leave", "node=ghost@h"), 1),
                       (("cluster", "frob"), 2)):
        plain = _admin(node, False, *argv)
        twistd = _admin(node, True, *argv)
        assert "Another twistd server" not in twistd.stderr
        assert (twistd.returncode, plain.returncode) == (code, code), (plain, twistd)
        assert twistd.stdout == plain.stdout
        assert twistd.stderr == plain.stderr.replace("vmqtw-admin:", "twistd vmqtw-admin:", 1)
    assert "| vmqtw@127.0.0.1 | true    |" in plain_show(node)
    assert node.process is not None and node.process.poll() is None  # the node is untouched


def plain_show(node: Node) -> str:
    return _admin(node, True, "--config", "vernemq.conf", "cluster", "show").stdout
