"""A bounded poll, for tests that wait on another process (SIPp, sipgw) to get somewhere."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

PAUSE = 0.05  # between looks: short against the seconds the awaited processes take


class Describes(Protocol):
    def describe(self) -> str: ...


def wait_until(predicate: Callable[[], object], *, timeout: float, what: str,
               caller: Describes) -> None:
    """Return once ``predicate()`` is true; fail after ``timeout`` seconds with ``what`` and
    what ``caller`` (the process driving the load) has to say."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}\n{caller.describe()}"
        time.sleep(PAUSE)
