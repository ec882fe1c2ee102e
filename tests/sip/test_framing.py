"""``StreamFramer``: a TCP/TLS byte stream cut into messages by Content-Length (§18.3).

Whatever the chunking (whole, byte by byte, at every boundary, at random), the same
messages come out in the same order; CRLFCRLF is a keepalive ``PING`` and a lone CRLF is
swallowed (RFC 5626 §4.4.1); a stream whose framing cannot be trusted raises
``FramingError`` with the status to answer, before more than the limit is buffered.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipgw.sip.errors import FramingError, ParseError
from sipgw.sip.framing import PING, StreamFramer
from sipgw.sip.message import Request, Response
from sipgw.sip.parser import Limits, parse_message
from tests.helpers.strategies import messages, mutated_torture
from tests.helpers.torture import load, torture_paths

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# RFC 4475 files that are not one whole stream message, and why (each has its own test).
NOT_ONE_STREAM_MESSAGE = {
    "clerr": "Content-Length 9999 with 154 octets: the framer waits for the rest",
    "ncl": "negative Content-Length: a framing error",
    "mcl01": "two different Content-Lengths: a framing error",
    "baddn": "no empty line after the headers: the framer waits",
    "dblreq": "a datagram test: on a stream the trailing octets are more messages",
    "inv2543": "no Content-Length: on a stream the body is not part of the message",
}
STREAMABLE = sorted(set(torture_paths()) - set(NOT_ONE_STREAM_MESSAGE))

OPTIONS = (
    b"OPTIONS sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bKabc\r\n"
    b"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
    b"Call-ID: framing-1\r\nCSeq: 1 OPTIONS\r\n"
)


def with_body(body: bytes, head: bytes = OPTIONS, length: str | None = None) -> bytes:
    cl = str(len(body)) if length is None else length
    return head + f"Content-Length: {cl}\r\n\r\n".encode("latin-1") + body


def feed_all(chunks: list[bytes], framer: StreamFramer | None = None) -> list[bytes | str]:
    framer = framer or StreamFramer()
    out: list[bytes | str] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def framing_error(chunks: list[bytes], limits: Limits | None = None) -> FramingError:
    framer = StreamFramer(limits) if limits else StreamFramer()
    with pytest.raises(FramingError) as err:
        feed_all(chunks, framer)
    return err.value


# -- the RFC 4475 messages over a stream -----------------------------------------------------


def test_torture_exceptions_are_named_and_the_rest_are_streamable() -> None:
    assert set(NOT_ONE_STREAM_MESSAGE) <= set(torture_paths())
    assert len(STREAMABLE) == 43


@pytest.mark.parametrize("name", STREAMABLE)
def test_torture_message_is_one_message_whole_and_byte_by_byte(name: str) -> None:
    data = load(name)
    assert feed_all([data]) == [data]
    assert feed_all(byte_by_byte(data)) == [data]


@pytest.mark.parametrize("name", STREAMABLE)
def test_torture_message_split_at_every_byte_boundary_is_one_message(name: str) -> None:
    data = load(name)
    for i in range(len(data) + 1):
        framer = StreamFramer()
        assert framer.feed(data[:i]) + framer.feed(data[i:]) == [data], i
        assert framer.buffered == 0


def test_every_streamable_torture_message_pipelined_in_one_stream() -> None:
    stream = [load(name) for name in STREAMABLE]
    joined = b"".join(stream)
    assert feed_all([joined]) == stream
    assert feed_all(byte_by_byte(joined)) == stream


@pytest.mark.parametrize("name", STREAMABLE)
def test_framed_torture_message_parses_as_the_datagram_does(name: str) -> None:
    (framed,) = feed_all([load(name)])
    assert isinstance(framed, bytes)
    try:
        as_datagram = parse_message(load(name))
    except ParseError as e:
        with pytest.raises(ParseError) as err:
            parse_message(framed, datagram=False)
        assert (err.value.status, err.value.reason) == (e.status, e.reason)
    else:
        assert parse_message(framed, datagram=False).to_bytes() == as_datagram.to_bytes()


def test_clerr_waits_for_the_missing_octets_instead_of_guessing() -> None:
    # RFC 4475 §3.1.2.2: over TCP the message is just incomplete.
    data = load("clerr")
    framer = StreamFramer()
    assert framer.feed(data) == []
    assert framer.buffered == len(data)
    body_so_far = len(data) - data.index(b"\r\n\r\n") - 4
    rest = b"x" * (9999 - body_so_far)
    assert framer.feed(rest[:-1]) == []
    (msg,) = framer.feed(rest[-1:])
    assert msg == data + rest
    assert len(parse_message(msg, datagram=False).body) == 9999


@pytest.mark.parametrize(
    ("name", "reason"),
    [("ncl", "Bad Content-Length header"), ("mcl01", "Conflicting Content-Length headers")],
)
def test_ncl_and_mcl01_are_framing_errors_with_a_400(name: str, reason: str) -> None:
    # RFC 4475 §3.1.2.3, §3.3.9: the framing cannot be recovered; close the connection.
    for chunks in ([load(name)], byte_by_byte(load(name))):
        err = framing_error(chunks)
        assert isinstance(err, ParseError)
        assert (err.status, err.reason) == (400, reason)


def test_baddn_waits_for_its_missing_empty_line() -> None:
    data = load("baddn")
    framer = StreamFramer()
    assert framer.feed(data) == [] and framer.buffered == len(data)
    assert framer.feed(b"\r\n") == [data + b"\r\n"]


def test_dblreq_on_a_stream_is_more_than_one_message() -> None:
    # Only a datagram discards octets past Content-Length (§18.3); RFC 4475 §3.1.1.8 is
    # a UDP test. On a stream the octets after the REGISTER are the next message(s).
    data = load("dblreq")
    out = feed_all([data])
    assert len(out) == 3 and isinstance(out[0], bytes)
    assert out[0].startswith(b"REGISTER") and out[0].endswith(b"Content-Length: 0\r\n\r\n")
    assert isinstance(out[1], bytes) and out[1].startswith(b"INVITE sip:joe@example.com")


def test_inv2543_on_a_stream_has_no_body_and_leaves_its_sdp_waiting() -> None:
    # §18.3: Content-Length is mandatory on streams; without one there is no body.
    data = load("inv2543")
    framer = StreamFramer()
    (head,) = framer.feed(data)
    assert isinstance(head, bytes) and head.endswith(b"Content-Type: application/sdp\r\n\r\n")
    assert parse_message(head, datagram=False).body == b""
    assert framer.buffered == 105


# -- pipelining, keepalives, CRLFs -------------------------------------------------------------


def test_pipelined_messages_come_out_in_order() -> None:
    a, b, c = with_body(b""), with_body(b"hello"), with_body(b"\r\n\r\nINVITE x\r\n\r\n")
    assert feed_all([a + b + c]) == [a, b, c]
    assert feed_all([a + b[:10], b[10:] + c[:1], c[1:]]) == [a, b, c]


def test_body_holding_crlfcrlf_is_framed_by_content_length_not_by_its_content() -> None:
    body = b"\r\n\r\n\r\n\r\nSIP/2.0 200 OK\r\n\r\n"
    assert feed_all(byte_by_byte(with_body(body))) == [with_body(body)]


def test_double_crlf_is_a_ping() -> None:
    assert feed_all([b"\r\n\r\n"]) == [PING]
    assert feed_all([b"\r\n\r\n\r\n\r\n"]) == [PING, PING]
    assert feed_all(byte_by_byte(b"\r\n\r\n")) == [PING]
    assert feed_all([b"\r", b"\n\r\n"]) == [PING]


def test_lone_crlf_is_swallowed() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []  # maybe the first half of a ping: wait
    assert framer.buffered == 2
    msg = with_body(b"")
    assert framer.feed(msg) == [msg]
    assert framer.buffered == 0


def test_pings_and_crlfs_between_messages_keep_their_place() -> None:
    a, b = with_body(b"a"), with_body(b"b")
    stream = b"\r\n\r\n" + a + b"\r\n" + b + b"\r\n\r\n" + a
    expected = [PING, a, b, PING, a]
    assert feed_all([stream]) == expected
    assert feed_all(byte_by_byte(stream)) == expected


@pytest.mark.parametrize("junk", [b"\n", b"\r\r", b"\rX", b"\n\n"])
def test_bare_cr_or_lf_between_messages_is_a_framing_error(junk: bytes) -> None:
    err = framing_error([with_body(b"") + junk + with_body(b"")])
    assert err.reason == "Bad line ending between messages"


# -- Content-Length ----------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", [b"Content-Length: ", b"content-length:", b"CONTENT-LENGTH :",
                                      b"l: ", b"L:", b"l \t: \t"])
def test_content_length_in_any_spelling_frames_the_body(spelling: bytes) -> None:
    data = OPTIONS + spelling + b"5\r\n\r\nhelloNEXT"
    framer = StreamFramer()
    assert framer.feed(data) == [data[:-4]]
    assert framer.buffered == 4


def test_folded_content_length_frames_as_the_parser_reads_it() -> None:
    data = OPTIONS + b"Content-Length:\r\n   5\r\nX-After: 1\r\n\r\nhello"
    assert feed_all([data + data]) == [data, data]
    assert parse_message(data, datagram=False).body == b"hello"


def test_no_content_length_on_a_stream_means_no_body() -> None:
    assert feed_all([OPTIONS + b"\r\n" + with_body(b"")]) == [OPTIONS + b"\r\n", with_body(b"")]


@pytest.mark.parametrize(
    "value", ["abc", "-999", "1e3", "+5", "5 5", "1234567890", "", "\u00b2", "5\x0b", "0x10"]
)
def test_malformed_content_length_is_a_framing_error(value: str) -> None:
    err = framing_error([with_body(b"", length=value)])
    assert (err.status, err.reason) == (400, "Bad Content-Length header")


def test_two_different_content_lengths_are_a_framing_error() -> None:
    data = OPTIONS + b"l: 5\r\nContent-Length: 6\r\n\r\nhello!"
    assert framing_error([data]).reason == "Conflicting Content-Length headers"


def test_two_equal_content_lengths_frame_and_the_parser_refuses_the_duplicate() -> None:
    data = OPTIONS + b"l: 5\r\nContent-Length: 5\r\n\r\nhello"
    assert feed_all([data]) == [data]
    with pytest.raises(ParseError) as err:
        parse_message(data, datagram=False)
    assert err.value.reason == "Duplicate Content-Length header"


def test_content_length_with_leading_zeros_is_its_number() -> None:
    data = with_body(b"hello", length="0005")
    assert feed_all([data + data]) == [data, data]


# -- limits: refuse before buffering past them ---------------------------------------------------


def test_header_section_past_the_limit_is_a_513_before_more_is_buffered() -> None:
    limits = Limits(max_message_size=1000)
    framer = StreamFramer(limits)
    head = OPTIONS + b"X-Pad: " + b"p" * 2000
    for i in range(0, 1000, 100):
        assert framer.feed(head[i : i + 100]) == []
    assert framer.buffered == 1000
    with pytest.raises(FramingError) as err:
        framer.feed(head[1000:1001])
    assert (err.value.status, err.value.reason) == (513, "Message too large")


def test_header_section_within_the_default_limit_is_buffered_then_one_more_octet_is_513() -> None:
    framer = StreamFramer()
    head = OPTIONS + b"X-Pad: " + b"p" * (65535 - len(OPTIONS) - 7)
    assert len(head) == 65535
    assert framer.feed(head) == []
    with pytest.raises(FramingError) as err:
        framer.feed(b"p")
    assert err.value.status == 513


def test_body_past_the_limit_is_refused_as_soon_as_the_headers_announce_it() -> None:
    limits = Limits(max_message_size=1000)
    head = OPTIONS + b"Content-Length: 900\r\n\r\n"
    framer = StreamFramer(limits)
    with pytest.raises(FramingError) as err:
        framer.feed(head)  # not one octet of the body has arrived
    assert err.value.status == 513
    assert framer.buffered == len(head)


def test_message_of_exactly_the_limit_is_framed() -> None:
    limits = Limits(max_message_size=1000)
    head = OPTIONS + b"Content-Length: 000\r\n\r\n"
    room = 1000 - len(head)
    data = OPTIONS + f"Content-Length: {room}\r\n\r\n".encode() + b"b" * room
    assert len(data) == 1000
    assert feed_all([data], StreamFramer(limits)) == [data]
    bigger = OPTIONS + f"Content-Length: {room + 1}\r\n\r\n".encode()
    with pytest.raises(FramingError):
        StreamFramer(limits).feed(bigger)


# -- properties --------------------------------------------------------------------------------

separators = st.sampled_from([b"", b"", b"\r\n", b"\r\n\r\n"])


@PROPERTY
@given(st.lists(st.tuples(separators, messages), min_size=1, max_size=3), st.data())
def test_any_chunking_of_a_stream_of_messages_yields_the_same_messages(
    items: list[tuple[bytes, Request | Response]], data: st.DataObject
) -> None:
    stream = b""
    expected: list[bytes | str] = []
    for sep, msg in items:
        wire = msg.to_bytes()
        stream += sep + wire
        expected += ([PING] if sep == b"\r\n\r\n" else []) + [wire]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    framer = StreamFramer()
    assert feed_all(chunks, framer) == expected
    assert framer.buffered == 0
    for wire in expected:
        if wire is not PING:
            assert parse_message(wire, datagram=False).to_bytes() == wire  # type: ignore[arg-type]


def assert_frames_or_raises_a_protocol_error(data: bytes, cuts: list[int]) -> None:
    cuts = sorted(c % (len(data) + 1) for c in cuts)
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    framer = StreamFramer()
    try:
        out = feed_all(chunks, framer)
    except FramingError as e:
        assert isinstance(e, ParseError) and e.status in (400, 513)
        return
    for item in out:
        if item is PING:
            continue
        assert isinstance(item, bytes) and item in data
        try:
            msg = parse_message(item, datagram=False)
        except ParseError:
            continue
        assert type(msg) in (Request, Response)


@FUZZ
@given(mutated_torture(), st.lists(st.integers(0, 4000), max_size=6))
def test_mutated_torture_streams_frame_or_raise_a_parse_error(data: bytes, cuts: list[int]) -> None:
    assert_frames_or_raises_a_protocol_error(data, cuts)


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=4))
def test_random_bytes_frame_or_raise_a_parse_error(data: bytes, cuts: list[int]) -> None:
    assert_frames_or_raises_a_protocol_error(data, cuts)
