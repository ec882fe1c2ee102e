"""A proxy core on a fake clock and a recording link, fed the way the listeners feed it.

``ProxyHarness`` builds the real ``Proxy`` (``sipgw.proxy.core``) with a
``twisted.internet.task.Clock``, one UDP listener on 127.0.0.1:5060 and one backend on
127.0.0.1:5080, and records every ``(bytes, Destination)`` the proxy sends instead of
putting it on a socket. ``udp()`` hands it one datagram, ``tcp()`` a piece of a byte stream
cut into messages by a ``StreamFramer``, as ``StreamConnection`` does.

A tool for the tests and the benchmarks (``bench/core.py``): it needs no test framework,
so that both can import it from ``sipgw`` and the bench depends on nothing in ``tests/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from sipgw.config import Config, default_config
from sipgw.proxy.core import Proxy
from sipgw.proxy.identity import Identity, Listener
from sipgw.proxy.service import build_core
from sipgw.proxy.signing import PARAM as SIGNATURE
from sipgw.proxy.signing import RouteSigner
from sipgw.proxy.stats import Stats
from sipgw.proxy.trace import Tap
from sipgw.proxy.transport import Destination, FlowTable, Source
from sipgw.sip.framing import PING, StreamFramer
from sipgw.sip.message import Request, Response
from sipgw.sip.parser import parse_message
from sipgw.store import SubscriberStore

PROXY_HOST, PROXY_PORT = "127.0.0.1", 5060
BACKEND = Destination(transport="udp", host="127.0.0.1", port=5080)
CLIENT_HOST, CLIENT_PORT = "192.0.2.99", 5999

UDP_SOURCE = Source(
    transport="udp", host=CLIENT_HOST, port=CLIENT_PORT,
    local_host=PROXY_HOST, local_port=PROXY_PORT,
)
TCP_SOURCE = Source(
    transport="tcp", host=CLIENT_HOST, port=CLIENT_PORT,
    local_host=PROXY_HOST, local_port=PROXY_PORT, flow_id=1,
)
BACKEND_SOURCE = Source(
    transport="udp", host=BACKEND.host, port=BACKEND.port,
    local_host=PROXY_HOST, local_port=PROXY_PORT,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """One message the proxy handed to its transports."""

    data: bytes
    dest: Destination

    @property
    def start_line(self) -> bytes:
        return self.data.split(b"\r\n", 1)[0]

    @property
    def status(self) -> int | None:
        """The status code if this is a response, else None."""
        if not self.data.startswith(b"SIP/2.0 "):
            return None
        return int(self.start_line.split(b" ", 2)[1])

    def parse(self) -> Request | Response:
        return parse_message(self.data)


# A fixed signing key, so that a test can write the Record-Route sipgw writes for a dialog.
ROUTE_KEY = b"the route key of the test proxies"
SIGNER = RouteSigner(ROUTE_KEY)


def config_with(**sections: dict) -> Config:
    """The embedded default configuration with ``section={key: value, ...}`` changed
    (values as the config gives them), for a core built by ``core``. Pike is off (tests
    send many messages from one address) and the dispatcher does not probe."""
    config = default_config()
    changes: dict[str, dict] = {"pike": {"enabled": False}, "dispatcher": {"ping_interval": 0}}
    for name, values in sections.items():
        changes[name] = {**changes.get(name, {}), **values}
    return dataclasses.replace(config, **{
        name: dataclasses.replace(getattr(config, name), **values)
        for name, values in changes.items()})


def sections(*names: str, **keys) -> tuple:
    """The embedded default's sections ``names``, each key of ``keys`` set in the one of
    them that has it: ``websocket, limits = sections("websocket", "limits",
    keepalive_interval=0, ws_register_timeout=5)``, for a component that takes them."""
    config = default_config()
    found = [getattr(config, name) for name in names]
    for key, value in keys.items():
        owners = [i for i, section in enumerate(found) if key in section.__dataclass_fields__]
        assert len(owners) == 1, f"{key} is in {len(owners)} of the sections {names}"
        found[owners[0]] = dataclasses.replace(found[owners[0]], **{key: value})
    return tuple(found)


def core(*, clock: IReactorTime, send, config: Config | None = None,
         identity: Identity | None = None, flows: FlowTable | None = None,
         store: SubscriberStore | None = None, dispatch: bool = False,
         stats: Stats | None = None, tap: Tap | None = None) -> Proxy:
    """The core as ``sipgw serve`` assembles it (``build_core``), for tests: one UDP
    listener on 127.0.0.1:5060 unless ``identity`` says otherwise, the fixed route key, no
    AUTH step unless a ``store`` is given, no dispatcher unless ``dispatch``."""
    return build_core(
        config or config_with(), clock=clock, send=send, stats=stats or Stats(),
        flows=flows or FlowTable(), tap=tap or Tap(), store=store,
        identity=identity or Identity(
            listeners=[Listener(transport="udp", host=PROXY_HOST, port=PROXY_PORT)]),
        route_secret_key=ROUTE_KEY, dispatch=dispatch, icmp=False)


@dataclass
class ProxyHarness:
    clock: Clock = field(default_factory=Clock)
    sent: list[Sent] = field(default_factory=list)
    proxy: Proxy = field(init=False)
    framer: StreamFramer = field(default_factory=StreamFramer)
    pings: int = 0
    tap: Tap = field(default_factory=Tap)  # the live trace's, in and out as in sipgw serve

    def __post_init__(self) -> None:
        verifyObject(IReactorTime, self.clock)
        self.proxy = self.build()

    def build(self) -> Proxy:
        # These tests check that messages are relayed as received; the NAT fixes
        # (received/rport, contact alias) would rewrite them and have tests of their own.
        return core(clock=self.clock, send=self._record, tap=self.tap,
                    config=config_with(proxy={"nat_uac_test": 0}))

    def _record(self, data: bytes, dest: Destination) -> None:
        assert isinstance(data, bytes) and isinstance(dest, Destination)
        trace = self.tap.outbound
        if trace is not None:
            trace(data, dest)
        self.sent.append(Sent(data=data, dest=dest))

    # -- feeding ------------------------------------------------------------------------

    def udp(self, data: bytes, source: Source = UDP_SOURCE) -> list[Sent]:
        """One datagram in; returns what the proxy sent because of it."""
        before = len(self.sent)
        self.proxy.receive(data, source)
        return self.sent[before:]

    def tcp(self, data: bytes, source: Source = TCP_SOURCE) -> list[Sent]:
        """Bytes of a stream in (may raise ``FramingError``); returns what was sent."""
        before = len(self.sent)
        for item in self.framer.feed(data):
            if isinstance(item, bytes):
                self.proxy.receive(item, source)
            elif item is PING:
                self.pings += 1
        return self.sent[before:]

    def tcp_chunks(self, chunks: Iterable[bytes], source: Source = TCP_SOURCE) -> list[Sent]:
        before = len(self.sent)
        for chunk in chunks:
            self.tcp(chunk, source)
        return self.sent[before:]

    # -- looking at what went out -------------------------------------------------------

    def to_backend(self, sent: list[Sent] | None = None) -> list[Sent]:
        return [s for s in (self.sent if sent is None else sent) if s.dest == BACKEND]

    def responses(self, sent: list[Sent] | None = None) -> list[Sent]:
        return [s for s in (self.sent if sent is None else sent) if s.status is not None]


_counter = 0


def valid_invite(tag: str | None = None) -> bytes:
    """A fresh, plain INVITE from the client (new Call-ID and branch on every call)."""
    global _counter
    _counter += 1
    n = tag or f"probe{_counter}"
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.99\r\ns=-\r\nc=IN IP4 192.0.2.99\r\nt=0 0\r\n"
    head = (
        f"INVITE sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {CLIENT_HOST}:{CLIENT_PORT};branch=z9hG4bK{n};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:alice@example.com>;tag={n}\r\n"
        f"To: <sip:bob@example.com>\r\n"
        f"Call-ID: {n}@192.0.2.99\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: <sip:alice@{CLIENT_HOST}:{CLIENT_PORT}>\r\n"
        f"Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def our_route(proxy: Proxy, call_id: str, tag: str | None, transport: str = "udp") -> str:
    """The Route line of a dialog's in-dialog requests: the Record-Route sipgw writes for
    the dialog that ``tag`` (the creating request's From tag) opened, MAC and all."""
    sig = f";{SIGNATURE}={proxy.signer.dialog(call_id, tag)}"
    return f"Route: {proxy.identity.record_route(transport, sig)}\r\n"
