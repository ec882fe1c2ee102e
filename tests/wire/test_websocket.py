"""RFC 6455 codec: frames round-trip in every length form, bad frames are named, and the
handshake pieces match the RFC's own example."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipgw.wire import websocket as ws
from sipgw.wire.websocket import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    Frame,
    FrameDecoder,
    ProtocolError,
)

# RFC 6455 §1.3: the sample nonce and the answer the RFC works out for it.
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# Each boundary of the three length forms (7-bit, 16-bit, 64-bit), on both sides.
LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 70001]


def feed_all(decoder: FrameDecoder, data: bytes, step: int | None) -> list[Frame]:
    """``data`` fed whole (``step`` None) or ``step`` bytes at a time."""
    if step is None:
        return decoder.feed(data)
    out: list[Frame] = []
    for i in range(0, len(data), step):
        out += decoder.feed(data[i:i + step])
    return out


def test_the_accept_key_is_the_rfc_example():
    assert ws.accept_key(RFC_KEY) == RFC_ACCEPT


def test_a_new_key_is_16_random_bytes_in_base64():
    keys = {ws.new_key() for _ in range(20)}
    assert len(keys) == 20
    assert all(len(k) == 24 and k.endswith("==") for k in keys)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("mask", [False, True, b"\x01\x80\xfe\x7f"])
@pytest.mark.parametrize("step", [None, 1, 1000])
def test_a_frame_round_trips_in_every_length_form(length, mask, step):
    payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    data = ws.encode_frame(BINARY, payload, mask=mask)
    header = 2 + (0 if length < 126 else 2 if length < 65536 else 8) + (4 if mask else 0)
    assert len(data) == header + length
    assert data[1] & 0x7F == (length if length < 126 else 126 if length < 65536 else 127)
    assert bool(data[1] & 0x80) == (mask is not False)
    if step == 1 and length > 1000:
        step = 997  # byte by byte through 70 kB says nothing more, slowly
    decoder = FrameDecoder(masked=mask is not False)
    assert feed_all(decoder, data, step) == [Frame(BINARY, payload)]
    assert decoder.buffered == b""


@pytest.mark.parametrize("opcode", [TEXT, BINARY, CLOSE, PING, PONG])
@pytest.mark.parametrize("mask", [False, True])
def test_every_opcode_round_trips(opcode, mask):
    payload = ws.close_payload(1000, b"bye") if opcode == CLOSE else b"\x00hello\xff"
    (frame,) = FrameDecoder().feed(ws.encode_frame(opcode, payload, mask=mask))
    assert (frame.opcode, frame.payload, frame.fin) == (opcode, payload, True)
    assert frame.close_code == (1000 if opcode == CLOSE else None)


# RFC 6455 §5.7's examples, byte for byte: (what, frame, its bytes).
_KEY = b"\x37\xfa\x21\x3d"
RFC_EXAMPLES = [
    ("unmasked text", dict(opcode=TEXT, payload=b"Hello"), "81 05 48 65 6c 6c 6f"),
    ("masked text", dict(opcode=TEXT, payload=b"Hello", mask=_KEY),
     "81 85 37 fa 21 3d 7f 9f 4d 51 58"),
    ("first fragment", dict(opcode=TEXT, payload=b"Hel", fin=False), "01 03 48 65 6c"),
    ("last fragment", dict(opcode=CONTINUATION, payload=b"lo"), "80 02 6c 6f"),
    ("unmasked ping", dict(opcode=PING, payload=b"Hello"), "89 05 48 65 6c 6c 6f"),
    ("masked pong", dict(opcode=PONG, payload=b"Hello", mask=_KEY),
     "8a 85 37 fa 21 3d 7f 9f 4d 51 58"),
    ("256 bytes", dict(opcode=BINARY, payload=b"\xab" * 256), "82 7e 01 00" + " ab" * 256),
    ("64 KiB", dict(opcode=BINARY, payload=b"\xab" * 65536),
     "82 7f 00 00 00 00 00 01 00 00" + " ab" * 65536),
]


@pytest.mark.parametrize("what,frame,wire", RFC_EXAMPLES, ids=[e[0] for e in RFC_EXAMPLES])
def test_the_rfc_examples_encode_and_decode_byte_for_byte(what, frame, wire):
    data = bytes.fromhex(wire)
    assert ws.encode_frame(**frame) == data
    assert ws.decode_frame(data) == (Frame(frame["opcode"], frame["payload"],
                                           frame.get("fin", True)), len(data))


def test_masking_is_the_xor_with_the_key_repeated_and_undoes_itself():
    payload = bytes(range(256)) * 3 + b"odd"
    key = b"\x01\x80\xfe\x7f"
    masked = ws.apply_mask(payload, key)
    assert masked == bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert ws.apply_mask(masked, key) == payload
    assert ws.apply_mask(b"", key) == b""


def test_a_fragmented_message_with_a_ping_between_comes_out_frame_by_frame():
    data = (ws.encode_frame(TEXT, b"one ", fin=False, mask=True)
            + ws.encode_frame(PING, b"?", mask=True)
            + ws.encode_frame(CONTINUATION, b"two ", fin=False, mask=True)
            + ws.encode_frame(CONTINUATION, b"three", mask=True)
            + ws.encode_frame(TEXT, b"next", mask=True))
    expected = [Frame(TEXT, b"one ", fin=False), Frame(PING, b"?"),
                Frame(CONTINUATION, b"two ", fin=False), Frame(CONTINUATION, b"three"),
                Frame(TEXT, b"next")]
    for step in (None, 1, 3):
        assert feed_all(FrameDecoder(masked=True), data, step) == expected


def test_what_follows_a_frame_waits_for_the_rest_of_its_own():
    first, second = ws.encode_frame(TEXT, b"a" * 300), ws.encode_frame(TEXT, b"b" * 300)
    decoder = FrameDecoder()
    assert decoder.feed(first + second[:3]) == [Frame(TEXT, b"a" * 300)]
    assert decoder.buffered == second[:3]
    assert decoder.feed(second[3:]) == [Frame(TEXT, b"b" * 300)]


def test_decode_frame_says_where_the_next_frame_starts():
    data = ws.encode_frame(PING, b"x") + ws.encode_frame(PONG, b"yz")
    frame, end = ws.decode_frame(data)
    assert (frame, end) == (Frame(PING, b"x"), 3)
    assert ws.decode_frame(data, end) == (Frame(PONG, b"yz"), len(data))
    assert ws.decode_frame(data[:4], end) is None


BAD = [
    ("length 5 in the 16-bit form", b"\x81\x7e\x00\x05" + b"x" * 5),
    ("length 65535 in the 64-bit form", b"\x82\x7f" + struct.pack("!Q", 65535)),
    ("64-bit length with its most significant bit set", b"\x82\x7f" + b"\x80" + b"\0" * 7),
    ("RSV bits 0b100 set", bytes((0xC1, 0))),
    ("RSV bits 0b011 set", bytes((0xB1, 0))),
    ("reserved opcode 0x3", bytes((0x83, 0))),
    ("reserved opcode 0xb", bytes((0x8B, 0))),
    ("a ping frame in fragments", bytes((0x09, 0))),
    ("a close frame of 126 bytes", ws.encode_frame(CLOSE, b"\3\xe8" + b"x" * 124)),
    ("a pong frame of 200 bytes", ws.encode_frame(PONG, b"x" * 200)),
    ("a close frame with a 1-byte body", ws.encode_frame(CLOSE, b"\3")),
    ("a continuation frame with no fragmented message",
     ws.encode_frame(CONTINUATION, b"more")),
    ("a binary frame inside a fragmented message",
     ws.encode_frame(TEXT, b"a", fin=False) + ws.encode_frame(BINARY, b"b")),
]


@pytest.mark.parametrize("why,data", BAD, ids=[why for why, _ in BAD])
@pytest.mark.parametrize("step", [None, 1])
def test_a_frame_against_the_rfc_is_refused_with_what_is_wrong(why, data, step):
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match=why) as caught:
        feed_all(decoder, data, step)
    assert caught.value.close_code == 1002
    with pytest.raises(ProtocolError, match=why):  # the stream stays refused
        decoder.feed(ws.encode_frame(TEXT, b"fine"))


def test_each_end_refuses_the_masking_of_the_other():
    with pytest.raises(ProtocolError, match="an unmasked frame from a client"):
        FrameDecoder(masked=True).feed(ws.encode_frame(TEXT, b"x"))
    with pytest.raises(ProtocolError, match="a masked frame from a server"):
        FrameDecoder(masked=False).feed(ws.encode_frame(TEXT, b"x", mask=True))


def test_a_frame_over_the_limit_is_refused_from_its_header_with_1009():
    decoder = FrameDecoder(max_payload=1000)
    assert decoder.feed(ws.encode_frame(TEXT, b"x" * 1000)) == [Frame(TEXT, b"x" * 1000)]
    with pytest.raises(ProtocolError, match="a frame of 1001 bytes") as caught:
        decoder.feed(ws.encode_frame(TEXT, b"x" * 1001)[:4])  # the header alone
    assert caught.value.close_code == 1009


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=300), st.integers(1, 40))
def test_any_bytes_are_frames_or_a_protocol_error_never_anything_else(data, step):
    decoder = FrameDecoder()
    try:
        frames = feed_all(decoder, data, step)
    except ProtocolError:
        return
    assert all(isinstance(f, Frame) for f in frames)
    # Whatever was taken as frames encodes back, unmasked, to a stream that reads the same.
    again = b"".join(ws.encode_frame(f.opcode, f.payload, fin=f.fin) for f in frames)
    assert FrameDecoder().feed(again) == frames


@settings(deadline=None, max_examples=200)
@given(st.lists(st.tuples(st.sampled_from([TEXT, BINARY, PING, PONG]),
                          st.binary(max_size=125), st.booleans()), max_size=8),
       st.integers(1, 64))
def test_frames_split_anywhere_come_out_the_same(frames, step):
    data = b"".join(ws.encode_frame(op, p, mask=m) for op, p, m in frames)
    assert feed_all(FrameDecoder(), data, step) == [Frame(op, p) for op, p, _ in frames]


# -- the opening handshake ----------------------------------------------------------------


def test_the_request_carries_the_headers_a_browser_sends_for_sip():
    request = ws.handshake_request(host="127.0.0.1:8080", key=RFC_KEY, path="/ws?u=1",
                                   origin="https://phone.example.com",
                                   headers=("User-Agent: test",))
    assert request == (b"GET /ws?u=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
                       b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n"
                       b"Origin: https://phone.example.com\r\nUser-Agent: test\r\n\r\n")


def test_a_header_given_as_none_is_left_out():
    request = ws.handshake_request(host="a", key=None, protocol=None, version=None)
    assert b"Sec-WebSocket" not in request and request.startswith(b"GET / HTTP/1.1\r\n")


def test_the_101_built_for_a_key_is_one_the_client_accepts():
    data = ws.handshake_response(RFC_KEY) + ws.encode_frame(TEXT, b"first")
    assert ws.parse_response(data[:20]) is None
    response, rest = ws.parse_response(data)
    assert (response.status, response.reason) == (101, "Switching Protocols")
    assert response.header("sec-websocket-accept") == RFC_ACCEPT
    assert response.header("Sec-WebSocket-Protocol") == "sip"
    assert response.accepts(RFC_KEY) and not response.accepts(ws.new_key())
    assert FrameDecoder(masked=False).feed(rest) == [Frame(TEXT, b"first")]


def test_a_refusal_is_parsed_and_not_accepted():
    response, rest = ws.parse_response(
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
    assert (response.status, response.reason, rest) == (403, "Forbidden", b"nope")
    assert response.header("content-length") == "4"
    assert not response.accepts(RFC_KEY)


@pytest.mark.parametrize("head", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 OK\r\n\r\n",
                                  b"\r\n\r\n"])
def test_an_answer_that_is_not_http_is_a_protocol_error(head):
    with pytest.raises(ProtocolError, match="not an HTTP answer"):
        ws.parse_response(head)
