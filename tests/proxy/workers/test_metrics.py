"""The supervisor's /metrics: one page over the workers' statistics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sipgw.proxy.workers.metrics import families, page_text

KINDS = {
    "core.rcv_requests": {"help": "requests received", "kind": "counter"},
    "tm.inuse_transactions": {"help": "transactions alive now", "kind": "gauge"},
    "pike.blocked_ips": {"help": "source addresses blocked by pike now", "kind": "gauge"},
    "load.reactor_lag_us": {"help": "how late the reactor runs", "kind": "gauge"},
}
WORKERS = [
    {"index": 0, "ready": True, "restarts": 0, "uptime": 300.5, "connections": 4,
     "transactions": 2},
    {"index": 1, "ready": False, "restarts": 3, "uptime": 0, "connections": 0,
     "transactions": 0},
]


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


def test_one_page_sums_the_workers_and_labels_what_is_each_worker_s_own():
    values = [(0, {"core.rcv_requests": 10, "tm.inuse_transactions": 1,
                   "pike.blocked_ips": 2, "load.reactor_lag_us": 900}),
              (1, {"core.rcv_requests": 32, "tm.inuse_transactions": 4,
                   "pike.blocked_ips": 2, "load.reactor_lag_us": 150})]
    page = samples(page_text(families(values, KINDS, WORKERS)))
    assert page[("sipgw_core_rcv_requests_total", ())] == 42
    assert page[("sipgw_tm_inuse_transactions", ())] == 5
    assert page[("sipgw_pike_blocked_ips", ())] == 2  # each worker blocks the same two
    assert page[("sipgw_load_reactor_lag_us", (("worker", "0"),))] == 900
    assert page[("sipgw_load_reactor_lag_us", (("worker", "1"),))] == 150
    assert page[("sipgw_worker_up", (("worker", "1"),))] == 0
    assert page[("sipgw_worker_restarts_total", (("worker", "1"),))] == 3
    assert page[("sipgw_worker_connections", (("worker", "0"),))] == 4


def test_a_worker_that_did_not_answer_leaves_only_its_worker_facts():
    values = [(0, {"core.rcv_requests": 10, "load.reactor_lag_us": 900})]
    page = samples(page_text(families(values, KINDS, WORKERS)))
    assert page[("sipgw_core_rcv_requests_total", ())] == 10
    assert ("sipgw_load_reactor_lag_us", (("worker", "1"),)) not in page
    assert page[("sipgw_worker_up", (("worker", "0"),))] == 1
