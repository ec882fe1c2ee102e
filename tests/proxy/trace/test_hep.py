"""HEP v3 export: every message in and out sent while trace.hep is set (the packets' own
tests are tests/wire/test_hep.py)."""

from __future__ import annotations

from sipgw.proxy.stats import Stats
from sipgw.proxy.trace import Tracer
from sipgw.proxy.trace.hep import HepExporter
from sipgw.tools.harness import ProxyHarness, valid_invite
from sipgw.wire.hep import decode


def test_the_exporter_sends_every_message_in_and_out_and_counts_failures():
    harness = ProxyHarness()
    tracer = Tracer(harness.tap, clock=lambda: 5.5, local_of=lambda dest: ("127.0.0.1", 5060))
    stats = Stats()
    sent: list[bytes] = []
    exporter = HepExporter(("127.0.0.1", 9060), stats, agent_id=7)
    exporter.send = sent.append
    exporter.attach(tracer)
    assert harness.tap.inbound is not None  # HEP keeps the taps on
    harness.udp(valid_invite("hep"))
    kinds = [decode(p)["payload"].split(b" ", 2)[:2] for p in sent]
    assert [k[0] for k in kinds] == [b"INVITE", b"SIP/2.0", b"INVITE"]
    assert all(decode(p)["agent_id"] == 7 for p in sent)
    assert stats.get("trace:hep_sent") == 3

    def broken(packet):
        raise OSError("network unreachable")

    exporter.send = broken
    harness.udp(valid_invite("hep2"))
    assert stats.get("trace:hep_send_errors") == 3
    exporter.detach(tracer)
    assert harness.tap.inbound is None
