"""A pcap writer for traced SIP messages, decodable by Wireshark and tshark as SIP.

Each message becomes one packet of link type RAW (101: the packet starts at its IP header):
an IPv4 or IPv6 header, then

* for UDP, a UDP header and the message;
* for TCP and TLS flows, a TCP segment (PSH|ACK) with sequence numbers kept per direction
  of each flow, so a dissector sees a consistent stream; TLS is written as the SIP text
  sipgw saw, decrypted;
* for WS and WSS flows, the same TCP stream carrying WebSocket: the first message of a flow
  is preceded by a synthetic HTTP upgrade (``Sec-WebSocket-Protocol: sip``) and its 101,
  and each message is one unmasked text frame, so Wireshark decodes SIP inside WebSocket
  (RFC 7118) as it would on the wire (WSS decrypted).

Pure: write to any binary file object; no sockets, no clock (the time is an argument).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import BinaryIO

from sipgw.sip.hostport import split_address
from sipgw.wire import websocket

LINKTYPE_RAW = 101
SNAPLEN = 262144
_MAX_SEGMENT = 65000  # under the IP total length limit, with room for headers

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Flow = tuple[Address, int, Address, int]  # source, port, destination, port
_End = tuple[Address, int]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# The handshake opening every WebSocket flow: sipgw did not keep the real one, and a
# dissector only needs to see one (the key is RFC 6455's sample nonce).
_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_UPGRADE = websocket.handshake_request(host="sipgw", key=_KEY)
_SWITCHED = websocket.handshake_response(_KEY)


class PcapWriter:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self._seq: dict[_Flow, int] = {}  # the next sequence number of each direction
        self._upgraded: set[tuple[_End, _End]] = set()  # WebSocket flows, client first
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_RAW))

    def write(self, *, time: float, transport: str, src: str, dst: str, payload: bytes,
              inbound: bool = True) -> None:
        """One message ``src`` → ``dst`` ("host:port" each) at Unix time ``time``;
        ``inbound``: received by sipgw (for WS: the source is the client)."""
        shost, sport = split_address(src)
        dhost, dport = split_address(dst)
        sip, dip = ipaddress.ip_address(shost), ipaddress.ip_address(dhost)
        if sip.version != dip.version:
            # A v4 source with a v6 destination (unknown local address): map it.
            if sip.version == 4:
                sip = ipaddress.IPv6Address(f"::ffff:{sip}")
            else:
                dip = ipaddress.IPv6Address(f"::ffff:{dip}")
        if transport.lower() == "udp":
            self._packet(time, sip, dip, 17, self._udp(sip, dip, sport, dport, payload))
            return
        if transport.lower() in ("ws", "wss"):
            client, server = ((sip, sport), (dip, dport)) if inbound else ((dip, dport),
                                                                          (sip, sport))
            if (client, server) not in self._upgraded:
                self._upgraded.add((client, server))
                for a, b, text in ((client, server, _UPGRADE), (server, client, _SWITCHED)):
                    self._packet(time, a[0], b[0], 6, self._tcp(a[0], b[0], a[1], b[1], text))
            payload = websocket.encode_frame(websocket.TEXT, payload)  # unmasked: as sipgw saw it
        for start in range(0, max(len(payload), 1), _MAX_SEGMENT):
            chunk = payload[start:start + _MAX_SEGMENT]
            self._packet(time, sip, dip, 6, self._tcp(sip, dip, sport, dport, chunk))

    def _udp(self, sip: Address, dip: Address, sport: int, dport: int, payload: bytes) -> bytes:
        length = 8 + len(payload)
        header = struct.pack("!HHHH", sport, dport, length, 0)
        checksum = _checksum(self._pseudo(sip, dip, 17, length) + header + payload) or 0xFFFF
        return struct.pack("!HHHH", sport, dport, length, checksum) + payload

    def _tcp(self, sip: Address, dip: Address, sport: int, dport: int, payload: bytes) -> bytes:
        key = (sip, sport, dip, dport)
        back = (dip, dport, sip, sport)
        seq = self._seq.get(key, 1)
        ack = self._seq.get(back, 1)
        self._seq[key] = (seq + len(payload)) & 0xFFFFFFFF
        flags = 0x18  # PSH, ACK
        header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
        checksum = _checksum(self._pseudo(sip, dip, 6, len(header) + len(payload))
                             + header + payload)
        header = header[:16] + struct.pack("!H", checksum) + header[18:]
        return header + payload

    @staticmethod
    def _pseudo(sip: Address, dip: Address, proto: int, length: int) -> bytes:
        if sip.version == 4:
            return sip.packed + dip.packed + struct.pack("!BBH", 0, proto, length)
        return sip.packed + dip.packed + struct.pack("!I3xB", length, proto)

    def _packet(self, time: float, sip: Address, dip: Address, proto: int, segment: bytes) -> None:
        if sip.version == 4:
            header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 0, 0x4000, 64,
                                 proto, 0, sip.packed, dip.packed)
            header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
        else:
            header = struct.pack("!IHBB16s16s", 6 << 28, len(segment), proto, 64, sip.packed,
                                 dip.packed)
        packet = header + segment
        seconds = int(time)
        micros = int(round((time - seconds) * 1_000_000))
        if micros >= 1_000_000:
            seconds, micros = seconds + 1, micros - 1_000_000
        self.out.write(struct.pack("<IIII", seconds, micros, len(packet), len(packet)))
        self.out.write(packet)
