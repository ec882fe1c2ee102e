"""JSON-RPC 2.0 framing: what a line becomes, and what every kind of bad line gets."""

from __future__ import annotations

import json

import pytest

from sipgw.rpc import codec
from sipgw.rpc.codec import BadCall, Call, RemoteError


def test_a_request_line_becomes_one_call_with_its_id_and_params():
    calls, batch = codec.decode_requests(
        b'{"jsonrpc":"2.0","method":"stats.get_statistics","params":["core:"],"id":7}')
    assert not batch
    assert calls == [Call(method="stats.get_statistics", params=["core:"], id=7)]
    assert not calls[0].is_notification


def test_a_request_without_id_is_a_notification_and_params_default_to_none():
    (call,), _ = codec.decode_requests('{"jsonrpc":"2.0","method":"cfg.reload"}')
    assert call.is_notification
    assert call.params == []


@pytest.mark.parametrize("line", [b"{not json", b"\xff\xfe", b"", b"[1,"])
def test_a_line_that_is_not_json_is_a_parse_error_with_a_null_id(line):
    (bad,), batch = codec.decode_requests(line)
    assert bad == BadCall(id=None, code=codec.PARSE_ERROR, message="Parse error: not JSON")
    assert not batch


@pytest.mark.parametrize("value, rid", [
    ({"method": "x", "id": 1}, 1),  # no "jsonrpc": "2.0"
    ({"jsonrpc": "2.0", "id": 2}, 2),  # no method
    ({"jsonrpc": "2.0", "method": 5, "id": 3}, 3),
    ({"jsonrpc": "2.0", "method": "x", "params": "a", "id": 4}, 4),
    ({"jsonrpc": "2.0", "method": "x", "id": {"an": "object"}}, None),
    ({"jsonrpc": "2.0", "method": "x", "id": True}, None),
    (5, None),
])
def test_a_value_that_is_not_a_request_is_an_invalid_request(value, rid):
    (bad,), _ = codec.decode_requests(json.dumps(value))
    assert isinstance(bad, BadCall)
    assert (bad.code, bad.id) == (codec.INVALID_REQUEST, rid)


def test_a_batch_keeps_its_order_and_its_bad_elements():
    calls, batch = codec.decode_requests(
        '[{"jsonrpc":"2.0","method":"a","id":1}, 1, {"jsonrpc":"2.0","method":"b"}]')
    assert batch
    assert [type(c).__name__ for c in calls] == ["Call", "BadCall", "Call"]
    assert calls[2].is_notification


def test_an_empty_batch_is_one_invalid_request():
    calls, batch = codec.decode_requests("[]")
    assert not batch
    assert calls[0].code == codec.INVALID_REQUEST


def test_answers_are_one_line_each_and_round_trip_through_the_client_side():
    line = codec.encode(codec.result(3, {"uri": "sip:a@b\nc"}))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert codec.unwrap(codec.decode_message(line)) == {"uri": "sip:a@b\nc"}
    err = codec.encode(codec.error(4, codec.METHOD_NOT_FOUND, "Method not found: x"))
    with pytest.raises(RemoteError) as e:
        codec.unwrap(codec.decode_message(err))
    assert (e.value.code, e.value.message) == (-32601, "Method not found: x")


def test_values_json_cannot_carry_are_sent_as_text_rather_than_failing():
    assert json.loads(codec.encode(codec.result(1, {1, 2}.__class__.__name__)))["result"] == "set"
    assert json.loads(codec.encode(codec.result(1, b"x")))["result"] == "b'x'"
