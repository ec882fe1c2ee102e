"""Log lines: Kamailio levels, and Twisted's own chatter kept out of the info level."""

from __future__ import annotations

import io

from twisted.logger import LogLevel

from sipgw.proxy.log import LineObserver, level_number


def emit(observer: LineObserver, namespace: str, text: str, level=LogLevel.info) -> None:
    event = {"log_namespace": namespace, "log_level": level, "log_format": text,
             "log_time": 0.0}
    if observer.predicate(event).name != "no":
        observer(event)


def test_info_shows_sipgw_lines_but_not_twisted_factory_chatter():
    out = io.StringIO()
    observer = LineObserver(out, level_number("info"), journald=False)
    emit(observer, "sipgw.service", "listening on udp:127.0.0.1:5060")
    emit(observer, "proxy.transport.ws._Factory", "Starting factory <x>")
    emit(observer, "twisted.internet.base", "Main loop terminated.")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith("INFO service: listening on udp:127.0.0.1:5060")


def test_debug_shows_twisted_chatter_and_warnings_from_anyone_always_show():
    out = io.StringIO()
    observer = LineObserver(out, level_number(3), journald=True)
    emit(observer, "twisted.internet.base", "Main loop terminated.")
    quiet = io.StringIO()
    at_info = LineObserver(quiet, level_number("info"), journald=True)
    emit(at_info, "twisted.internet.tcp", "something broke", level=LogLevel.error)
    assert out.getvalue().startswith("<7>DEBUG twisted.internet.base: Main loop terminated.")
    assert quiet.getvalue().startswith("<3>ERROR twisted.internet.tcp: something broke")
