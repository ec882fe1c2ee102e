"""The message model: byte-exact serialisation and edits that touch only their own lines.

A proxy forwards what it did not change exactly as it arrived (RFC 3261 §16.6: "the proxy
MUST NOT" reorder or rewrite the rest), so ``to_bytes()`` writes every untouched header
line as received (``Field.raw``) and formats only the lines an edit touched.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from sipgw.sip.message import Field, Request, Response, make_response
from sipgw.sip.parser import parse_message
from tests.helpers.strategies import messages
from tests.helpers.torture import header_lines, header_section, load
from tests.sip.test_torture import CHECKS

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PARSABLE = sorted(CHECKS)  # the torture messages parse_message accepts


# -- parse → to_bytes on the RFC 4475 messages ---------------------------------------------


@pytest.mark.parametrize("name", PARSABLE)
def test_serialising_a_parsed_torture_message_gives_back_its_header_section(name: str) -> None:
    data = load(name)
    msg = parse_message(data)
    expected = header_section(data)
    if not msg.has("content-length"):
        # The only addition: the Content-Length the datagram lacked (RFC 4475 inv2543).
        expected += f"\r\nContent-Length: {len(msg.body)}".encode()
    out = msg.to_bytes()
    assert header_section(out) == expected
    assert out == expected + b"\r\n\r\n" + msg.body


def test_every_valid_torture_message_survives_parse_serialise_parse_unchanged() -> None:
    for name in PARSABLE:
        once = parse_message(load(name)).to_bytes()
        assert parse_message(once).to_bytes() == once, name
        assert parse_message(once, datagram=False).to_bytes() == once, name


def test_content_length_is_corrected_when_the_body_changed() -> None:
    msg = parse_message(load("invut"))
    msg.body = b"new body"
    lines = header_lines(msg.to_bytes())
    assert lines[-1] == b"Content-Length: 8"
    assert sum(line.lower().startswith(b"content-length") for line in lines) == 1
    assert msg.to_bytes().endswith(b"\r\n\r\nnew body")


def test_a_right_content_length_line_is_kept_where_and_as_it_was() -> None:
    data = load("wsinv")  # "Content-Length   : 150" in the middle of the headers
    out = parse_message(data).to_bytes()
    assert b"\r\nContent-Length   : 150\r\ncseq: 0009\r\n" in out
    assert out.count(b"Content-Length") == 1


def test_a_right_content_length_with_leading_zeros_is_kept_as_written() -> None:
    # 1*DIGIT: "0040" is 40; an untouched line that is right is not rewritten or moved.
    data = load("invut").replace(b"Content-Length: 40\r\n", b"Content-Length: 0040\r\n")
    assert parse_message(data).to_bytes() == data


def test_duplicate_content_lengths_in_the_model_are_written_once() -> None:
    req = Request("OPTIONS", "sip:a@example.com", [
        Field("content-length", "Content-Length", "3"),
        Field("content-length", "l", "3"),
    ], b"abc")
    assert header_lines(req.to_bytes()) == [b"OPTIONS sip:a@example.com SIP/2.0",
                                            b"Content-Length: 3"]


# -- edits rewrite only the lines they touch ------------------------------------------------


def wsinv() -> tuple[Request, list[bytes]]:
    msg = parse_message(load("wsinv"))
    assert isinstance(msg, Request)
    return msg, header_lines(msg.to_bytes())


def test_prepend_adds_one_line_and_leaves_every_other_line_alone() -> None:
    msg, before = wsinv()
    msg.prepend("via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsg1")
    after = header_lines(msg.to_bytes())
    # Right before the first Via line (§16.6 step 8: before the existing Via values);
    # wsinv's first Via comes after To, From, Max-Forwards...
    i = next(i for i, line in enumerate(before) if line.startswith(b"Via  :"))
    assert after == [*before[:i], b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsg1", *before[i:]]
    assert msg.top_via.branch == "z9hG4bKsg1"  # the cached top Via followed the edit


def test_prepend_of_a_new_header_goes_after_the_last_via() -> None:
    msg, before = wsinv()
    msg.prepend("record-route", "<sip:127.0.0.1:5060;lr>")
    after = header_lines(msg.to_bytes())
    last_via = max(i for i, line in enumerate(before) if line.lower().startswith((b"via", b"v:")))
    assert after == [*before[: last_via + 1], b"Record-Route: <sip:127.0.0.1:5060;lr>",
                     *before[last_via + 1 :]]


def test_pop_first_removes_a_single_valued_line_whole() -> None:
    msg, before = wsinv()
    assert msg.pop_first("via") == "SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw"
    after = header_lines(msg.to_bytes())
    assert after == [line for line in before if not line.startswith(b"Via  :")]


def test_pop_first_of_a_multi_valued_line_rewrites_only_that_line() -> None:
    msg, before = wsinv()
    msg.pop_first("via")
    popped = msg.pop_first("via")
    assert popped is not None and popped.startswith("SIP  / 2.0  / TCP     spindle.example.com")
    after = header_lines(msg.to_bytes())
    i = next(i for i, line in enumerate(before) if line.startswith(b"v:"))
    expected = [line for line in before if not line.startswith(b"Via  :")]
    j = expected.index(before[i])
    expected[j] = b"v: SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239"
    assert after == expected
    assert msg.top_via.host == "192.168.255.111"


def test_pop_first_of_an_absent_header_changes_nothing() -> None:
    msg, before = wsinv()
    assert msg.pop_first("record-route") is None
    assert header_lines(msg.to_bytes()) == before


def test_replace_first_rewrites_only_the_first_line_of_that_header() -> None:
    msg, before = wsinv()
    msg.replace_first("via", "SIP/2.0/UDP 192.0.2.2;branch=390skdjuw;received=192.0.2.99")
    after = header_lines(msg.to_bytes())
    i = next(i for i, line in enumerate(before) if line.startswith(b"Via  :"))
    new = b"Via: SIP/2.0/UDP 192.0.2.2;branch=390skdjuw;received=192.0.2.99"
    assert after == [*before[:i], new, *before[i + 1 :]]
    assert msg.top_via.received == "192.0.2.99"


def test_set_rewrites_the_line_in_place_with_our_spelling() -> None:
    msg, before = wsinv()
    msg.set("max-forwards", "67")
    after = header_lines(msg.to_bytes())
    i = before.index(b"MaX-fOrWaRdS: 0068")
    assert after == [*before[:i], b"Max-Forwards: 67", *before[i + 1 :]]


def test_set_keeps_one_line_when_the_header_had_several() -> None:
    msg, before = wsinv()
    msg.set("via", "SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKone")
    after = header_lines(msg.to_bytes())
    i = next(i for i, line in enumerate(before) if line.startswith(b"Via  :"))
    expected = [*before[:i], b"Via: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKone", *before[i + 1 :]]
    assert after == [line for line in expected if not line.startswith(b"v:")]


def test_set_of_an_absent_header_appends_it() -> None:
    msg, before = wsinv()
    msg.set("x-new", "1")
    assert header_lines(msg.to_bytes()) == [*before, b"X-New: 1"]


def test_remove_drops_every_line_of_that_header_and_nothing_else() -> None:
    msg, before = wsinv()
    assert msg.remove("via") == 2
    assert msg.remove("route") == 1
    assert msg.remove("record-route") == 0
    after = header_lines(msg.to_bytes())
    assert after == [line for line in before
                     if not line.startswith((b"Via  :", b"v:", b"Route:"))]


def test_copy_is_independent_of_the_original() -> None:
    msg, before = wsinv()
    dup = msg.copy()
    dup.set("max-forwards", "67")
    dup.prepend("via", "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKc")
    assert header_lines(msg.to_bytes()) == before
    assert msg.header("max-forwards") == "0068"


# -- make_response (RFC 3261 §8.2.6.2) ------------------------------------------------------


COPIED = (b"via", b"v:", b"from", b"to", b"call-id", b"i:", b"cseq")


def copied_lines(data: bytes) -> list[bytes]:
    return [line for line in header_lines(data)[1:] if line.lower().startswith(COPIED)]


def test_make_response_copies_via_from_to_call_id_cseq_lines_as_received() -> None:
    req, _ = wsinv()
    resp = make_response(req, 404, "Not Found", to_tag="abc")
    out = resp.to_bytes()
    lines = header_lines(out)
    assert lines[0] == b"SIP/2.0 404 Not Found"
    # wsinv's To already has a tag: nothing is added; every copied line is byte-identical,
    # folding and odd spacing included, and nothing else is copied.
    assert lines[1:-1] == copied_lines(load("wsinv"))
    assert lines[-1] == b"Content-Length: 0"
    assert out.endswith(b"\r\n\r\n")


def test_make_response_adds_a_to_tag_and_touches_only_the_to_line() -> None:
    data = load("esc01")
    req = parse_message(data)
    assert isinstance(req, Request) and req.to_tag is None
    resp = make_response(req, 180, "Ringing", to_tag="t1")
    lines = header_lines(resp.to_bytes())[1:-1]
    expected = [b"To: sip:%75se%72@example.com;tag=t1" if line.startswith(b"To:") else line
                for line in copied_lines(data)]
    assert lines == expected
    assert resp.to_tag == "t1" and resp.from_tag == "938"
    assert parse_message(resp.to_bytes()).to_bytes() == resp.to_bytes()


def test_make_response_without_a_tag_keeps_the_to_line() -> None:
    data = load("esc01")
    resp = make_response(parse_message(data), 100, "Trying")  # type: ignore[arg-type]
    assert header_lines(resp.to_bytes())[1:-1] == copied_lines(data)


def test_make_response_appends_extra_headers_and_a_body() -> None:
    req = parse_message(load("bext01"))
    resp = make_response(req, 420, "Bad Extension", to_tag="x",  # type: ignore[arg-type]
                         extra=[("unsupported", "a, b"), ("X-Why", "test")], body=b"hi")
    lines = header_lines(resp.to_bytes())
    assert lines[-3:] == [b"Unsupported: a, b", b"X-Why: test", b"Content-Length: 2"]
    assert resp.to_bytes().endswith(b"\r\n\r\nhi")


def test_make_response_keeps_compact_names_as_the_request_wrote_them() -> None:
    data = load("dblreq")  # "I: dblreq..." for Call-ID
    resp = make_response(parse_message(data), 200, "OK", to_tag="r")  # type: ignore[arg-type]
    assert b"\r\nI: dblreq.0ha0isndaksdj99sdfafnl3lk233412\r\n" in resp.to_bytes()


# -- serialize ∘ parse is the identity on what we build ------------------------------------


def comparable(fields: list[Field]) -> list[tuple[str, str, str]]:
    return [(f.key, f.name, f.value.strip(" \t")) for f in fields if f.key != "content-length"]


@PROPERTY
@given(messages)
def test_parse_of_to_bytes_serialises_to_the_same_bytes(msg: Request | Response) -> None:
    wire = msg.to_bytes()
    for datagram in (True, False):
        parsed = parse_message(wire, datagram=datagram)
        assert parsed.to_bytes() == wire
        assert type(parsed) is type(msg)
        assert parsed.start_line() == msg.start_line()
        assert parsed.body == msg.body
        assert comparable(parsed.fields) == comparable(msg.fields)
        assert [int(v) for v in parsed.headers("content-length")] == [len(msg.body)]
        # ...and the values routing reads come back as built.
        assert parsed.call_id == msg.header("call-id")
        assert parsed.cseq == msg.cseq
        assert parsed.top_via == msg.top_via
        assert (parsed.from_tag, parsed.to_tag) == (msg.from_tag, msg.to_tag)


def test_replacing_the_top_via_keeps_it_parsed_and_the_transaction_key_when_only_params_change():
    from sipgw.sip.transaction import server_key

    req = parse_message(
        b"REGISTER sip:example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/WS abc.invalid;branch=z9hG4bK-1, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-0\r\n"
        b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: c\r\n"
        b"CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")
    key = server_key(req)
    via = req.top_via.with_param("received", "198.51.100.4").with_param("rport", "5070")
    req.replace_top_via(via)
    assert req.top_via is via and server_key(req) is key
    assert req.values("via") == [
        "SIP/2.0/WS abc.invalid;branch=z9hG4bK-1;received=198.51.100.4;rport=5070",
        "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-0"]
    # Another branch is another transaction: the key is computed again.
    req.replace_top_via(via.with_param("branch", "z9hG4bK-2"))
    assert server_key(req)[0] == "z9hG4bK-2"
