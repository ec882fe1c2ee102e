"""Prometheus /metrics: the same numbers as the statistics, counters and gauges typed."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.web.test.requesthelper import DummyRequest

from sipgw.config import parse_config
from sipgw.proxy.control.metrics import MetricsPage, metric_name, registry_for
from sipgw.proxy.service import make_service
from sipgw.proxy.stats import StatDef, Stats


def page(stats: Stats) -> tuple[str, DummyRequest]:
    request = DummyRequest([b"metrics"])
    body = MetricsPage(registry_for(stats)).render_GET(request)
    return body.decode(), request


def test_every_statistic_is_a_metric_with_its_value_and_help():
    stats = Stats()
    stats.inc("core:rcv_requests", 7)
    stats.set("tm:inuse_transactions", 3)
    text, request = page(stats)
    assert "# TYPE sipgw_core_rcv_requests_total counter" in text
    assert "sipgw_core_rcv_requests_total 7.0" in text
    assert "# HELP sipgw_core_rcv_requests_total requests received (core:rcv_requests)" in text
    assert "# TYPE sipgw_tm_inuse_transactions gauge" in text
    assert "sipgw_tm_inuse_transactions 3.0" in text
    assert request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    for name in stats.values:
        assert metric_name(name) in text, name


def test_statistics_declared_later_appear_at_the_next_scrape():
    stats = Stats()
    registry = registry_for(stats)
    stats.declare((StatDef(group="websocket", name="ws_current_connections", help="open",
                           gauge=True),))
    stats.set("websocket:ws_current_connections", 2)
    request = DummyRequest([b"metrics"])
    text = MetricsPage(registry).render_GET(request).decode()
    assert "sipgw_websocket_ws_current_connections 2.0" in text


def test_names_are_valid_prometheus_names():
    assert metric_name("sl:1xx_replies") == "sipgw_sl_1xx_replies"
    assert metric_name("odd:a-b.c") == "sipgw_odd_a_b_c"


def test_the_listener_is_off_by_default_and_opened_where_configured(tmp_path):
    base = ('[listen]\nudp = []\ntcp = ["127.0.0.1:25096"]\nws = []\n'
            f'[control]\nsocket = "{tmp_path}/c.ctl"\n')
    reactor = MemoryReactorClock()
    svc = make_service(parse_config(base), reactor)
    svc.startService()
    assert [p for p, *_ in reactor.tcpServers] == [25096]
    svc.stopService()
    reactor = MemoryReactorClock()
    svc = make_service(parse_config(base + '[metrics]\nlisten = "127.0.0.1:29090"\n'), reactor)
    svc.startService()
    ports = {(port, iface) for port, _, _, iface in reactor.tcpServers}
    assert (29090, "127.0.0.1") in ports
    svc.stopService()
