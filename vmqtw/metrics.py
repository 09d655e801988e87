"""
The metrics of one node, as a prometheus-client registry.

The broker already counts what it does in plain integers (the sessions'
:class:`~vmqtw.mqtt.session.MqttCounters`, the queues'
:class:`~vmqtw.broker.queue.QueueCounters`, the data plane's, the cluster
links', the authenticator's); the hot path only adds one to them.
:class:`NodeCollector` reads them when the registry is collected (a scrape
of ``GET /metrics``), so no prometheus object is touched per message and
nothing is computed until someone asks.

One registry per node object, never prometheus-client's global default:
tests build several nodes in one process, and each must show its own.

Names are VerneMQ's where it has one (``mqtt_publish_received``,
``queue_message_drop``, ``netsplit_detected``, ``cluster_bytes_sent``...);
prometheus-client renders a counter ``X`` as the sample ``X_total``.  Every
sample carries the label ``node``, as VerneMQ's do.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional, Tuple

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from vmqtw.mqtt.session import MqttCounters

__all__ = ["MetricSources", "NodeCollector", "node_registry", "CONNACK_NAMES"]

#: VerneMQ's CONNACK metrics (MQTT 3.1.1), by return code.
CONNACK_NAMES = ("mqtt_connack_accepted_sent", "mqtt_connack_unacceptable_protocol_sent",
                 "mqtt_connack_identifier_rejected_sent", "mqtt_connack_server_unavailable_sent",
                 "mqtt_connack_bad_credentials_sent", "mqtt_connack_not_authorized_sent")

#: (metric, MqttCounters attribute, description)
_MQTT = (
    ("mqtt_connect_received", "connect_received", "CONNECT packets received"),
    ("mqtt_publish_received", "publish_received", "PUBLISH packets received"),
    ("mqtt_publish_sent", "publish_sent", "PUBLISH packets sent"),
    ("mqtt_puback_received", "puback_received", "PUBACK packets received"),
    ("mqtt_puback_sent", "puback_sent", "PUBACK packets sent"),
    ("mqtt_pubrec_received", "pubrec_received", "PUBREC packets received"),
    ("mqtt_pubrec_sent", "pubrec_sent", "PUBREC packets sent"),
    ("mqtt_pubrel_received", "pubrel_received", "PUBREL packets received"),
    ("mqtt_pubrel_sent", "pubrel_sent", "PUBREL packets sent"),
    ("mqtt_pubcomp_received", "pubcomp_received", "PUBCOMP packets received"),
    ("mqtt_pubcomp_sent", "pubcomp_sent", "PUBCOMP packets sent"),
    ("mqtt_subscribe_received", "subscribe_received", "SUBSCRIBE packets received"),
    ("mqtt_suback_sent", "suback_sent", "SUBACK packets sent"),
    ("mqtt_unsubscribe_received", "unsubscribe_received", "UNSUBSCRIBE packets received"),
    ("mqtt_unsuback_sent", "unsuback_sent", "UNSUBACK packets sent"),
    ("mqtt_pingreq_received", "pingreq_received", "PINGREQ packets received"),
    ("mqtt_pingresp_sent", "pingresp_sent", "PINGRESP packets sent"),
    ("mqtt_disconnect_received", "disconnect_received", "DISCONNECT packets received"),
    ("mqtt_publish_auth_error", "publish_denied",
     "PUBLISHes the client may not send (ACL, $ topics): acknowledged, not routed"),
    ("socket_open", "socket_open", "MQTT connections accepted"),
    ("socket_close", "socket_close", "MQTT connections closed"),
)

#: (metric, QueueCounters attribute, description)
_QUEUE = (
    ("queue_message_drop_online", "dropped_online",
     "messages dropped: an online session's queue was full"),
    ("queue_message_drop_offline", "dropped_offline",
     "messages dropped: an offline session's queue was full"),
    ("queue_message_drop_qos0_offline", "dropped_qos0_offline",
     "QoS 0 messages for offline sessions, dropped"),
    ("queue_message_unauthorized", "dropped_unauthorized",
     "messages dropped: the subscriber may no longer read them (ACL)"),
    ("queue_message_retried", "retried", "deliveries retried after retry_interval"),
    ("client_expired", "expired_sessions",
     "persistent sessions expired (persistent_client_expiration)"),
)

#: (metric, DataPlaneCounters attribute, description): what node status shows.
_DATAPLANE = (
    ("cluster_messages_forwarded", "forwarded", "messages sent to other nodes"),
    ("cluster_messages_received", "received_remote", "messages received from other nodes"),
    ("cluster_publishes_refused_backlog_full", "refused_backlog_full",
     "QoS 1/2 publishes not acknowledged: a peer's backlog was full"),
    ("cluster_qos0_dropped", "dropped_qos0", "QoS 0 copies for other nodes dropped"),
    ("cluster_messages_resent", "resent", "messages sent again after a link was lost"),
    ("cluster_duplicates_dropped", "duplicates_dropped", "messages received twice, dropped"),
    ("cluster_messages_restored", "restored", "messages read back from the outbox at start"),
    ("cluster_messages_orphaned_node_left", "orphaned_node_left",
     "messages for a node that left the cluster, passed on to its sessions' new homes"),
    ("cluster_messages_outboxed", "outboxed",
     "QoS 1/2 copies written to the outbox: their node had not acknowledged them in time"),
)

#: (metric, LinkCounters attribute, description)
_LINKS = (
    ("cluster_bytes_sent", "bytes_out", "bytes sent to other nodes"),
    ("cluster_bytes_received", "bytes_in", "bytes received from other nodes"),
    ("cluster_bytes_dropped", "dropped_bytes", "bytes for other nodes dropped (link down)"),
)

#: (metric, AuthCounters attribute, description)
_AUTH = (
    ("mqtt_connect_auth_error", "not_authorized", "CONNECTs refused: not authorized"),
    ("mqtt_connect_bad_credentials", "bad_credentials",
     "CONNECTs refused: bad user name or password"),
    ("mqtt_connect_overloaded", "overloaded",
     "CONNECTs refused: too many password checks queued"),
    ("mqtt_subscribe_auth_error", "subscribe_denied", "subscriptions the ACL denied"),
)


@attrs.define(slots=True, eq=False)
class MetricSources:
    """
    Where a node's numbers are read at scrape time.  Every source is
    optional (a test, or a node without a cluster, has fewer); counters
    are objects with the integer attributes named in this module's tables,
    gauges are callables.
    """

    mqtt: Optional[MqttCounters] = None
    queue: Any = None
    dataplane: Any = None
    links: Any = None
    auth: Any = None
    #: Has ``netsplits_detected`` and ``netsplits_resolved``.
    readiness: Any = None
    #: (name, description, callable returning the current value)
    gauges: List[Tuple[str, str, Callable[[], float]]] = attrs.field(factory=list)
    #: Counters kept elsewhere: (name, description, callable returning the total)
    totals: List[Tuple[str, str, Callable[[], float]]] = attrs.field(factory=list)


class NodeCollector(Collector):
    """The node's metrics, read from ``sources`` each time it is collected."""

    def __init__(self, node: str, sources: MetricSources) -> None:
        self.node = node
        self.sources = sources

    def describe(self) -> List[Metric]:
        # Nothing to check at registration: reading at scrape time only.
        return []

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["node"])
        family.add_metric([self.node], value)
        return family

    def _counters(self, table: Any, counters: Any) -> Iterator[Metric]:
        if counters is None:
            return
        for name, attr, doc in table:
            yield self._counter(name, doc, getattr(counters, attr))

    def collect(self) -> Iterator[Metric]:
        sources = self.sources
        mqtt = sources.mqtt
        if mqtt is not None:
            yield from self._counters(_MQTT, mqtt)
            sent = mqtt.connack_sent
            yield self._counter("mqtt_connack_sent", "CONNACK packets sent", sum(sent))
            for code, name in enumerate(CONNACK_NAMES):
                yield self._counter(name, "CONNACK packets sent with return code %d" % code,
                                    sent[code])
        queue = sources.queue
        if queue is not None:
            yield from self._counters(_QUEUE, queue)
            yield self._counter("queue_message_drop", "messages dropped by the queues (all causes)",
                                queue.dropped_online + queue.dropped_offline
                                + queue.dropped_qos0_offline + queue.dropped_unauthorized)
        yield from self._counters(_DATAPLANE, sources.dataplane)
        yield from self._counters(_LINKS, sources.links)
        yield from self._counters(_AUTH, sources.auth)
        readiness = sources.readiness
        if readiness is not None:
            yield self._counter("netsplit_detected", "netsplits detected",
                                readiness.netsplits_detected)
            yield self._counter("netsplit_resolved", "netsplits resolved",
                                readiness.netsplits_resolved)
        for name, doc, read in sources.totals:
            yield self._counter(name, doc, read())
        for name, doc, read in sources.gauges:
            family = GaugeMetricFamily(name, doc, labels=["node"])
            family.add_metric([self.node], read())
            yield family


def node_registry(node: str, sources: MetricSources) -> CollectorRegistry:
    """A registry of its own for one node, holding its collector only."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, sources))
    return registry
