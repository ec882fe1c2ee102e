"""Prometheus ``/metrics``: the same numbers as ``stats.get_statistics``, through
``prometheus_client``, on the HTTP listener ``metrics.listen`` (off by default).

Every statistic declared in ``Stats`` becomes ``sipgw_<group>_<name>``: a counter
(``..._total``) for a running count, a gauge for a level, with the statistic's help text.
The page is rendered in the reactor thread on each scrape (no thread pool: the counters are
read where they are written). With workers the supervisor serves the one page instead
(``workers/metrics.py``), from every worker's statistics.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from sipgw.proxy.stats import Stats

log = Logger(namespace="sipgw.metrics")

_BAD = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(full_name: str) -> str:
    """``core:rcv_requests`` → ``sipgw_core_rcv_requests``; ``sl:1xx_replies`` →
    ``sipgw_sl_1xx_replies``."""
    group, _, name = full_name.partition(":")
    return "sipgw_" + _BAD.sub("_", f"{group}_{name}")


class StatsCollector:
    """A prometheus_client collector over ``Stats`` (whatever is declared at scrape time)."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self):
        for full, definition in list(self.stats.defs.items()):
            yield family(full, definition.help, definition.gauge,
                         value=self.stats.values.get(full, 0))


def family(full_name: str, help_text: str, gauge: bool, *, value: float | None = None,
           labels: list[str] | None = None) -> GaugeMetricFamily | CounterMetricFamily:
    """The Prometheus family of statistic ``full_name`` (``group:name``): a gauge for a
    level, a counter for a running count; with ``labels``, samples are added to it."""
    kind = GaugeMetricFamily if gauge else CounterMetricFamily
    return kind(metric_name(full_name), f"{help_text} ({full_name})", value=value,
                labels=labels)


def registry_for(stats: Stats) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    return registry


class MetricsPage(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


def metrics_site(page: Resource) -> Site:
    root = Resource()
    root.putChild(b"metrics", page)
    site = Site(root)
    site.noisy = False
    return site


def start_metrics(service):
    """Open ``metrics.listen`` for ``service`` (the one call ``service.py`` makes); None when
    off."""
    return listen_metrics(service.reactor, service.loaded.config,
                          MetricsPage(registry_for(service.stats)))


def listen_metrics(reactor, config, page: Resource):
    """``page`` on ``metrics.listen``; None when off. A port that cannot be opened is
    logged; SIP runs on without metrics."""
    address = config.metrics.listen
    if address is None:
        return None
    try:
        port = reactor.listenTCP(address.port, metrics_site(page), interface=address.host)
    except Exception as e:  # CannotListenError: metrics are not worth refusing SIP for
        log.error("metrics.listen {a}: cannot listen: {err}", a=str(address), err=e)
        return None
    log.info("Prometheus metrics on http://{a}/metrics", a=str(address))
    return port
