"""SIPp's bench call and bench/register.py's REGISTER, fed to an in-process ``FuzzProxy``.

Shared by ``bench/core.py`` (CPU per call of the route script), ``bench/wscore.py`` (the
backend's answer) and the tests that hold the route script to properties of whole flows
(``tests/proxy/relay/test_no_cycles.py``). The flows
are the datagrams of bench/scenarios/uac.xml and uas.xml: INVITE, 100, 180, 200, ACK,
BYE, 200 from a trusted caller; the same call authenticated as issue 14's bench makes it
(INVITE, 407, ACK, INVITE with Proxy-Authorization, then the rest); and a digest REGISTER
(401, then authorized, then the backend's 200).
"""

from __future__ import annotations

import heapq
import re
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from sipgw.tools.digest_client import authorization
from sipgw.tools.fuzzproxy import REALM, TRUSTED, FuzzProxy
from sipgw.tools.harness import BACKEND_SOURCE, CLIENT_HOST, CLIENT_PORT, UDP_SOURCE

CALLER = f"{TRUSTED.host}:{TRUSTED.port}"
AUTH_CALLER = f"{CLIENT_HOST}:{CLIENT_PORT}"  # not trusted: it authenticates as 5001
AUTH_AOR = f"sip:5001@{REALM}"
SERVICE, UAS = "sip:service@127.0.0.1:5060", "sip:uas@127.0.0.1:5080"
SDP = (b"v=0\r\no=user1 53655765 2353687637 IN IP4 198.51.100.7\r\ns=-\r\n"
       b"c=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
_RR = re.compile(rb"^Record-Route: (.*)$", re.M)
_NONCE = re.compile(rb'nonce="([^"]+)"')
_TO_TAG = re.compile(rb"^To: [^\r]*;tag=([^;\r]+)", re.M)


def caller_request(method: str, uri: str, n: int, cseq: int, extra: str = "", body: bytes = b"",
                   to_tag: str = "", branch_of: str = "", *, caller: str = CALLER,
                   from_uri: str = "") -> bytes:
    """Call ``n``'s request from SIPp's UAC at ``caller`` (host:port); ``branch_of``: the
    method whose Via branch it reuses (a CANCEL has its INVITE's, §9.1); ``from_uri``: the
    caller's address of record (sip:sipp@caller by default)."""
    to = f"<sip:service@127.0.0.1:5060>{';tag=' + to_tag if to_tag else ''}"
    head = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {caller};branch=z9hG4bK-bench-{n}-{cseq}{branch_of or method}\r\n"
        f"{extra}"
        f"From: sipp <{from_uri or 'sip:sipp@' + caller}>;tag=bench{n}\r\nTo: {to}\r\n"
        f"Call-ID: {n}-bench@198.51.100.7\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: sip:sipp@{caller}\r\nMax-Forwards: 70\r\n"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def uas_answer(forwarded: bytes, status: str, n: int, body: bytes = b"") -> bytes:
    """The UAS's response: its Vias, Record-Route and Call-ID/From/CSeq copied back."""
    head, _, _ = forwarded.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    keep = [line for line in lines[1:] if line.split(b":", 1)[0] in
            (b"Via", b"From", b"Call-ID", b"CSeq", b"Record-Route")]
    to = next(line for line in lines if line.startswith(b"To:"))
    if b";tag=" not in to:
        to += b";tag=uas" + str(n).encode()
    out = [b"SIP/2.0 " + status.encode(), *keep, to,
           b"Contact: <sip:uas@127.0.0.1:5080>"]
    if body:
        out.append(b"Content-Type: application/sdp")
    out.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(out) + b"\r\n\r\n" + body


def feed_timed(h: FuzzProxy, data: bytes, source, clock: list[float]) -> list:
    """Hand one message to the proxy, counting only the CPU time spent in it."""
    before = len(h.sent)
    t = time.process_time()
    h.proxy.receive(data, source)
    clock[0] += time.process_time() - t
    return h.sent[before:]


def one_call(h: FuzzProxy, n: int, clock: list[float]) -> None:
    def feed(data: bytes, source) -> list:
        return feed_timed(h, data, source, clock)

    sent = feed(caller_request("INVITE", SERVICE, n, 1, body=SDP), TRUSTED)
    _answered_and_hung_up(h, feed, sent[-1].data, n, 1, TRUSTED)  # [100 Trying, INVITE]


def one_auth_call(h: FuzzProxy, n: int, clock: list[float]) -> None:
    """The bench call from a caller that is not trusted, as SIPp's UAC with authentication
    plays it: INVITE, 407, ACK, INVITE with Proxy-Authorization, then as ``one_call``."""
    def feed(data: bytes, source) -> list:
        return feed_timed(h, data, source, clock)

    def invite(cseq: int, extra: str = "") -> list:
        return feed(caller_request("INVITE", SERVICE, n, cseq, extra, SDP, caller=AUTH_CALLER,
                                   from_uri=AUTH_AOR), UDP_SOURCE)

    challenge = invite(1)[-1].data
    nonce, to_tag = _NONCE.search(challenge), _TO_TAG.search(challenge)
    if nonce is None or to_tag is None:
        raise ValueError(f"no nonce or To tag in the challenge to INVITE {n}")
    feed(caller_request("ACK", SERVICE, n, 1, to_tag=to_tag.group(1).decode(), branch_of="INVITE",
                        caller=AUTH_CALLER, from_uri=AUTH_AOR), UDP_SOURCE)
    auth = authorization(username="5001", password="secret", realm=REALM,
                         nonce=nonce.group(1).decode(), method="INVITE", uri=SERVICE)
    sent = invite(2, f"Proxy-Authorization: {auth}\r\n")
    _answered_and_hung_up(h, feed, sent[-1].data, n, 2, UDP_SOURCE, caller=AUTH_CALLER,
                          from_uri=AUTH_AOR)


def _answered_and_hung_up(h: FuzzProxy, feed: Callable, invite: bytes, n: int, cseq: int,
                          source, **caller) -> None:
    """The backend answers the forwarded ``invite`` (100, 180, 200); the caller ACKs along
    the Record-Route and hangs up with a BYE, which the backend answers."""
    feed(uas_answer(invite, "100 Trying", n), BACKEND_SOURCE)
    feed(uas_answer(invite, "180 Ringing", n), BACKEND_SOURCE)
    ok = feed(uas_answer(invite, "200 OK", n, SDP), BACKEND_SOURCE)[-1].data
    to_tag = f"uas{n}"
    routes = [r.decode().strip() for r in _RR.findall(ok)]
    route = "".join(f"Route: {r}\r\n" for r in routes)
    feed(caller_request("ACK", UAS, n, cseq, route, to_tag=to_tag, **caller), source)
    bye = feed(caller_request("BYE", UAS, n, cseq + 1, route, to_tag=to_tag, **caller), source)
    feed(uas_answer(bye[-1].data, "200 OK", n), BACKEND_SOURCE)
    if len(h.sent) > 10_000:
        h.sent.clear()


@implementer(IReactorTime)
class HeapClock:
    """A fake clock that keeps its timers in a heap, as the reactor does.

    ``twisted.internet.task.Clock`` sorts its whole list on every callLater: fine for a
    test with a handful of timers, quadratic for the tens of thousands a load keeps armed.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.heap: list[DelayedCall] = []

    def seconds(self) -> float:
        return self.now

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object,
                  **kwargs: object) -> DelayedCall:
        call = DelayedCall(self.now + delay, callable, args, kwargs, self._cancelled, self._reset,
                           seconds=self.seconds)
        heapq.heappush(self.heap, call)
        return call

    def _cancelled(self, call: DelayedCall) -> None:
        pass  # left in the heap, skipped when it comes up

    def _reset(self, call: DelayedCall) -> None:
        heapq.heapify(self.heap)

    def getDelayedCalls(self) -> list[DelayedCall]:
        return [c for c in self.heap if not (c.cancelled or c.called)]

    def advance(self, seconds: float) -> None:
        self.now += seconds
        heap = self.heap
        while heap and heap[0].time <= self.now:
            call = heapq.heappop(heap)
            if call.cancelled or call.called:
                continue
            call.called = 1
            call.func(*call.args, **call.kw)




def one_register(h: FuzzProxy, n: int, clock: list[float]) -> None:
    """bench/register.py's REGISTER: 401, then with digest relayed to the backend, 200."""
    user, domain = "5001", REALM

    def register(cseq: int, auth: str = "") -> list:
        head = (
            f"REGISTER sip:{domain} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {CLIENT_HOST}:{CLIENT_PORT};branch=z9hG4bK-reg-{n}-{cseq};rport\r\n"
            f"From: <sip:{user}@{domain}>;tag=reg{n}\r\nTo: <sip:{user}@{domain}>\r\n"
            f"Call-ID: {n}-reg@{CLIENT_HOST}\r\nCSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:{user}@{CLIENT_HOST}:{CLIENT_PORT}>;expires=3600\r\n{auth}"
            f"Max-Forwards: 70\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
        )
        return feed_timed(h, head.encode(), UDP_SOURCE, clock)

    challenge = register(1)[-1].data
    found = _NONCE.search(challenge)
    if found is None:
        raise ValueError(f"no nonce in the challenge to REGISTER {n}")
    nonce = found.group(1).decode()
    auth = authorization(username=user, password="secret", realm=domain, nonce=nonce,
                         method="REGISTER", uri=f"sip:{domain}")
    forwarded = register(2, f"Authorization: {auth}\r\n")[-1].data
    feed_timed(h, uas_answer(forwarded, "200 OK", n), BACKEND_SOURCE, clock)
    if len(h.sent) > 10_000:
        h.sent.clear()
