"""The channel between the supervisor and one worker: Twisted's AMP over a socketpair.

Commands and who sends them:

* ``Ready`` (worker → supervisor): the worker listens on every socket it inherited; with
  the addresses it writes toward the backends (``core.workers``), JSON
  ``{"udp": "host:port", "tls": "host:port"}``.
* ``Ping`` (supervisor → worker): the heartbeat, answered from the worker's reactor, so
  a stuck reactor misses it (the supervisor then stops feeding systemd's watchdog); the
  answer carries the worker's load and counts for ``core.workers``.
* ``Reload`` (supervisor → worker): apply the config the supervisor has checked, its text
  given (so a file edited again meanwhile changes nothing), or "" to read the file (a text
  too long for one AMP value).
* ``Publish`` (worker → supervisor) and ``Deliver`` (supervisor → the other workers):
  state that must hold across workers (a ban, a destination seen failing) sent to all.
  A topic's payload is JSON text; ``Deliver`` says which worker it came from.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.protocols import amp

log = Logger(namespace="sipgw.workers")


class Ready(amp.Command):
    arguments = [(b"index", amp.Integer()), (b"pid", amp.Integer()),
                 (b"advertised", amp.Unicode())]


class Ping(amp.Command):
    # What core.workers shows of each worker: its load (reactor lag and UDP queueing
    # delay, microseconds, as the load: statistics) and what it holds.
    response = [(b"connections", amp.Integer()), (b"transactions", amp.Integer()),
                 (b"lag_us", amp.Integer()), (b"queue_us", amp.Integer())]


class Reload(amp.Command):
    arguments = [(b"config", amp.Unicode())]
    response = [(b"error", amp.Unicode())]  # "" when the worker applied it


class Publish(amp.Command):
    arguments = [(b"topic", amp.Unicode()), (b"data", amp.Unicode())]
    requiresAnswer = False


class Deliver(amp.Command):
    arguments = [(b"topic", amp.Unicode()), (b"data", amp.Unicode()),
                 (b"origin", amp.Integer())]
    requiresAnswer = False


Handler = Callable[[Any, int], None]  # (payload, index of the worker it came from)


class WorkerChannel(amp.AMP):
    """The worker's end. ``on(topic, handler)`` receives what other workers publish;
    ``publish(topic, payload)`` sends to them."""

    def __init__(self, *, index: int, pid: int, load: Callable[[], dict[str, int]],
                 reload: Callable[[str], str], on_lost: Callable[[], None]) -> None:
        super().__init__()
        self.index = index
        self.pid = pid
        self._load = load
        self._reload = reload
        self._on_lost = on_lost
        self._handlers: dict[str, list[Handler]] = {}
        self._unsent: list[tuple[str, str]] = []

    def ready(self, advertised: dict[str, str]):
        return self.callRemote(Ready, index=self.index, pid=self.pid,
                               advertised=json.dumps(advertised))

    def on(self, topic: str, handler: Handler) -> None:
        self._handlers.setdefault(topic, []).append(handler)

    def publish(self, topic: str, payload: Any) -> None:
        data = json.dumps(payload)
        if self.transport is None:
            # Before the channel is up (the first probes run as the worker starts): sent
            # once it is, or the other workers would never hear of it.
            self._unsent.append((topic, data))
            return
        self.callRemote(Publish, topic=topic, data=data)

    def connectionMade(self) -> None:
        super().connectionMade()
        unsent, self._unsent = self._unsent, []
        for topic, data in unsent:
            self.callRemote(Publish, topic=topic, data=data)

    @Ping.responder
    def ping(self) -> dict:
        return self._load()

    @Reload.responder
    def reload(self, config: str) -> dict:
        return {"error": self._reload(config)}

    @Deliver.responder
    def deliver(self, topic: str, data: str, origin: int) -> dict:
        payload = json.loads(data)
        for handler in self._handlers.get(topic, ()):
            try:
                handler(payload, origin)
            except Exception:
                log.failure("handling {topic} from worker {origin}", topic=topic, origin=origin)
        return {}

    def connectionLost(self, reason=None) -> None:
        super().connectionLost(reason)
        self._on_lost()


class SupervisorChannel(amp.AMP):
    """The supervisor's end of one worker's channel."""

    def __init__(self, slot, on_ready: Callable, on_publish: Callable) -> None:
        super().__init__()
        self.slot = slot
        self._on_ready = on_ready
        self._on_publish = on_publish

    @Ready.responder
    def ready(self, index: int, pid: int, advertised: str) -> dict:
        self._on_ready(self.slot, pid, json.loads(advertised))
        return {}

    @Publish.responder
    def publish(self, topic: str, data: str) -> dict:
        self._on_publish(self.slot, topic, data)
        return {}

    def deliver(self, topic: str, data: str, origin: int) -> None:
        self.callRemote(Deliver, topic=topic, data=data, origin=origin)
