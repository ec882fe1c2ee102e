"""Fuzzing a real sipgw over UDP, TCP and WebSocket, and other proxies' crash triggers sent
to it over real sockets (``sipgw.tools.fuzzrun`` says how the sipgw is set up)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipgw.tools.fuzzrun import BAD_LOG, FuzzSipgw, fuzz_running_sipgw
from tests.helpers.torture import TORTURE_DIR
from tests.helpers.triggers import TRIGGERS, request
from tests.integration.sipgw_process import TcpPeer, UdpPeer
from tests.integration.wspeer import WsPeer

pytestmark = pytest.mark.integration


# What a run may leave resident once its transactions have ended and core.memory has
# trimmed (as the once-a-minute trim would): 20,000 messages left 340-460 kB in six runs.
# Without malloc_trim the same run left 6,300 kB (the heap kept its peak), and with
# transactions kept whole until their end timer (before the relay retired them) 4,200 kB
# (the pymalloc arenas their peak needed stay, held by the state made among them).
RSS_LEFT_KB = 2_500


def test_twenty_thousand_mutated_messages_leave_sipgw_serving_near_its_start_memory(
    tmp_path: Path,
) -> None:
    report = fuzz_running_sipgw(tmp_path / "gw", 20_000, seeds=[TORTURE_DIR], seed=20261128)
    summary = report.text()
    assert sum(report.sent.sent.values()) == 20_000, summary
    assert min(report.sent.sent[t] for t in ("udp", "tcp", "ws")) >= 6_666, summary
    assert report.sent.probe_failures == 0 and report.sent.probes >= 100, summary
    assert report.sent.replies["4xx"] > 100, summary  # refusals came back, not silence
    assert report.backend_answered > 0, summary  # and what parsed was relayed
    assert report.bad_log_lines == [], summary
    assert '"uptime"' in report.uptime_answer, summary
    assert report.inuse_transactions == 0, summary
    assert report.rss_end_kb - report.rss_start_kb < RSS_LEFT_KB, summary


@pytest.fixture
def gw(tmp_path: Path):
    from sipgw.tools.fuzz import Responder

    with Responder() as backend, FuzzSipgw(tmp_path / "gw", backend=backend.address) as gw:
        yield gw
    assert not [line for line in gw.log_text().splitlines() if BAD_LOG.search(line)]


def reason_of(reply) -> str:
    return reply.text.split("\r\n", 1)[0].split(" ", 2)[2]


def test_crash_triggers_over_udp_get_their_400_or_nothing(gw: FuzzSipgw) -> None:
    names = ["to-twice-with-empty-tag", "via-without-host", "cseq-twice",
             "content-length-2-to-the-32", "header-name-trailing-word",
             "authorization-username-empty"]
    with UdpPeer(gw.address) as peer:
        for name in names:
            kwargs, expect = TRIGGERS[name]
            peer.send(request(host="127.0.0.1", port=peer.port, **kwargs))
            reply = peer.expect(str(expect.status), timeout=3)
            assert expect.reason in reason_of(reply), (name, reply.text)
        kwargs, _ = TRIGGERS["via-name-with-junk"]
        peer.send(request(host="127.0.0.1", port=peer.port, **kwargs))
        assert peer.collect(0.3) == []  # no Via: no answer, and no crash


def test_content_length_overflow_over_tcp_gets_400_and_the_connection_closes(
    gw: FuzzSipgw,
) -> None:
    kwargs, _ = TRIGGERS["content-length-23-digits"]
    with TcpPeer(gw.address) as peer:
        peer.send(request(host="127.0.0.1", port=peer.port, transport="TCP", **kwargs))
        reply = peer.expect("400", timeout=3)
        assert "Content-Length" in reason_of(reply)


def test_incomplete_authorization_over_websocket_gets_400_naming_it(gw: FuzzSipgw) -> None:
    kwargs, expect = TRIGGERS["authorization-username-empty"]
    with WsPeer(gw.ws_address) as ws:
        assert ws.status == 101
        ws.send(request(host=ws.address, port=0, transport="WS", **kwargs)
                .replace(b":0;branch", b";branch"))
        reply = ws.expect("400", timeout=3)
        assert expect.reason in reason_of(reply)
