"""Logging through ``twisted.logger`` with Kamailio's levels, one line per event.

Kamailio numbers its levels -5 (alert) to 3 (debug); operators set ``log.level`` by name or
by number. Under systemd (``JOURNAL_STREAM`` set) lines carry a ``<N>`` syslog priority
prefix, which journald turns into the entry's priority, and no timestamp of their own.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    PredicateResult,
    formatEvent,
    globalLogBeginner,
)

from sipgw.rpc.registry import RpcError, rpc

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
    """``"info"`` or ``2`` (or ``"2"``) → 2; ValueError names what is accepted."""
    if isinstance(level, int) and not isinstance(level, bool):
        if -5 <= level <= 3:
            return level
    elif isinstance(level, str):
        text = level.strip().lower()
        if text.lstrip("-").isdigit() and -5 <= int(text) <= 3:
            return int(text)
        if text in LEVELS:
            return LEVELS[text]
    raise ValueError(
        f"bad log level {level!r}: use one of error, warning, notice, info, debug or -5..3"
    )


def level_name(number: int) -> str:
    return _NAMES.get(number, str(number)).lower()


class LineObserver:
    """Writes each event as one line; the threshold can change while running."""

    def __init__(self, out: TextIO, level: int, journald: bool) -> None:
        self.out = out
        self.level = level
        self.journald = journald

    def predicate(self, event: dict) -> PredicateResult:
        return PredicateResult.maybe if _number(event) <= self.level else PredicateResult.no

    def __call__(self, event: dict) -> None:
        number = _number(event)
        text = formatEvent(event) or ""
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}: {failure.getErrorMessage()}\n{failure.getTraceback()}"
        # One event, one line: journald and grep both rely on it.
        text = text.replace("\n", "\n\t").rstrip()
        ns = event.get("log_namespace", "-")
        if ns.startswith("sipgw."):
            ns = ns[6:]
        if self.journald:
            line = f"<{_SYSLOG.get(number, 6)}>{_NAMES.get(number, 'INFO')} {ns}: {text}\n"
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.get("log_time")))
            line = f"{stamp} {_NAMES.get(number, 'INFO')} {ns}: {text}\n"
        try:
            self.out.write(line)
            self.out.flush()
        except OSError:
            pass  # a full disk or a closed pipe must not stop the proxy


def _number(event: dict) -> int:
    number = _TWISTED_TO_KAMAILIO.get(event.get("log_level"), 2)
    # Twisted's own chatter ("Starting factory ...", "Main loop terminated") is debug
    # detail for an operator; sipgw's own lines say what matters.
    if number > 0 and not event.get("log_namespace", "").startswith("sipgw."):
        return 3
    return number


_observer: LineObserver | None = None


def start_logging(level: int, out: TextIO | None = None) -> LineObserver:
    """Install our observer as the only one (once per process)."""
    global _observer
    out = out or sys.stderr
    journald = bool(os.environ.get("JOURNAL_STREAM"))
    _observer = LineObserver(out, level, journald)
    filtered = FilteringLogObserver(_observer, [_observer.predicate])
    globalLogBeginner.beginLoggingTo([filtered], redirectStandardIO=False)
    return _observer


def set_level(level: int) -> None:
    global _level
    _level = level
    if _observer is not None:
        _observer.level = level


_level = LEVELS["info"]


def current_level() -> int:
    return _observer.level if _observer is not None else _level


class LogControl:
    """``log.level`` over the control socket (kamcmd's ``log.level`` / ``debug``)."""

    @rpc("log.level", help="The log level; with LEVEL (name or -5..3), set it until the next "
                           "reload.")
    def rpc_level(self, level: str | int | None = None) -> dict:
        if level is not None:
            try:
                set_level(level_number(level))
            except ValueError as e:
                raise RpcError(str(e)) from None
        number = current_level()
        return {"level": number, "name": level_name(number)}
