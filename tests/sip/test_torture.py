"""RFC 4475: every torture message through ``parse_message``, each with its exact outcome.

One table, one row per ``.dat`` file on disk (all 49, none skipped): either the message
parses and a check reads its values back through the ``address``, ``uri`` and ``via``
parsers, or it is refused with the status the peer should get and a reason naming the bad
part (``status=None``: a malformed response, dropped). What the proxy then does with the
messages that parse (416, 420, 483, forwarding...) is ``tests/proxy/test_torture_proxy.py``.

Files are read in binary and fed as one UDP datagram, as RFC 4475 §2 intends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from sipgw.sip.address import STAR, NameAddr, parse_address_list, parse_name_addr
from sipgw.sip.errors import ParseError
from sipgw.sip.message import Request, Response
from sipgw.sip.parser import parse_message
from sipgw.sip.uri import AbsoluteURI, SipURI, parse_uri, unescape
from sipgw.sip.via import Via, parse_via
from tests.helpers.torture import after_headers, header_section, load, torture_paths

Check = Callable[[Request | Response, bytes], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Parsed:
    """The message parses; ``check`` asserts its values."""

    check: Check


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """``parse_message`` raises a ParseError with this status, naming ``culprit``."""

    status: int | None
    culprit: str


CHECKS: dict[str, Check] = {}


def parsed(name: str) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        assert name not in CHECKS
        CHECKS[name] = check
        return check

    return register


# -- small readers ---------------------------------------------------------------------------


def request(msg: Request | Response) -> Request:
    assert isinstance(msg, Request), msg
    return msg


def response(msg: Request | Response) -> Response:
    assert isinstance(msg, Response), msg
    return msg


def addr(msg: Request | Response, name: str) -> NameAddr:
    value = msg.header(name)
    assert value is not None, f"no {name} header"
    return parse_name_addr(value)


def sip_uri(uri: object) -> SipURI:
    assert isinstance(uri, SipURI), uri
    return uri


def all_vias(msg: Request | Response) -> list[Via]:
    return [v for value in msg.headers("via") for v in parse_via(value)]


def contacts(msg: Request | Response) -> list[NameAddr]:
    out: list[NameAddr] = []
    for value in msg.headers("contact"):
        parsed_list = parse_address_list(value)
        assert parsed_list is not STAR
        out.extend(parsed_list)  # type: ignore[arg-type]
    return out


def assert_serialises_to_input(msg: Request | Response, data: bytes) -> None:
    """Nothing touched: ``to_bytes()`` is the datagram, octet for octet."""
    assert msg.to_bytes() == data


# -- §3.1.1 valid messages ----------------------------------------------------------------------


@parsed("wsinv")
def check_wsinv(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    assert req.method == "INVITE"
    ruri = sip_uri(parse_uri(req.uri))
    assert (ruri.user, ruri.host, ruri.params) == (
        "vivekg", "chair-dnrc.example.com", (("unknownparam", None),),
    )
    # Leading zeros are legal; the proxy forwards 67 (tests/proxy).
    assert req.header("max-forwards") == "0068"
    assert int(req.header("max-forwards") or "") == 68
    assert req.cseq == (9, "INVITE")  # "cseq: 0009\r\n  INVITE", folded
    assert req.call_id == "wsinv.ndaksdj@192.0.2.1"
    # "Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;..." then "v:" with two values.
    lines = req.headers("via")
    assert len(lines) == 2
    assert [(v.transport, v.host, v.branch) for v in parse_via(lines[0])] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
    ]
    assert [(v.transport, v.host, v.branch) for v in parse_via(lines[1])] == [
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert len(req.values("via")) == 3
    assert req.top_via.branch == "390skdjuw"
    to = addr(req, "to")
    assert (str(to.uri), to.tag) == ("sip:vivekg@chair-dnrc.example.com", "1918181833n")
    assert req.to_tag == "1918181833n"
    frm = addr(req, "from")
    assert frm.display == '"J Rosenberg \\\\\\""'
    assert frm.display_name == 'J Rosenberg \\"'
    assert (str(frm.uri), frm.tag) == ("sip:jdrosen@example.com", "98asjd8")
    assert req.from_tag == "98asjd8"
    (contact,) = contacts(req)
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert req.header("subject") == ""  # "s :" with an empty value
    assert req.header("NewFangledHeader") == "newfangled value continued newfangled value"
    assert req.header("unknownheaderwithunusualvalue") == ";;,,;;,;"
    (route,) = parse_address_list(req.header("route") or "")  # type: ignore[misc]
    assert sip_uri(route.uri).params == (
        ("lr", None), ("unknownwith", "value"), ("unknown-no-value", None),
    )
    # Unknown headers (and every other line) are written back byte for byte.
    out = req.to_bytes()
    assert b"NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n" in out
    assert b"\r\nUnknownHeaderWithUnusualValue: ;;,,;;,;\r\n" in out
    assert len(req.body) == 150
    assert_serialises_to_input(req, data)


@parsed("intmeth")
def check_intmeth(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert req.method == method
    assert req.cseq == (139122385, method)
    ruri = sip_uri(parse_uri(req.uri))
    assert ruri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert ruri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert ruri.host == "example.com"
    # The quoted display name holds NUL, BEL and DEL as quoted-pairs.
    assert addr(req, "to").display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    frm = addr(req, "from")
    assert frm.display == "token1~` token2'+_ token3*%!.-"
    assert frm.tag == "_token~1'+`*%!-."
    utf8 = frm.param("fromParam''~+*_!.-%")
    assert utf8 is not None
    assert utf8.encode("latin-1").decode("utf-8") == '"работающий"'
    assert req.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert req.header("max-forwards") == "255"
    assert req.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    ext = req.header("extensionHeader-!.%*+_`'~")
    assert ext is not None and ext.encode("latin-1").decode("utf-8") == "\ufeff大停電"
    assert_serialises_to_input(req, data)


@parsed("esc01")
def check_esc01(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    ruri = sip_uri(parse_uri(req.uri))
    assert (ruri.user, ruri.host) == ("sips%3Auser%40example.com", "example.net")
    assert ruri.unescaped_user == "sips:user@example.com"
    assert sip_uri(addr(req, "to").uri).unescaped_user == "user"
    assert sip_uri(addr(req, "from").uri).unescaped_user == "I have spaces"
    (contact,) = contacts(req)
    curi = sip_uri(contact.uri)
    assert curi.unescaped_user == "caller"
    assert curi.params == (("%6C%72", None), ("n%61me", "v%61lue%25%34%31"))
    # Decoded once: the name is "lr" and the value "value%41", never "valueA".
    assert [(unescape(k), unescape(v or "")) for k, v in curi.params] == [
        ("lr", ""), ("name", "value%41"),
    ]
    assert req.header("content-type") == "application/sdp"  # "C:"
    assert req.call_id == "esc01.239409asdfakjkn23onasd0-3234"  # "i:"
    assert len(req.body) == 150
    assert_serialises_to_input(req, data)


@parsed("escnull")
def check_escnull(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    to_user = sip_uri(addr(req, "to").uri).unescaped_user
    assert to_user == "null-\x00-null"  # %00 does not truncate the AOR
    assert sip_uri(addr(req, "from").uri).unescaped_user == "null-\x00-null"
    users = [sip_uri(c.uri).user for c in contacts(req)]
    assert users == ["%00", "%00%00"]  # two distinct Contacts
    assert [unescape(u or "") for u in users] == ["\x00", "\x00\x00"]
    assert req.header("content-length") == "0"  # "L:0"
    assert_serialises_to_input(req, data)


@parsed("esc02")
def check_esc02(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    assert req.method == "RE%47IST%45R"  # an unknown method, not REGISTER
    assert req.method != "REGISTER"
    assert req.cseq == (29344, "RE%47IST%45R")
    for name in ("to", "from"):
        a = addr(req, name)
        assert (a.display, a.display_name) == ('"%Z%45"', "%Z%45")
    # C%6Fntact is an extension header: two Contact values, not three.
    assert [sip_uri(c.uri).user for c in contacts(req)] == ["alias1", "alias3"]
    assert req.header("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert_serialises_to_input(req, data)


@parsed("lwsdisp")
def check_lwsdisp(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    frm = addr(req, "from")  # "caller<sip:caller@example.com>;tag=323"
    assert (frm.display, str(frm.uri), frm.tag) == ("caller", "sip:caller@example.com", "323")
    assert_serialises_to_input(req, data)


@parsed("longreq")
def check_longreq(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    assert len(data) == 3515
    to = addr(req, "to")
    assert to.display_name is not None and "extreme" * 10 in to.display_name
    to_uri = sip_uri(to.uri)
    assert to_uri.port == 6000
    assert [k for k, _ in to_uri.params][-1].endswith("ParameterNameWithNoValue")
    frm = addr(req, "from")
    assert frm.tag is not None and len(frm.tag) == 155 and frm.tag == req.from_tag
    assert req.call_id == "longreq.one" + "really" * 20 + "longcallid"
    vias = all_vias(req)
    assert len(vias) == 34
    assert [v.host for v in vias[:2]] == ["sip33.example.com", "sip32.example.com"]
    assert vias[-1].received == "192.0.2.5"
    assert vias[-1].branch is not None and len(vias[-1].branch) > 200
    assert len(req.body) == 150
    assert_serialises_to_input(req, data)  # nothing truncated


@parsed("dblreq")
def check_dblreq(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    assert req.method == "REGISTER"
    assert req.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"  # "I:"
    assert req.header("content-length") == "0"
    assert req.body == b""
    # §18.3: the 450 octets after Content-Length are discarded, not a second message.
    assert len(after_headers(data)) == 450
    out = req.to_bytes()
    assert b"INVITE" not in out and b"joe@example.com" not in out
    assert out == header_section(data) + b"\r\n\r\n"


@parsed("semiuri")
def check_semiuri(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    ruri = sip_uri(parse_uri(req.uri))
    assert (ruri.user, ruri.host, ruri.params) == ("user;par=u%40example.net", "example.com", ())
    assert ruri.unescaped_user == "user;par=u@example.net"
    assert_serialises_to_input(req, data)


@parsed("transports")
def check_transports(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    assert [(v.transport, v.host) for v in all_vias(req)] == [
        ("UDP", "t1.example.com"),
        ("SCTP", "t2.example.com"),
        ("TLS", "t3.example.com"),
        ("UNKNOWN", "t4.example.com"),
        ("TCP", "t5.example.com"),
    ]
    assert_serialises_to_input(req, data)


@parsed("mpart01")
def check_mpart01(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    assert req.method == "MESSAGE"
    assert req.header("content-length") == "553"
    assert (req.header("content-type") or "").startswith("multipart/mixed;boundary=")
    body = req.body
    assert len(body) == 553
    assert body == data[-553:]
    # Binary body part: NUL, bare CR and bare LF octets are data, not line ends.
    assert body.count(b"\x00") == 2
    assert body.replace(b"\r\n", b"").count(b"\r") == 5
    assert body.replace(b"\r\n", b"").count(b"\n") == 3
    assert_serialises_to_input(req, data)


UNUSUAL_REASON = "= 2**3 * 5**2 но сто девяносто девять - простое"


@parsed("unreason")
def check_unreason(msg: Request | Response, data: bytes) -> None:
    resp = response(msg)
    assert resp.status == 200
    # Kept as octets (latin-1 str); the UTF-8 text is intact.
    assert resp.reason.encode("latin-1").decode("utf-8") == UNUSUAL_REASON
    assert resp.cseq == (35, "INVITE")
    assert len(resp.body) == 154
    assert_serialises_to_input(resp, data)


@parsed("noreason")
def check_noreason(msg: Request | Response, data: bytes) -> None:
    resp = response(msg)
    assert (resp.status, resp.reason) == (100, "")
    assert resp.to_bytes().startswith(b"SIP/2.0 100 \r\n")  # the SP stays
    assert_serialises_to_input(resp, data)


# -- §3.1.2 invalid messages that still parse (liberal accept, or a verdict for routing) ----


@parsed("escruri")
def check_escruri(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    ruri = sip_uri(parse_uri(req.uri))
    # The escaped header is only a URI part; the proxy refuses it (tests/proxy).
    assert ruri.headers == (("Route", "%3Csip:example.com%3E"),)
    assert not req.has("route")


@parsed("baddate")
def check_baddate(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    # A proxy does not use Date, so an EST date is no reason to refuse (RFC 4475 §3.1.2.12).
    assert (req.header("date") or "").endswith("EST")
    assert_serialises_to_input(req, data)


@parsed("regbadct")
def check_regbadct(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    # parse_message does not read Contact; the address parser refuses this one.
    with pytest.raises(ParseError) as err:
        parse_address_list(req.header("contact") or "")
    assert "Contact" in err.value.reason and "<>" in err.value.reason
    assert_serialises_to_input(req, data)


# -- §3.2-§3.4 semantic messages that parse (the proxy's verdict is in tests/proxy) --------


@parsed("badbranch")
def check_badbranch(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    assert req.top_via.branch == "z9hG4bK"  # the cookie, no identifier
    assert_serialises_to_input(req, data)


@parsed("unkscm")
def check_unkscm(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    assert parse_uri(req.uri) == AbsoluteURI(
        scheme="nobodyKnowsThisScheme", opaque="totallyopaquecontent"
    )
    assert_serialises_to_input(req, data)


@parsed("novelsc")
def check_novelsc(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    assert parse_uri(req.uri) == AbsoluteURI(scheme="soap.beep", opaque="//192.0.2.103:3002")
    assert_serialises_to_input(req, data)


@parsed("unksm2")
def check_unksm2(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    assert sip_uri(parse_uri(req.uri)).host == "example.com"
    assert addr(req, "to").uri == AbsoluteURI(scheme="isbn", opaque="2983792873")
    assert addr(req, "from").uri == AbsoluteURI(scheme="http", opaque="//www.example.com")
    assert [c.uri for c in contacts(req)] == [AbsoluteURI(scheme="name", opaque="John_Smith")]
    assert_serialises_to_input(req, data)


@parsed("bext01")
def check_bext01(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    assert req.values("proxy-require") == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
    assert req.values("require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert_serialises_to_input(req, data)


@parsed("invut")
def check_invut(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    assert req.header("content-type") == "application/unknownformat"
    assert len(req.body) == 40 and req.body == after_headers(data)
    assert_serialises_to_input(req, data)


@parsed("regaut01")
def check_regaut01(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    assert req.header("authorization") == "NoOneKnowsThisScheme opaque-data=here"
    assert req.header("content-length") == "0"  # "Content-Length:0", no SP
    assert_serialises_to_input(req, data)


@parsed("bcast")
def check_bcast(msg: Request | Response, data: bytes) -> None:
    resp = response(msg)
    assert resp.status == 200
    assert [v.host for v in all_vias(resp)] == ["192.0.2.198", "255.255.255.255"]
    assert len(resp.body) == 154
    assert_serialises_to_input(resp, data)


@parsed("zeromf")
def check_zeromf(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    assert req.header("max-forwards") == "0"
    assert_serialises_to_input(req, data)


@parsed("cparam01")
def check_cparam01(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    (contact,) = contacts(req)
    # No <>: "unknownparam" is a contact-param, never a URI parameter (§20.10).
    assert not contact.bracketed
    assert contact.params == (("unknownparam", None),)
    assert sip_uri(contact.uri).params == ()
    assert str(contact.uri) == "sip:+19725552222@gw1.example.net"
    assert_serialises_to_input(req, data)


@parsed("cparam02")
def check_cparam02(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    (contact,) = contacts(req)
    # Inside <>: it is a URI parameter, and there are no header parameters.
    assert contact.params == ()
    assert sip_uri(contact.uri).params == (("unknownparam", None),)
    assert_serialises_to_input(req, data)


@parsed("regescrt")
def check_regescrt(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    (contact,) = contacts(req)  # "M:" compact form
    curi = sip_uri(contact.uri)
    assert curi.headers == (("Route", "%3Csip:sip.example.com%3E"),)
    assert str(curi) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    assert not req.has("route")  # never turned into a real Route
    assert_serialises_to_input(req, data)


@parsed("sdp01")
def check_sdp01(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    assert req.header("accept") == "text/nobodyKnowsThis"
    assert req.body.startswith(b"v=0\r\n") and len(req.body) == 150
    assert_serialises_to_input(req, data)


@parsed("inv2543")
def check_inv2543(msg: Request | Response, data: bytes) -> None:
    req = request(msg)
    # No Content-Length: on UDP the body is the rest of the datagram.
    assert not req.has("content-length")
    assert len(req.body) == 105 and req.body == after_headers(data)
    assert req.top_via.branch is None  # RFC 2543: no branch at all
    assert req.from_tag is None
    assert not req.has("max-forwards")  # the proxy adds 70 (tests/proxy)
    assert (req.header("record-route") or "").endswith("maddr=ss1.example.com>")
    # Serialised, the only change is the Content-Length the datagram lacked.
    assert req.to_bytes() == header_section(data) + b"\r\nContent-Length: 105\r\n\r\n" + req.body


# -- the table ---------------------------------------------------------------------------------

REFUSED: dict[str, Refused] = {
    # §3.1.2 invalid
    "badinv01": Refused(status=400, culprit="Via"),
    "clerr": Refused(status=400, culprit="Content-Length"),
    "ncl": Refused(status=400, culprit="Content-Length"),
    "scalar02": Refused(status=400, culprit="CSeq"),
    "scalarlg": Refused(status=None, culprit="CSeq"),  # a response: dropped
    "quotbal": Refused(status=400, culprit="To"),
    "ltgtruri": Refused(status=400, culprit="Request-URI"),
    "lwsruri": Refused(status=400, culprit="request line"),
    "lwsstart": Refused(status=400, culprit="request line"),
    "trws": Refused(status=400, culprit="request line"),
    "badaspec": Refused(status=400, culprit="To"),
    "baddn": Refused(status=400, culprit="From"),
    "badvers": Refused(status=505, culprit="Version"),
    "mismatch01": Refused(status=400, culprit="CSeq"),
    "mismatch02": Refused(status=501, culprit="CSeq"),
    "bigcode": Refused(status=None, culprit="status"),  # a response: dropped
    # §3.3 semantic, refused by the parser's own checks
    "insuf": Refused(status=400, culprit="From"),  # the first missing required header
    "multi01": Refused(status=400, culprit="CSeq"),  # the first duplicate, in order
    "mcl01": Refused(status=400, culprit="Content-Length"),
}

EXPECTED: dict[str, Parsed | Refused] = {
    **{name: Parsed(check=check) for name, check in CHECKS.items()},
    **REFUSED,
}


def test_table_covers_exactly_the_49_torture_files_on_disk() -> None:
    assert not CHECKS.keys() & REFUSED.keys()
    assert len(torture_paths()) == 49
    assert set(EXPECTED) == set(torture_paths())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_torture_message_has_its_expected_parse_outcome(name: str) -> None:
    data = load(name)
    expected = EXPECTED[name]
    if isinstance(expected, Parsed):
        expected.check(parse_message(data), data)
        return
    with pytest.raises(ParseError) as err:
        parse_message(data)
    assert err.value.status == expected.status
    assert expected.culprit.lower() in err.value.reason.lower(), err.value.reason


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusal_reason_is_short_enough_for_a_reason_phrase(name: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_message(load(name))
    reason = err.value.reason
    assert 0 < len(reason) <= 80 and "\r" not in reason and "\n" not in reason


def test_insuf_names_every_missing_header_in_turn() -> None:
    # RFC 4475 §3.3.1: Call-ID, From, To and Max-Forwards are missing; we name one per
    # reply, From first (Max-Forwards is optional for us: the proxy adds it).
    data = load("insuf")
    lines = [b"From: <sip:caller@example.net>;tag=1", b"To: <sip:user@example.com>",
             b"Call-ID: insuf.1"]
    expected = ["From", "To", "Call-ID"]
    for i, culprit in enumerate(expected):
        head, sep, body = data.partition(b"\r\n\r\n")
        with pytest.raises(ParseError) as err:
            parse_message(head + b"".join(b"\r\n" + line for line in lines[:i]) + sep + body)
        assert err.value.reason == f"Missing {culprit} header"
    head, sep, body = data.partition(b"\r\n\r\n")
    assert parse_message(head + b"".join(b"\r\n" + line for line in lines) + sep + body)


def test_multi01_names_the_first_duplicate_singleton_of_each_kind() -> None:
    # RFC 4475 §3.3.8: Call-ID, To, From, CSeq and Max-Forwards all come twice.
    data = load("multi01")
    for dup, culprit in [
        (b"CSeq: 59 INVITE\r\n", "Call-ID"),
        (b"Call-ID: multi01.98asdh@192.0.2.2\r\n", "To"),
        (b"To: sip:other@example.net\r\n", "From"),
        (b"From: sip:caller@example.net;tag=2923420123\r\n", "Max-Forwards"),
    ]:
        data = data.replace(dup, b"")
        with pytest.raises(ParseError) as err:
            parse_message(data)
        assert (err.value.status, err.value.reason) == (400, f"Duplicate {culprit} header")


def test_scalar02_max_forwards_of_300_alone_is_also_refused() -> None:
    # RFC 4475 §3.1.2.4 lets a proxy treat it as absent; refusing is our stricter choice.
    data = load("scalar02").replace(b"36893488147419103232", b"1")
    with pytest.raises(ParseError) as err:
        parse_message(data)
    assert (err.value.status, err.value.reason) == (400, "Bad Max-Forwards header")


def test_bigcode_is_not_wrapped_to_a_small_status() -> None:
    # 4294967301 = 2**32 + 5: a parser that wraps would see a 5.
    with pytest.raises(ParseError) as err:
        parse_message(load("bigcode"))
    assert err.value.status is None


def test_baddn_has_no_empty_line_and_is_refused_for_its_display_names_not_its_end() -> None:
    data = load("baddn")
    assert not data.endswith(b"\r\n\r\n")
    for variant in (data, data + b"\r\n"):
        with pytest.raises(ParseError) as err:
            parse_message(variant)
        assert err.value.reason.startswith("Bad From header")
    fixed = data.replace(b"Bell, Alexander", b'"Bell, Alexander"').replace(
        b"Watson, Thomas", b'"Watson, Thomas"'
    )
    with pytest.raises(ParseError, match="No empty line"):
        parse_message(fixed)  # fixed names, still no end of headers: a cut datagram
    msg = parse_message(fixed + b"\r\n")
    assert addr(msg, "from").display_name == "Bell, Alexander"
    assert addr(msg, "to").display_name == "Watson, Thomas"
