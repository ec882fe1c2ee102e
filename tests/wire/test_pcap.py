"""The pcap writer: valid headers and checksums, and tshark decodes each message as SIP."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess

import pytest

from sipgw.wire.pcap import LINKTYPE_RAW, PcapWriter, _checksum

INVITE = (b"INVITE sip:5002@example.com SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 10.0.0.1:40000;branch=z9hG4bK1\r\n"
          b"From: <sip:5001@example.com>;tag=1\r\nTo: <sip:5002@example.com>\r\n"
          b"Call-ID: pcap-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
OK = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:40000;branch=z9hG4bK1\r\n"
      b"From: <sip:5001@example.com>;tag=1\r\nTo: <sip:5002@example.com>;tag=2\r\n"
      b"Call-ID: pcap-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


def packets(data: bytes) -> list[tuple[float, bytes]]:
    magic, major, minor, _, _, _, link = struct.unpack("<IHHiIII", data[:24])
    assert (magic, major, minor, link) == (0xA1B2C3D4, 2, 4, LINKTYPE_RAW)
    out, i = [], 24
    while i < len(data):
        sec, usec, incl, orig = struct.unpack("<IIII", data[i:i + 16])
        assert incl == orig
        out.append((sec + usec / 1e6, data[i + 16:i + 16 + incl]))
        i += 16 + incl
    return out


def write(*records) -> bytes:
    buf = io.BytesIO()
    w = PcapWriter(buf)
    for rec in records:
        w.write(**rec)
    return buf.getvalue()


def test_a_udp_message_is_an_ipv4_udp_packet_with_valid_checksums():
    data = write(dict(time=1.25, transport="udp", src="10.0.0.1:40000", dst="10.0.0.2:5060",
                      payload=INVITE))
    ((when, packet),) = packets(data)
    assert when == 1.25
    assert packet[0] == 0x45 and packet[9] == 17
    assert _checksum(packet[:20]) == 0
    sport, dport, length, _ = struct.unpack("!HHHH", packet[20:28])
    assert (sport, dport, length) == (40000, 5060, 8 + len(INVITE))
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 17, length)
    assert _checksum(pseudo + packet[20:]) == 0
    assert packet[28:] == INVITE


def test_tcp_segments_carry_sequence_numbers_per_direction():
    data = write(
        dict(time=1, transport="tcp", src="10.0.0.1:40000", dst="10.0.0.2:5060", payload=INVITE),
        dict(time=2, transport="tcp", src="10.0.0.2:5060", dst="10.0.0.1:40000", payload=OK),
        dict(time=3, transport="tcp", src="10.0.0.1:40000", dst="10.0.0.2:5060", payload=OK),
    )
    segs = [struct.unpack("!HHII", p[20:32]) for _, p in packets(data)]
    assert segs[0][2:] == (1, 1)
    assert segs[1][2:] == (1, 1 + len(INVITE))
    assert segs[2][2:] == (1 + len(INVITE), 1 + len(OK))


def test_a_websocket_flow_starts_with_an_upgrade_and_frames_each_message():
    data = write(
        dict(time=1, transport="ws", src="[2001:db8::2]:50000", dst="[2001:db8::1]:8080",
             payload=INVITE),
        dict(time=2, transport="ws", src="[2001:db8::1]:8080", dst="[2001:db8::2]:50000",
             payload=OK, inbound=False),
    )
    payloads = [p[40 + 20:] for _, p in packets(data)]  # IPv6 + TCP headers
    assert payloads[0].startswith(b"GET / HTTP/1.1\r\n")
    assert b"Sec-WebSocket-Protocol: sip" in payloads[0]
    assert payloads[1].startswith(b"HTTP/1.1 101 ")
    assert payloads[2][:2] == bytes([0x81, 126]) and payloads[2][4:] == INVITE
    assert payloads[3][4:] == OK  # the same flow: no second upgrade


def test_tshark_decodes_every_message_as_sip_on_any_transport(tmp_path):
    tshark = shutil.which("tshark")
    assert tshark, "tshark is not installed (Debian package tshark): run ./scripts/setup"
    path = tmp_path / "t.pcap"
    path.write_bytes(write(
        dict(time=1, transport="udp", src="10.0.0.1:40000", dst="10.0.0.2:33333",
             payload=INVITE),
        dict(time=2, transport="tcp", src="10.0.0.2:33333", dst="10.0.0.1:40000", payload=OK),
        dict(time=3, transport="ws", src="10.0.0.9:50000", dst="10.0.0.1:8080", payload=INVITE),
        dict(time=4, transport="wss", src="[2001:db8::1]:443", dst="[2001:db8::9]:50001",
             payload=OK, inbound=False),
    ))
    done = subprocess.run([tshark, "-r", str(path), "-Y", "sip", "-T", "fields",
                           "-e", "sip.Method", "-e", "sip.Status-Code", "-e", "sip.Call-ID"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert rows == [["INVITE", "", "pcap-1"], ["", "200", "pcap-1"],
                    ["INVITE", "", "pcap-1"], ["", "200", "pcap-1"]]


@pytest.mark.parametrize("time_", [0.9999999, 5.0000004])
def test_times_round_to_whole_microseconds(time_):
    ((when, _),) = packets(write(dict(time=time_, transport="udp", src="10.0.0.1:1",
                                      dst="10.0.0.2:2", payload=OK)))
    assert when == pytest.approx(time_, abs=1e-6)
