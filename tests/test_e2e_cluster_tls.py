"""
TLS between cluster nodes, configured with ``cluster.tls.*``.

End to end: two real ``twistd -n vmqtw`` nodes on loopback aliases
127.0.0.8 (A) and 127.0.0.9 (B), each with a certificate from the test's
cluster CA (IP SAN = its clustering address, serverAuth + clientAuth),
joined with the ``vmqtw-admin`` command line -- so the admin client's TLS
path is exercised too -- and routing a message between paho clients; a
third node whose certificate another CA signed cannot join.  In process:
the startup checks of the node certificate and the admin client's answers
to a node it must not trust or that does not trust it.

Every process is killed by the ``nodes`` fixture, every file is under
``tmp_path``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

import pytest
from twisted.internet.task import Clock

from tests.nodeharness import Node
from tests.waiting import wait_until
from tests.test_tls import Issued, issue, make_ca, write
from vmqtw.admin.cli import execute
from vmqtw.admin.client import AdminError
from vmqtw.admin.commands import parse_args
from vmqtw.config import Config, ConfigError, load_config
from vmqtw.node import build_node
from vmqtw.tls import cluster_tls_from_config

BIN = os.path.dirname(sys.executable)
A_HOST, B_HOST = "127.0.0.8", "127.0.0.9"
SETTINGS = {"metadata__lazy_tick": "200ms", "metadata__exchange_tick": "500ms",
            "metadata__gossip_interval": "300ms", "log__console__level": "info",
            "distributed_cookie": "e2e-cluster-tls-cookie"}


def node_files(directory: str, ca: Issued, name: str, ip: str, node: bool = True) -> Dict[str, str]:
    """The ``cluster.tls.*`` settings of a node: its certificate (CN = name, IP SAN = ip) and the CA."""
    os.makedirs(directory, exist_ok=True)
    issued = issue(ca, [name], ip=ip, node=node)
    base = os.path.join(directory, "cluster")
    return {"cluster__tls__certfile": write(base + ".crt", issued.cert_pem()),
            "cluster__tls__keyfile": write(base + ".key", issued.key_pem()),
            "cluster__tls__cafile": write(base + "-ca.crt", ca.cert_pem())}


def admin(node: Node, *argv: str) -> subprocess.CompletedProcess:
    """``vmqtw-admin`` as a subprocess, in the node's directory, with its configuration."""
    return subprocess.run([os.path.join(BIN, "vmqtw-admin"), "--config", node.config_path, *argv],
                          cwd=node.directory, capture_output=True, text=True, timeout=60)


def show(config: Config) -> List[tuple]:
    """``cluster show`` in process (cheap to poll), over the admin client's TLS."""
    out = execute(parse_args(["--format=json", "cluster", "show"]), config)
    return [(row["Node"], row["Running"]) for row in json.loads(out)["table"]]


def show_or_none(config: Config) -> Optional[List[tuple]]:
    try:
        return show(config)
    except AdminError:
        return None


def discovery(node: Node) -> str:
    return "discovery-node=%s:%s" % (node.settings["nodename"],
                                     node.settings["listener.vmq.clustering"].rsplit(":", 1)[1])


def test_two_nodes_over_cluster_tls_route_and_refuse_a_node_of_another_ca(nodes, tmp_path):
    """
    [MQTT-3.3.5-1]: a QoS 1 message published on A reaches the subscriber
    on B over the TLS link; a node with another CA's certificate gets one
    sentence from ``cluster join`` and never becomes a member.
    """
    ca, rogue_ca = make_ca("cluster CA"), make_ca("rogue CA")
    pki = str(tmp_path / "pki")
    a = nodes.node("A", start=False, host=A_HOST, nodename="vmqtw@" + A_HOST, **SETTINGS,
                   **node_files(os.path.join(pki, "a"), ca, "vmqtw@" + A_HOST, A_HOST))
    b = nodes.node("B", start=False, host=B_HOST, nodename="vmqtw@" + B_HOST, **SETTINGS,
                   **node_files(os.path.join(pki, "b"), ca, "vmqtw@" + B_HOST, B_HOST))
    # The rogue shares B's alias (on other ports) and the cookie: only TLS keeps it out.
    rogue = nodes.node("R", start=False, host=B_HOST, nodename="rogue@" + B_HOST, **SETTINGS,
                       **node_files(os.path.join(pki, "r"), rogue_ca, "rogue@" + B_HOST, B_HOST))
    for node in (a, b, rogue):
        node.start(wait=False)
    for node in (a, b, rogue):
        wait_until(node.accepting, 20, what="%s to accept" % (node.settings["nodename"],))
    a_config, b_config = load_config(a.config_path), load_config(b.config_path)

    done = admin(b, "cluster", "join", discovery(a))
    assert (done.returncode, done.stdout, done.stderr) == (0, "Done\n", "")
    both = [("vmqtw@" + A_HOST, True), ("vmqtw@" + B_HOST, True)]
    for config in (a_config, b_config):
        wait_until(lambda: show_or_none(config) == both, 15, what="both nodes running")

    sub = nodes.client(b, "sub-b")
    assert sub.subscribe(("tls/route/#", 1)) == [1]
    pub = nodes.client(a, "pub-a")
    # The subscription reaches A by replication: probe until it has.
    wait_until(lambda: pub.publish("tls/route/probe", b"p", 0) or sub.messages, 10,
               interval=0.1, what="subscription replicated to A")
    pub.publish("tls/route/q1", b"over tls", 1)
    wait_until(lambda: ("tls/route/q1", b"over tls", 1, False) in sub.received(), 10,
               what="the QoS 1 message on B")

    refused = admin(rogue, "cluster", "join", discovery(a))
    assert refused.returncode != 0 and refused.stdout == ""
    assert refused.stderr.startswith(
        "vmqtw-admin: The discovery node vmqtw@%s cannot be reached at %s:" % (A_HOST, A_HOST)), \
        refused.stderr
    assert refused.stderr.count("\n") == 1
    assert show(a_config) == both
    # It was TLS that refused it: A logged the failed handshake from the rogue's address.
    assert "TLS connection from ('%s'," % (B_HOST,) in a.log()

    admin_is_refused_by_and_refuses_the_wrong_ca(a_config, rogue)


def admin_is_refused_by_and_refuses_the_wrong_ca(config: Config, rogue: Node) -> None:
    """The admin client checks the node's certificate, and the node checks the admin's."""
    rogue_files = load_config(rogue.config_path)
    with pytest.raises(AdminError, match=r"^The node at 127\.0\.0\.8:\d+ presented a certificate "
                                         r"this client does not trust \(.+\); check cluster\.tls"):
        show(config.replace(cluster_tls_cafile=rogue_files.cluster_tls_cafile))
    with pytest.raises(AdminError, match=r"^The node at 127\.0\.0\.8:\d+ (refused our TLS certificate"
                                         r"|closed the TLS connection during the handshake)"):
        show(config.replace(cluster_tls_certfile=rogue_files.cluster_tls_certfile,
                            cluster_tls_keyfile=rogue_files.cluster_tls_keyfile))
    with pytest.raises(AdminError, match="closed the connection during the handshake"):
        show(config.replace(cluster_tls_certfile=None))


# -- startup checks, in process ---------------------------------------------------


def tls_config(tmp_path: Any, ip: str = "127.0.0.8", cert_ip: Optional[str] = None,
               node: bool = True) -> Config:
    files = node_files(str(tmp_path / "pki"), make_ca("cluster CA"), "n", cert_ip or ip, node)
    return Config.default(cwd=str(tmp_path)).replace(
        platform_data_dir=str(tmp_path / "data"), listener_vmq_clustering=(ip, 0),
        message_store="memory",
        **{key.replace("__", "_"): value for key, value in files.items()})


def test_build_node_wires_cluster_tls_into_the_transport(tmp_path):
    plain = build_node(Config.default().replace(platform_data_dir=str(tmp_path / "plain"),
                                                message_store="memory"), Clock())
    assert plain.transport.tls is None
    node = build_node(tls_config(tmp_path), Clock())
    assert node.transport.tls is not None
    assert node.transport.tls.identity.getSubject().commonName == b"n"


def test_certificate_for_another_address_stops_the_node(tmp_path):
    config = tls_config(tmp_path, ip="127.0.0.8", cert_ip="127.0.0.9")
    with pytest.raises(ConfigError) as info:
        build_node(config, Clock())
    assert str(info.value) == (
        "cluster.tls.certfile %r has no subject alternative name for 127.0.0.8, this node's "
        "listener.vmq.clustering address, so the other nodes would refuse it"
        % (config.cluster_tls_certfile,))
    assert not os.path.exists(config.data_dir)       # refused before anything opened


def test_certificate_without_client_auth_is_refused(tmp_path):
    """A server-only certificate could accept links but never dial one."""
    config = tls_config(tmp_path, node=False)
    with pytest.raises(ConfigError, match=r"does not allow clientAuth in its extended key usage; "
                                          r"a node certificate needs both serverAuth and clientAuth"):
        cluster_tls_from_config(config)


def test_wildcard_clustering_address_checks_only_the_usages(tmp_path):
    assert cluster_tls_from_config(tls_config(tmp_path, ip="0.0.0.0", cert_ip="127.0.0.8"))


def test_unreadable_key_names_the_cluster_key(tmp_path):
    config = tls_config(tmp_path)
    with pytest.raises(ConfigError, match="cluster.tls.keyfile"):
        cluster_tls_from_config(config.replace(cluster_tls_keyfile=str(tmp_path / "missing.key")))
    with pytest.raises(AdminError, match=r"^cluster\.tls\.certfile .* cannot be used"):
        execute(parse_args(["cluster", "show"]),
                config.replace(cluster_tls_keyfile=str(tmp_path / "missing.key")))
