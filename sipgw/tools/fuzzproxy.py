"""The whole route script in-process, as ``sipgw serve`` assembles it, for fuzzing.

``FuzzProxy`` is a ``ProxyHarness`` (fake clock, recording link) with what the service adds
around the core: the AUTH step over an in-memory store (account 5001 in realm sipgw.test;
198.51.100.7 trusted; no bans), the dispatcher (one backend, no probes), dialog tracking, a
flow table with one open TCP and one open WebSocket flow, NAT detection on, and a live trace
subscriber. ``feed`` hands it one input the way listeners do (UDP datagram, TCP bytes
through a framer, WebSocket message, or a datagram from the backend); a nonce this proxy
issued replaces ``NONCE-PLACEHOLDER``, so mutated credentials reach the code behind the nonce
check.

Its contract: nothing escapes ``Proxy.receive`` (a ``FramingError`` from the framer is the
listener's to handle, and it closes the connection), nothing is logged as a failure, no 500
is sent, and a plain INVITE is still forwarded afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Any, cast

from twisted.logger import ILogObserver, globalLogPublisher

from sipgw.proxy.core import Proxy
from sipgw.proxy.trace import summarize
from sipgw.proxy.transport import FlowTable, Source
from sipgw.sip.errors import FramingError
from sipgw.sip.framing import PING, StreamFramer
from sipgw.store import make_subscriber
from sipgw.store.memory import MemoryStore
from sipgw.tools.fuzz import NONCE
from sipgw.tools.harness import (
    BACKEND,
    BACKEND_SOURCE,
    CLIENT_HOST,
    PROXY_HOST,
    PROXY_PORT,
    TCP_SOURCE,
    UDP_SOURCE,
    ProxyHarness,
    Sent,
    config_with,
    core,
    valid_invite,
)

REALM = "sipgw.test"
WS_SOURCE = Source(transport="ws", host=CLIENT_HOST, port=6001, local_host=PROXY_HOST,
                   local_port=8080, flow_id=2)
TRUSTED = Source(transport="udp", host="198.51.100.7", port=5060, local_host=PROXY_HOST,
                 local_port=PROXY_PORT)
SOURCES = {"udp": UDP_SOURCE, "tcp": TCP_SOURCE, "ws": WS_SOURCE, "backend": BACKEND_SOURCE,
           "trusted": TRUSTED}


class _OpenFlow:
    """A connection that stays open: what it is sent is recorded by the harness anyway."""

    def __init__(self, flow_id: int, transport: str) -> None:
        self.flow_id = flow_id
        self.transport_name = transport

    def send(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def _summarize(data: bytes, source: Any) -> None:
    """What the live trace does with each input (its summary line), with nobody reading."""
    summarize(data)


@dataclass
class FuzzProxy(ProxyHarness):
    failures: list[dict] = field(default_factory=list)

    def build(self) -> Proxy:
        self.clock.advance(1_700_000_000)
        store = MemoryStore()
        store.records[("5001", REALM)] = make_subscriber("5001", REALM, "secret")
        flows = FlowTable()
        for source in (TCP_SOURCE, WS_SOURCE):
            assert source.flow_id is not None  # the sources of connections have one
            flows.add(_OpenFlow(source.flow_id, source.transport), source.transport,
                      source.host, source.port)
        # No bans: one fuzzing source fails auth all the time, and must keep reaching it.
        # NAT detection as configured by default; a live trace subscriber.
        config = config_with(
            auth={"realm": REALM, "trusted": (ip_network(TRUSTED.host),),
                  "max_failures_user": 1 << 30, "max_failures_source": 1 << 30,
                  "nonce_secret": "k" * 32},
            dispatcher={"destinations": (f"sip:{BACKEND.host}:{BACKEND.port}",)})
        self.tap.inbound = _summarize
        proxy = core(clock=self.clock, send=self._record, config=config, flows=flows,
                     store=store, dispatch=True, tap=self.tap)
        self.nonce = b""
        self.stream_framer = StreamFramer()
        return proxy

    def __enter__(self) -> FuzzProxy:
        globalLogPublisher.addObserver(cast(ILogObserver, self._observe))
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(cast(ILogObserver, self._observe))

    def _observe(self, event: dict) -> None:
        if event.get("log_failure") is not None:
            self.failures.append(event)

    def failure_text(self) -> str:
        return "\n".join(e["log_failure"].getTraceback() for e in self.failures)

    # -- feeding ------------------------------------------------------------------------

    def feed(self, data: bytes, how: str) -> list[Sent]:
        """One input, over ``how`` (udp, tcp, ws or backend); what the proxy sent."""
        if not self.nonce:
            self.nonce = self.proxy.auth.nonces.new().encode()  # type: ignore[union-attr]
        data = data.replace(NONCE, self.nonce)
        before = len(self.sent)
        if how == "tcp":
            try:
                items = self.stream_framer.feed(data)
            except FramingError as e:
                # As StreamConnection does: what was framed, an answer if possible, and a
                # new connection (the stream cannot be resynchronised).
                items = e.framed  # type: ignore[attr-defined]
                self.stream_framer = StreamFramer()
                self._deliver(items)
                self.proxy.refuse(e.head, TCP_SOURCE, e)  # type: ignore[attr-defined]
                return self.sent[before:]
            self._deliver(items)
        else:
            self.proxy.receive(data, SOURCES[how])
        return self.sent[before:]

    def _deliver(self, items: list) -> None:
        for item in items:
            if item is not PING:
                self.proxy.receive(item, TCP_SOURCE)

    def tick(self, seconds: float) -> None:
        """Let transaction timers run (and issue a fresh nonce: the old one ages)."""
        self.clock.advance(seconds)
        self.nonce = b""

    def invite_still_forwarded(self) -> bool:
        sent = self.udp(valid_invite(), TRUSTED)
        return [s.status for s in sent] == [100, None] and sent[1].dest == BACKEND


HOWS = ("udp", "tcp", "ws", "backend")


def contract_broken(h: FuzzProxy, data: bytes, how: str) -> str | None:
    """Feed one input; what went wrong in words (the deepest sipgw frame), or None."""
    h.failures.clear()
    try:
        sent = h.feed(data, how)
    except Exception as e:  # noqa: BLE001 - escaping receive is the failure looked for
        return f"raised {type(e).__name__}: {str(e)[:80]}"
    if h.failures:
        lines = h.failure_text().strip().splitlines()
        frames = [line.strip() for line in lines if "/sipgw/" in line]
        return f"logged {lines[-1][:80]} ({frames[-1] if frames else '?'})"
    if any(s.status == 500 for s in sent):
        return "answered 500"
    return None


def fuzz_proxy(mutator, count: int, *, start: int = 0, tick_every: int = 500
               ) -> dict[str, tuple[int, bytes]]:
    """``count`` mutated inputs round robin over UDP, TCP, WS and the backend; the first
    input of each kind of broken contract, by kind (empty when none)."""
    found: dict[str, tuple[int, bytes]] = {}
    with FuzzProxy() as h:
        for i in range(start, start + count):
            data = mutator.mutate(i)
            why = contract_broken(h, data, HOWS[i % len(HOWS)])
            if why is not None:
                found.setdefault(why, (i, data))
            if i % tick_every == tick_every - 1:
                h.tick(40)  # timers fire, transactions end, memory is given back
        if not h.invite_still_forwarded():
            found.setdefault("a plain INVITE is no longer forwarded", (-1, b""))
    return found
