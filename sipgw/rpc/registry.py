"""RPC methods declared once, beside their owner (STYLE.md habit 8).

An owner (the dispatcher, the stats, the websocket flows...) marks its methods::

    class Dispatcher:
        @rpc("dispatcher.list", help="Destinations with their state, as Kamailio prints them.")
        def rpc_list(self) -> dict: ...

and the control server collects them from the objects it is given with ``methods_of``.
A handler may return a value or a Twisted Deferred; it raises ``RpcError`` for a bad call.
Standard library only: the declarations are importable without Twisted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_ATTR = "__sipgw_rpc__"


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcMethod:
    name: str
    help: str
    handler: Callable[..., Any]


class RpcError(Exception):
    """A call the method cannot serve; ``code`` follows JSON-RPC 2.0 (-32602 bad params)."""

    def __init__(self, message: str, *, code: int = -32602) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def rpc(name: str, *, help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method as the handler of RPC method ``name``."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, _ATTR, (name, help))
        return fn

    return mark


def methods_of(*owners: object) -> dict[str, RpcMethod]:
    """Every ``@rpc`` method of the given objects, bound, by name; a name twice is a bug."""
    out: dict[str, RpcMethod] = {}
    for owner in owners:
        for attr in dir(type(owner)):
            fn = getattr(type(owner), attr, None)
            mark = getattr(fn, _ATTR, None)
            if mark is None:
                continue
            name, help_text = mark
            if name in out:
                raise ValueError(f"RPC method {name} declared twice")
            out[name] = RpcMethod(name=name, help=help_text, handler=getattr(owner, attr))
    return out
