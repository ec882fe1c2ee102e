"""Logging through ``twisted.logger`` with Kamailio's levels, one line per event.

Kamailio numbers its levels -5 (alert) to 3 (debug); operators set ``log.level`` by name or
by number. Under systemd (``JOURNAL_STREAM`` set) lines carry a ``<N>`` syslog priority
prefix, which journald turns into the entry's priority, and no timestamp of their own.

Logging never stops the proxy: a line that cannot be written (a full disk, a closed pipe)
is dropped and counted (``core:dropped_log_lines``), and the next line that can be written
is preceded by one saying how many were lost. Each line is one ``os.write`` of its own, so
a failed write leaves no half line in a buffer to come out later glued to another. An
output that is a pipe or a socket (journald's stream, ``| tee``) is made non-blocking: a
reader that stops reading costs log lines, never a reactor stuck in ``write``.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import time
from typing import TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    PredicateResult,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import implementer

from sipgw.proxy.stats import StatDef, Stats
from sipgw.rpc.registry import RpcError, rpc

LOG_STATS = (
    StatDef(group="core", name="dropped_log_lines",
            help="log lines that could not be written (disk full, output closed)"),
)

# Kamailio's numbers (L_ALERT .. L_DBG) and the names we accept for them.
LEVELS = {
    "alert": -5,
    "bug": -4,
    "crit": -2,
    "critical": -2,
    "error": -1,
    "err": -1,
    "warning": 0,
    "warn": 0,
    "notice": 1,
    "info": 2,
    "debug": 3,
    "dbg": 3,
}
_TWISTED_TO_KAMAILIO = {
    LogLevel.debug: 3,
    LogLevel.info: 2,
    LogLevel.warn: 0,
    LogLevel.error: -1,
    LogLevel.critical: -2,
}
_NAMES = {3: "DEBUG", 2: "INFO", 1: "NOTICE", 0: "WARNING", -1: "ERROR", -2: "CRITICAL"}
_SYSLOG = {3: 7, 2: 6, 1: 5, 0: 4, -1: 3, -2: 2, -3: 2, -4: 1, -5: 1}


def level_number(level: str | int) -> int:
    """``"info"`` or ``2`` (or ``"2"``) → 2; ValueError names what is accepted.

    As in Kamailio, any number above 3 is debug (``kamcmd log.level 4``, as guides write it).
    """
    if isinstance(level, str):
        text = level.strip().lower()
        if text in LEVELS:
            return LEVELS[text]
        if re.fullmatch(r"-?\d+", text):
            level = int(text)
    if isinstance(level, int) and not isinstance(level, bool) and level >= -5:
        return min(level, LEVELS["debug"])
    raise ValueError(
        f"bad log level {level!r}: use one of error, warning, notice, info, debug or a "
        "number from -5 (3 and above: debug)"
    )


def level_name(number: int) -> str:
    return _NAMES.get(number, str(number)).lower()


@implementer(ILogObserver)
class LineObserver:
    """Writes each event as one line; the threshold can change while running."""

    def __init__(self, out: TextIO, level: int, journald: bool) -> None:
        self.out = out
        self.level = level
        self.journald = journald
        self.stats: Stats | None = None
        self.dropped = 0  # lines lost since the last one written
        self.tag = ""  # "w1 ": the worker a line comes from
        self._why = ""  # the error that lost them
        self._cut = False  # the last write stopped inside a line
        try:
            out.flush()
            self._fd: int | None = out.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None  # an in-memory stream (tests): written as text
        else:
            _never_block(self._fd)

    def predicate(self, event: dict) -> PredicateResult:
        return PredicateResult.maybe if _number(event) <= self.level else PredicateResult.no

    def __call__(self, event: dict) -> None:
        number = _number(event)
        text = formatEvent(event) or ""
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}: {failure.getErrorMessage()}\n{failure.getTraceback()}"
        ns = event.get("log_namespace", "-")
        if ns.startswith("sipgw."):
            ns = ns[6:]
        line = self._line(number, ns, text, event.get("log_time"))
        if self.dropped:
            lost = (f"{self.dropped} log line(s) could not be written ({self._why}); "
                    "writing again")
            line = self._line(0, "log", lost, event.get("log_time")) + line
        try:
            self._write(line)
        except OSError as e:
            # A full disk or a closed pipe must not stop the proxy: count, drop, go on.
            self.dropped += 1
            self._why = e.strerror or type(e).__name__
            if self.stats is not None:
                self.stats.inc("core:dropped_log_lines")
        else:
            self.dropped = 0

    def _line(self, number: int, ns: str, text: str, when: float | None) -> str:
        # One event, one line: journald and grep both rely on it.
        text = text.replace("\n", "\n\t").rstrip()
        tag = self.tag
        if self.journald:
            return f"<{_SYSLOG.get(number, 6)}>{tag}{_NAMES.get(number, 'INFO')} {ns}: {text}\n"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
        return f"{stamp} {tag}{_NAMES.get(number, 'INFO')} {ns}: {text}\n"

    def _write(self, line: str) -> None:
        if self._fd is None:
            self.out.write(line)
            self.out.flush()
            return
        data = line.encode("utf-8", errors="replace")
        if self._cut:
            data = b"\n" + data  # end the line a full disk cut short
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, data[done:])
        finally:
            self._cut = 0 < done < len(data) or (self._cut and done == 0)


def _never_block(fd: int) -> None:
    """A full pipe or socket buffer makes a write fail (EAGAIN, counted as a lost line)
    instead of waiting for the reader. Files and terminals are left as they are: a write
    to them does not wait on anybody."""
    try:
        if stat.S_ISFIFO(mode := os.fstat(fd).st_mode) or stat.S_ISSOCK(mode):
            os.set_blocking(fd, False)
    except OSError:
        pass


def _number(event: dict) -> int:
    number = _TWISTED_TO_KAMAILIO.get(event.get("log_level"), 2)
    # Twisted's own chatter ("Starting factory ...", "Main loop terminated") is debug
    # detail for an operator; sipgw's own lines say what matters.
    if number > 0 and (not event.get("log_namespace", "").startswith("sipgw.")
                       or event.get("log_format", "").startswith(_FACTORY_CHATTER)):
        return 3
    return number


# Twisted logs these in the namespace of our factory classes, so they look like ours.
_FACTORY_CHATTER = ("Starting factory", "Stopping factory")


_observer: LineObserver | None = None


def start_logging(level: int, out: TextIO | None = None, tag: str = "") -> LineObserver:
    """Install our observer as the only one (once per process); ``tag`` (a worker's
    "w1") begins every line, so that the lines of several workers can be told apart."""
    global _observer
    out = out or sys.stderr
    journald = bool(os.environ.get("JOURNAL_STREAM"))
    _observer = LineObserver(out, level, journald)
    _observer.tag = f"{tag} " if tag else ""
    # Any callable will do as a predicate; the interface cannot be declared on a method.
    filtered = FilteringLogObserver(_observer, [_observer.predicate])  # type: ignore[list-item]
    globalLogBeginner.beginLoggingTo([filtered], redirectStandardIO=False)
    return _observer


def count_dropped_lines_in(stats: Stats) -> None:
    """Count the lines the running observer cannot write in ``stats`` from now on."""
    stats.declare(LOG_STATS)
    if _observer is not None:
        _observer.stats = stats


def set_level(level: int) -> None:
    global _level
    _level = level
    if _observer is not None:
        _observer.level = level


_level = LEVELS["info"]


def current_level() -> int:
    return _observer.level if _observer is not None else _level


def debugging() -> bool:
    """Whether debug lines are written now. A debug line on the message path checks this
    first, so that with debug off not even its arguments are built."""
    return current_level() >= LEVELS["debug"]


class LogControl:
    """``log.level`` over the control socket (kamcmd's ``log.level`` / ``debug``)."""

    @rpc("log.level", help="The log level; with LEVEL (a name, or a number from -5; 3 and "
                           "above are debug), set it until the next reload.")
    def rpc_level(self, level: str | int | None = None) -> dict:
        if level is not None:
            try:
                set_level(level_number(level))
            except ValueError as e:
                raise RpcError(str(e)) from None
        number = current_level()
        return {"level": number, "name": level_name(number)}
