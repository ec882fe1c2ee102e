"""systemd's notify protocol (sd_notify(3)) for ``Type=notify``, without libsystemd.

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace); each
notification is one datagram of ``KEY=VALUE`` lines: ``READY=1`` once the listeners are
open, ``RELOADING=1`` with ``MONOTONIC_USEC`` on SIGHUP and ``READY=1`` when the reload is
done, ``STOPPING=1`` on SIGTERM, ``STATUS=...`` for ``systemctl status``, and
``WATCHDOG=1`` every half ``WATCHDOG_USEC`` when the unit sets ``WatchdogSec``. Without
``NOTIFY_SOCKET`` every call does nothing. A failing send is ignored: systemd's bookkeeping
must never stop SIP.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.internet.task import LoopingCall


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + path[1:]) if path.startswith("@") else path
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2_000_000  # half the timeout, in seconds
        self._watchdog: LoopingCall | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str) -> bool:
        if not self.address:
            return False
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(text.encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> None:
        self.send(READY="1", **({"STATUS": status} if status else {}))

    def reloading(self) -> None:
        usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000)
        self.send(RELOADING="1", MONOTONIC_USEC=str(usec), STATUS="reloading the configuration")

    def stopping(self) -> None:
        self.send(STOPPING="1", STATUS="stopping")

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def start_watchdog(self, reactor, healthy: Callable[[], bool] | None = None) -> None:
        """WATCHDOG=1 from the reactor: a stuck reactor stops it, and systemd restarts us.
        With ``healthy`` (the supervisor of workers: all of them answer), only while it
        says so."""
        if self.watchdog_interval is None or not self.address:
            return
        from twisted.internet.task import LoopingCall

        def feed() -> None:
            if healthy is None or healthy():
                self.send(WATCHDOG="1")

        self._watchdog = LoopingCall(feed)
        self._watchdog.clock = reactor
        self._watchdog.start(self.watchdog_interval, now=True)

    def stop_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None
