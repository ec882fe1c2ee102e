"""Log lines: Kamailio levels, and Twisted's own chatter kept out of the info level."""

from __future__ import annotations

import io

from twisted.logger import LogLevel

from sipgw.proxy.runtime.log import LOG_STATS, LineObserver, level_number
from sipgw.proxy.stats import Stats


def emit(observer: LineObserver, namespace: str, text: str, level=LogLevel.info) -> None:
    event = {"log_namespace": namespace, "log_level": level, "log_format": text,
             "log_time": 0.0}
    if observer.predicate(event).name != "no":
        observer(event)


def test_info_shows_sipgw_lines_but_not_twisted_factory_chatter():
    out = io.StringIO()
    observer = LineObserver(out, level_number("info"), journald=False)
    emit(observer, "sipgw.service", "listening on udp:127.0.0.1:5060")
    # Twisted logs these in the namespace of the factory's class, ours.
    emit(observer, "sipgw.proxy.transport.ws._Factory", "Starting factory <x>")
    emit(observer, "sipgw.proxy.transport.stream._ServerFactory", "Stopping factory <y>")
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


class FillingDisk(io.StringIO):
    """A log output that fails like a full disk while ``full`` is set."""

    full = False

    def write(self, text: str) -> int:
        if self.full:
            raise OSError(28, "No space left on device")
        return super().write(text)


def test_lines_a_full_disk_refuses_are_counted_and_reported_once_there_is_room_again():
    out = FillingDisk()
    observer = LineObserver(out, level_number("info"), journald=True)
    stats = Stats()
    stats.declare(LOG_STATS)
    observer.stats = stats
    out.full = True
    for n in range(3):
        emit(observer, "sipgw.core", f"lost {n}")
    out.full = False
    emit(observer, "sipgw.core", "written")
    assert out.getvalue().splitlines() == [
        "<4>WARNING log: 3 log line(s) could not be written (No space left on device); "
        "writing again",
        "<6>INFO core: written",
    ]
    assert stats.get("core:dropped_log_lines") == 3
    emit(observer, "sipgw.core", "next")
    assert out.getvalue().splitlines()[-1] == "<6>INFO core: next"


def test_a_log_on_a_device_that_is_always_full_never_raises():
    with open("/dev/full", "w") as out:
        observer = LineObserver(out, level_number("info"), journald=False)
        for n in range(100):
            emit(observer, "sipgw.core", f"line {n}")
    assert observer.dropped == 100
