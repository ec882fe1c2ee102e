"""``/metrics`` of a service with workers: one page, served by the supervisor.

On each scrape the supervisor asks every running worker for its statistics
(``stats.fetch``) and what each one is (``stats.describe``), and writes one family per
statistic under the same names as a single process: summed over the workers, or the
largest (``rules.LARGEST_STATS``: copies each worker holds). The ``load:`` gauges, one
worker's condition, are given per worker (``worker="0"``), as are the supervisor's facts
about each: ``sipgw_worker_up``, ``_restarts_total``, ``_uptime_seconds``,
``_connections``, ``_transactions``. A worker's counters start again from 0 when it
restarts: Prometheus' ``rate()`` takes that as a counter reset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from sipgw.proxy.control.metrics import family, listen_metrics
from sipgw.proxy.workers.rules import statistics

if TYPE_CHECKING:
    from sipgw.proxy.workers.supervisor import Supervisor

log = Logger(namespace="sipgw.metrics")

PER_WORKER_GROUPS = ("load:",)


def _answered(outcomes: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    return [(i, v) for i, v in outcomes if not isinstance(v, Failure)]


def families(values: list[tuple[int, dict[str, int]]], kinds: dict[str, dict[str, str]],
             workers: list[dict[str, Any]]) -> list:
    """The page's metric families from each worker's ``stats.fetch`` answer, the union of
    their ``stats.describe`` answers and ``core.workers``."""
    total = statistics(values)
    out: list = []
    for dotted, what in kinds.items():
        full = dotted.replace(".", ":", 1)
        gauge = what.get("kind") == "gauge"
        if full.startswith(PER_WORKER_GROUPS):
            fam = family(full, what.get("help", ""), gauge, labels=["worker"])
            for i, table in values:
                if dotted in table:
                    fam.add_metric([str(i)], table[dotted])
            out.append(fam)
        elif dotted in total:
            out.append(family(full, what.get("help", ""), gauge, value=total[dotted]))
    out += _worker_families(workers)
    return out


def _worker_families(workers: list[dict[str, Any]]) -> list:
    up = GaugeMetricFamily("sipgw_worker_up", "1 while the worker runs and listens",
                           labels=["worker"])
    restarts = CounterMetricFamily("sipgw_worker_restarts", "times the worker was started "
                                   "again after it ended", labels=["worker"])
    uptime = GaugeMetricFamily("sipgw_worker_uptime_seconds", "seconds since the worker "
                               "started", labels=["worker"])
    connections = GaugeMetricFamily("sipgw_worker_connections", "connections the worker "
                                    "holds (at its last heartbeat)", labels=["worker"])
    transactions = GaugeMetricFamily("sipgw_worker_transactions", "transactions the "
                                     "worker holds (at its last heartbeat)", labels=["worker"])
    for w in workers:
        label = [str(w["index"])]
        up.add_metric(label, 1 if w["ready"] else 0)
        restarts.add_metric(label, w["restarts"])
        uptime.add_metric(label, w["uptime"])
        connections.add_metric(label, w["connections"])
        transactions.add_metric(label, w["transactions"])
    return [up, restarts, uptime, connections, transactions]


class _Families:
    """A prometheus_client collector over families made in advance."""

    def __init__(self, made: list) -> None:
        self.made = made

    def collect(self):
        return iter(self.made)


def page_text(made: list) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(made))
    return generate_latest(registry)


class ServiceMetricsPage(Resource):
    isLeaf = True

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__()
        self.supervisor = supervisor

    def render_GET(self, request):
        fanout = self.supervisor.fanout
        d = defer.gatherResults([fanout.answers("stats.fetch", ["all"]),
                                 fanout.answers("stats.describe", ["all"])],
                                consumeErrors=True)

        gone: list[bool] = []

        def write(results) -> None:
            if gone:
                return
            values, described = (_answered(r) for r in results)
            kinds: dict[str, dict[str, str]] = {}
            for _, table in described:
                kinds.update(table)
            body = page_text(families(values, kinds, self.supervisor.rpc_workers()))
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
            request.write(body)
            request.finish()

        def failed(f) -> None:
            log.failure("metrics page", f)
            if not gone:
                request.setResponseCode(500)
                request.finish()

        # The scraper may go away before the workers answer: nothing is written then.
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d.addCallback(write).addErrback(failed)
        return NOT_DONE_YET


def start_service_metrics(supervisor: Supervisor):
    """The supervisor's ``metrics.listen``; None when off."""
    return listen_metrics(supervisor.reactor, supervisor.loaded.config,
                          ServiceMetricsPage(supervisor))
