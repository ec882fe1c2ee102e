"""Mutation fuzzer for the SIP core, and for a running sipgw over UDP, TCP and WebSocket.

One invariant, after h11's fuzzing: every input is parsed, or refused with a ``ParseError``
(or a subclass) — never anything else. For a message that parses, every accessor the proxy
uses on it (top Via, CSeq, tags, Request-URI, Route/Record-Route/Path, Contact, From/To,
digest credentials, re-serialisation) either works or raises ``ParseError``.

Inputs are real messages (SIPp-style REGISTER/INVITE/ACK/BYE, JsSIP-style WebSocket
messages, a multipart INVITE, any ``.dat`` files given, e.g. the RFC 4475 torture set) with
one to four structure-aware mutations each: byte and bit flips, insertions of separators,
NULs and UTF-8, deletions and truncations, header lines duplicated, removed, reordered or
grafted from another message, splices of two messages, huge numbers, long tokens, broken
line ends and folding, hostile values for the headers the proxy parses lazily, and
Content-Length games. Message ``i`` of a run with seed ``s`` depends only on ``(s, i)``, so
any crash is reproduced by its two numbers (``--only``).

    python -m sipgw.tools.fuzz parser -n 1000000 --seeds tests/data/torture
    python -m sipgw.tools.fuzz send --udp 127.0.0.1:5060 --tcp 127.0.0.1:5060 \\
        --ws 127.0.0.1:8080 -n 100000

``send`` throws the same mutations at a running proxy and, every ``--probe-every``
messages, checks that it still answers an OPTIONS addressed to itself; ``bench/fuzz.py``
wraps it with a sipgw process, a backend, memory and log checks.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import selectors
import socket
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from sipgw.sip.address import parse_address_list, parse_name_addr
from sipgw.sip.digest import parse_credentials
from sipgw.sip.errors import FramingError, ParseError
from sipgw.sip.framing import StreamFramer
from sipgw.sip.hostport import split_address
from sipgw.sip.message import Request, Response, make_response
from sipgw.sip.parser import parse_message
from sipgw.sip.uri import SipURI
from sipgw.sip.via import parse_via
from sipgw.wire import websocket

CRLF = b"\r\n"
# A placeholder a harness may replace with a nonce its proxy issued, so that mutated
# credentials get past the nonce check into the code behind it.
NONCE = b"NONCE-PLACEHOLDER"

_SDP = (b"v=0\r\no=- 20518 0 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
        b"m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n")
_WEBRTC_SDP = (b"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
               b"a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\n"
               b"m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\n"
               b"a=rtcp:9 IN IP4 0.0.0.0\r\na=candidate:1 1 udp 2122260223 192.168.1.5 54400 "
               b"typ host generation 0\r\na=ice-ufrag:Xx1y\r\n"
               b"a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
               b"a=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:"
               b"CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99\r\na=setup:actpass\r\na=mid:0\r\n"
               b"a=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n")
_MULTIPART = (b"--boundary42\r\nContent-Type: application/sdp\r\n\r\n" + _SDP +
              b"\r\n--boundary42\r\nContent-Type: application/isup\r\n"
              b"Content-Disposition: signal;handling=optional\r\n\r\n\x01\x00\x49\x00\r\n"
              b"--boundary42--\r\n")


def _msg(start: str, headers: Iterable[str], body: bytes = b"") -> bytes:
    lines = [start, *headers, f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


_UA = "192.0.2.10:5070"
_WS_HOST = "df7jal23ls0d.invalid"
_DIGEST = (f'Digest username="5001", realm="sipgw.test", nonce="{NONCE.decode()}", '
           'uri="sip:sipgw.test", response="0123456789abcdef0123456789abcdef", '
           'algorithm=MD5, cnonce="0a4f113b", qop=auth, nc=00000001')

BUILTIN_SEEDS: dict[str, bytes] = {
    # What SIPp's uac/uas and regexp scenarios send.
    "sipp-register": _msg("REGISTER sip:sipgw.test SIP/2.0", [
        f"Via: SIP/2.0/UDP {_UA};branch=z9hG4bK-1-0;rport", "From: <sip:5001@sipgw.test>;tag=1",
        "To: <sip:5001@sipgw.test>", "Call-ID: 1-4242@192.0.2.10", "CSeq: 2 REGISTER",
        f"Contact: <sip:5001@{_UA}>;expires=3600", "Max-Forwards: 70", "Expires: 3600",
        f"Authorization: {_DIGEST}", "User-Agent: SIPp"]),
    "sipp-invite": _msg("INVITE sip:service@127.0.0.1:5060 SIP/2.0", [
        f"Via: SIP/2.0/UDP {_UA};branch=z9hG4bK-2-0", "From: sipp <sip:sipp@192.0.2.10:5070>;tag=2",
        "To: sut <sip:service@127.0.0.1:5060>", "Call-ID: 2-4242@192.0.2.10", "CSeq: 1 INVITE",
        f"Contact: sip:sipp@{_UA}", "Max-Forwards: 70", "Subject: Performance Test",
        f"Proxy-Authorization: {_DIGEST.replace('sip:sipgw.test', 'sip:service@127.0.0.1')}",
        "Content-Type: application/sdp"], _SDP),
    "sipp-ack": _msg("ACK sip:service@127.0.0.1:5080 SIP/2.0", [
        f"Via: SIP/2.0/UDP {_UA};branch=z9hG4bK-3-5", "Route: <sip:127.0.0.1:5060;lr>",
        "From: sipp <sip:sipp@192.0.2.10:5070>;tag=2",
        "To: sut <sip:service@127.0.0.1:5060>;tag=99", "Call-ID: 2-4242@192.0.2.10",
        "CSeq: 1 ACK", f"Contact: sip:sipp@{_UA}", "Max-Forwards: 70"]),
    "sipp-bye": _msg("BYE sip:service@127.0.0.1:5080 SIP/2.0", [
        f"Via: SIP/2.0/UDP {_UA};branch=z9hG4bK-3-7",
        "Route: <sip:127.0.0.1:5060;lr;r2=on>, <sip:127.0.0.1:5060;transport=tcp;lr;r2=on>",
        "From: sipp <sip:sipp@192.0.2.10:5070>;tag=2",
        "To: sut <sip:service@127.0.0.1:5060>;tag=99", "Call-ID: 2-4242@192.0.2.10",
        "CSeq: 2 BYE", "Max-Forwards: 70"]),
    "sipp-200": _msg("SIP/2.0 200 OK", [
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsg0123.0;received=127.0.0.1",
        f"Via: SIP/2.0/UDP {_UA};branch=z9hG4bK-2-0;rport=5070",
        "Record-Route: <sip:127.0.0.1:5060;lr>",
        "From: sipp <sip:sipp@192.0.2.10:5070>;tag=2",
        "To: sut <sip:service@127.0.0.1:5060>;tag=99", "Call-ID: 2-4242@192.0.2.10",
        "CSeq: 1 INVITE", "Contact: <sip:127.0.0.1:5080;transport=UDP>",
        "Content-Type: application/sdp"], _SDP),
    # What JsSIP sends over a WebSocket.
    "jssip-register": _msg("REGISTER sip:sipgw.test SIP/2.0", [
        f"Via: SIP/2.0/WSS {_WS_HOST};branch=z9hG4bK7812343", "Max-Forwards: 69",
        "To: <sip:5001@sipgw.test>", "From: \"Agent 5001\" <sip:5001@sipgw.test>;tag=k4p1q",
        "Call-ID: 1r6a2ht1b9i3pd2s8vq1", "CSeq: 2 REGISTER",
        f"Authorization: {_DIGEST}",
        f'Contact: <sip:q7rs2c1i@{_WS_HOST};transport=ws>;+sip.ice;reg-id=1;'
        '+sip.instance="<urn:uuid:8e1c2d7a-7b1d-4c6f-9b1e-2b7f0c3a1d55>";expires=600',
        "Expires: 600", "Allow: INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY",
        "Supported: path,gruu,outbound", "User-Agent: JsSIP 3.13.0"]),
    "jssip-invite": _msg("INVITE sip:5002@sipgw.test SIP/2.0", [
        f"Via: SIP/2.0/WSS {_WS_HOST};branch=z9hG4bK8419911", "Max-Forwards: 69",
        "To: <sip:5002@sipgw.test>", "From: <sip:5001@sipgw.test>;tag=u3bm2",
        "Call-ID: 6lv2hb9c8e1q0sk4ct0p", "CSeq: 7531 INVITE",
        f"Proxy-Authorization: {_DIGEST.replace('sip:sipgw.test', 'sip:5002@sipgw.test')}",
        f"Contact: <sip:q7rs2c1i@{_WS_HOST};transport=ws;ob>",
        "Content-Type: application/sdp", "Session-Expires: 90",
        "Supported: timer,ice,replaces,outbound",
        "User-Agent: JsSIP 3.13.0"], _WEBRTC_SDP),
    "jssip-options": _msg("OPTIONS sip:127.0.0.1:8080;transport=ws SIP/2.0", [
        f"Via: SIP/2.0/WS {_WS_HOST};branch=z9hG4bK555", "Max-Forwards: 70",
        "To: <sip:127.0.0.1:8080>", "From: <sip:5001@sipgw.test>;tag=o1",
        "Call-ID: opt1", "CSeq: 1 OPTIONS", "Accept: application/sdp"]),
    # What a backend sends back toward a browser: the contact alias sipgw wrote names
    # the WebSocket flow (Kamailio's handle_ruri_alias).
    "backend-invite": _msg(
        "INVITE sip:q7rs2c1i@192.0.2.99:6001;transport=ws;alias=192.0.2.99~6001~5 SIP/2.0", [
            "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-as-1;rport",
            "Record-Route: <sip:127.0.0.1:5080;lr>", "Max-Forwards: 70",
            "From: <sip:5002@sipgw.test>;tag=as1", "To: <sip:5001@sipgw.test>",
            "Call-ID: as-call-1@127.0.0.1", "CSeq: 102 INVITE",
            "Contact: <sip:5002@127.0.0.1:5080>", "Content-Type: application/sdp"], _SDP),
    "ws-bye": _msg(
        "BYE sip:5002@192.0.2.20:5070;alias=192.0.2.20~5070~1 SIP/2.0", [
            f"Via: SIP/2.0/WS {_WS_HOST};branch=z9hG4bK-ws-bye",
            "Route: <sip:127.0.0.1:8080;transport=ws;lr;r2=on>, <sip:127.0.0.1:5060;lr;r2=on>",
            "Max-Forwards: 70", "From: <sip:5001@sipgw.test>;tag=u3bm2",
            "To: <sip:5002@sipgw.test>;tag=as9", "Call-ID: 6lv2hb9c8e1q0sk4ct0p",
            "CSeq: 7532 BYE"]),
    "multipart-invite": _msg("INVITE sip:5002@sipgw.test SIP/2.0", [
        f"Via: SIP/2.0/TCP {_UA};branch=z9hG4bKmp1", "Max-Forwards: 70",
        "To: <sip:5002@sipgw.test>", "From: <sip:5001@sipgw.test>;tag=mp",
        "Call-ID: mp1@192.0.2.10", "CSeq: 1 INVITE", f"Contact: <sip:5001@{_UA};transport=tcp>",
        "MIME-Version: 1.0", 'Content-Type: multipart/mixed;boundary="boundary42"'], _MULTIPART),
}

# -- what mutations insert -----------------------------------------------------------------

_SEPARATORS = [b";", b",", b":", b"=", b"<", b">", b'"', b"\\", b"@", b"?", b"&", b"%",
               b"[", b"]", b"/", b" ", b"\t", b";;;", b",,,,", b"<<>>", b'"""', b"%%", b"%0"]
_UNICODE = [b"\x00", b"\x00" * 8, b"\x7f", b"\x1b[31m", b"\xff", b"\xfe\xff", b"\xc0\xaf",
            b"\xef\xbb\xbf", b"\xb2", b"\xb9", b"\xa0", b"\x85", b"\x0b", b"\x0c",
            "\u202e".encode(), "\u00e9".encode(), "\U0001d54a".encode(), "\u2028".encode(),
            "١٢٣".encode(), "²".encode()]
_LINE_ENDS = [b"\n", b"\r", b"\r\r\n", b"\r\n\r\n", b"\r\n ", b"\r\n\t", b"\n\r", b""]
_NUMBERS = [b"0", b"-1", b"-0", b"+5", b"00000000000000000001", b"4294967295", b"4294967296",
            b"2147483648", b"18446744073709551616", b"9" * 40, b"1e9", b"0x10", b"1_000",
            b"65536", b"99999", b"256", b" 7 ", b"\xb2", b"1.5", b"NaN"]
_LONG = [64, 255, 256, 1024, 4096, 8192, 65536, 70000]
_FIELD_NAMES = [b"Via", b"v", b"From", b"f", b"To", b"t", b"Call-ID", b"i", b"CSeq",
                b"Contact", b"m", b"Route", b"Record-Route", b"Path", b"Max-Forwards",
                b"Content-Length", b"l", b"Content-Type", b"c", b"Expires", b"Authorization",
                b"Proxy-Authorization", b"Supported", b"k", b"Proxy-Require", b"Require",
                b"User-Agent", b"Allow", b"Subject", b"X-Custom"]
# Hostile values for the headers the proxy parses itself, the triggers of other proxies'
# crashes among them (Kamailio/OpenSIPS/Asterisk CVEs).
_VALUES: dict[bytes, list[bytes]] = {
    b"via": [b"", b"SIP/2.0/UDP", b"SIP/2.0/UDP ;branch=", b"SIP/2.0/ 1.2.3.4", b"SIP//UDP h",
             b"SIP/2.0/UDP h:99999999999", b"SIP/2.0/UDP h;rport=\xb2", b"SIP/2.0/UDP h;received=",
             b"SIP/2.0/UDP [::1", b"SIP/2.0/UDP h;branch=z9hG4bK;branch=x", b"SIP/2.0/UDP h,,",
             b"SIP/2.0/UDP h;maddr=;ttl=999999", b"SIP/3.0/UDP h", b"SIP/2.0/WS h:0"],
    b"from": [b"", b"<>", b"<sip:>", b"<sip:a@b", b'"unterminated <sip:a@b>', b"sip:a@b;tag=",
              b"<sip:a@b>;tag", b"<sip:a@b>;tag=;tag=x", b"<tel:+1>", b"<<sip:a@b>>",
              b"<sip:a@[::1>", b"<sip:a@b:0>", b"*", b'"\\', b"<sip:a@b>;;;"],
    b"cseq": [b"", b"1", b"INVITE", b"1 INVITE X", b"-1 INVITE", b"4294967296 INVITE",
              b"99999999999999999999 INVITE", b"1\tINVITE", b"\xb2 INVITE", b"1  INVITE"],
    b"call-id": [b"", b"@", b"a@b@c", b"\x00", b" "],
    b"contact": [b"", b"*", b"*, <sip:a@b>", b"<sip:a@b>;expires=", b"<sip:a@b>;expires=\xb2",
                 b"<sip:a@b>;expires=99999999999999999999", b"<sip:a@b;alias=1.2.3.4~0~9>",
                 b"<sip:a@b;alias=~~>", b"<sip:a@b;alias=1.2.3.4~99999~1>", b",,,", b"<>;q=2.0",
                 b"<sip:a@b;transport=>", b"<sip:a@b:99999>"],
    b"route": [b"", b"<>", b"<sip:127.0.0.1:5060;lr>,", b"<sip:127.0.0.1:5060;lr>, <tel:1>",
               b"<sip:127.0.0.1:5060>", b"<sip:127.0.0.1:5060;lr>, <sip:@:;lr>",
               b"<sip:127.0.0.1:5060;lr;ftag=>, <sips:[::1]:0;lr;maddr=>", b"sip:127.0.0.1"],
    b"authorization": [b"Digest username=", b"Digest", b"Digest ", b"Digest username=\"",
                       b"Digest username=\"a\",,,", b"Digest realm=\"sipgw.test\"",
                       b"Digest username=\"5001\", realm=\"sipgw.test\", nonce=\"" + NONCE +
                       b"\", uri=\"sip:x\", response=\"\", qop=auth",
                       b"Digest username=\"5001\", realm=\"sipgw.test\", nonce=\"" + NONCE +
                       b"\", uri=\"sip:x\", response=\"0\", qop=auth, nc=zz, cnonce=\"\"",
                       b"Digest username=\"5001\", realm=\"sipgw.test\", nonce=\"" + NONCE +
                       b"\", uri=\"sip:x\", response=\"0\", qop=auth, nc=\xb2, cnonce=a",
                       b"Digest username=\"5001\", realm=\"sipgw.test\", nonce=\"" + NONCE +
                       b"\", uri=\"sip:x\", response=\"0\", algorithm=SHA-512-256",
                       b"Basic YWxhZGRpbjpvcGVuc2VzYW1l", b"Digest =,=,=", b"Digest a=b=c"],
    b"max-forwards": [b"", b"-1", b"256", b"0", b"\xb2", b"99999999", b" ", b"1 1"],
    b"expires": [b"", b"-1", b"\xb2", b"99999999999999999999", b"0x10", b"3600 3600"],
    b"content-type": [b"", b"multipart/mixed", b"multipart/mixed;boundary=",
                      b'multipart/mixed;boundary="', b"multipart/mixed;boundary=" + b"b" * 300,
                      b"application/sdp;;", b"/", b"application/"],
    b"supported": [b"", b",", b"path,,path", b"\x00"],
}
_VALUES[b"to"] = _VALUES[b"from"]
_VALUES[b"record-route"] = _VALUES[b"path"] = _VALUES[b"route"]
_VALUES[b"proxy-authorization"] = _VALUES[b"authorization"]
_VALUES[b"proxy-require"] = _VALUES[b"supported"]
_COMPACT = {b"v": b"via", b"f": b"from", b"t": b"to", b"i": b"call-id", b"m": b"contact",
            b"l": b"content-length", b"c": b"content-type", b"k": b"supported"}
_BODY_JUNK = [b"\r\n", b"\r\n\r\n", b"=\r\n", b"a=\r\n", b"c=\r\n", b"m=\r\n", b"v=\r\n",
              b"\r\n\r\n\r\n", b"--boundary42\r\n", b"--boundary42--", b"--\r\n",
              b"--boundary42\r\n\r\n", b"\x00\r\n"]
_DIGITS = re.compile(rb"\d+")
_SEPARATOR_RE = re.compile(rb"[;,:=<>\"@ ]")
_CRLF_RE = re.compile(rb"\r\n")
_TOKEN = re.compile(rb"[A-Za-z0-9.\-_+]+")


def _name_key(line: bytes) -> bytes:
    name = line.split(b":", 1)[0].strip(b" \t").lower()
    return _COMPACT.get(name, name)


class Mutator:
    """Mutations of a fixed list of seed messages; ``mutate(i)`` is a pure function of
    ``(seed, i)``."""

    def __init__(self, seeds: list[bytes], seed: int = 0) -> None:
        if not seeds:
            raise ValueError("no seed messages")
        self.seeds = seeds
        self.seed = seed
        self._ops: list[Callable[[random.Random, bytearray], bytearray]] = [
            self._flip, self._flip, self._bit, self._insert, self._insert, self._delete,
            self._truncate, self._dup_line, self._dup_line, self._drop_line, self._swap_lines,
            self._graft_line, self._splice, self._number, self._number, self._long,
            self._separator, self._unicode, self._line_end, self._value, self._value,
            self._value, self._name, self._content_length, self._content_length, self._body,
        ]

    def mutate(self, i: int) -> bytes:
        rng = random.Random(self.seed * 1_000_003 + i)
        data = bytearray(rng.choice(self.seeds))
        for _ in range(1 + int(rng.random() ** 2 * 4)):
            data = rng.choice(self._ops)(rng, data)
        if rng.random() < 0.5:
            # Half the time the length is made true again, so that mutations of headers
            # and bodies get past the Content-Length check to the code behind it.
            data = _fix_length(data)
        return bytes(data)

    # -- bytes ------------------------------------------------------------------------

    @staticmethod
    def _flip(rng: random.Random, d: bytearray) -> bytearray:
        if d:
            d[rng.randrange(len(d))] = rng.randrange(256)
        return d

    @staticmethod
    def _bit(rng: random.Random, d: bytearray) -> bytearray:
        if d:
            d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
        return d

    @staticmethod
    def _insert(rng: random.Random, d: bytearray) -> bytearray:
        pool = rng.choice((_SEPARATORS, _UNICODE, _LINE_ENDS, _NUMBERS))
        at = _structural_point(rng, d)
        d[at:at] = rng.choice(pool)
        return d

    @staticmethod
    def _delete(rng: random.Random, d: bytearray) -> bytearray:
        at = rng.randrange(len(d) + 1)
        del d[at : at + rng.choice((1, 1, 2, 4, 16, 64))]
        return d

    @staticmethod
    def _truncate(rng: random.Random, d: bytearray) -> bytearray:
        del d[rng.randrange(len(d) + 1) :]
        return d

    def _splice(self, rng: random.Random, d: bytearray) -> bytearray:
        other = rng.choice(self.seeds)
        return d[: rng.randrange(len(d) + 1)] + other[rng.randrange(len(other) + 1) :]

    @staticmethod
    def _separator(rng: random.Random, d: bytearray) -> bytearray:
        return _replace_one(rng, d, _SEPARATOR_RE, _SEPARATORS)

    @staticmethod
    def _unicode(rng: random.Random, d: bytearray) -> bytearray:
        at = _structural_point(rng, d)
        d[at:at] = rng.choice(_UNICODE)
        return d

    @staticmethod
    def _line_end(rng: random.Random, d: bytearray) -> bytearray:
        return _replace_one(rng, d, _CRLF_RE, _LINE_ENDS)

    @staticmethod
    def _number(rng: random.Random, d: bytearray) -> bytearray:
        spots = list(_DIGITS.finditer(d))
        if spots:
            m = rng.choice(spots)
            d[m.start() : m.end()] = rng.choice(_NUMBERS)
        return d

    @staticmethod
    def _long(rng: random.Random, d: bytearray) -> bytearray:
        spots = list(_TOKEN.finditer(d[:4096]))
        if spots:
            m = rng.choice(spots)
            token = m.group() or b"a"
            n = rng.choice(_LONG)
            d[m.start() : m.end()] = (token * (n // len(token) + 1))[:n]
        return d

    def _body(self, rng: random.Random, d: bytearray) -> bytearray:
        end = d.find(b"\r\n\r\n")
        if end < 0:
            return d
        at = rng.randrange(end + 4, len(d) + 1)
        if rng.random() < 0.5:
            d[at:at] = rng.choice(_BODY_JUNK)
        else:  # an SDP line without its value, or an empty one
            line_start = d.rfind(b"\n", end + 4, at) + 1 or end + 4
            eq = d.find(b"=", line_start, line_start + 3)
            if eq > 0:
                nl = d.find(b"\r\n", eq)
                d[eq + 1 : nl if nl > 0 else len(d)] = b""
        return d

    # -- header lines -----------------------------------------------------------------

    def _dup_line(self, rng: random.Random, d: bytearray) -> bytearray:
        head, lines, body = _split(d)
        if len(lines) > 1:
            line = rng.choice(lines[1:])
            if rng.random() < 0.5:  # the copy differs: two parsers could disagree
                line = self._mutate_value(rng, line)
            lines.insert(rng.randrange(1, len(lines) + 1), line)
        return _join(lines, body, head)

    @staticmethod
    def _drop_line(rng: random.Random, d: bytearray) -> bytearray:
        head, lines, body = _split(d)
        if len(lines) > 1:
            del lines[rng.randrange(1, len(lines))]
        return _join(lines, body, head)

    @staticmethod
    def _swap_lines(rng: random.Random, d: bytearray) -> bytearray:
        head, lines, body = _split(d)
        if len(lines) > 2:
            a = rng.randrange(0 if rng.random() < 0.1 else 1, len(lines))
            b = rng.randrange(1, len(lines))
            lines[a], lines[b] = lines[b], lines[a]
        return _join(lines, body, head)

    def _graft_line(self, rng: random.Random, d: bytearray) -> bytearray:
        head, lines, body = _split(d)
        _, others, _ = _split(bytearray(rng.choice(self.seeds)))
        if len(others) > 1:
            lines.insert(rng.randrange(1, len(lines) + 1), rng.choice(others[1:]))
        return _join(lines, body, head)

    def _value(self, rng: random.Random, d: bytearray) -> bytearray:
        head, lines, body = _split(d)
        spots = [i for i, line in enumerate(lines[1:], 1) if _name_key(line) in _VALUES]
        if spots:
            i = rng.choice(spots)
            lines[i] = self._mutate_value(rng, lines[i])
        else:
            key = rng.choice(list(_VALUES))
            lines.insert(1, key + b": " + rng.choice(_VALUES[key]))
        return _join(lines, body, head)

    @staticmethod
    def _mutate_value(rng: random.Random, line: bytes) -> bytes:
        name, _, value = line.partition(b":")
        choices = _VALUES.get(_name_key(line))
        if choices and rng.random() < 0.7:
            value = b" " + rng.choice(choices)
        else:
            value = value + rng.choice(_SEPARATORS) + rng.choice(_UNICODE + _NUMBERS)
        return name + b":" + value

    @staticmethod
    def _name(rng: random.Random, d: bytearray) -> bytearray:
        head, lines, body = _split(d)
        if len(lines) > 1:
            i = rng.randrange(1, len(lines))
            name, sep, value = lines[i].partition(b":")
            how = rng.randrange(5)
            if how == 0:  # another header's name, the value stays
                name = rng.choice(_FIELD_NAMES)
            elif how == 1:  # junk after the name (a crash trigger elsewhere)
                name = name + rng.choice([b" x", b"\x00", b";", b"  ", b"\t", b"/", b"\xff"])
            elif how == 2:
                name = name.swapcase()
            elif how == 3:
                name = b""
            else:
                sep = b""
            lines[i] = name + sep + value
        return _join(lines, body, head)

    @staticmethod
    def _content_length(rng: random.Random, d: bytearray) -> bytearray:
        head, lines, body = _split(d)
        lines = [line for line in lines if _name_key(line) != b"content-length"]
        n = len(body)
        values = [str(n + 1).encode(), str(max(n - 1, 0)).encode(), b"0", b"-1", b"-999",
                  b"4294967296", b"99999999999", b"0" * 12 + str(n).encode(), b" ",
                  b"", str(n).encode() + b" ,0", b"\xb2", str(n).encode() + b"\x0b"]
        name = rng.choice([b"Content-Length", b"l", b"content-length ", b"CONTENT-LENGTH"])
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            value = rng.choice(values) if rng.random() < 0.7 else str(n).encode()
            at = rng.randrange(1, len(lines) + 1) if len(lines) > 1 else len(lines)
            fold = b"\r\n " if rng.random() < 0.1 else b" "
            lines.insert(at, name + b":" + fold + value)
        return _join(lines, body, head)


def _replace_one(rng: random.Random, d: bytearray, pattern: re.Pattern[bytes],
                 pool: list[bytes]) -> bytearray:
    """One match of ``pattern`` in the head of ``d`` replaced by something from ``pool``."""
    spots = [m.span() for m in pattern.finditer(d[:4096])]
    if spots:
        start, end = rng.choice(spots)
        d[start:end] = rng.choice(pool)
    return d


def _structural_point(rng: random.Random, d: bytearray) -> int:
    """Somewhere a parser makes a decision, most of the time; anywhere otherwise."""
    if d and rng.random() < 0.6:
        spots = [m.end() for m in re.finditer(rb"[:;,=<>@ /\r]", d[:4096])]
        if spots:
            return rng.choice(spots)
    return rng.randrange(len(d) + 1)


def _split(d: bytearray) -> tuple[bool, list[bytes], bytes]:
    end = d.find(b"\r\n\r\n")
    if end < 0:
        return False, bytes(d).split(CRLF), b""
    return True, bytes(d[:end]).split(CRLF), bytes(d[end + 4 :])


def _join(lines: list[bytes], body: bytes, had_end: bool) -> bytearray:
    out = bytearray(CRLF.join(lines))
    if had_end:
        out += b"\r\n\r\n" + body
    return out


def _fix_length(d: bytearray) -> bytearray:
    end = d.find(b"\r\n\r\n")
    if end < 0:
        return d
    had, lines, body = _split(d)
    lines = [line for line in lines if _name_key(line) != b"content-length"]
    lines.append(b"Content-Length: " + str(len(body)).encode())
    return _join(lines, body, had)


def load_seeds(paths: Iterable[str | os.PathLike[str]] = ()) -> list[bytes]:
    """The built-in messages and every ``.dat`` file under the given files or folders."""
    seeds = list(BUILTIN_SEEDS.values())
    for p in paths:
        path = Path(p)
        files = sorted(path.rglob("*.dat")) if path.is_dir() else [path]
        seeds += [f.read_bytes() for f in files]
    return seeds


# -- the contract ----------------------------------------------------------------------------


def _tolerant(*steps: Callable[[], object]) -> None:
    """Run each step; a ParseError is an allowed answer, anything else escapes."""
    for step in steps:
        try:
            step()
        except ParseError:
            pass


def _touch_uri(uri: object) -> None:
    if isinstance(uri, SipURI):
        (uri.user, uri.host, uri.port, uri.transport, uri.headers, uri.unescaped_user,
         uri.param("lr"), uri.param("maddr"), uri.param("expires"), uri.param("alias"),
         uri.host_port, str(uri))


def _touch_address(value: str) -> None:
    addr = parse_name_addr(value)
    _touch_uri(addr.uri)
    (addr.tag, addr.display_name, str(addr))


def _touch_route(msg: Request | Response, name: str) -> None:
    for value in msg.values(name):  # the split itself may refuse (an open quote)
        _touch_address(value)


def _touch_contacts(value: str) -> None:
    contacts = parse_address_list(value)
    if isinstance(contacts, list):
        for c in contacts:
            _touch_uri(c.uri)
            (c.param("expires"), c.param("q"), str(c))


def _touch_credentials(value: str) -> None:
    c = parse_credentials(value)
    (c.is_digest, c.username, c.realm, c.nonce, c.uri, c.response, c.algorithm,
     c.params.get("nc"), c.params.get("qop"))


def _touch_via(value: str) -> None:
    for v in parse_via(value):
        (v.branch, v.received, v.rport, v.maddr, v.ttl, v.sent_by, v.version, v.host,
         v.port, v.transport, str(v))


def exercise_message(msg: Request | Response, *, datagram: bool) -> None:
    """Every accessor the proxy uses; ParseError allowed, nothing else."""
    steps: list[Callable[[], object]] = [
        lambda: msg.call_id, lambda: msg.cseq, lambda: msg.top_via, lambda: msg.from_tag,
        lambda: msg.to_tag,
    ]
    steps += [partial(_touch_via, v) for v in msg.headers("via")]
    steps += [partial(_touch_route, msg, n) for n in ("route", "record-route", "path")]
    for name in ("from", "to"):
        value = msg.header(name)
        if value is not None:
            steps.append(partial(_touch_address, value))
    steps += [partial(_touch_contacts, v) for v in msg.headers("contact")]
    for name in ("authorization", "proxy-authorization"):
        steps += [partial(_touch_credentials, v) for v in msg.headers(name)]
    if isinstance(msg, Request):
        steps.append(lambda: _touch_uri(msg.parsed_uri()))
        steps += [lambda: msg.values("supported"), lambda: msg.values("proxy-require")]
    _tolerant(*steps)
    # What we accept serialises to bytes we accept again, unchanged.
    out = msg.to_bytes()
    again = parse_message(out, datagram=datagram)
    if again.to_bytes() != out:
        raise AssertionError("re-serialised message differs after a second parse")


def exercise(data: bytes, cut: int = -1) -> None:
    """The whole contract for one input: as a datagram, as a stream cut at ``cut``."""
    for datagram in (True, False):
        try:
            msg = parse_message(data, datagram=datagram)
        except ParseError as e:
            if not e.reason or not (e.status is None or 400 <= e.status <= 599):
                raise AssertionError(f"ParseError without a reason or a 4xx/5xx: {e!r}") from e
            continue
        exercise_message(msg, datagram=datagram)
    framer = StreamFramer()
    try:
        cut = cut if 0 <= cut <= len(data) else len(data) // 2
        items = framer.feed(data[:cut]) + framer.feed(data[cut:])
    except FramingError:
        return
    for item in items:
        if isinstance(item, bytes):
            try:
                msg = parse_message(item, datagram=False)
            except ParseError:
                continue
            exercise_message(msg, datagram=False)


# -- runs ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Crash:
    index: int
    data: bytes
    kind: str  # "ValueError at sipgw/sip/uri.py:123"
    detail: str


@dataclass(slots=True)
class ParserReport:
    seed: int
    count: int = 0
    parsed: int = 0
    seconds: float = 0.0
    crashes: dict[str, Crash] = field(default_factory=dict)  # the first input per kind
    crash_count: int = 0

    def text(self) -> str:
        rate = self.count / self.seconds if self.seconds else 0.0
        lines = [f"{self.count} mutated messages (seed {self.seed}) in {self.seconds:.1f} s "
                 f"({rate:.0f}/s); {self.parsed} parsed, "
                 f"{self.count - self.parsed - self.crash_count} refused with a ParseError; "
                 f"{self.crash_count} broke the contract "
                 f"({len(self.crashes)} kinds)"]
        for kind, c in self.crashes.items():
            lines.append(f"  {kind}  (message {c.index}): {c.detail}")
        return "\n".join(lines)


def _kind(exc: BaseException) -> str:
    """The exception type and the deepest sipgw frame it came from."""
    where = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        if "/sipgw/" in frame.filename:
            where = f"{frame.filename.rsplit('/sipgw/', 1)[1]}:{frame.lineno}"
    return f"{type(exc).__name__} at sipgw/{where}"


def run_parser(mutator: Mutator, count: int, *, start: int = 0,
               progress: Callable[[int], None] | None = None) -> ParserReport:
    report = ParserReport(seed=mutator.seed)
    t0 = time.perf_counter()
    for i in range(start, start + count):
        data = mutator.mutate(i)
        try:
            exercise(data, cut=i % (len(data) + 1))
        except Exception as e:  # the contract broken: record it, go on
            report.crash_count += 1
            kind = _kind(e)
            if kind not in report.crashes:
                report.crashes[kind] = Crash(i, data, kind, f"{e!r}"[:200])
        else:
            report.parsed += _parses(data)
        report.count += 1
        if progress is not None and report.count % 100_000 == 0:
            progress(report.count)
    report.seconds = time.perf_counter() - t0
    return report


def _parses(data: bytes) -> int:
    try:
        parse_message(data)
    except ParseError:
        return 0
    return 1


# -- against a running proxy -------------------------------------------------------------------


def _opcode(data: bytes) -> int:
    """Text frames for UTF-8 (as browsers send), binary for the rest (RFC 7118 §5.1
    allows both): a text frame that is not UTF-8 is refused by the WebSocket layer
    (1007) before any SIP parser sees it."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return 0x2
    return 0x1


def _answer(data: bytes) -> tuple[websocket.Response, bytes] | None:
    try:
        return websocket.parse_response(data)
    except websocket.ProtocolError as e:
        raise OSError(f"WebSocket handshake refused: {e}") from None


class _Stream:
    """One TCP or WebSocket connection to the proxy, whose answers are read and dropped."""

    def __init__(self, address: tuple[str, int], ws: bool, timeout: float, local: str) -> None:
        self.ws = ws
        self.sock = socket.create_connection(address, timeout=timeout,
                                             source_address=(local, 0))
        # The proxy's frames are read only to be dropped, so one frame waiting for its end
        # is all that is ever kept.
        self.frames = websocket.FrameDecoder(masked=False)
        if ws:
            key = websocket.new_key()
            self.sock.sendall(websocket.handshake_request(host=f"{address[0]}:{address[1]}",
                                                          key=key))
            deadline = time.monotonic() + timeout
            buf = b""
            while (answer := _answer(buf)) is None:
                if time.monotonic() > deadline:
                    raise OSError("no WebSocket handshake answer")
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise OSError("closed during the WebSocket handshake")
                buf += chunk
            head, rest = answer
            if not head.accepts(key):
                raise OSError(f"WebSocket handshake refused: {head.head[:40]!r}")
            self.frames.feed(rest)
        self.sock.setblocking(False)

    def send(self, data: bytes) -> bool:
        """False when the proxy closed the connection (as it does after a framing error)."""
        payload = websocket.encode_frame(_opcode(data), data, mask=True) if self.ws else data
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(5)
            self.sock.sendall(payload)
            self.sock.setblocking(False)
        except OSError:
            return False
        return self.drain() is not None

    def drain(self) -> int | None:
        """Read what is there; the number of messages (or frames), None once closed."""
        got = 0
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return got
            except OSError:
                return None
            if not chunk:
                return None
            got += chunk.count(b"SIP/2.0 ")
            if self.ws:
                try:
                    self.frames.feed(chunk)
                except websocket.ProtocolError:
                    return None  # no telling where its next frame starts: as good as closed

    def close(self) -> None:
        self.sock.close()


@dataclass(slots=True)
class SendReport:
    sent: Counter = field(default_factory=Counter)  # by transport
    connections: Counter = field(default_factory=Counter)
    probes: int = 0
    probe_failures: int = 0
    replies: Counter = field(default_factory=Counter)  # UDP replies by status class
    seconds: float = 0.0

    def text(self) -> str:
        total = sum(self.sent.values())
        rate = total / self.seconds if self.seconds else 0.0
        sent = ", ".join(f"{t} {n}" for t, n in sorted(self.sent.items()))
        conns = ", ".join(f"{t} {n}" for t, n in sorted(self.connections.items()))
        replies = ", ".join(f"{k}: {n}" for k, n in sorted(self.replies.items())) or "none"
        return (f"{total} mutated messages in {self.seconds:.1f} s ({rate:.0f}/s): {sent}; "
                f"connections opened: {conns or 'none'}; UDP replies {replies}; "
                f"liveness probes {self.probes - self.probe_failures}/{self.probes} answered")


class Sender:
    """Mutated messages to a running proxy, round robin over the transports given.

    Streams are reopened every ``per_connection`` messages (and whenever the proxy closes
    one); UDP answers are read as they come. Every ``probe_every`` messages an OPTIONS to
    the proxy itself must be answered within ``probe_timeout``: a liveness check, and the
    pacing that keeps the sender from outrunning the proxy into dropped datagrams.
    """

    def __init__(self, mutator: Mutator, *, udp: str | None = None, tcp: str | None = None,
                 ws: str | None = None, per_connection: int = 20, probe_every: int = 200,
                 probe_timeout: float = 5.0, local: str = "127.0.0.1") -> None:
        self.mutator = mutator
        self.local = local  # the address every message comes from
        self.targets = [(t, split_address(a)) for t, a in (("udp", udp), ("tcp", tcp), ("ws", ws))
                        if a]
        if not self.targets:
            raise ValueError("give at least one of udp, tcp, ws")
        self.probe_address = split_address(udp) if udp else None
        self.per_connection = per_connection
        self.probe_every = probe_every
        self.probe_timeout = probe_timeout
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((local, 0))
        self.udp.setblocking(False)
        self.streams: dict[str, tuple[_Stream, int]] = {}
        self.report = SendReport()

    def run(self, count: int, start: int = 0) -> SendReport:
        t0 = time.monotonic()
        try:
            for i in range(start, start + count):
                transport, address = self.targets[i % len(self.targets)]
                data = self.mutator.mutate(i)
                if transport == "udp":
                    self._udp(data, address)
                else:
                    self._stream(transport, address, data)
                self.report.sent[transport] += 1
                if (i - start + 1) % self.probe_every == 0:
                    self.probe(i)
            self.probe(start + count)
        finally:
            for stream, _ in self.streams.values():
                stream.close()
            self.streams.clear()
            self.report.seconds += time.monotonic() - t0
        return self.report

    def close(self) -> None:
        self.udp.close()

    def _udp(self, data: bytes, address: tuple[str, int]) -> None:
        try:
            self.udp.sendto(data[:65507], address)
        except OSError:
            pass  # e.g. EMSGSIZE: nothing reached the proxy
        self._read_udp()

    def _read_udp(self, want: str | None = None) -> bool:
        found = False
        while True:
            try:
                reply = self.udp.recv(65536)
            except (BlockingIOError, InterruptedError):
                return found
            except OSError:
                return found  # ICMP port unreachable from an earlier send
            status = reply[8:11] if reply.startswith(b"SIP/2.0 ") else b"req"
            self.report.replies[status[:1].decode("latin-1") + "xx"
                                if status != b"req" else "requests"] += 1
            if want is not None and want.encode() in reply:
                found = True

    def _stream(self, transport: str, address: tuple[str, int], data: bytes) -> None:
        stream, used = self.streams.get(transport, (None, 0))
        if stream is None or used >= self.per_connection:
            if stream is not None:
                stream.close()
            stream = _Stream(address, transport == "ws", self.probe_timeout, self.local)
            self.report.connections[transport] += 1
            used = 0
        if stream.send(data):
            self.streams[transport] = (stream, used + 1)
        else:
            stream.close()
            self.streams.pop(transport, None)

    def probe(self, i: int) -> bool:
        """An OPTIONS to the proxy itself; True when its 200 came back in time."""
        if self.probe_address is None:
            return True
        self.report.probes += 1
        host, port = self.probe_address
        me = self.udp.getsockname()[1]
        call_id = f"fuzz-probe-{os.getpid()}-{i}"
        options = _msg(f"OPTIONS sip:{host}:{port} SIP/2.0", [
            f"Via: SIP/2.0/UDP {self.local}:{me};branch=z9hG4bK{call_id};rport",
            "Max-Forwards: 70", f"From: <sip:fuzz@127.0.0.1>;tag={i}",
            f"To: <sip:{host}:{port}>", f"Call-ID: {call_id}", "CSeq: 1 OPTIONS"])
        sel = selectors.DefaultSelector()
        sel.register(self.udp, selectors.EVENT_READ)
        deadline = time.monotonic() + self.probe_timeout
        try:
            next_send = 0.0
            while (now := time.monotonic()) < deadline:
                if now >= next_send:  # UDP: the probe itself may be lost in a full buffer
                    self.udp.sendto(options, (host, port))
                    next_send = now + 0.5
                for stream, _ in list(self.streams.values()):
                    stream.drain()
                sel.select(min(0.05, max(deadline - now, 0)))
                if self._read_udp(want=call_id):
                    return True
        finally:
            sel.close()
        self.report.probe_failures += 1
        return False


class Responder:
    """A backend that answers every request it is sent with a 200 (ACK: nothing), from a
    thread, so transactions the fuzz run opened end and their memory is given back."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self.answered = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, name="fuzz-backend", daemon=True)

    def __enter__(self) -> Responder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            try:
                req = parse_message(data)
            except ParseError:
                continue
            if isinstance(req, Request) and req.method != "ACK":
                reply = make_response(req, 200, "OK", to_tag="fuzzbe")
                self.sock.sendto(reply.to_bytes(), peer)
                self.answered += 1


# -- command line ----------------------------------------------------------------------------


def _save(crashes: Iterable[Crash], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for c in crashes:
        name = re.sub(r"[^A-Za-z0-9]+", "-", c.kind).strip("-")
        path = folder / f"{name}-{hashlib.sha1(c.data).hexdigest()[:8]}.sip"
        path.write_bytes(c.data)
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sipgw.tools.fuzz", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    for name in ("parser", "send"):
        p = sub.add_parser(name)
        p.add_argument("-n", "--count", type=int, default=100_000)
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--start", type=int, default=0, help="index of the first message")
        p.add_argument("--seeds", action="append", default=[], metavar="PATH",
                       help=".dat files or folders of them to mutate (and the built-ins)")
    parser = sub.choices["parser"]
    parser.add_argument("--only", type=int, metavar="I", help="replay message I alone")
    parser.add_argument("--crash-dir", type=Path, help="write each kind's first input here")
    send = sub.choices["send"]
    for t in ("udp", "tcp", "ws"):
        send.add_argument(f"--{t}", metavar="HOST:PORT")
    send.add_argument("--per-connection", type=int, default=20)
    send.add_argument("--probe-every", type=int, default=200)
    send.add_argument("--local", default="127.0.0.1", help="the address to send from")
    args = ap.parse_args(argv)
    mutator = Mutator(load_seeds(args.seeds), args.seed)
    if args.what == "send":
        sender = Sender(mutator, udp=args.udp, tcp=args.tcp, ws=args.ws,
                        per_connection=args.per_connection, probe_every=args.probe_every,
                        local=args.local)
        try:
            report = sender.run(args.count, args.start)
        finally:
            sender.close()
        print(report.text())
        return 1 if report.probe_failures else 0
    if args.only is not None:
        data = mutator.mutate(args.only)
        sys.stdout.write(repr(data) + "\n")
        exercise(data, cut=args.only % (len(data) + 1))
        return 0
    parsed = run_parser(mutator, args.count, start=args.start,
                        progress=lambda n: print(f"... {n}", file=sys.stderr, flush=True))
    print(parsed.text())
    if args.crash_dir is not None:
        for path in _save(parsed.crashes.values(), args.crash_dir):
            print(f"  wrote {path}")
    return 1 if parsed.crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
