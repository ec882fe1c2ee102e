"""Via values: RFC 3261 §20.42, §25.1, RFC 3581 and the Via cases of RFC 4475."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipgw.sip import via as via_module
from sipgw.sip.errors import ParseError
from sipgw.sip.grammar import quote
from sipgw.sip.via import Via, parse_via
from tests.sip.test_address import torture_header
from tests.sip.test_uri import hosts

# -- parsing ----------------------------------------------------------------------------


def test_typical_via_is_split_into_transport_sent_by_and_params() -> None:
    (v,) = parse_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport")
    assert v == Via(
        protocol="SIP/2.0", transport="UDP", host="192.0.2.1", port=5060,
        params=(("branch", "z9hG4bK776asdhds"), ("rport", None)),
    )
    assert (v.branch, v.rport, v.received, v.maddr, v.ttl) == (
        "z9hG4bK776asdhds",
        "",
        None,
        None,
        None,
    )
    assert (v.sent_by, v.version) == ("192.0.2.1:5060", "2.0")


def test_ipv6_sent_by_keeps_its_brackets() -> None:
    (v,) = parse_via("SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111")
    assert (v.host, v.port, v.branch, v.sent_by) == (
        "[2001:db8::9:1]",
        None,
        "z9hG4bKas3-111",
        "[2001:db8::9:1]",
    )
    (w,) = parse_via("SIP/2.0/TCP [2001:db8::9:255]:5061;branch=z9hG4bKas3")
    assert w.sent_by == "[2001:db8::9:255]:5061"


def test_lws_is_allowed_around_slashes_colons_semicolons_and_equals_rfc4475_wsinv() -> None:
    values = torture_header("wsinv", "Via")
    vias = [v for value in values for v in parse_via(value)]
    assert [str(v) for v in vias] == [
        "SIP/2.0/UDP 192.0.2.2;branch=390skdjuw",
        "SIP/2.0/TCP spindle.example.com;branch=z9hG4bK9ikj8",
        "SIP/2.0/UDP 192.168.255.111;branch=z9hG4bK30239",
    ]
    (spaced,) = parse_via("SIP / 2.0 / UDP host.example.com : 5062 ; rport ; branch = z9hG4bKx")
    assert (spaced.port, spaced.rport, spaced.branch) == (5062, "", "z9hG4bKx")


def test_any_transport_token_is_accepted_rfc4475_transports() -> None:
    vias = [v for value in torture_header("transports", "Via") for v in parse_via(value)]
    assert [v.transport for v in vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_transport_and_protocol_name_are_uppercased() -> None:
    (v,) = parse_via("sip/2.0/wss df7jal23ls0d.invalid;branch=z9hG4bKnashds7")
    assert (v.protocol, v.transport) == ("SIP/2.0", "WSS")
    assert str(v) == "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKnashds7"


def test_branch_may_hold_any_token_character_rfc4475_intmeth() -> None:
    (value,) = torture_header("intmeth", "Via")
    (v,) = parse_via(value)
    assert v.branch == "z9hG4bK-.!%66*_+`'~"


def test_other_protocol_versions_parse_so_the_caller_can_answer_505_rfc4475_badvers() -> None:
    (value,) = torture_header("badvers", "Via")
    (v,) = parse_via(value)
    assert (v.protocol, v.version) == ("SIP/7.0", "7.0")


def test_every_via_of_a_long_request_parses_rfc4475_longreq() -> None:
    values = torture_header("longreq", "Via")
    vias = [v for value in values for v in parse_via(value)]
    assert len(vias) == 34
    assert vias[-1].received == "192.0.2.5"
    assert vias[-1].branch is not None and vias[-1].branch.startswith("verylong")


def test_broadcast_sent_by_parses_so_the_proxy_can_drop_it_rfc4475_bcast() -> None:
    vias = [v for value in torture_header("bcast", "Via") for v in parse_via(value)]
    assert vias[1].host == "255.255.255.255"


def test_bare_branch_magic_cookie_parses_rfc4475_badbranch() -> None:
    (value,) = torture_header("badbranch", "Via")
    assert parse_via(value)[0].branch == "z9hG4bK"


def test_received_and_maddr_may_hold_ipv6_addresses() -> None:
    (v,) = parse_via("SIP/2.0/TCP host.example.com;received=2001:db8::1;maddr=[2001:db8::2];ttl=16")
    assert (v.received, v.maddr, v.ttl) == ("2001:db8::1", "[2001:db8::2]", "16")


def test_quoted_param_value_with_a_comma_does_not_split_the_list() -> None:
    vias = parse_via('SIP/2.0/UDP a.example.com;x="1,2", SIP/2.0/UDP b.example.com')
    assert [v.host for v in vias] == ["a.example.com", "b.example.com"]
    assert vias[0].param("X") == '"1,2"'


def test_several_vias_in_one_value_keep_their_order() -> None:
    vias = parse_via(
        "SIP/2.0/UDP p1.example.com;branch=z9hG4bK1,SIP/2.0/TCP p2.example.com:5070;branch=z9hG4bK2"
    )
    assert [(v.transport, v.sent_by, v.branch) for v in vias] == [
        ("UDP", "p1.example.com", "z9hG4bK1"),
        ("TCP", "p2.example.com:5070", "z9hG4bK2"),
    ]


# -- helpers ----------------------------------------------------------------------------


def test_filling_in_received_and_rport_keeps_the_param_positions() -> None:
    (v,) = parse_via("SIP/2.0/UDP 10.0.0.5:5060;rport;branch=z9hG4bKabc")
    filled = v.with_param("rport", "40312").with_param("received", "203.0.113.9")
    assert (
        str(filled)
        == "SIP/2.0/UDP 10.0.0.5:5060;rport=40312;branch=z9hG4bKabc;received=203.0.113.9"
    )
    assert filled.rport == "40312"
    assert (
        str(filled.without_param("RPORT"))
        == "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKabc;received=203.0.113.9"
    )
    assert v.rport == ""


def test_absent_rport_is_none() -> None:
    (v,) = parse_via("SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKabc")
    assert v.rport is None


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("SIP/2.0/UDP 192.0.2.15;;,;,,", "empty or malformed parameter"),  # RFC 4475 badinv01
        ("SIP/2.0/UDP a.example.com,,SIP/2.0/UDP b.example.com", "empty list element"),
        ("SIP/2.0/UDP a.example.com,", "empty list element"),
        ("", "empty list element"),
        ("SIP/2.0/UDP a.example.com;;branch=z9hG4bK1", "empty or malformed parameter"),
        ("SIP/2.0/UDP a.example.com;", "empty or malformed parameter"),
        ("SIP/2.0/UDP a.example.com;branch=", "empty or malformed parameter"),
        ("SIP/2.0/UDP a.example.com branch=z9hG4bK1", "empty or malformed parameter"),
        ('SIP/2.0/UDP a.example.com;x="open', "empty or malformed parameter"),
        ('SIP/2.0/UDP a.example.com;x="open, SIP/2.0/UDP b', "unterminated quoted string"),
        ("SIP/2.0/UDP", "no sent-protocol and sent-by"),
        ("SIP/2.0/UDP ;branch=z9hG4bK1", "no sent-protocol and sent-by"),
        ("SIP/2.0 a.example.com", "no sent-protocol and sent-by"),
        ("SIP/2.0/UDP a.example.com:50x0", "bad port"),
        ("SIP/2.0/UDP a.example.com:65536", "bad port"),
        ("SIP/2.0/UDP a.example.com:", "bad port"),
        ("HTTP/1.1/TCP a.example.com", "protocol is not SIP/x.y"),
        ("SIP/2/UDP a.example.com", "protocol is not SIP/x.y"),
        ("SIP/two.zero/UDP a.example.com", "protocol is not SIP/x.y"),
        ("SIP/2.0/UDP [2001:db8::g]", "bad sent-by host"),
        ("SIP/2.0/UDP 300.1.1.1", "bad sent-by host"),
        ("SIP/2.0/UDP 2001:db8::1", "bad sent-by host"),  # IPv6 needs brackets
    ],
)
def test_malformed_via_is_refused_as_bad_via_header(value: str, reason: str) -> None:
    with pytest.raises(ParseError, match="^Bad Via header: ") as info:
        parse_via(value)
    assert reason in info.value.reason
    assert info.value.status == 400


# -- properties -------------------------------------------------------------------------

TOKEN = string.ascii_letters + string.digits + "-.!%*_+`'~"
_tokens = st.text(TOKEN, min_size=1, max_size=8)
_latin1 = st.characters(max_codepoint=255, blacklist_characters="\r\n")
via_params = st.lists(
    st.tuples(
        _tokens,
        st.one_of(
            st.none(),
            _tokens,
            st.text(_latin1, max_size=8).map(quote),
            st.ip_addresses(v=6).map(str),
        ),
    ),
    max_size=4,
).map(tuple)
vias = st.builds(
    Via,
    protocol=st.sampled_from(["SIP/2.0", "SIP/3.1", "SIP/10.0"]),
    transport=st.from_regex(r"[A-Z][A-Z0-9\-]{0,6}", fullmatch=True),
    host=hosts,
    port=st.none() | st.integers(0, 65535),
    params=via_params,
)


@given(vias)
def test_any_via_we_produce_parses_back_to_the_same_value(v: Via) -> None:
    assert parse_via(str(v)) == [v]


@given(st.lists(vias, min_size=1, max_size=4), st.sampled_from([",", ", ", " ,\t"]))
def test_any_via_list_we_produce_parses_back_to_the_same_values(vs: list[Via], sep: str) -> None:
    assert parse_via(sep.join(map(str, vs))) == vs


@given(vias)
def test_fast_path_and_reference_parser_agree(v: Via) -> None:
    text = str(v)
    assert parse_via(text) == [via_module._parse_one(text)]


@given(st.text(st.characters(max_codepoint=255)))
def test_arbitrary_text_parses_or_raises_parse_error(text: str) -> None:
    try:
        parse_via(text)
    except ParseError:
        pass


@given(vias, st.integers(0, 300), st.sampled_from(list('/;,:="[] \t\\') + ["\x00", "SIP/2.0/"]))
def test_damaged_via_parses_or_raises_parse_error(v: Via, at: int, junk: str) -> None:
    text = str(v)
    at %= len(text) + 1
    try:
        parse_via(text[:at] + junk + text[at:])
    except ParseError:
        pass
