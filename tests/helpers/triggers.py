"""Known crash triggers of other SIP proxies, as requests, with what sipgw must do.

Kamailio, OpenSIPS and Asterisk have all crashed (or mis-parsed) on these: a To header
with an empty tag given twice (Kamailio CVE-2018-8828's trigger), Via headers that do not
parse, duplicated CSeq/From/Call-ID, Content-Length that overflows or comes twice, header
names with junk after them, Authorization cut short (``Digest username=``), multipart
bodies with broken boundaries and SDP with empty lines. Each is a plain INVITE or REGISTER
from 198.51.100.7 with one thing wrong; ``EXPECTED`` says what comes back: a 400 whose
reason names the bad part, nothing (no Via: nobody to answer), or the request forwarded
unchanged (sipgw never parses bodies it does not need).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

_n = itertools.count(1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Expect:
    status: int | None  # None: forwarded (or dropped, when ``dropped``)
    reason: str = ""  # must appear in the reason phrase
    dropped: bool = False


def request(method: str = "INVITE", *, host: str = "198.51.100.7", port: int = 5060,
            ruri: str = "sip:bob@example.com", via: str | None = None,
            from_: str = "From: <sip:alice@example.com>;tag=a1",
            to: str = "To: <sip:bob@example.com>", cseq: str | None = None,
            call_id: str | None = None, extra: tuple[str, ...] = (), ctype: str = "",
            body: bytes = b"", length: str | None = None, transport: str = "UDP") -> bytes:
    n = next(_n)
    lines = [f"{method} {ruri} SIP/2.0",
             via or f"Via: SIP/2.0/{transport} {host}:{port};branch=z9hG4bKtrig{n};rport",
             "Max-Forwards: 70", from_, to, call_id or f"Call-ID: trigger-{n}@{host}",
             cseq or f"CSeq: 1 {method}", *extra]
    if ctype:
        lines.append(ctype)
    lines.append(f"Content-Length: {len(body)}" if length is None else length)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _register(auth: str) -> dict:
    return dict(
        method="REGISTER",
        ruri="sip:sipgw.test",
        from_="From: <sip:5001@sipgw.test>;tag=r1",
        to="To: <sip:5001@sipgw.test>",
        extra=(f"Authorization: {auth}",),
    )


_SDP_EMPTY_LINES = b"v=0\r\n\r\n\r\nc=\r\nc=IN\r\nc=IN IP4\r\n=\r\na=\r\nm=\r\n"
_MULTIPART_OPEN = (b"--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nc=IN IP4 10.0.0.1\r\n")

# name → (request keyword arguments, expected outcome)
TRIGGERS: dict[str, tuple[dict, Expect]] = {
    "to-twice-with-empty-tag": (dict(to="To: <sip:bob@example.com>;tag=\r\n"
                                        "To: <sip:bob@example.com>;tag="),
                                Expect(status=400, reason="Duplicate To header")),
    "to-empty-tag": (dict(to="To: <sip:bob@example.com>;tag="),
                     Expect(status=400, reason="Bad To header")),
    "via-without-host": (dict(via="Via: SIP/2.0/UDP"), Expect(status=400, reason="Bad Via")),
    "via-separators-only": (dict(via="Via: ;;;,,"), Expect(status=400, reason="Bad Via")),
    "via-port-overflow": (dict(via="Via: SIP/2.0/UDP 198.51.100.7:99999;branch=z9hG4bKo"),
                          Expect(status=400, reason="Bad Via")),
    "via-name-with-junk": (dict(via="Via x: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKj"),
                           Expect(status=None, dropped=True)),  # no Via: nobody to answer
    "cseq-twice": (dict(cseq="CSeq: 1 INVITE\r\nCSeq: 2 INVITE"),
                   Expect(status=400, reason="Duplicate CSeq header")),
    "from-twice": (dict(from_="From: <sip:alice@example.com>;tag=a1\r\n"
                              "From: <sip:eve@example.com>;tag=e1"),
                   Expect(status=400, reason="Duplicate From header")),
    "call-id-twice": (dict(call_id="Call-ID: a@198.51.100.7\r\nCall-ID: b@198.51.100.7"),
                      Expect(status=400, reason="Duplicate Call-ID header")),
    "content-length-2-to-the-32": (dict(length="Content-Length: 4294967296"),
                                   Expect(status=400, reason="Content-Length")),
    "content-length-23-digits": (dict(length="Content-Length: 99999999999999999999999"),
                                 Expect(status=400, reason="Content-Length")),
    "content-length-negative": (dict(length="Content-Length: -1"),
                                Expect(status=400, reason="Content-Length")),
    "content-length-twice-same": (dict(length="Content-Length: 0\r\nContent-Length: 0"),
                                  Expect(status=400, reason="Duplicate Content-Length")),
    # Datagram: "Duplicate Content-Length header"; stream: "Conflicting ... headers".
    "content-length-twice-compact": (dict(length="Content-Length: 0\r\nl: 5"),
                                     Expect(status=400, reason="Content-Length header")),
    "header-name-trailing-word": (dict(extra=("Subject x: hi",)),
                                  Expect(status=400, reason="Bad header name 'Subject x'")),
    "header-name-trailing-nul": (dict(extra=("Subject\x00: hi",)),
                                 Expect(status=400, reason="Bad header name")),
    "authorization-username-empty": (_register("Digest username="),
                                     Expect(status=400, reason="Bad Authorization header")),
    "authorization-scheme-only": (_register("Digest"),
                                  Expect(status=400, reason="Bad Authorization header")),
    "authorization-open-quote": (_register('Digest username="5001", realm="sipgw.test", '
                                           'nonce="abc'),
                                 Expect(status=400, reason="Bad Authorization header")),
    "authorization-missing-fields": (_register('Digest username="5001", realm="sipgw.test"'),
                                     Expect(status=400, reason="missing")),
    "multipart-open-boundary-parameter": (dict(ctype='Content-Type: multipart/mixed;boundary="',
                                               body=b"--x\r\n\r\n--\r\n"), Expect(status=None)),
    "multipart-never-closed": (dict(ctype="Content-Type: multipart/mixed;boundary=b1",
                                    body=_MULTIPART_OPEN), Expect(status=None)),
    "sdp-empty-lines": (dict(ctype="Content-Type: application/sdp", body=_SDP_EMPTY_LINES),
                        Expect(status=None)),
}
