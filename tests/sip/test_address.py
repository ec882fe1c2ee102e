"""name-addr / addr-spec values: RFC 3261 §20.10, §25.1 and the address cases of RFC 4475."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipgw.sip import address as address_module
from sipgw.sip.address import STAR, NameAddr, parse_address_list, parse_name_addr
from sipgw.sip.errors import ParseError
from sipgw.sip.grammar import quote
from sipgw.sip.uri import AbsoluteURI, SipURI, parse_uri
from tests.sip.test_uri import absolute_uris, sip_uris

TORTURE = Path(__file__).resolve().parent.parent / "data" / "torture"
COMPACT = {"f": "from", "t": "to", "m": "contact", "v": "via"}


def torture_header(name: str, header: str) -> list[str]:
    """Values of one header in an RFC 4475 message, unfolded and decoded as latin-1."""
    (path,) = TORTURE.glob(f"*/{name}.dat")
    head = path.read_bytes().split(b"\r\n\r\n")[0].decode("latin-1")
    lines = re.sub(r"\r\n[ \t]+", " ", head).split("\r\n")[1:]
    values = []
    for line in lines:
        field, _, value = line.partition(":")
        field = field.strip(" \t").lower()
        if COMPACT.get(field, field) == header.lower():
            values.append(value.strip(" \t"))
    return values


# -- parsing ----------------------------------------------------------------------------


def test_quoted_display_name_uri_and_tag_are_split_apart() -> None:
    a = parse_name_addr('"Alice Smith" <sip:alice@atlanta.example.com>;tag=1928301774')
    assert a.display == '"Alice Smith"'
    assert a.display_name == "Alice Smith"
    assert a.uri == parse_uri("sip:alice@atlanta.example.com")
    assert a.tag == "1928301774"
    assert a.bracketed


def test_unquoted_display_name_is_a_sequence_of_tokens() -> None:
    a = parse_name_addr("A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe")
    assert (a.display, a.display_name, a.tag) == ("A. Bell", "A. Bell", "qweoiqpe")


def test_display_name_needs_no_space_before_the_angle_bracket_rfc4475_lwsdisp() -> None:
    (value,) = torture_header("lwsdisp", "From")
    a = parse_name_addr(value)
    assert (a.display_name, str(a.uri), a.tag) == ("caller", "sip:caller@example.com", "323")


def test_lws_around_semicolons_and_equals_is_allowed_rfc4475_wsinv() -> None:
    (to,) = torture_header("wsinv", "To")
    (frm,) = torture_header("wsinv", "From")
    a = parse_name_addr(to)
    assert (str(a.uri), a.tag, a.bracketed) == (
        "sip:vivekg@chair-dnrc.example.com",
        "1918181833n",
        False,
    )
    b = parse_name_addr(frm)
    assert b.display_name == 'J Rosenberg \\"'
    assert (str(b.uri), b.tag) == ("sip:jdrosen@example.com", "98asjd8")


def test_contact_with_quoted_display_and_lws_params_rfc4475_wsinv() -> None:
    (value,) = torture_header("wsinv", "Contact")
    (a,) = parse_address_list(value)
    assert a.display_name == 'Quoted string ""'
    assert a.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))


def test_quoted_display_may_hold_nul_bel_del_and_utf8_octets_rfc4475_intmeth() -> None:
    (to,) = torture_header("intmeth", "To")
    (frm,) = torture_header("intmeth", "From")
    a = parse_name_addr(to)
    assert a.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert isinstance(a.uri, SipURI)
    assert a.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    b = parse_name_addr(frm)
    assert b.display == "token1~` token2'+_ token3*%!.-"
    assert b.param("fromParam''~+*_!.-%") == '"' + "работающий".encode().decode("latin-1") + '"'
    assert b.tag == "_token~1'+`*%!-."


def test_percent_in_a_display_name_is_literal_rfc4475_esc02() -> None:
    (to,) = torture_header("esc02", "To")
    assert parse_name_addr(to).display_name == "%Z%45"


def test_unbracketed_params_belong_to_the_header_rfc4475_cparam01() -> None:
    (value,) = torture_header("cparam01", "Contact")
    (a,) = parse_address_list(value)
    assert isinstance(a.uri, SipURI)
    assert a.uri.params == ()
    assert a.params == (("unknownparam", None),)
    assert not a.bracketed
    assert str(a) == "sip:+19725552222@gw1.example.net;unknownparam"


def test_bracketed_params_belong_to_the_uri_rfc4475_cparam02() -> None:
    (value,) = torture_header("cparam02", "Contact")
    (a,) = parse_address_list(value)
    assert isinstance(a.uri, SipURI)
    assert a.uri.params == (("unknownparam", None),)
    assert a.params == ()


def test_escaped_uri_header_stays_inside_the_uri_rfc4475_regescrt() -> None:
    (value,) = torture_header("regescrt", "Contact")
    (a,) = parse_address_list(value)
    assert isinstance(a.uri, SipURI)
    assert a.uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)
    assert str(a) == value


def test_escaped_null_contacts_stay_distinct_rfc4475_escnull() -> None:
    values = torture_header("escnull", "Contact")
    users = [parse_address_list(v)[0].uri.unescaped_user for v in values]  # type: ignore[index, union-attr]
    assert users == ["\x00", "\x00\x00"]


def test_escaped_contact_header_name_is_not_a_contact_rfc4475_esc02() -> None:
    values = torture_header("esc02", "Contact")
    assert [str(parse_address_list(v)[0].uri) for v in values] == [  # type: ignore[index]
        "sip:alias1@host1.example.com",
        "sip:alias3@host3.example.com",
    ]


def test_other_uri_schemes_are_accepted_in_addresses_rfc4475_unksm2() -> None:
    assert parse_name_addr(torture_header("unksm2", "To")[0]).uri == AbsoluteURI(
        scheme="isbn", opaque="2983792873"
    )
    frm = parse_name_addr(torture_header("unksm2", "From")[0])
    assert (frm.uri, frm.tag) == (AbsoluteURI(scheme="http", opaque="//www.example.com"), "3234233")
    contact = parse_address_list(torture_header("unksm2", "Contact")[0])
    assert contact[0].uri == AbsoluteURI(scheme="name", opaque="John_Smith")  # type: ignore[index]


def test_outbound_contact_params_keep_quotes_and_order() -> None:
    value = (
        "<sip:alice@192.0.2.7:5060;transport=tcp;ob>;reg-id=1;"
        '+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>";expires=3600'
    )
    (a,) = parse_address_list(value)
    assert a.param("+SIP.INSTANCE") == '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'
    assert (a.param("reg-id"), a.param("expires")) == ("1", "3600")
    assert str(a) == value


def test_route_list_keeps_each_hop_with_its_lr_param() -> None:
    (value,) = torture_header("wsinv", "Route")
    (hop,) = parse_address_list(value, what="Route header")
    assert isinstance(hop.uri, SipURI)
    assert hop.uri.param("lr") == ""
    hops = parse_address_list(
        "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>,<sip:[2001:db8::5]:5070;lr>"
    )
    assert [h.uri.host for h in hops] == ["p1.example.com", "p2.example.com", "[2001:db8::5]"]  # type: ignore[union-attr]


def test_commas_inside_quoted_display_names_do_not_split_the_list() -> None:
    hops = parse_address_list('"Watson, Thomas" <sip:t@example.org>;q=0.5, <sip:u@example.org>')
    assert [h.display_name for h in hops] == ["Watson, Thomas", None]  # type: ignore[union-attr]


def test_contact_star_is_the_star_marker() -> None:
    assert parse_address_list("*") is STAR
    assert parse_address_list("  * ") is STAR
    assert str(STAR) == "*"


# -- serialising and helpers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ('"Alice" <sip:alice@example.com>;tag=1', '"Alice" <sip:alice@example.com>;tag=1'),
        ("caller<sip:caller@example.com>;tag=323", "caller <sip:caller@example.com>;tag=323"),
        ("sip:a@example.com ; tag = 9", "sip:a@example.com;tag=9"),
        ("<sip:a@example.com>", "<sip:a@example.com>"),
        ("<sip:a@example.com;lr>", "<sip:a@example.com;lr>"),
        ("sip:a@example.com", "sip:a@example.com"),
    ],
)
def test_addresses_serialise_compactly_and_reparse_to_the_same_value(
    text: str, canonical: str
) -> None:
    a = parse_name_addr(text)
    assert str(a) == canonical
    assert parse_name_addr(canonical) == a


def test_brackets_are_added_when_the_uri_needs_them() -> None:
    uri = parse_uri("sip:a@example.com;transport=tcp")
    assert str(NameAddr(uri=uri, bracketed=False)) == "<sip:a@example.com;transport=tcp>"
    headers = parse_uri("sip:a@example.com?subject=x")
    assert str(NameAddr(uri=headers, bracketed=False)) == "<sip:a@example.com?subject=x>"
    plain = parse_uri("sip:a@example.com")
    assert str(NameAddr(display='"A"', uri=plain, bracketed=False)) == '"A" <sip:a@example.com>'


def test_with_param_without_param_and_replace_return_new_addresses() -> None:
    a = parse_name_addr("<sip:bob@biloxi.example.com>;expires=60")
    tagged = a.with_param("tag", "a6c85cf")
    assert str(tagged) == "<sip:bob@biloxi.example.com>;expires=60;tag=a6c85cf"
    # The name keeps the spelling it already had.
    assert (
        str(tagged.with_param("EXPIRES", "0"))
        == "<sip:bob@biloxi.example.com>;expires=0;tag=a6c85cf"
    )
    assert str(tagged.without_param("expires")) == "<sip:bob@biloxi.example.com>;tag=a6c85cf"
    moved = a.replace(uri=parse_uri("sip:bob@192.0.2.4"))
    assert str(moved) == "<sip:bob@192.0.2.4>;expires=60"
    assert a.tag is None


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "header", "reason"),
    [
        ("quotbal", "To", "unterminated quoted string"),
        ("badaspec", "To", "whitespace inside <>"),
        ("baddn", "From", "must be quoted"),
        ("baddn", "To", "must be quoted"),
    ],
)
def test_malformed_torture_addresses_are_refused(message: str, header: str, reason: str) -> None:
    (value,) = torture_header(message, header)
    with pytest.raises(ParseError) as info:
        parse_name_addr(value, what=f"{header} header")
    assert info.value.reason.startswith(f"Bad {header} header: ")
    assert reason in info.value.reason
    assert info.value.status == 400


def test_empty_contact_params_are_refused_rfc4475_badinv01() -> None:
    (value,) = torture_header("badinv01", "Contact")
    with pytest.raises(ParseError, match="Bad Contact header: empty or bad header parameter"):
        parse_address_list(value)


def test_unbracketed_uri_with_escaped_header_is_refused_rfc4475_regbadct() -> None:
    (value,) = torture_header("regbadct", "Contact")
    with pytest.raises(ParseError, match=r"Bad Contact header: a URI with \? must be enclosed"):
        parse_address_list(value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ('"Alice" sip:alice@example.com', "not followed by <"),
        ("Alice", "no URI"),
        ("<sip:alice@example.com", "missing >"),
        ("<sip:alice@example.com>>", "header parameter"),
        ("<sip:alice@example.com> tag=1", "header parameters"),
        ("<sip:alice@example.com>;tag", ""),
        ("<sip:alice@example.com>;", "header parameter"),
        ("<sip:alice@example.com>;tag=", "header parameter tag"),
        ("<sip:alice@exa mple.com>", "whitespace"),
        ("<sip:alice@example.com:99999>", "bad port"),
        ("<>", "no scheme"),
        ("Al@ice <sip:a@example.com>", "must be quoted"),
        ("Al<ice <sip:a@example.com>", "no scheme"),
        ("sip:a@example.com,sip:b@example.com", "a URI with , must be enclosed"),
        ('sip:a@example.com;x="unterminated', "unterminated"),
    ],
)
def test_malformed_addresses_are_refused_with_a_reason(text: str, reason: str) -> None:
    if reason == "":  # a valueless tag is legal syntax; only its absence matters
        assert parse_name_addr(text).tag == ""
        return
    with pytest.raises(ParseError, match="^Bad address: ") as info:
        parse_name_addr(text)
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("<sip:a@example.com>,,<sip:b@example.com>", "empty list element"),
        ("<sip:a@example.com>,", "empty list element"),
        ("", "empty list element"),
        ("*, <sip:a@example.com>", "* mixed with addresses"),
        ('"unterminated <sip:a@example.com>, <sip:b@example.com>', "unterminated"),
        ("Bell, Alexander <sip:a.g.bell@example.com>", "no URI"),
    ],
)
def test_malformed_address_lists_are_refused(value: str, reason: str) -> None:
    with pytest.raises(ParseError, match="^Bad Contact header: ") as info:
        parse_address_list(value)
    assert reason in info.value.reason


# -- properties -------------------------------------------------------------------------

TOKEN = string.ascii_letters + string.digits + "-.!%*_+`'~"
_tokens = st.text(TOKEN, min_size=1, max_size=8)
_latin1 = st.characters(max_codepoint=255, blacklist_characters="\r\n")
displays = st.one_of(
    st.none(),
    st.text(_latin1, max_size=12).map(quote),
    st.lists(_tokens, min_size=1, max_size=3).map(" ".join),
)
header_params = st.lists(
    st.tuples(_tokens, st.one_of(st.none(), _tokens, st.text(_latin1, max_size=8).map(quote))),
    max_size=4,
).map(tuple)


@st.composite
def name_addrs(draw: st.DrawFn) -> NameAddr:
    uri = draw(st.one_of(sip_uris(), absolute_uris))
    display = draw(displays)
    text = str(uri)
    needs = display is not None or any(c in text for c in ";?,")
    return NameAddr(
        display=display, uri=uri, params=draw(header_params), bracketed=needs or draw(st.booleans())
    )


@given(name_addrs())
def test_any_address_we_produce_parses_back_to_the_same_value(a: NameAddr) -> None:
    assert parse_name_addr(str(a)) == a


@given(name_addrs())
def test_fast_path_and_reference_parser_agree(a: NameAddr) -> None:
    text = str(a)
    assert parse_name_addr(text) == address_module._parse_slow(text)


@given(st.lists(name_addrs(), min_size=1, max_size=4))
def test_any_address_list_we_produce_parses_back_to_the_same_values(addrs: list[NameAddr]) -> None:
    assert parse_address_list(", ".join(map(str, addrs))) == addrs


@given(st.text(st.characters(max_codepoint=255)))
def test_arbitrary_text_parses_or_raises_parse_error(text: str) -> None:
    for parse in (parse_name_addr, parse_address_list):
        try:
            parse(text)
        except ParseError:
            pass


@given(
    name_addrs(), st.integers(0, 300), st.sampled_from(list('<>";,:@?%[]= \t\\') + ["\x00", "*"])
)
def test_damaged_address_parses_or_raises_parse_error(a: NameAddr, at: int, junk: str) -> None:
    text = str(a)
    at %= len(text) + 1
    for parse in (parse_name_addr, parse_address_list):
        try:
            parse(text[:at] + junk + text[at:])
        except ParseError:
            pass
