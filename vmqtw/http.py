"""
The monitoring HTTP listener (``listener.http.<name>``): ``GET /metrics``
and ``GET /health``, on twisted.web.

``/metrics`` is prometheus-client's own text rendering of the node's
registry (:mod:`vmqtw.metrics`), produced on the reactor thread: the
counters it reads are changed only there.  (prometheus-client's Twisted
resource runs the WSGI app on a thread pool, which would read them while
the reactor changes them.)

``/health`` is 200 ``OK`` while the node serves MQTT in a whole cluster,
503 and the reason while it does not, so a load balancer moves clients
away from a node in a netsplit, removed from its cluster, draining for a
leave, or not yet serving after a restart.  The reason is computed by the
pure :func:`health_reason`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

__all__ = ["HealthResource", "MetricsResource", "health_reason", "monitoring_site"]


def health_reason(*, serving: bool, removed: bool, leaving: bool,
                  unreachable: Iterable[str], store_failing: bool = False) -> Optional[str]:
    """
    None while the node is healthy, else why not, most lasting cause
    first: removed from its cluster, leaving it, its message store taking
    no writes (a database away), a netsplit (with the members it cannot
    reach), not serving MQTT yet.
    """
    if removed:
        return "removed from the cluster"
    if leaving:
        return "leaving the cluster (its sessions are being moved)"
    if store_failing:
        return "the message store takes no writes (its database is away)"
    down = sorted(unreachable)
    if down:
        return "netsplit: %s unreachable" % ", ".join(down)
    if not serving:
        return "not serving MQTT (starting)"
    return None


class MetricsResource(Resource):
    """``GET /metrics``: the registry in the Prometheus text format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        Resource.__init__(self)
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class HealthResource(Resource):
    """``GET /health``: 200 ``OK``, or 503 and the reason."""

    isLeaf = True

    def __init__(self, reason: Callable[[], Optional[str]]) -> None:
        Resource.__init__(self)
        self.reason = reason

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        reason = self.reason()
        if reason is None:
            return b"OK\n"
        request.setResponseCode(503)
        return reason.encode("utf-8") + b"\n"


class _Root(Resource):
    """``/metrics`` and ``/health``; anything else is 404 (Twisted's default page is deprecated)."""

    def getChild(self, path: bytes, request: Any) -> IResource:
        return notFound()


class _QuietSite(Site):
    """A Site that does not log every request: a scrape every few seconds is no news."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def monitoring_site(registry: CollectorRegistry,
                    reason: Callable[[], Optional[str]]) -> Site:
    """The site of a ``listener.http.<name>``: ``/metrics`` and ``/health``."""
    root = _Root()
    root.putChild(b"metrics", MetricsResource(registry))
    root.putChild(b"health", HealthResource(reason))
    return _QuietSite(root)
