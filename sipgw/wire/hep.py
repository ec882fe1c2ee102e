"""HEP version 3 (the Homer Encapsulation Protocol) encoder and decoder, for SIP captures.

A HEP3 packet is ``"HEP3"``, its total length (16 bits), then chunks: vendor id (0 =
generic), type, length (6 bytes of chunk header included) and value, all big-endian. The
generic chunk types used here are those Homer's heplify-server reads for SIP:

====  =========================  ====  ======================
0x01  IP family (2 v4, 10 v6)    0x07  source port
0x02  IP protocol (17 UDP, 6 TCP) 0x08  destination port
0x03  IPv4 source                0x09  timestamp, seconds
0x04  IPv4 destination           0x0a  timestamp, microseconds
0x05  IPv6 source                0x0b  protocol type (1 = SIP)
0x06  IPv6 destination           0x0c  capture agent id
0x0e  authentication key         0x0f  payload
0x11  correlation id (Call-ID)
====  =========================  ====  ======================

Pure: bytes out (and back in, for tests); the proxy's exporter sends them over UDP.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from sipgw.sip.hostport import split_address

_U8, _U16, _U32 = "!B", "!H", "!I"
PROTO_SIP = 1
_IPPROTO = {"udp": 17, "tcp": 6, "tls": 6, "ws": 6, "wss": 6}


def _chunk(kind: int, value: bytes) -> bytes:
    return struct.pack("!HHH", 0, kind, 6 + len(value)) + value


def encode(*, time: float, transport: str, src: str, dst: str, payload: bytes,
           agent_id: int = 0, password: str = "", correlation: str | None = None) -> bytes:
    """One SIP message ``src`` → ``dst`` ("host:port" each) as a HEP3 packet."""
    shost, sport = split_address(src)
    dhost, dport = split_address(dst)
    sip = ipaddress.ip_address(shost)
    dip = ipaddress.ip_address(dhost)
    if sip.version != dip.version:  # an unknown local address of the other family
        sip, dip = (ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a
                    for a in (sip, dip))
    seconds = int(time)
    micros = min(int(round((time - seconds) * 1_000_000)), 999_999)
    v4 = sip.version == 4
    chunks = [
        _chunk(0x01, struct.pack(_U8, 2 if v4 else 10)),
        _chunk(0x02, struct.pack(_U8, _IPPROTO.get(transport.lower(), 17))),
        _chunk(0x03 if v4 else 0x05, sip.packed),
        _chunk(0x04 if v4 else 0x06, dip.packed),
        _chunk(0x07, struct.pack(_U16, int(sport))),
        _chunk(0x08, struct.pack(_U16, int(dport))),
        _chunk(0x09, struct.pack(_U32, seconds)),
        _chunk(0x0A, struct.pack(_U32, micros)),
        _chunk(0x0B, struct.pack(_U8, PROTO_SIP)),
        _chunk(0x0C, struct.pack(_U32, agent_id)),
    ]
    if password:
        chunks.append(_chunk(0x0E, password.encode()))
    if correlation:
        chunks.append(_chunk(0x11, correlation.encode()))
    chunks.append(_chunk(0x0F, payload))
    body = b"".join(chunks)
    return b"HEP3" + struct.pack(_U16, 6 + len(body)) + body


_NAMES = {0x01: "family", 0x02: "ip_proto", 0x03: "src_ip", 0x04: "dst_ip", 0x05: "src_ip",
          0x06: "dst_ip", 0x07: "src_port", 0x08: "dst_port", 0x09: "time_sec",
          0x0A: "time_usec", 0x0B: "proto_type", 0x0C: "agent_id", 0x0E: "password",
          0x0F: "payload", 0x11: "correlation"}


def decode(packet: bytes) -> dict[str, Any]:
    """A HEP3 packet → its chunks by name (ValueError when it is not one)."""
    if packet[:4] != b"HEP3" or len(packet) < 6:
        raise ValueError("not a HEP3 packet")
    (total,) = struct.unpack("!H", packet[4:6])
    if total != len(packet):
        raise ValueError(f"length {total} but {len(packet)} bytes")
    out: dict[str, Any] = {}
    i = 6
    while i < total:
        _vendor, kind, length = struct.unpack("!HHH", packet[i:i + 6])
        if length < 6 or i + length > total:
            raise ValueError(f"bad chunk length {length} at {i}")
        value = packet[i + 6:i + length]
        name = _NAMES.get(kind, f"chunk_{kind:#x}")
        if kind in (0x03, 0x04, 0x05, 0x06):
            out[name] = str(ipaddress.ip_address(value))
        elif kind in (0x01, 0x02, 0x0B):
            out[name] = value[0]
        elif kind in (0x07, 0x08):
            out[name] = struct.unpack("!H", value)[0]
        elif kind in (0x09, 0x0A, 0x0C):
            out[name] = struct.unpack("!I", value)[0]
        elif kind in (0x0E, 0x11):
            out[name] = value.decode()
        else:
            out[name] = value
        i += length
    return out
