"""A method result that keeps sending: the answer to the call, then notifications.

A streaming method (``trace.subscribe``) returns a ``Stream``. The control server first
answers the call with ``first``, then calls ``start(emit)``; ``emit(method, params)`` sends
one notification line to that client (dropped, and counted, while the client is not
reading). ``stop()`` is called once, when the client goes away. Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Emit = Callable[[str, Any], None]


class Stream:
    def __init__(
        self,
        first: Any,
        start: Callable[[Emit], None],
        stop: Callable[[], None],
    ) -> None:
        self.first = first
        self.start = start
        self.stop = stop
