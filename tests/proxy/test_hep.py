"""HEP v3: packets Homer can read, sent for every message while trace.hep is set."""

from __future__ import annotations

import struct

from sipgw.proxy.hep import HepExporter
from sipgw.proxy.stats import Stats
from sipgw.proxy.trace import Tracer
from sipgw.wire.hep import decode, encode
from tests.helpers.fakes import ProxyHarness, valid_invite

MSG = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: hep-1\r\n\r\n"


def test_a_packet_carries_addresses_ports_time_agent_and_the_message():
    packet = encode(time=1795705527.25, transport="udp", src="192.0.2.7:5060",
                    dst="198.51.100.1:5080", payload=MSG, agent_id=42, password="pw",
                    correlation="hep-1")
    assert packet[:4] == b"HEP3"
    assert struct.unpack("!H", packet[4:6])[0] == len(packet)
    fields = decode(packet)
    assert fields == {"family": 2, "ip_proto": 17, "src_ip": "192.0.2.7",
                      "dst_ip": "198.51.100.1", "src_port": 5060, "dst_port": 5080,
                      "time_sec": 1795705527, "time_usec": 250000, "proto_type": 1,
                      "agent_id": 42, "password": "pw", "correlation": "hep-1",
                      "payload": MSG}


def test_ipv6_and_stream_transports_are_told_apart():
    fields = decode(encode(time=1, transport="wss", src="[2001:db8::1]:443",
                           dst="[2001:db8::2]:50000", payload=MSG))
    assert (fields["family"], fields["ip_proto"]) == (10, 6)
    assert fields["src_ip"] == "2001:db8::1"
    assert "password" not in fields and "correlation" not in fields


def test_the_exporter_sends_every_message_in_and_out_and_counts_failures():
    harness = ProxyHarness()
    tracer = Tracer(clock=lambda: 5.5)

    class Out:
        trace_out = None

    out = Out()
    record = harness.proxy.send

    def send(data, dest):
        if out.trace_out is not None:
            out.trace_out(data, dest)
        record(data, dest)

    harness.proxy.send = send
    tracer.install(harness.proxy, out, lambda dest: ("127.0.0.1", 5060))
    stats = Stats()
    sent: list[bytes] = []
    exporter = HepExporter(("127.0.0.1", 9060), stats, agent_id=7)
    exporter.send = sent.append
    exporter.attach(tracer)
    assert harness.proxy.trace_in is not None  # HEP keeps the taps on
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
    assert harness.proxy.trace_in is None
