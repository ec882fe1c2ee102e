"""Prometheus ``/metrics``: the same numbers as ``stats.get_statistics``, through
``prometheus_client``, on the HTTP listener ``metrics.listen`` (off by default).

Every statistic declared in ``Stats`` becomes ``sipgw_<group>_<name>``: a counter
(``..._total``) for a running count, a gauge for a level, with the statistic's help text.
The page is rendered in the reactor thread on each scrape (no thread pool: the counters are
read where they are written).
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
            value = self.stats.values.get(full, 0)
            name = metric_name(full)
            help_text = f"{definition.help} ({full})"
            if definition.gauge:
                yield GaugeMetricFamily(name, help_text, value=value)
            else:
                yield CounterMetricFamily(name, help_text, value=value)


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


def metrics_site(stats: Stats) -> Site:
    root = Resource()
    root.putChild(b"metrics", MetricsPage(registry_for(stats)))
    site = Site(root)
    site.noisy = False
    return site


def start_metrics(service):
    """Open ``metrics.listen`` for ``service`` (the one call ``service.py`` makes); None when
    off. A port that cannot be opened is logged; SIP runs on without metrics."""
    address = service.loaded.config.metrics.listen
    if address is None:
        return None
    try:
        port = service.reactor.listenTCP(address.port, metrics_site(service.stats),
                                         interface=address.host)
    except Exception as e:  # CannotListenError: metrics are not worth refusing SIP for
        log.error("metrics.listen {a}: cannot listen: {err}", a=str(address), err=e)
        return None
    log.info("Prometheus metrics on http://{a}/metrics", a=str(address))
    return port
