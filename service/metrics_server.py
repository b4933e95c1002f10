"""``DFS_METRICS_PORT``: /metrics from prometheus_client's own HTTP server instead of the API port.

Why a second port: the API port is the one exposed to callers (and, with API keys, guarded), while
metrics are for the operator's Prometheus; on their own port a network policy or a firewall can
keep them internal, and a scrape never queues behind API traffic on the event loop. The server runs
in prometheus_client's daemon thread, bound to DFS_HOST, from start-up to shutdown (the app's
lifespan), and the app then serves no /metrics route.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from service.config import Settings
from service.pipeline.failures import DfsFailure

log = logging.getLogger(__name__)


class SampledRegistry(Collector):
    """``registry`` with a hook run before each scrape: gauges sampled on demand (GPU memory) stay
    as fresh on this port as on the API's /metrics, which samples them in its handler."""

    def __init__(self, registry: CollectorRegistry, before_scrape: Callable[[], None]) -> None:
        self.registry = registry
        self.before_scrape = before_scrape

    def collect(self) -> Iterable[Metric]:
        self.before_scrape()
        return self.registry.collect()

    def restricted_registry(self, names: Iterable[str]) -> object:
        """What prometheus_client calls for ``/metrics?name[]=...``."""
        self.before_scrape()
        return self.registry.restricted_registry(names)


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_metrics_server(settings: Settings, before_scrape: Callable[[], None]) -> MetricsServer | None:
    """Start the metrics server when DFS_METRICS_PORT is set (None otherwise). A port already taken
    raises, so start-up fails rather than running without the metrics the operator asked for."""
    if not settings.metrics_port:
        return None
    try:
        server, thread = start_http_server(
            settings.metrics_port, addr=settings.host, registry=SampledRegistry(REGISTRY, before_scrape)
        )
    except OSError as exc:
        raise DfsFailure(
            f"DFS_METRICS_PORT={settings.metrics_port}: cannot listen on "
            f"{settings.host}:{settings.metrics_port}: {exc.strerror or exc}"
        ) from exc
    log.info(
        "metrics on http://%s:%d/metrics (DFS_METRICS_PORT), not on the API port", settings.host, settings.metrics_port
    )
    return MetricsServer(server, thread)
