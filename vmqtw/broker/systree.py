"""
``$SYS`` topics (``systree_enabled``, as VerneMQ's systree): every
``systree_interval`` the node publishes each of its metrics -- the samples
of its Prometheus registry, those ``GET /metrics`` serves -- as a QoS 0
message on ``$SYS/<nodename>/<metric>``, the metric's ``_`` turned into
``/`` and prometheus_client's ``_total`` suffix left out
(``mqtt_publish_received_total`` -> ``$SYS/<node>/mqtt/publish/received``).

Published like any message from this node, so a subscriber to ``$SYS/#``
on any node sees every node's; a ``#`` subscription does not match them
[MQTT-4.7.2-1].  Nothing is published when nobody subscribes (the router
finds no match).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from vmqtw.types import Message, new_message_ref

__all__ = ["SysTree", "topic_of"]


def topic_of(node: str, metric: str) -> str:
    """The ``$SYS`` topic of one metric sample of ``node``."""
    if metric.endswith("_total"):
        metric = metric[:-len("_total")]
    return "$SYS/%s/%s" % (node, metric.replace("_", "/"))


def _payload(value: float) -> bytes:
    number = float(value)
    return (str(int(number)) if number.is_integer() else repr(number)).encode("ascii")


class SysTree:
    """
    Publishes ``samples()`` (``(name, value)`` pairs) through ``publish``
    (the registry's) every ``interval`` seconds.
    """

    def __init__(self, node: str, samples: Callable[[], Iterator[Tuple[str, float]]],
                 publish: Callable[[Message], Any], clock: IReactorTime,
                 interval: float = 20.0, mountpoint: str = "") -> None:
        self.node = node
        self.samples = samples
        self.publish = publish
        self.clock = clock
        self.interval = interval
        self.mountpoint = mountpoint
        self._loop: Optional[LoopingCall] = None

    def start(self) -> None:
        loop = LoopingCall(self.publish_now)
        loop.clock = self.clock
        self._loop = loop
        loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def publish_now(self) -> None:
        now = self.clock.seconds()
        for name, value in self.samples():
            self.publish(Message(new_message_ref(), topic_of(self.node, name), _payload(value),
                                 0, False, False, now, self.mountpoint))


def registry_samples(registry: Any) -> Callable[[], Iterator[Tuple[str, float]]]:
    """The ``(name, value)`` samples of a prometheus_client registry, read when called."""
    def samples() -> Iterator[Tuple[str, float]]:
        for family in registry.collect():
            for sample in family.samples:
                if not sample.name.endswith("_created"):
                    yield sample.name, sample.value
    return samples
