"""Give memory freed after a burst back to the system.

CPython keeps small objects in its own arenas and hands everything above 512 bytes (every
SIP message's bytes and strings) to the C library's malloc, which keeps freed memory in
its heap for reuse: after a flood or a registration storm the RSS stays at its peak for
good, although the objects are gone. ``malloc_trim(0)`` (glibc) returns the free pages
at the top of the heap and inside it. It walks the heap, so it runs once a minute, not
per message; on a C library without it this is a no-op.

Measured on the fuzz run (``bench/fuzz.py --parser 0 --proxy 100000``, 2 x 100,000
messages): without the trim sipgw ends 21.7 MB above its start RSS, its peak; with it
1.7-2.3 MB (/proc/PID/smaps: 0.7 MB of it in the heap, the rest in pymalloc's arenas,
kept by the registrations, dialogs and bounded caches made during the run). Nothing
else is worth tuning: sipgw runs one thread, so there are no other malloc arenas to cap
(M_ARENA_MAX), and sending 64 kB and larger blocks to mmap (M_MMAP_THRESHOLD) lowered the
peak but not the end (+1.77 MB), at the price of a system call per such buffer.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

INTERVAL = 60.0  # seconds between trims


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_trim = _malloc_trim()


def trim() -> bool:
    """Return free heap memory to the system now; True if some was."""
    return bool(_trim(0)) if _trim is not None else False


def start_trimming(clock: IReactorTime, interval: float = INTERVAL) -> LoopingCall:
    loop = LoopingCall(trim)
    loop.clock = clock
    loop.start(interval, now=False)
    return loop
