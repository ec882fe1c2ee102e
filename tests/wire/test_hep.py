"""HEP v3 packets: what Homer reads back from them (sipgw.wire.hep)."""

from __future__ import annotations

import struct

from sipgw.wire.hep import decode, encode

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
