"""Make autobahn's debug-log arguments lazy.

autobahn builds the arguments of its debug lines before the logger can say the level is
off: ``hltype(...)``/``hlval(...)`` run click.style for every frame received and every
frame sent, and several times per connection. In a py-spy profile of bench/ws.py that was
about a tenth of sipgw's CPU per WebSocket registration, for lines nobody reads. The
helpers are swapped, in the autobahn modules that call them, for ones that return an
object formatting itself only when a line is really written: the text is the same when
debug logging is on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import autobahn.twisted.websocket
import autobahn.websocket.protocol
from autobahn import util

_CALLERS = (autobahn.websocket.protocol, autobahn.twisted.websocket)


class _Lazy:
    __slots__ = ("fn", "args", "kwargs")

    def __init__(self, fn: Callable[..., str], args: tuple, kwargs: dict) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def __str__(self) -> str:
        return self.fn(*self.args, **self.kwargs)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _lazy(fn: Callable[..., str]) -> Callable[..., Any]:
    def deferred(*args: Any, **kwargs: Any) -> _Lazy:
        return _Lazy(fn, args, kwargs)

    deferred.__wrapped__ = fn  # type: ignore[attr-defined]
    return deferred


def install() -> None:
    """Idempotent: the autobahn modules call the lazy helpers from now on."""
    for module in _CALLERS:
        for name in ("hltype", "hlval"):
            if getattr(module, name, None) is getattr(util, name):
                setattr(module, name, _lazy(getattr(util, name)))
