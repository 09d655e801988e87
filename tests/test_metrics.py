"""
The node's metrics (:mod:`vmqtw.metrics`) and the monitoring resources
(:mod:`vmqtw.http`): the collector reads plain counters when scraped, one
registry per node, ``/health``'s reasons.  In process; a real node is
scraped in tests/test_e2e_operator.py.
"""
from __future__ import annotations

from typing import Any, Dict

import pytest

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.exposition import generate_latest
from twisted.internet.testing import MemoryReactorClock
from twisted.web.test.requesthelper import DummyRequest

from vmqtw.broker.auth import AuthCounters
from vmqtw.broker.queue import QueueCounters
from vmqtw.cluster.dataplane import DataPlaneCounters
from vmqtw.cluster.protocol import LinkCounters
from vmqtw.config import Config
from vmqtw.http import HealthResource, MetricsResource, health_reason, monitoring_site
from vmqtw.metrics import MetricSources, node_registry
from vmqtw.mqtt.session import MqttCounters
from vmqtw.node import build_node


def samples(registry: Any) -> Dict[str, float]:
    """``{sample name: value}`` of one node's registry, parsed back from the text format."""
    text = generate_latest(registry).decode("utf-8")
    return {sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples}


class Readiness:
    netsplits_detected = 2
    netsplits_resolved = 1


def test_the_collector_reads_the_counters_at_scrape_time() -> None:
    mqtt = MqttCounters()
    queue = QueueCounters(dropped_online=1, dropped_offline=2, dropped_qos0_offline=3,
                          dropped_unauthorized=4)
    trie = ["a", "b"]
    registry = node_registry("n@127.0.0.1", MetricSources(
        mqtt=mqtt, queue=queue, dataplane=DataPlaneCounters(forwarded=7, outboxed=4),
        links=LinkCounters(bytes_in=10, bytes_out=20), auth=AuthCounters(bad_credentials=5),
        readiness=Readiness(),
        gauges=[("router_subscriptions", "subscriptions", lambda: len(trie))],
        totals=[("router_messages_routed", "routed", lambda: 11)]))
    before = samples(registry)
    assert before["mqtt_publish_received_total"] == 0
    mqtt.publish_received += 3
    mqtt.connack_sent[0] += 2
    mqtt.connack_sent[5] += 1
    trie.append("c")
    after = samples(registry)
    assert after["mqtt_publish_received_total"] == 3
    assert after["mqtt_connack_sent_total"] == 3
    assert after["mqtt_connack_accepted_sent_total"] == 2
    assert after["mqtt_connack_not_authorized_sent_total"] == 1
    assert after["queue_message_drop_total"] == 10
    assert after["cluster_messages_forwarded_total"] == 7
    assert after["cluster_messages_outboxed_total"] == 4
    assert (after["cluster_bytes_received_total"], after["cluster_bytes_sent_total"]) == (10, 20)
    assert after["mqtt_connect_bad_credentials_total"] == 5
    assert (after["netsplit_detected_total"], after["netsplit_resolved_total"]) == (2, 1)
    assert after["router_subscriptions"] == 3
    assert after["router_messages_routed_total"] == 11
    text = generate_latest(registry).decode("utf-8")
    assert 'mqtt_publish_received_total{node="n@127.0.0.1"} 3.0' in text


def test_each_node_has_its_own_registry(tmp_path: Any) -> None:
    """Several nodes in one process (tests do it): each shows its own numbers."""
    nodes = [build_node(Config.default().replace(platform_data_dir=str(tmp_path / name),
                                                 message_store="memory",
                                                 nodename="%s@127.0.0.1" % name),
                        MemoryReactorClock()) for name in ("a", "b")]
    try:
        assert nodes[0].metrics is not nodes[1].metrics
        nodes[0].registry.counters.retried += 4
        assert samples(nodes[0].metrics)["queue_message_retried_total"] == 4
        assert samples(nodes[1].metrics)["queue_message_retried_total"] == 0
        assert nodes[0].health is not None and nodes[0].health() == "not serving MQTT (starting)"
    finally:
        for node in nodes:
            node.metadata.store.close()


def test_health_reasons_most_lasting_first() -> None:
    healthy = dict(serving=True, removed=False, leaving=False, unreachable=[])
    assert health_reason(**healthy) is None
    assert health_reason(**{**healthy, "unreachable": ["c@x", "b@x"]}) == (
        "netsplit: b@x, c@x unreachable")
    assert health_reason(**{**healthy, "serving": False}) == "not serving MQTT (starting)"
    assert health_reason(**{**healthy, "leaving": True, "serving": False}) == (
        "leaving the cluster (its sessions are being moved)")
    assert health_reason(**{**healthy, "removed": True, "serving": False,
                            "unreachable": ["b@x"]}) == "removed from the cluster"
    assert health_reason(**{**healthy, "store_failing": True, "unreachable": ["b@x"]}) == (
        "the message store takes no writes (its database is away)")


def _render(resource: Any) -> DummyRequest:
    request = DummyRequest([b""])
    body = resource.render_GET(request)
    request.written.append(body)
    return request


def test_health_is_200_ok_or_503_with_the_reason() -> None:
    reason: Dict[str, Any] = {"now": None}
    resource = HealthResource(lambda: reason["now"])
    ok = _render(resource)
    assert (ok.responseCode or 200, b"".join(ok.written)) == (200, b"OK\n")
    reason["now"] = "netsplit: b@x unreachable"
    down = _render(resource)
    assert (down.responseCode, b"".join(down.written)) == (503, b"netsplit: b@x unreachable\n")


def test_metrics_resource_serves_the_prometheus_text_format() -> None:
    mqtt = MqttCounters(socket_open=4)
    request = _render(MetricsResource(node_registry("n", MetricSources(mqtt=mqtt))))
    assert request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    assert b'socket_open_total{node="n"} 4.0' in b"".join(request.written)


def test_the_site_routes_metrics_and_health() -> None:
    site = monitoring_site(node_registry("n", MetricSources()), lambda: None)
    child = site.resource.getChildWithDefault
    assert isinstance(child(b"metrics", DummyRequest([b"metrics"])), MetricsResource)
    assert isinstance(child(b"health", DummyRequest([b"health"])), HealthResource)
    assert not isinstance(child(b"other", DummyRequest([b"other"])),
                          (MetricsResource, HealthResource))


def test_listener_http_is_a_named_address_checked_against_the_other_listeners() -> None:
    from vmqtw.config import ConfigError, parse_config
    config = parse_config("listener.http.default = 127.0.0.1:8888\n"
                          "listener.http.lb = 127.0.0.2:8888\n", "x.conf", "/")
    assert config.http_listeners == {"default": ("127.0.0.1", 8888), "lb": ("127.0.0.2", 8888)}
    assert parse_config("", "x.conf", "/").http_listeners == {}       # off unless set
    with pytest.raises(ConfigError, match="x.conf:2: listener.http.default: "
                                          "127.0.0.1:1883 is already used by listener.tcp.default"):
        parse_config("listener.tcp.default = 127.0.0.1:1883\n"
                     "listener.http.default = 127.0.0.1:1883\n", "x.conf", "/")
