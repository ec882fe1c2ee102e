"""``parse_message``: RFC 3261 §7 syntax, the checks a proxy needs, and the limits.

The rule under test (after h11): bytes in, a ``Request``/``Response`` or a ``ParseError``
out, never anything else; a bad request's error carries the reply status and names the bad
part, a bad response's error has ``status=None`` (dropped).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipgw.sip.errors import LimitError, ParseError
from sipgw.sip.headers import COMPACT_FORMS, SINGLETON_HEADERS, display_name
from sipgw.sip.message import Request, Response
from sipgw.sip.parser import Limits, parse_message
from tests.helpers.strategies import mutated_torture

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VIA = "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc"
REQUIRED = {
    "via": VIA,
    "from": "From: <sip:alice@example.com>;tag=1",
    "to": "To: <sip:bob@example.com>",
    "call-id": "Call-ID: a84b4c76e66710",
    "cseq": "CSeq: 314159 OPTIONS",
}


def build(
    *extra: str,
    start: str = "OPTIONS sip:bob@example.com SIP/2.0",
    drop: tuple[str, ...] = (),
    body: bytes = b"",
    content_length: bool = True,
) -> bytes:
    """A small valid request, with lines added or required headers left out."""
    lines = [start, *(line for key, line in REQUIRED.items() if key not in drop), *extra]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def refused(data: bytes, **kwargs: object) -> ParseError:
    with pytest.raises(ParseError) as err:
        parse_message(data, **kwargs)  # type: ignore[arg-type]
    return err.value


# -- requests and responses ----------------------------------------------------------------


def test_request_line_headers_and_body_are_split_apart() -> None:
    msg = parse_message(build("Content-Type: text/plain", body=b"hello", content_length=True))
    assert isinstance(msg, Request)
    assert (msg.method, msg.uri, msg.version) == ("OPTIONS", "sip:bob@example.com", "SIP/2.0")
    assert msg.call_id == "a84b4c76e66710"
    assert msg.cseq == (314159, "OPTIONS")
    assert msg.top_via.branch == "z9hG4bKabc"
    assert msg.from_tag == "1" and msg.to_tag is None
    assert msg.body == b"hello"
    assert [f.name for f in msg.fields] == [
        "Via", "From", "To", "Call-ID", "CSeq", "Content-Type", "Content-Length",
    ]


def test_response_status_reason_and_body_are_split_apart() -> None:
    data = build(start="SIP/2.0 486 Busy Here", body=b"x")
    msg = parse_message(data)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason, msg.body) == (486, "Busy Here", b"x")
    assert msg.cseq == (314159, "OPTIONS")


def test_reason_phrase_may_be_empty_or_hold_any_text() -> None:
    assert parse_message(build(start="SIP/2.0 100 ")).reason == ""  # type: ignore[union-attr]
    msg = parse_message(build(start="SIP/2.0 200 It is  OK: really; yes"))
    assert msg.reason == "It is  OK: really; yes"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "start",
    ["SIP/2.0 200", "SIP/2.0 20 OK", "SIP/2.0 2000 OK", "SIP/2.0 OK 200", "SIP/2.0  200 OK"],
)
def test_malformed_status_line_is_dropped_not_answered(start: str) -> None:
    err = refused(build(start=start))
    assert err.status is None and "status line" in err.reason


@pytest.mark.parametrize("code", ["099", "700", "999"])
def test_status_code_outside_100_to_699_is_dropped(code: str) -> None:
    err = refused(build(start=f"SIP/2.0 {code} Odd"))
    assert (err.status, err.reason) == (None, "Bad status code")


def test_response_in_another_sip_version_is_dropped() -> None:
    assert refused(build(start="SIP/3.0 200 OK")).status is None


def test_every_error_in_a_response_drops_it_even_a_missing_header() -> None:
    err = refused(build(start="SIP/2.0 200 OK", drop=("call-id",)))
    assert (err.status, err.reason) == (None, "Missing Call-ID header")


def test_protocol_name_and_version_are_case_insensitive_and_written_canonically() -> None:
    msg = parse_message(build(start="OPTIONS sip:bob@example.com sip/2.0"))
    assert msg.to_bytes().startswith(b"OPTIONS sip:bob@example.com SIP/2.0\r\n")


@pytest.mark.parametrize("version", ["SIP/3.0", "SIP/2.1", "SIP/7.0"])
def test_other_sip_version_in_a_request_gets_505(version: str) -> None:
    err = refused(build(start=f"OPTIONS sip:bob@example.com {version}"))
    assert err.status == 505


def test_via_with_another_sip_version_gets_505() -> None:
    data = build().replace(b"SIP/2.0/UDP", b"SIP/3.0/UDP")
    assert refused(data).status == 505


@pytest.mark.parametrize(
    ("start", "culprit"),
    [
        ("OPTIONS sip:bob@example.com", "request line"),
        ("OPTIONS  sip:bob@example.com SIP/2.0", "request line"),
        ("OPTIONS sip:bob@example.com SIP/2.0 ", "request line"),
        ("OPT(ONS sip:bob@example.com SIP/2.0", "method"),
        ("OPTIONS <sip:bob@example.com> SIP/2.0", "Request-URI"),
        ("OPTIONS bob SIP/2.0", "Request-URI"),
        ("OPTIONS sip:bob@example.com HTTP/1.1", "version"),
    ],
)
def test_malformed_request_line_gets_400_naming_the_part(start: str, culprit: str) -> None:
    err = refused(build(start=start))
    assert err.status == 400 and culprit.lower() in err.reason.lower()


# -- header names: compact forms, case, LWS, folding ----------------------------------------


@pytest.mark.parametrize("compact", list("vftimlcsekourbxy"))
def test_compact_form_means_its_long_name(compact: str) -> None:
    long_name = COMPACT_FORMS[compact]
    samples = {
        "via": VIA.split(": ", 1)[1],
        "from": "<sip:alice@example.com>;tag=1",
        "to": "<sip:bob@example.com>",
        "call-id": "a84b4c76e66710",
        "content-length": "0",
    }
    value = samples.get(long_name, "token-value")
    drop = (long_name,) if long_name in REQUIRED else ()
    data = build(f"{compact}: {value}", drop=drop, content_length=long_name != "content-length")
    msg = parse_message(data)
    (field,) = [f for f in msg.fields if f.key == long_name]
    assert (field.name, field.value) == (compact, value)
    assert msg.header(long_name) == value
    assert msg.header(display_name(long_name)) == value
    assert msg.header(compact.upper()) == value  # compact forms are case-insensitive too


def test_header_names_are_case_insensitive_and_kept_as_written() -> None:
    data = (
        b"OPTIONS sip:bob@example.com SIP/2.0\r\nvIA: SIP/2.0/UDP h.example.com;branch=z9hG4bKx\r\n"
        b"FROM: <sip:a@example.com>;tag=1\r\nto: <sip:b@example.com>\r\nCALL-id: c\r\n"
        b"cseq: 1 OPTIONS\r\nMAX-FORWARDS: 9\r\n\r\n"
    )
    msg = parse_message(data)
    assert msg.header("Call-ID") == "c" and msg.header("max-forwards") == "9"
    assert [f.name for f in msg.fields][:3] == ["vIA", "FROM", "to"]
    assert msg.to_bytes().startswith(data[:-2])


def test_lws_around_the_colon_is_allowed() -> None:
    msg = parse_message(build("Subject \t :  \t hello there"))
    assert msg.header("subject") == "hello there"


def test_folded_value_is_one_value_joined_by_a_single_space_and_its_lines_are_kept() -> None:
    data = build("Subject: first\r\n  second\r\n\tthird")
    msg = parse_message(data)
    assert msg.header("subject") == "first second third"
    (field,) = [f for f in msg.fields if f.key == "subject"]
    assert field.raw == "Subject: first\r\n  second\r\n\tthird"
    assert msg.to_bytes() == data


def test_folding_before_the_first_header_is_refused() -> None:
    data = build().replace(b"SIP/2.0\r\nVia", b"SIP/2.0\r\n Via", 1)
    assert refused(data).reason == "Bad header folding"


def test_value_may_start_on_a_continuation_line() -> None:
    msg = parse_message(build().replace(b"CSeq: 314159", b"CSeq:\r\n 314159"))
    assert msg.cseq == (314159, "OPTIONS")


@pytest.mark.parametrize(
    "line",
    ["Via x: SIP/2.0/UDP h", "Call-ID\x00: c", "From;tag: x", "X-A(b): 1", "X@Y: 1",
     "Sub ject: hi"],
)
def test_header_name_with_trailing_or_inner_junk_gets_400(line: str) -> None:
    err = refused(build(line))
    assert err.status == 400 and err.reason.startswith("Bad header name")


@pytest.mark.parametrize("line", ["NoColonHere", ": empty name"])
def test_header_line_without_a_name_gets_400(line: str) -> None:
    err = refused(build(line))
    assert (err.status, err.reason) == (400, "Bad header line")


def test_whitespace_only_continuation_line_is_trailing_lws() -> None:
    data = build().replace(b"\r\nCSeq", b"\r\nX: 1\r\n   \r\nCSeq")
    assert parse_message(data).header("x") == "1"


@pytest.mark.parametrize(
    "header", ["Max-Forwards: 70", "Content-Length: 0", "CSeq: 314159 OPTIONS"]
)
def test_blank_continuation_after_a_number_is_trailing_lws_not_part_of_it(header: str) -> None:
    name = header.split(":")[0]
    data = build(*([header] if name == "Max-Forwards" else []))
    data = data.replace(header.encode(), header.encode() + b"\r\n \t ")
    msg = parse_message(data)
    assert msg.header(name) == header.split(": ")[1]


@pytest.mark.parametrize(
    ("where", "culprit"),
    [
        (b"Call-ID: a84b4c76e66710", "header line 'Call-ID'"),
        (b"OPTIONS sip:bob@example.com SIP/2.0", "start line"),
    ],
)
@pytest.mark.parametrize("bare", [b"\n", b"\r"])
def test_bare_cr_or_lf_in_the_header_section_gets_400(
    where: bytes, culprit: str, bare: bytes
) -> None:
    # A downstream parser taking a bare LF for a line end would see a header we never saw.
    data = build().replace(where, where[:9] + bare + b"Route: <sip:evil.example.com;lr>", 1)
    err = refused(data)
    assert err.status == 400 and culprit in err.reason


def test_bare_lf_in_a_response_header_drops_it() -> None:
    data = build(start="SIP/2.0 200 OK").replace(b"To: <", b"To:\n<")
    assert refused(data).status is None


def test_leading_crlfs_before_the_start_line_are_ignored() -> None:
    msg = parse_message(b"\r\n\r\n\r\n" + build())
    assert isinstance(msg, Request) and msg.method == "OPTIONS"


# -- required headers, duplicates, numbers --------------------------------------------------


@pytest.mark.parametrize("key", sorted(REQUIRED))
def test_missing_required_header_gets_400_naming_it(key: str) -> None:
    err = refused(build(drop=(key,)))
    assert (err.status, err.reason) == (400, f"Missing {display_name(key)} header")


def test_max_forwards_and_content_length_are_optional_on_udp() -> None:
    msg = parse_message(build(content_length=False))
    assert not msg.has("max-forwards") and not msg.has("content-length")


SINGLETON_SAMPLES = {
    "call-id": "Call-ID: other",
    "from": "From: <sip:x@example.com>;tag=2",
    "to": "To: <sip:y@example.com>",
    "cseq": "CSeq: 2 OPTIONS",
    "max-forwards": "Max-Forwards: 70",
    "content-length": "Content-Length: 0",
    "content-type": "Content-Type: text/plain",
}


@pytest.mark.parametrize("key", sorted(SINGLETON_HEADERS))
def test_duplicate_singleton_header_gets_400_naming_it(key: str) -> None:
    line = SINGLETON_SAMPLES[key]
    extra = [line, line] if key in ("max-forwards", "content-type") else [line]
    err = refused(build(*extra))
    assert (err.status, err.reason) == (400, f"Duplicate {display_name(key)} header")


def test_duplicate_spelled_once_compact_once_long_is_still_a_duplicate() -> None:
    assert refused(build("i: second")).reason == "Duplicate Call-ID header"


def test_identical_duplicate_is_refused_too() -> None:
    assert refused(build(REQUIRED["call-id"])).reason == "Duplicate Call-ID header"


def test_list_headers_may_repeat() -> None:
    msg = parse_message(build("Route: <sip:a.example.com;lr>", "Route: <sip:b.example.com;lr>",
                              "Via: SIP/2.0/TCP b.example.com;branch=z9hG4bKb"))
    assert len(msg.values("route")) == 2 and len(msg.values("via")) == 2


@pytest.mark.parametrize(
    ("value", "ok"),
    [("0", True), ("4294967295", True), ("4294967296", False), ("00000000001", False),
     ("-1", False), ("1.0", False), ("", False), ("\u00b2", False), ("\u00b9\u00b9", False)],
)
def test_cseq_number_is_1_to_10_ascii_digits_within_32_bits(value: str, ok: bool) -> None:
    data = build().replace(b"CSeq: 314159", f"CSeq: {value}".encode("latin-1"))
    if ok:
        assert parse_message(data).cseq == (int(value), "OPTIONS")
    else:
        err = refused(data)
        assert err.status == 400 and "CSeq" in err.reason


@pytest.mark.parametrize("sep", [" ", "\t", "  \t "])
def test_cseq_number_and_method_are_separated_by_lws(sep: str) -> None:
    data = build().replace(b"CSeq: 314159 ", f"CSeq: 314159{sep}".encode())
    assert parse_message(data).cseq == (314159, "OPTIONS")


@pytest.mark.parametrize("sep", ["\u00a0", "\u0085", "\x1c", "\x0b"])
def test_cseq_separated_by_a_space_that_is_not_lws_gets_400(sep: str) -> None:
    data = build().replace(b"CSeq: 314159 ", f"CSeq: 314159{sep}".encode("latin-1"))
    assert refused(data).reason == "Bad CSeq header"


def test_cseq_method_must_match_the_request_method() -> None:
    err = refused(build().replace(b"314159 OPTIONS", b"314159 INVITE"))
    assert (err.status, err.reason) == (400, "CSeq method does not match request method")


def test_cseq_mismatch_on_an_unknown_method_gets_501() -> None:
    data = build(start="FOO sip:bob@example.com SIP/2.0").replace(b"314159 OPTIONS", b"1 BAR")
    assert refused(data).status == 501


@pytest.mark.parametrize(
    ("value", "ok"),
    [("0", True), ("70", True), ("255", True), ("0068", True), ("256", False),
     ("1000000", False), ("-1", False), ("abc", False), ("", False), ("\u00b2", False),
     ("7\u00b9", False)],
)
def test_max_forwards_is_ascii_digits_up_to_255(value: str, ok: bool) -> None:
    data = build(f"Max-Forwards: {value}")
    if ok:
        assert parse_message(data).header("max-forwards") == value
    else:
        assert (refused(data).status, refused(data).reason) == (400, "Bad Max-Forwards header")


@pytest.mark.parametrize("value", ["abc", "-5", "1e3", "+5", "5 5", "\u00b2", "1\u00b3",
                                   "1234567890"])
def test_malformed_content_length_gets_400(value: str) -> None:
    data = build(f"Content-Length: {value}", content_length=False)
    assert (refused(data).status, refused(data).reason) == (400, "Bad Content-Length header")


def test_content_length_larger_than_the_datagram_gets_400() -> None:
    data = build("Content-Length: 999999999", content_length=False) + b"short"
    assert refused(data).reason == "Content-Length larger than message"


def test_octets_past_content_length_in_a_datagram_are_discarded() -> None:
    msg = parse_message(build(body=b"body") + b"TRAILING NOISE")
    assert msg.body == b"body"
    assert b"NOISE" not in msg.to_bytes()


def test_without_content_length_a_datagram_body_is_the_rest_of_the_datagram() -> None:
    msg = parse_message(build(content_length=False) + b"v=0\r\n")
    assert msg.body == b"v=0\r\n"


def test_on_a_stream_a_body_without_content_length_gets_400() -> None:
    data = build(content_length=False) + b"v=0\r\n"
    assert refused(data, datagram=False).reason == "Missing Content-Length header"
    assert parse_message(build(content_length=False), datagram=False).body == b""


def test_datagram_cut_before_the_empty_line_is_refused_not_relayed_as_complete() -> None:
    # RFC 3261 §7: the empty line MUST be present; a datagram cut inside its headers
    # (a truncated INVITE) must never look like a whole message.
    for cut in (build()[:-4], build()[:-2]):
        with pytest.raises(ParseError) as e:
            parse_message(cut)
        assert (e.value.status, e.value.reason) == (400, "No empty line after the headers")


# -- limits ------------------------------------------------------------------------------------


def padded(size: int) -> bytes:
    """A valid request of exactly ``size`` octets (the padding is in one header)."""
    base = build("X-Pad: ")
    return base.replace(b"X-Pad: ", b"X-Pad: " + b"p" * (size - len(base)))


def test_message_of_65535_octets_is_accepted() -> None:
    data = padded(65535)
    assert len(data) == 65535
    assert parse_message(data).header("x-pad") == "p" * (65535 - len(build("X-Pad: ")))


def test_message_of_65536_octets_is_refused_with_513() -> None:
    err = refused(padded(65536))
    assert isinstance(err, LimitError)
    assert (err.status, err.reason) == (513, "Message too large")


def test_message_size_limit_is_configurable() -> None:
    data = padded(1001)
    assert refused(data, limits=Limits(max_message_size=1000)).status == 513
    assert parse_message(data, limits=Limits(max_message_size=1001))


def test_header_count_is_bounded() -> None:
    base = len(REQUIRED) + 1  # + Content-Length
    at_limit = build(*[f"X-H: {i}" for i in range(256 - base)])
    assert len(parse_message(at_limit).fields) == 256
    err = refused(build(*[f"X-H: {i}" for i in range(257 - base)]))
    assert isinstance(err, LimitError)
    assert (err.status, err.reason) == (400, "Too many headers")
    assert refused(build("A: 1", "B: 2"), limits=Limits(max_headers=7)).reason == "Too many headers"


def test_folded_continuation_lines_do_not_count_as_headers() -> None:
    data = build("Subject: a\r\n b\r\n c\r\n d")
    assert len(parse_message(data, limits=Limits(max_headers=7)).fields) == 7


# -- parsed, or a protocol error, never anything else (h11's fuzzing invariant) --------------


def parse_or_error(data: bytes, *, datagram: bool = True) -> Request | Response | ParseError:
    try:
        return parse_message(data, datagram=datagram)
    except ParseError as e:
        return e


def assert_outcome_is_a_message_or_a_protocol_error(data: bytes) -> None:
    for datagram in (True, False):
        result = parse_or_error(data, datagram=datagram)
        if isinstance(result, ParseError):
            assert result.status is None or 400 <= result.status <= 599
            assert result.reason
            continue
        assert type(result) in (Request, Response)
        # What we accepted serialises to bytes we accept again, unchanged.
        out = result.to_bytes()
        again = parse_message(out, datagram=datagram)
        assert again.to_bytes() == out


@FUZZ
@given(mutated_torture())
def test_mutated_torture_messages_parse_or_raise_a_parse_error(data: bytes) -> None:
    assert_outcome_is_a_message_or_a_protocol_error(data)


random_after_a_start_line = st.binary(max_size=600).map(lambda b: b"INVITE s:a SIP/2.0\r\n" + b)


@FUZZ
@given(st.binary(max_size=600) | random_after_a_start_line)
def test_random_bytes_parse_or_raise_a_parse_error(data: bytes) -> None:
    assert_outcome_is_a_message_or_a_protocol_error(data)

