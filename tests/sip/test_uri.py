"""SIP URIs: RFC 3261 §19.1 and §25.1, the URI cases of RFC 4475."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipgw.sip import uri as uri_module
from sipgw.sip.errors import ParseError
from sipgw.sip.uri import AbsoluteURI, SipURI, parse_uri, unescape

# -- strategies -------------------------------------------------------------------------

UNRESERVED = string.ascii_letters + string.digits + "-_.!~*'()"


def escaped_text(alphabet: str, min_size: int = 1) -> st.SearchStrategy[str]:
    piece = st.one_of(st.sampled_from(alphabet), st.integers(0, 255).map("%{:02X}".format))
    return st.lists(piece, min_size=min_size, max_size=8).map("".join)


_label = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9\-]{0,8}", fullmatch=True)
_toplabel = st.from_regex(r"[A-Za-z][A-Za-z0-9\-]{0,8}", fullmatch=True)
hostnames = st.builds(lambda ls, top: ".".join([*ls, top]), st.lists(_label, max_size=3), _toplabel)
hosts = st.one_of(
    hostnames,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
_pchars = escaped_text(UNRESERVED + "[]/:&+$")
uri_params = st.lists(st.tuples(_pchars, st.none() | _pchars), max_size=4).map(tuple)
uri_headers = st.lists(
    st.tuples(escaped_text(UNRESERVED + "[]/?:+$"), escaped_text(UNRESERVED + "[]/?:+$", 0)),
    max_size=3,
).map(tuple)


@st.composite
def sip_uris(draw: st.DrawFn) -> SipURI:
    user = draw(st.none() | escaped_text(UNRESERVED + "&=+$,;?/"))
    password = None
    if user is not None:
        password = draw(st.none() | escaped_text(UNRESERVED + "&=+$,", 0))
    return SipURI(
        scheme=draw(st.sampled_from(["sip", "sips"])),
        user=user,
        password=password,
        host=draw(hosts),
        port=draw(st.none() | st.integers(0, 65535)),
        params=draw(uri_params),
        headers=draw(uri_headers),
    )


absolute_uris = st.builds(
    AbsoluteURI,
    scheme=st.from_regex(r"[A-Za-z][A-Za-z0-9+\-.]{0,8}", fullmatch=True).filter(
        lambda s: s.lower() not in ("sip", "sips")
    ),
    opaque=escaped_text(UNRESERVED + ";/?:@&=+$,"),
)

URI_EXAMPLES = [
    "sip:alice@192.0.2.1:5060;transport=tcp;lr",
    "sip:user;par=u%40example.net@example.com",
    "sip:[2001:db8::1]:5070;transport=tcp",
    "sips:bob:secret@biloxi.example.com?subject=project%20x&priority=urgent",
    "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com",
    "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31",
    "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
    "sip:services.example.com;lr;unknownwith=value;unknown-no-value",
    "sip:127.0.0.1:5080",
    "sip:host.example.com.",
]

# -- parsing ----------------------------------------------------------------------------


def test_common_uri_is_split_into_user_host_port_and_params() -> None:
    u = parse_uri("sip:alice@192.0.2.1:5060;transport=TCP;lr")
    assert u == SipURI(
        scheme="sip", user="alice", host="192.0.2.1", port=5060,
        params=(("transport", "TCP"), ("lr", None)),
    )
    assert u.transport == "tcp"
    assert u.host_port == "192.0.2.1:5060"


def test_scheme_is_lowercased_but_every_other_part_keeps_its_case() -> None:
    u = parse_uri("SIP:ALICE@AtLanTa.CoM;Transport=UDP")
    assert isinstance(u, SipURI)
    assert (u.scheme, u.user, u.host, u.params) == (
        "sip",
        "ALICE",
        "AtLanTa.CoM",
        (("Transport", "UDP"),),
    )


def test_ipv6_reference_keeps_its_brackets_and_is_followed_by_the_port() -> None:
    u = parse_uri("sip:[2001:db8::1]:5070;transport=tcp")
    assert isinstance(u, SipURI)
    assert (u.host, u.port, u.transport, u.user) == ("[2001:db8::1]", 5070, "tcp", None)
    assert u.host_port == "[2001:db8::1]:5070"


def test_user_part_may_hold_semicolons_and_an_escaped_at_sign_rfc4475_semiuri() -> None:
    u = parse_uri("sip:user;par=u%40example.net@example.com")
    assert isinstance(u, SipURI)
    assert (u.user, u.host, u.params) == ("user;par=u%40example.net", "example.com", ())
    assert u.unescaped_user == "user;par=u@example.net"


def test_user_part_may_hold_every_user_unreserved_character_rfc4475_intmeth() -> None:
    u = parse_uri("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com")
    assert isinstance(u, SipURI)
    assert u.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert u.host == "example.com"


def test_escaped_null_does_not_truncate_the_user_rfc4475_escnull() -> None:
    one = parse_uri("sip:%00@host5.example.com")
    two = parse_uri("sip:%00%00@host5.example.com")
    middle = parse_uri("sip:null-%00-null@example.com")
    assert isinstance(one, SipURI) and isinstance(two, SipURI) and isinstance(middle, SipURI)
    assert (one.unescaped_user, two.unescaped_user) == ("\x00", "\x00\x00")
    assert middle.unescaped_user == "null-\x00-null"
    assert not one.equivalent(two)


def test_escapes_are_decoded_exactly_once_rfc4475_esc01() -> None:
    assert unescape("n%61me=v%61lue%25%34%31") == "name=value%41"
    u = parse_uri("sip:n%61me=v%61lue%25%34%31@example.com")
    assert isinstance(u, SipURI)
    assert u.user == "n%61me=v%61lue%25%34%31"
    assert u.unescaped_user == "name=value%41"


def test_request_uri_of_esc01_has_an_escaped_sips_uri_as_its_user() -> None:
    u = parse_uri("sip:sips%3Auser%40example.com@example.net")
    assert isinstance(u, SipURI)
    assert (u.unescaped_user, u.host) == ("sips:user@example.com", "example.net")


def test_parameters_keep_their_escapes_as_written() -> None:
    u = parse_uri("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31")
    assert isinstance(u, SipURI)
    assert u.params == (("%6C%72", None), ("n%61me", "v%61lue%25%34%31"))
    assert u.unescaped_user == "caller"


def test_escaped_headers_stay_escaped_and_never_become_header_fields_rfc4475_regescrt() -> None:
    u = parse_uri("sip:user@example.com?Route=%3Csip:sip.example.com%3E")
    assert isinstance(u, SipURI)
    assert u.headers == (("Route", "%3Csip:sip.example.com%3E"),)
    assert u.params == ()


def test_password_is_split_off_the_user_at_the_first_colon() -> None:
    u = parse_uri("sip:alice:s%3Acret@atlanta.example.com")
    assert isinstance(u, SipURI)
    assert (u.user, u.password) == ("alice", "s%3Acret")
    empty = parse_uri("sip:alice:@atlanta.example.com")
    assert isinstance(empty, SipURI) and empty.password == ""


@pytest.mark.parametrize(
    ("text", "scheme", "opaque"),
    [
        ("tel:+1-201-555-0123", "tel", "+1-201-555-0123"),
        ("isbn:2983792873", "isbn", "2983792873"),
        ("http://www.example.com", "http", "//www.example.com"),
        ("name:John_Smith", "name", "John_Smith"),
        (
            "nobodyKnowsThisScheme:totallyopaquecontent",
            "nobodyKnowsThisScheme",
            "totallyopaquecontent",
        ),
        ("soap.beep://192.0.2.103:3002", "soap.beep", "//192.0.2.103:3002"),
        (
            "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "urn",
            "uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
        ),
    ],
)
def test_other_schemes_parse_as_opaque_absolute_uris(text: str, scheme: str, opaque: str) -> None:
    u = parse_uri(text)
    assert u == AbsoluteURI(scheme=scheme, opaque=opaque)
    assert str(u) == text


@pytest.mark.parametrize("text", URI_EXAMPLES)
def test_text_we_parse_serialises_back_unchanged(text: str) -> None:
    assert str(parse_uri(text)) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("sip:user@example.com; lr", "whitespace"),  # RFC 4475 lwsruri
        ("sip:user@exa mple.com", "whitespace"),
        ("sip:user@example.com\t", "whitespace"),
        ("<sip:user@example.com>", "no scheme"),  # RFC 4475 ltgtruri
        ("sip:<user>@example.com", "angle bracket"),
        ("sip:user@example.com:50a0", "bad port"),
        ("sip:user@example.com:65536", "bad port"),
        ("sip:user@example.com:99999999999", "bad port"),
        ("sip:user@example.com:", "bad port"),
        ("sip:user@", "empty host"),
        ("sip:user@;transport=tcp", "empty host"),
        ("sip:", "empty"),
        ("sip:[2001:db8::g]", "bad IPv6 reference"),
        ("sip:[2001:db8::1", "bad IPv6 reference"),
        ("sip:[2001:db8:::1]:5060", "bad IPv6 reference"),
        ("sip:2001:db8::1", "bad host"),  # an IPv6 address needs brackets
        ("sip:a%4@example.com", "bad % escape in user part"),
        ("sip:a%G0@example.com", "bad % escape in user part"),
        ("sip:a@example.com;x=%z1", "bad % escape in parameter value"),
        ("sip:a@example.com;%=1", "bad % escape in parameter name"),
        ("sip:a@example.com;;lr", "empty parameter name"),
        ("sip:a@example.com;x=", "empty parameter value"),
        ("sip:a@example.com?subject", "header without ="),
        ("sip:a@example.com?", "empty header name"),
        ("sip:a@b@example.com", "more than one @"),
        ("sip:@example.com", "empty user part"),
        ("sip:a@1.2.3.256", "bad host"),
        ("sip:a@example.123", "bad host"),
        ("sip:a@exa_mple..com", "bad host"),
        ("alice@example.com", "no scheme"),
        ("tel:", "empty"),
        ("tel:+1 555", "whitespace"),
        ("tel:%zz", "bad % escape"),
    ],
)
def test_malformed_uri_is_refused_with_a_reason_naming_the_part(text: str, reason: str) -> None:
    with pytest.raises(ParseError, match="Bad (SIP )?URI") as info:
        parse_uri(text)
    assert reason in info.value.reason
    assert info.value.status == 400


# -- helpers ----------------------------------------------------------------------------


def test_param_lookup_is_case_insensitive_and_valueless_params_give_empty_string() -> None:
    u = parse_uri("sip:example.com;LR;Transport=TLS")
    assert isinstance(u, SipURI)
    assert u.param("lr") == ""
    assert u.param("transport") == "TLS"
    assert u.param("maddr") is None
    assert u.transport == "tls"


def test_with_param_sets_in_place_or_appends_and_returns_a_new_uri() -> None:
    u = parse_uri("sip:alice@example.com;transport=udp;lr")
    assert isinstance(u, SipURI)
    changed = u.with_param("Transport", "tcp")
    assert str(changed) == "sip:alice@example.com;transport=tcp;lr"
    assert str(u.with_param("ob")) == "sip:alice@example.com;transport=udp;lr;ob"
    assert str(u.without_param("TRANSPORT")) == "sip:alice@example.com;lr"
    assert str(u) == "sip:alice@example.com;transport=udp;lr"


def test_replace_changes_host_port_and_user() -> None:
    u = parse_uri("sip:alice@example.com;lr")
    assert isinstance(u, SipURI)
    moved = u.replace(host="[2001:db8::10]", port=5080, user="bob")
    assert str(moved) == "sip:bob@[2001:db8::10]:5080;lr"


def test_uris_are_frozen_and_hashable() -> None:
    u = parse_uri("sip:alice@example.com")
    with pytest.raises(AttributeError):
        u.host = "evil.example.com"  # type: ignore[misc]
    assert len({u, parse_uri("sip:alice@example.com")}) == 1


# -- §19.1.4 comparison -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # The RFC 3261 §19.1.4 examples of equivalent URIs.
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
        ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
        (
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
        ),
        (
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
        ),
        ("sip:[2001:db8::1]", "sip:[2001:DB8:0:0::1]"),
        ("sip:a@h;maddr=192.0.2.1", "sip:a@h;MADDR=192.0.2.1"),
        ("sip:a@h;x=%41", "sip:a@h;x=a"),
    ],
)
def test_equivalent_uris_compare_equal_under_rfc3261_19_1_4(a: str, b: str) -> None:
    assert parse_uri(a).equivalent(parse_uri(b))
    assert parse_uri(b).equivalent(parse_uri(a))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # The RFC 3261 §19.1.4 examples of URIs that are not equivalent.
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
        ("sip:bob@phone21.boxesbybob.example.com", "sip:bob@192.0.2.4"),
        # The parameters that never match when present in only one URI.
        ("sip:a@h", "sip:a@h;user=phone"),
        ("sip:a@h", "sip:a@h;ttl=1"),
        ("sip:a@h", "sip:a@h;method=INVITE"),
        ("sip:a@h", "sip:a@h;maddr=192.0.2.1"),
        ("sip:a@h;transport=tcp", "sip:a@h;transport=udp"),
        ("sip:a@h;newparam=5", "sip:a@h;newparam=6"),
        # Scheme, password, and reserved characters that stay different when escaped.
        ("sip:a@h", "sips:a@h"),
        ("sip:a:x@h", "sip:a@h"),
        ("sip:a%3Bb@h", "sip:a;b@h"),
        ("sip:a@h", "sip:h"),
        ("sip:a@h", "tel:a"),
    ],
)
def test_different_uris_do_not_compare_equal_under_rfc3261_19_1_4(a: str, b: str) -> None:
    assert not parse_uri(a).equivalent(parse_uri(b))
    assert not parse_uri(b).equivalent(parse_uri(a))


def test_absolute_uri_equivalence_ignores_scheme_case_only() -> None:
    assert parse_uri("TEL:+1555").equivalent(parse_uri("tel:+1555"))
    assert not parse_uri("tel:+1555").equivalent(parse_uri("tel:+1556"))


# -- properties -------------------------------------------------------------------------


@given(sip_uris())
def test_any_sip_uri_we_produce_parses_back_to_the_same_value(u: SipURI) -> None:
    assert parse_uri(str(u)) == u
    assert parse_uri(str(u)).equivalent(u)


@given(absolute_uris)
def test_any_absolute_uri_we_produce_parses_back_to_the_same_value(u: AbsoluteURI) -> None:
    assert parse_uri(str(u)) == u


@given(sip_uris())
def test_fast_path_and_reference_parser_agree(u: SipURI) -> None:
    text = str(u)
    slow = uri_module._parse_sip(u.scheme, text[len(u.scheme) + 1 :])
    assert parse_uri(text) == slow


@given(st.text(st.characters(max_codepoint=255)))
def test_arbitrary_text_parses_or_raises_parse_error(text: str) -> None:
    try:
        parse_uri(text)
    except ParseError:
        pass


@given(
    st.sampled_from(URI_EXAMPLES),
    st.integers(0, 200),
    st.sampled_from(list("<>\";,:@?%[]= \t\\&/.\x00\xff0") + ["sip:", "%4", "::"]),
)
def test_damaged_uri_parses_or_raises_parse_error(text: str, at: int, junk: str) -> None:
    at %= len(text) + 1
    try:
        parse_uri(text[:at] + junk + text[at:])
    except ParseError:
        pass
