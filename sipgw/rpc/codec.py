"""JSON-RPC 2.0 (https://www.jsonrpc.org/specification), one message per line.

The control socket speaks newline-delimited JSON: each line is a request, a notification or
a batch (a JSON array of them); each answer is one line. A stream (``trace.subscribe``) is a
response followed by notifications from the server, one per line.

Pure: bytes in, values out, and the reverse. No sockets, no Twisted.

Rules kept from the specification:

* a line that is not JSON gets a parse error (-32700) with ``id: null``;
* a value that is not a request object gets an invalid request error (-32600);
* a notification (no ``id``) gets no answer, even when it fails;
* an empty batch is an invalid request; a batch of only notifications gets no answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

_NO_ID = object()  # a notification: the "id" member is absent


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One request (or notification) taken from a line."""

    method: str
    params: list[Any] | dict[str, Any]
    id: Any = _NO_ID

    @property
    def is_notification(self) -> bool:
        return self.id is _NO_ID


@dataclass(frozen=True, slots=True, kw_only=True)
class BadCall:
    """An element that is not a valid request: answered with ``error`` under ``id``."""

    id: Any
    code: int
    message: str


class ProtocolError(Exception):
    """What the peer sent is not JSON-RPC 2.0 (client side)."""


class RemoteError(Exception):
    """The server answered with an error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.data = data


# -- server side ---------------------------------------------------------------------------


def decode_requests(line: bytes | str) -> tuple[list[Call | BadCall], bool]:
    """A line → its calls, and whether it was a batch.

    Never raises: what cannot be understood becomes a ``BadCall`` to answer.
    """
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return [BadCall(id=None, code=PARSE_ERROR, message="Parse error: not JSON")], False
    if isinstance(value, list):
        if not value:
            empty = BadCall(id=None, code=INVALID_REQUEST, message="Invalid Request: empty batch")
            return [empty], False
        return [_one(item) for item in value], True
    return [_one(value)], False


def _one(value: Any) -> Call | BadCall:
    if not isinstance(value, dict):
        return BadCall(id=None, code=INVALID_REQUEST, message="Invalid Request: not an object")
    rid = value.get("id", _NO_ID)
    shown_id = None if rid is _NO_ID else rid
    if rid is not _NO_ID and (
        isinstance(rid, bool) or not (rid is None or isinstance(rid, (str, int, float)))
    ):
        return BadCall(id=None, code=INVALID_REQUEST, message="Invalid Request: bad id")
    if value.get("jsonrpc") != "2.0":
        return BadCall(id=shown_id, code=INVALID_REQUEST,
                       message='Invalid Request: "jsonrpc" must be "2.0"')
    method = value.get("method")
    if not isinstance(method, str) or not method:
        return BadCall(id=shown_id, code=INVALID_REQUEST,
                       message='Invalid Request: "method" must be a string')
    params = value.get("params", [])
    if not isinstance(params, (list, dict)):
        return BadCall(id=shown_id, code=INVALID_REQUEST,
                       message='Invalid Request: "params" must be an array or an object')
    return Call(method=method, params=params, id=rid)


def result(rid: Any, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "result": value, "id": rid}


def error(rid: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": rid}


def notification(method: str, params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def encode(message: Any) -> bytes:
    """One message (or a batch list) as one line. Non-JSON values are shown as strings."""
    return json.dumps(message, separators=(",", ":"), default=str,
                      ensure_ascii=False).encode("utf-8") + b"\n"


# -- client side ---------------------------------------------------------------------------


def request(method: str, params: list[Any] | dict[str, Any] | None, rid: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": [] if params is None else params,
            "id": rid}


def decode_message(line: bytes | str) -> dict[str, Any]:
    """A line from the server → the object; ProtocolError when it is not JSON-RPC."""
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(value, dict) or value.get("jsonrpc") != "2.0":
        raise ProtocolError("not a JSON-RPC 2.0 message")
    return value


def unwrap(message: dict[str, Any]) -> Any:
    """A response's result, or RemoteError with its code and message."""
    if "error" in message:
        err = message["error"]
        if not isinstance(err, dict):
            raise ProtocolError("error member is not an object")
        raise RemoteError(int(err.get("code", INTERNAL_ERROR)), str(err.get("message", "")),
                          err.get("data"))
    if "result" not in message:
        raise ProtocolError("neither result nor error")
    return message["result"]
