"""RFC 4475 through the running proxy core: forwarded, answered, or dropped, file by file.

Every torture message is fed to a real ``Proxy`` (fake clock, recording link; see
``sipgw/tools/harness.py``) as one UDP datagram from 192.0.2.99:5999, and the table below
says what must come out: the request at the backend (127.0.0.1:5080) with our Via, a
decremented or added Max-Forwards, our Record-Route on an INVITE and every other line and
the body byte-identical; or one response to the source with the expected status; or
nothing at all. After each one a plain INVITE must still be forwarded: the proxy survived.

The same files then go over a TCP flow through a ``StreamFramer``, with the differences
RFC 4475 describes for streams (clerr waits, ncl and mcl01 are framing errors, baddn lacks
its empty line; dblreq and inv2543 are datagram tests).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher

from sipgw.config import LimitsConfig
from sipgw.proxy.identity import BRANCH_PREFIX
from sipgw.proxy.transport import Destination, FlowTable
from sipgw.proxy.transport.stream import StreamConnection, StreamTransport
from sipgw.sip.errors import FramingError
from sipgw.sip.headers import header_key
from sipgw.sip.message import Request, Response, make_response
from sipgw.sip.parser import Limits, parse_message
from sipgw.tools.harness import (
    BACKEND,
    BACKEND_SOURCE,
    CLIENT_HOST,
    CLIENT_PORT,
    SIGNER,
    ProxyHarness,
    Sent,
    our_route,
    valid_invite,
)
from tests.helpers.strategies import mutated_torture
from tests.helpers.torture import (
    header_lines,
    insert_after_start_line,
    load,
    replace_once,
    torture_paths,
)

OUR_VIA_HOST, OUR_VIA_PORT = "127.0.0.1", 5060


def rr_udp(orig: Request) -> list[str]:
    """Our Record-Route, signed for the dialog ``orig`` opens (its Call-ID and From tag)."""
    return [f"<sip:127.0.0.1:5060;lr;sg={SIGNER.dialog(orig.call_id, orig.from_tag)}>"]


def rr_tcp_to_udp(orig: Request) -> list[str]:
    """A TCP client and a UDP backend: two Record-Routes (RFC 5658 r2=on)."""
    sg = SIGNER.dialog(orig.call_id, orig.from_tag)
    return [f"<sip:127.0.0.1:5060;lr;r2=on;sg={sg}>",
            f"<sip:127.0.0.1:5060;transport=tcp;lr;r2=on;sg={sg}>"]


TCP_REPLY = Destination(transport="tcp", host=CLIENT_HOST, port=CLIENT_PORT, flow_id=1)

ExtraCheck = Callable[[Request, Request, bytes], None]  # (original, forwarded, wire)


@dataclass(frozen=True, slots=True, kw_only=True)
class Forwarded:
    """Relayed to the backend; ``extra`` looks at what arrived there."""

    extra: ExtraCheck | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Answered:
    """One response to the source: this status, ``culprit`` in its reason phrase."""

    status: int
    culprit: str
    port: int  # 5999 (the source port) or the Via sent-by port, see the note below
    why: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Dropped:
    """Nothing sent; the drop is counted in ``stat``."""

    stat: str


Verdict = Forwarded | Answered | Dropped

# -- per-file looks at what reached the backend ---------------------------------------------


def no_trailing_octets(orig: Request, fwd: Request, wire: bytes) -> None:
    # RFC 4475 §3.1.1.8: the INVITE-like octets after the REGISTER never go anywhere.
    assert fwd.body == b"" and b"INVITE" not in wire and b"joe@example.com" not in wire


def authorization_unchanged(orig: Request, fwd: Request, wire: bytes) -> None:
    assert b"\r\nAuthorization: NoOneKnowsThisScheme opaque-data=here\r\n" in wire


def contact_line(line: bytes) -> ExtraCheck:
    def check(orig: Request, fwd: Request, wire: bytes) -> None:
        assert b"\r\n" + line + b"\r\n" in wire
        assert not fwd.has("route")  # an escaped header never becomes a real one

    return check


def rfc2543_invite(orig: Request, fwd: Request, wire: bytes) -> None:
    # No Max-Forwards: 70 added (§16.6 step 3); no Content-Length: the 105 octets counted.
    assert fwd.header("max-forwards") == "70"
    assert fwd.header("content-length") == "105" and len(fwd.body) == 105
    assert fwd.values("via")[1] == "SIP/2.0/UDP iftgw.example.com"  # no branch, untouched
    assert fwd.values("record-route") == [*rr_udp(orig),
                                          "<sip:UserB@example.com;maddr=ss1.example.com>"]


def vias_unchanged(orig: Request, fwd: Request, wire: bytes) -> None:
    assert fwd.values("via")[1:] == orig.values("via")
    assert [v.split()[0].rsplit("/", 1)[1] for v in fwd.values("via")[1:]] == [
        "UDP", "SCTP", "TLS", "UNKNOWN", "TCP",
    ]


def binary_body_unchanged(orig: Request, fwd: Request, wire: bytes) -> None:
    assert wire.endswith(orig.body) and len(fwd.body) == len(orig.body) > 0


# -- the table ---------------------------------------------------------------------------------
# Where answers go: a request the parser refuses is answered at its source address and port
# (its Via may be what is broken); one the route script refuses goes by RFC 3261 §18.2.2,
# to the source address and the Via's sent-by port (5060 when absent), or the source port
# with rport.

VERDICTS: dict[str, Verdict] = {
    # §3.1.1 valid
    "wsinv": Answered(status=404, culprit="Not Here", port=5060,
                      why="in-dialog (To tag) with no Route of ours: not our dialog; "
                          "with our Route it is forwarded, see below"),
    "intmeth": Forwarded(),
    "esc01": Forwarded(),
    "escnull": Forwarded(),
    "esc02": Forwarded(),
    "lwsdisp": Forwarded(),
    "longreq": Forwarded(extra=binary_body_unchanged),
    "dblreq": Forwarded(extra=no_trailing_octets),
    "semiuri": Forwarded(),
    "transports": Forwarded(extra=vias_unchanged),
    "mpart01": Answered(status=403, culprit="Not relaying", port=5999,
                        why="preloaded Route to 127.0.0.1:5080 (not us): no open relay; "
                            "with a Route naming us it is forwarded, see below"),
    "unreason": Dropped(stat="core:drop_replies"),  # top Via not ours (§16.7 step 1)
    "noreason": Dropped(stat="core:drop_replies"),
    # §3.1.2 invalid
    "badinv01": Answered(status=400, culprit="Via", port=5999),
    "clerr": Answered(status=400, culprit="Content-Length", port=5999),
    "ncl": Answered(status=400, culprit="Content-Length", port=5999),
    "scalar02": Answered(status=400, culprit="CSeq", port=5999),
    "scalarlg": Dropped(stat="core:bad_msg"),
    "quotbal": Answered(status=400, culprit="To", port=5999),
    "ltgtruri": Answered(status=400, culprit="Request-URI", port=5999),
    "lwsruri": Answered(status=400, culprit="request line", port=5999),
    "lwsstart": Answered(status=400, culprit="request line", port=5999),
    "trws": Answered(status=400, culprit="request line", port=5999),
    "escruri": Answered(status=400, culprit="Request-URI", port=5060),
    "baddate": Forwarded(),  # a proxy ignores Date (RFC 4475 §3.1.2.12)
    "regbadct": Forwarded(extra=contact_line(
        b"Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E")),  # liberal
    "badaspec": Answered(status=400, culprit="To", port=5999),
    "baddn": Answered(status=400, culprit="From", port=5999),
    "badvers": Answered(status=505, culprit="Version Not Supported", port=5999),
    "mismatch01": Answered(status=400, culprit="CSeq", port=5999),
    "mismatch02": Answered(status=501, culprit="Not Implemented", port=5999),
    "bigcode": Dropped(stat="core:bad_msg"),
    # §3.2-§3.4 semantic
    "badbranch": Forwarded(),  # RFC 2543 matching; retransmissions absorbed, see below
    "insuf": Answered(status=400, culprit="From", port=5999),
    "unkscm": Answered(status=416, culprit="Unsupported URI Scheme", port=5060),
    "novelsc": Answered(status=416, culprit="Unsupported URI Scheme", port=5060),
    "unksm2": Forwarded(),
    "bext01": Answered(status=420, culprit="Bad Extension", port=5060),
    "invut": Forwarded(extra=binary_body_unchanged),
    "regaut01": Forwarded(extra=authorization_unchanged),
    "multi01": Answered(status=400, culprit="CSeq", port=5999),
    "mcl01": Answered(status=400, culprit="Content-Length", port=5999),
    "bcast": Dropped(stat="core:drop_replies"),
    "zeromf": Answered(status=483, culprit="Too Many Hops", port=5060),
    "cparam01": Forwarded(extra=contact_line(
        b"Contact: sip:+19725552222@gw1.example.net;unknownparam")),
    "cparam02": Forwarded(extra=contact_line(
        b"Contact: <sip:+19725552222@gw1.example.net;unknownparam>")),
    "regescrt": Forwarded(extra=contact_line(
        b"M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>")),
    "sdp01": Forwarded(extra=binary_body_unchanged),
    "inv2543": Forwarded(extra=rfc2543_invite),
}

# Over a TCP flow (RFC 4475 notes): these differ from their datagram verdict.
STREAM_WAITS = {"clerr", "baddn"}  # incomplete: nothing happens, the framer waits
STREAM_FRAMING_ERRORS = {"ncl": "Bad Content-Length header",
                         "mcl01": "Conflicting Content-Length headers"}
DATAGRAM_ONLY = {"dblreq", "inv2543"}  # §18.3 datagram rules are what they test
STREAMED = sorted(set(VERDICTS) - STREAM_WAITS - set(STREAM_FRAMING_ERRORS) - DATAGRAM_ONLY)


# -- checks --------------------------------------------------------------------------------------


def untouched_lines(msg: Request, *, ours: list[str], added_cl: bool) -> list[str]:
    """Raw header lines, without our Via, our Record-Routes, Max-Forwards and an added CL."""
    fields = list(msg.fields)
    if added_cl:
        assert fields[-1].key == "content-length"
        fields = fields[:-1]
    out: list[str] = []
    via_seen = False
    rr_left = list(ours)
    for f in fields:
        if f.key == "via" and not via_seen:
            via_seen = True  # ours: the first Via line
            continue
        if f.key == "record-route" and rr_left and f.value == rr_left[0]:
            rr_left.pop(0)
            continue
        if f.key == "max-forwards":
            continue
        assert f.raw is not None
        out.append(f.raw)
    assert not rr_left, f"missing our Record-Route {rr_left}"
    return out


def assert_forwarded(data: bytes, sent: list[Sent], *, rr: Callable[[Request], list[str]],
                     datagram: bool,
                     extra: ExtraCheck | None) -> None:
    orig = parse_message(data, datagram=datagram)
    assert isinstance(orig, Request)
    (out,) = [s for s in sent if s.dest == BACKEND]
    fwd = parse_message(out.data)  # what arrived at the backend parses
    assert isinstance(fwd, Request)
    assert (fwd.method, fwd.uri) == (orig.method, orig.uri)
    top = fwd.top_via
    assert (top.transport, top.host, top.port) == ("UDP", OUR_VIA_HOST, OUR_VIA_PORT)
    assert top.branch is not None and top.branch.startswith("z9hG4bK") and len(top.branch) > 7
    assert top.branch.startswith(BRANCH_PREFIX)
    mf = orig.header("max-forwards")
    assert fwd.header("max-forwards") == ("70" if mf is None else str(int(mf) - 1))
    ours = rr(orig) if orig.method == "INVITE" else []
    assert fwd.values("record-route")[: len(ours)] == ours
    assert fwd.values("record-route")[len(ours) :] == orig.values("record-route")
    assert fwd.body == orig.body and out.data.endswith(b"\r\n\r\n" + orig.body)
    # Every other line as received, in order: unknown headers, folding, odd case and all.
    added_cl = not orig.has("content-length")
    assert untouched_lines(fwd, ours=ours, added_cl=added_cl) == [
        f.raw for f in orig.fields if f.key != "max-forwards"
    ]
    if extra is not None:
        extra(orig, fwd, out.data)


TAG_RE = re.compile(rb";[ \t\r\n]*tag[ \t\r\n]*=", re.IGNORECASE)


def first_line_of(lines: list[bytes], key: str) -> bytes | None:
    """The first line of header ``key`` (any spelling), folded lines included."""
    for line in lines:
        name = line.split(b":", 1)[0].strip(b" \t").decode("latin-1")
        if header_key(name) == key:
            return line
    return None


def assert_answered(data: bytes, sent: list[Sent], verdict: Answered, dest: Destination) -> None:
    (reply,) = sent
    assert reply.dest == dest
    assert reply.status == verdict.status
    reason = reply.start_line.split(b" ", 2)[2].decode("latin-1")
    assert verdict.culprit.lower() in reason.lower(), reason
    # The reply carries the request's first Via and Call-ID lines as received, and a To
    # with a tag (§8.2.6.2).
    request_lines = header_lines(data)[1:]
    reply_lines = header_lines(reply.data)[1:]
    assert first_line_of(request_lines, "via") in reply_lines
    call_id = first_line_of(request_lines, "call-id")
    if call_id is not None:
        assert call_id in reply_lines
    to = first_line_of(reply_lines, "to")
    if to is not None:
        assert TAG_RE.search(to), to


def assert_invite_still_forwarded(h: ProxyHarness, *, stream: bool = False) -> None:
    invite = valid_invite()
    sent = h.tcp(invite) if stream else h.udp(invite)
    assert [s.status for s in sent] == [100, None]
    assert sent[1].dest == BACKEND and sent[1].data.startswith(b"INVITE sip:bob@example.com ")


def check_verdict(name: str, data: bytes, sent: list[Sent], h: ProxyHarness, *,
                  stream: bool) -> None:
    verdict = VERDICTS[name]
    if isinstance(verdict, Forwarded):
        orig = parse_message(data, datagram=not stream)
        if orig.method == "INVITE":  # type: ignore[union-attr]
            assert sent[0].status == 100 and sent[0].dest.host == CLIENT_HOST
            if stream:
                assert sent[0].dest == TCP_REPLY
        assert len(sent) == (2 if orig.method == "INVITE" else 1)  # type: ignore[union-attr]
        assert_forwarded(data, sent, rr=rr_tcp_to_udp if stream else rr_udp,
                         datagram=not stream, extra=verdict.extra)
    elif isinstance(verdict, Answered):
        dest = TCP_REPLY if stream else Destination(
            transport="udp", host=CLIENT_HOST, port=verdict.port)
        assert_answered(data, sent, verdict, dest)
        assert not h.to_backend(sent)
    else:
        assert sent == []
        assert h.proxy.stats.get(verdict.stat) == 1


# -- the tests -----------------------------------------------------------------------------------


def test_verdict_table_covers_exactly_the_49_torture_files() -> None:
    assert set(VERDICTS) == set(torture_paths()) and len(VERDICTS) == 49


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_torture_datagram_is_forwarded_answered_or_dropped_as_the_table_says(name: str) -> None:
    h = ProxyHarness()
    data = load(name)
    sent = h.udp(data)
    check_verdict(name, data, sent, h, stream=False)
    assert_invite_still_forwarded(h)


@pytest.mark.parametrize("name", STREAMED)
def test_torture_message_over_tcp_gets_the_same_verdict_whole_and_byte_by_byte(name: str) -> None:
    data = load(name)
    whole = ProxyHarness()
    sent = whole.tcp(data)
    check_verdict(name, data, sent, whole, stream=True)
    bytewise = ProxyHarness()
    assert bytewise.tcp_chunks(data[i : i + 1] for i in range(len(data))) == sent
    assert_invite_still_forwarded(whole, stream=True)


@pytest.mark.parametrize("name", sorted(STREAM_WAITS))
def test_incomplete_torture_message_over_tcp_waits_for_more(name: str) -> None:
    h = ProxyHarness()
    assert h.tcp(load(name)) == []
    assert h.framer.buffered == len(load(name))
    assert h.proxy.stats.get("core:rcv_requests") == 0


def test_baddn_over_tcp_with_its_empty_line_gets_400_naming_from() -> None:
    h = ProxyHarness()
    h.tcp(load("baddn"))
    (reply,) = h.tcp(b"\r\n")
    assert reply.dest == TCP_REPLY and reply.start_line.startswith(b"SIP/2.0 400 Bad From header")
    assert_invite_still_forwarded(h, stream=True)


@pytest.mark.parametrize("name", sorted(STREAM_FRAMING_ERRORS))
def test_unframeable_torture_message_over_tcp_is_a_framing_error(name: str) -> None:
    h = ProxyHarness()
    with pytest.raises(FramingError) as err:
        h.tcp(load(name))
    assert (err.value.status, err.value.reason) == (400, STREAM_FRAMING_ERRORS[name])
    assert h.sent == []


@pytest.mark.parametrize("name", sorted(STREAM_FRAMING_ERRORS))
def test_unframeable_torture_message_closes_the_tcp_connection(name: str) -> None:
    # RFC 4475 §3.1.2.3, §3.3.9: over TCP the framing cannot be recovered.
    h = ProxyHarness()
    stack = StreamTransport(MemoryReactorClock(), Clock(), FlowTable(), h.proxy.receive,
                            limits=Limits(), settings=LimitsConfig(tcp_idle_timeout=0))
    conn = StreamConnection(stack, outbound=False)
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 5060),
                                peerAddress=IPv4Address("TCP", CLIENT_HOST, CLIENT_PORT))
    conn.makeConnection(transport)
    conn.dataReceived(valid_invite())
    assert len(h.to_backend()) == 1
    conn.dataReceived(load(name))
    assert transport.disconnecting
    assert len(h.to_backend()) == 1 and h.proxy.stats.get("core:rcv_requests") == 1


# -- the cases the table points at -------------------------------------------------------------


def test_badbranch_is_forwarded_once_and_its_retransmission_absorbed() -> None:
    # RFC 4475 §3.2.1: "z9hG4bK" alone is no RFC 3261 branch; RFC 2543 matching applies.
    h = ProxyHarness()
    data = load("badbranch")
    first = h.udp(data)
    (out,) = h.to_backend(first)
    assert h.udp(data) == []  # Trying: a retransmission is absorbed, not forwarded again
    assert len(h.to_backend()) == 1
    # The backend answers; the 200 goes upstream, and a late retransmission gets it again.
    fwd = out.parse()
    ok = make_response(fwd, 200, "OK", to_tag="b1").to_bytes()  # type: ignore[arg-type]
    (up,) = h.udp(ok, BACKEND_SOURCE)
    assert up.status == 200 and up.dest == Destination(transport="udp", host=CLIENT_HOST, port=5060)
    assert b"z9hG4bKsg" not in up.data  # our Via removed
    (again,) = h.udp(data)
    assert again.data == up.data
    assert len(h.to_backend()) == 1


def test_bcast_with_our_via_on_top_is_never_sent_to_the_broadcast_address() -> None:
    # RFC 4475 §3.3.10, from the position it describes: we are the top Via, the next one
    # is 255.255.255.255, and no transaction of ours matches (stateless relay, §16.11).
    h = ProxyHarness()
    data = replace_once(load("bcast"), b"SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
                        f"SIP/2.0/UDP 127.0.0.1:5060;branch={BRANCH_PREFIX}0123456789ab.1".encode())
    assert h.udp(data, BACKEND_SOURCE) == []
    assert h.proxy.stats.get("core:drop_replies") == 1
    assert all(s.dest.host != "255.255.255.255" for s in h.sent)


def forward_probe_invite(h: ProxyHarness) -> tuple[bytes, str]:
    sent = h.udp(valid_invite())
    (out,) = h.to_backend(sent)
    branch = out.parse().top_via.branch
    assert branch is not None
    return out.data, branch


def test_unreason_answering_our_branch_is_relayed_with_its_reason_phrase_untouched() -> None:
    # RFC 4475 §3.1.1.12: a 200 like any other; its UTF-8 reason phrase goes up as is.
    h = ProxyHarness()
    _, branch = forward_probe_invite(h)
    data = insert_after_start_line(load("unreason"),
                                   f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}".encode())
    (up,) = h.udp(data, BACKEND_SOURCE)
    assert up.dest.host == CLIENT_HOST
    assert up.start_line == load("unreason").split(b"\r\n", 1)[0]
    assert up.data.split(b"\r\n\r\n", 1)[1] == parse_message(load("unreason")).body
    assert branch.encode() not in up.data


def test_noreason_100_answering_our_branch_is_not_forwarded() -> None:
    # RFC 4475 §3.1.1.13, RFC 3261 §16.7 step 3: a stateful proxy never forwards a 100.
    h = ProxyHarness()
    _, branch = forward_probe_invite(h)
    data = insert_after_start_line(load("noreason"),
                                   f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}".encode())
    assert h.udp(data, BACKEND_SOURCE) == []
    assert h.proxy.stats.get("core:drop_replies") == 0  # it was ours, just not forwarded


def test_wsinv_in_a_dialog_we_record_routed_is_forwarded_with_max_forwards_67() -> None:
    # RFC 4475 §3.1.1.1 "parse and forward": as it arrives in a dialog of ours, with our
    # Route on top. The next hop is its own Route (loose), services.example.com: a client
    # may not send us there (test_wsinv_from_a_client_...), a backend may.
    h = ProxyHarness()
    data = insert_after_start_line(load("wsinv"), our_route(h.proxy, *dialog_of("wsinv"))
                                   .rstrip("\r\n").encode())
    sent = h.udp(data, BACKEND_SOURCE)
    assert [s.status for s in sent] == [100, None]
    out = sent[1]
    assert out.dest == Destination(transport="udp", host="services.example.com", port=5060)
    fwd = out.parse()
    assert fwd.header("max-forwards") == "67"
    assert (fwd.top_via.host, fwd.top_via.port) == (OUR_VIA_HOST, OUR_VIA_PORT)
    assert not fwd.has("record-route")  # in-dialog: no Record-Route
    wire = out.data
    for line in (b"NewFangledHeader:   newfangled value\r\n continued newfangled value",
                 b"UnknownHeaderWithUnusualValue: ;;,,;;,;",
                 b"Route:\r\n <sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
                 b'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\r\n  ;\r\n'
                 b"  tag = 98asjd8",
                 b"v:  SIP  / 2.0  / TCP     spindle.example.com   ;"):
        assert b"\r\n" + line in wire, line
    assert b"127.0.0.1:5060;lr>" not in wire  # our Route consumed
    orig = parse_message(load("wsinv"))
    assert fwd.body == orig.body
    assert untouched_lines(fwd, ours=[], added_cl=False) == [
        f.raw for f in orig.fields if f.key != "max-forwards"
    ]


def dialog_of(name: str) -> tuple[str, str | None]:
    """The Call-ID and From tag of a torture message: what sipgw signed its dialog with."""
    msg = parse_message(load(name))
    return msg.call_id, msg.from_tag


def test_wsinv_from_a_client_to_a_host_that_is_neither_backend_nor_client_gets_403() -> None:
    h = ProxyHarness()
    data = insert_after_start_line(load("wsinv"), our_route(h.proxy, *dialog_of("wsinv"))
                                   .rstrip("\r\n").encode())
    (reply,) = h.udp(data)
    assert (reply.status, reply.dest.host) == (403, CLIENT_HOST) and not h.to_backend()
    assert h.proxy.stats.get("core:forbidden_relays") == 1


def test_mpart01_with_a_route_to_us_is_forwarded_with_its_binary_body_intact() -> None:
    # RFC 4475 §3.1.1.11: NUL, bare CR and bare LF in the body are data; forward as is.
    h = ProxyHarness()
    data = replace_once(load("mpart01"), b"Route: <sip:127.0.0.1:5080>",
                        b"Route: <sip:127.0.0.1:5060;lr>")
    (out,) = h.udp(data)
    assert out.dest == BACKEND
    orig = parse_message(load("mpart01"))
    fwd = out.parse()
    assert len(fwd.body) == 553 and fwd.body == orig.body and out.data.endswith(orig.body)
    assert not fwd.has("route")
    assert b"\r\nIdentity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk" in out.data


def test_mpart01_as_received_is_refused_as_a_relay_through_us() -> None:
    h = ProxyHarness()
    (reply,) = h.udp(load("mpart01"))
    assert reply.status == 403 and not h.to_backend()


def test_bext01_is_answered_420_listing_the_proxy_require_tags() -> None:
    # RFC 4475 §3.3.5, RFC 3261 §16.3 step 5: as a proxy, the Proxy-Require tags.
    h = ProxyHarness()
    (reply,) = h.udp(load("bext01"))
    assert reply.status == 420
    assert b"\r\nUnsupported: noProxiesSupportThis, norDoAnyProxiesSupportThis\r\n" in reply.data
    assert b"nothingSupportsThis" not in reply.data
    resp = reply.parse()
    assert isinstance(resp, Response) and resp.to_tag


def test_escruri_headers_never_become_header_fields_nor_reach_the_backend() -> None:
    h = ProxyHarness()
    (reply,) = h.udp(load("escruri"))
    assert reply.status == 400 and not h.to_backend()
    assert b"\r\nRoute:" not in reply.data


def test_zeromf_is_answered_483_and_not_forwarded() -> None:
    h = ProxyHarness()
    (reply,) = h.udp(load("zeromf"))
    assert reply.status == 483 and not h.to_backend()
    resp = reply.parse()
    assert resp.call_id == "zeromf.jfasdlfnm2o2l43r5u0asdfas" and resp.cseq == (39234321, "OPTIONS")


def test_retransmitted_refusal_gets_the_same_reply() -> None:
    # The To tag of a local reply is derived from the request, so a retransmission of a
    # refused request is answered identically.
    h = ProxyHarness()
    for name in ("unkscm", "quotbal", "bext01"):
        first = h.udp(load(name))
        assert h.udp(load(name)) == first


# -- fuzz: the proxy survives anything ----------------------------------------------------------


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_torture())
def test_mutated_torture_datagram_never_raises_nor_logs_an_internal_error(data: bytes) -> None:
    failures: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        h = ProxyHarness()
        h.udp(data)
        h.udp(data)  # and its retransmission
        assert not failures, failures[0]["log_failure"].getTraceback()
        assert all(s.status != 500 for s in h.sent)
        assert_invite_still_forwarded(h)
    finally:
        globalLogPublisher.removeObserver(observe)
