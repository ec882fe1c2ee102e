"""Pike: per-source density, blocking, release after quiet, exemptions, a bounded table."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from sipgw.config import PikeConfig
from sipgw.proxy.pike import Pike
from sipgw.proxy.stats import Stats
from sipgw.proxy.transport import Source
from sipgw.rpc.registry import RpcError
from tests.proxy.test_service import GOOD, start

UNIT = 2.0
DENSITY = 30
LATENCY = 10.0


def source(host: str = "192.0.2.1", transport: str = "udp", port: int = 5060) -> Source:
    return Source(transport=transport, host=host, port=port, local_host="192.0.2.100",
                  local_port=5060)


def make(exempt=lambda host: False, **changes) -> tuple[Pike, Clock, Stats]:
    clock = Clock()
    clock.advance(1000.0)  # on a unit boundary, as the tests below count on
    stats = Stats()
    settings = PikeConfig(**{"sampling_time_unit": UNIT, "reqs_density_per_unit": DENSITY,
                             "remove_latency": LATENCY, **changes})
    pike = Pike(clock, stats, settings, exempt=exempt)
    pike.start()
    return pike, clock, stats


def send(pike: Pike, n: int, src: Source | None = None) -> int:
    """Feed ``n`` messages; how many were let in."""
    src = src or source()
    return sum(pike.check(src) for _ in range(n))


def messages(logs) -> list[str]:
    from twisted.logger import formatEvent
    return [formatEvent(e) for e in logs if e.get("log_namespace") == "sipgw.pike"]


def test_a_source_within_the_density_is_never_blocked_unit_after_unit():
    pike, clock, stats = make()
    for _ in range(10):
        assert send(pike, DENSITY) == DENSITY
        clock.advance(UNIT)
    assert stats.get("pike:blocked_ips") == 0
    assert stats.get("pike:dropped_msgs") == 0


def test_one_message_over_the_density_in_a_unit_blocks_the_source_and_drops_silently():
    pike, clock, stats = make()
    with capturedLogs() as logs:
        assert send(pike, DENSITY + 50) == DENSITY
    assert stats.get("pike:blocked_ips") == 1
    assert stats.get("pike:dropped_msgs") == 50
    assert pike.blocked("192.0.2.1")
    # One line for the block, none per dropped message.
    lines = messages(logs)
    assert len(lines) == 1 and "pike blocking 192.0.2.1 (udp:192.0.2.1:5060)" in lines[0]
    # Another address is not affected.
    assert send(pike, 5, source("192.0.2.2")) == 5


def test_a_blocked_source_stays_blocked_while_it_keeps_sending_then_is_released_when_quiet():
    pike, clock, stats = make()
    send(pike, DENSITY + 1)
    # It goes on sending, a message every few seconds: every one restarts the wait.
    for _ in range(5):
        clock.advance(LATENCY - 1)
        assert send(pike, 1) == 0
    assert stats.get("pike:blocked_ips") == 1
    # Quiet for remove_latency: the sweep releases it (one log line), with no message needed.
    with capturedLogs() as logs:
        clock.advance(LATENCY + UNIT)
    assert stats.get("pike:blocked_ips") == 0
    lines = messages(logs)
    assert len(lines) == 1
    assert "releasing 192.0.2.1" in lines[0] and "6 messages dropped" in lines[0]
    assert send(pike, DENSITY) == DENSITY


def test_a_blocked_source_that_comes_back_after_the_latency_is_let_in_at_once():
    pike, clock, stats = make()
    pike.stop()  # no sweep: the release happens on the next message itself
    send(pike, DENSITY + 1)
    clock.advance(LATENCY)
    assert pike.check(source())
    assert stats.get("pike:blocked_ips") == 0


def test_the_previous_unit_is_forgotten_when_the_next_begins():
    pike, clock, stats = make()
    clock.advance(UNIT - 0.001)  # the end of one unit...
    assert send(pike, DENSITY) == DENSITY
    clock.advance(0.002)  # ...and the start of the next
    assert send(pike, DENSITY) == DENSITY
    assert not pike.check(source())  # the 31st of this unit


def test_trusted_sources_are_never_blocked_and_exemption_is_checked_again_before_blocking():
    trusted = {"10.0.0.5"}
    pike, clock, stats = make(exempt=lambda host: host in trusted)
    assert send(pike, 1000, source("10.0.0.5")) == 1000
    # A backend added after its address was first seen (a dispatcher reload).
    assert send(pike, DENSITY, source("10.0.0.6")) == DENSITY
    trusted.add("10.0.0.6")
    assert send(pike, 1000, source("10.0.0.6")) == 1000
    assert stats.get("pike:blocked_ips") == 0


def test_a_reload_that_trusts_a_blocked_address_releases_it():
    trusted: set[str] = set()
    pike, clock, stats = make(exempt=lambda host: host in trusted)
    send(pike, DENSITY + 1)
    trusted.add("192.0.2.1")
    pike.configure(pike.settings)
    assert stats.get("pike:blocked_ips") == 0
    assert send(pike, 1000) == 1000


def test_disabled_pike_lets_everything_in():
    pike, clock, stats = make(enabled=False)
    assert send(pike, 1000) == 1000
    assert len(pike) == 0


def test_a_new_density_from_a_reload_applies_at_once():
    pike, clock, stats = make()
    pike.configure(PikeConfig(sampling_time_unit=UNIT, reqs_density_per_unit=5,
                              remove_latency=LATENCY))
    assert send(pike, 10) == 5


def test_the_table_is_bounded_and_a_spoofed_flood_only_recycles_it():
    pike, clock, stats = make(max_sources=16)
    send(pike, DENSITY + 1)  # one blocked source
    with capturedLogs() as logs:
        for i in range(5000):
            pike.check(source(f"198.51.{i // 256}.{i % 256}"))
        assert len(pike) == 16
        clock.advance(UNIT)
    # The blocked source was the least recently active: forgotten, so released (logged).
    assert stats.get("pike:blocked_ips") == 0
    lines = messages(logs)
    assert any("releasing 192.0.2.1" in line and "max_sources" in line for line in lines)
    # One warning per sweep for all the forgotten addresses, not one per address.
    assert sum("forgotten to stay within pike.max_sources" in line for line in lines) == 1


def test_silent_sources_are_forgotten_after_the_latency():
    pike, clock, stats = make()
    for i in range(100):
        pike.check(source(f"198.51.100.{i}"))
    clock.advance(LATENCY / 2)
    pike.check(source("198.51.100.7"))  # still active
    clock.advance(LATENCY / 2 + UNIT)
    assert len(pike) == 1
    clock.advance(LATENCY)
    assert len(pike) == 0


def test_pike_top_has_kamailios_shape_hot_by_default():
    pike, clock, stats = make()
    send(pike, DENSITY + 10)  # blocked
    send(pike, DENSITY // 2, source("192.0.2.2"))  # warm
    send(pike, 1, source("192.0.2.3"))
    top = pike.rpc_top()
    assert top == {
        "max_hits": DENSITY,
        "list": [{"ip_addr": "192.0.2.1", "leaf_hits_prev": 0, "leaf_hits_curr": DENSITY + 1,
                  "expires": int(LATENCY), "status": "HOT"}],
        "number_of_rows": 1,
    }
    assert [r["ip_addr"] for r in pike.rpc_top("WARM")["list"]] == ["192.0.2.1", "192.0.2.2"]
    clock.advance(UNIT)
    rows = pike.rpc_list("all")["list"]
    assert [(r["ip_addr"], r["leaf_hits_prev"], r["leaf_hits_curr"], r["status"])
            for r in rows] == [("192.0.2.1", DENSITY + 1, 0, "HOT"),
                               ("192.0.2.2", DENSITY // 2, 0, ""),
                               ("192.0.2.3", 1, 0, "")]
    with pytest.raises(RpcError):
        pike.rpc_top("LUKEWARM")


def test_pike_unblock_releases_an_address_at_once():
    pike, clock, stats = make()
    send(pike, DENSITY + 1)
    with pytest.raises(RpcError):
        pike.rpc_unblock("192.0.2.9")
    assert pike.rpc_unblock("192.0.2.1") == 1
    assert stats.get("pike:blocked_ips") == 0
    assert pike.check(source())
    send(pike, 100)
    send(pike, 100, source("192.0.2.2"))
    assert pike.rpc_unblock("all") == 2


# -- in the proxy: before parsing, with the service's exemptions -------------------------

BASE = GOOD + "ping_interval = 0\n"  # a service on 127.0.0.1:25060, no OPTIONS probes
SERVICE = BASE + """
[auth]
trusted = ["10.1.0.0/16"]
[pike]
sampling_time_unit = 2
reqs_density_per_unit = 30
remove_latency = 10
"""

# An OPTIONS to sipgw itself (answered 200 by REQINIT): R-URI ``params``, ``extra`` headers.
PING = ("OPTIONS sip:127.0.0.1:25060{params} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP {host}:5070;branch=z9hG4bK{n};rport\r\n"
        "From: <sip:ping@example.com>;tag=a\r\nTo: <sip:127.0.0.1>\r\n"
        "Call-ID: ping{n}@test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        "{extra}Content-Length: 0\r\n\r\n")


class ClosableFlow:
    """A flow in the table that remembers being closed."""

    def __init__(self, flow_id: int) -> None:
        self.flow_id = flow_id
        self.transport_name = "tcp"
        self.closed = False

    def send(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def service(tmp_path):
    sent: list = []
    svc, reactor, _ = start(tmp_path, SERVICE, send=lambda data, dest: sent.append(dest.host))
    yield svc, reactor, sent
    svc.stopService()


def ping(svc, host: str, n: int, *, transport: str = "udp", flow_id: int | None = None,
         port: int = 5070) -> None:
    src = Source(transport=transport, host=host, port=port, local_host="127.0.0.1",
                 local_port=25060, flow_id=flow_id)
    for i in range(n):
        svc.proxy.receive(PING.format(host=host, n=f"{host}-{i}", params="", extra="").encode(),
                          src)


def test_a_flooding_client_gets_no_answers_once_blocked_and_others_are_still_served(service):
    svc, reactor, sent = service
    ping(svc, "192.0.2.1", 100)
    assert sent.count("192.0.2.1") == 30
    stats = svc.stats
    assert stats.get("pike:blocked_ips") == 1
    assert stats.get("pike:dropped_msgs") == 70
    # Dropped before parsing: not even counted as received.
    assert stats.get("core:rcv_requests") == 30
    svc.proxy.receive(b"garbage \x00\xff", Source(transport="udp", host="192.0.2.1", port=1,
                                                   local_host="127.0.0.1", local_port=25060))
    assert stats.get("core:bad_msg") == 0
    ping(svc, "192.0.2.2", 5)
    assert sent.count("192.0.2.2") == 5
    # Released after remove_latency of quiet.
    reactor.advance(12)
    assert stats.get("pike:blocked_ips") == 0
    ping(svc, "192.0.2.1", 1)
    assert sent.count("192.0.2.1") == 31


def test_backends_and_trusted_addresses_are_never_blocked(service):
    svc, reactor, sent = service
    ping(svc, "127.0.0.1", 200, port=40000)  # the backend's address, from another port
    ping(svc, "10.1.2.3", 200)  # auth.trusted
    assert sent.count("127.0.0.1") == 200
    assert sent.count("10.1.2.3") == 200
    assert svc.stats.get("pike:blocked_ips") == 0


def test_the_connection_of_a_blocked_client_is_closed(service):
    svc, reactor, sent = service
    flow = ClosableFlow(svc.flows.new_id())
    svc.flows.add(flow, "tcp", "192.0.2.7", 40001)
    ping(svc, "192.0.2.7", 31, transport="tcp", flow_id=flow.flow_id, port=40001)
    assert flow.closed
    assert sent.count("192.0.2.7") == 30


def test_pike_settings_follow_a_reload(service, tmp_path):
    svc, reactor, sent = service
    (tmp_path / "sipgw.toml").write_text(SERVICE.replace("= 30", "= 5"))
    svc.reload()
    ping(svc, "192.0.2.1", 10)
    assert sent.count("192.0.2.1") == 5
    assert svc.stats.get("pike:blocked_ips") == 1
    (tmp_path / "sipgw.toml").write_text(SERVICE + "enabled = false\n")
    svc.reload()
    assert svc.stats.get("pike:blocked_ips") == 0  # released: nothing is blocked any more
    assert svc.proxy.screen("tcp", "192.0.2.1") == ""
    ping(svc, "192.0.2.3", 100)
    assert sent.count("192.0.2.3") == 100


def test_websocket_clients_behind_a_trusted_proxy_are_counted_by_their_own_address(tmp_path):
    """Through the service's real WS listener: nginx (127.0.0.1) carries two browsers; the
    one that floods is blocked and its connection closed, the other is still answered."""
    from twisted.internet.address import IPv4Address

    from tests.helpers import wsframes as wf
    from tests.proxy.transport.ws.test_ws import Wire

    text = SERVICE.replace("ws = []", 'ws = ["127.0.0.1:28080"]') + (
        '[websocket]\ntrusted_proxies = ["127.0.0.1/32"]\n')
    svc, reactor, _ = start(tmp_path, text)
    [factory] = [f for port, f, _, _ in reactor.tcpServers if port == 28080]

    def browser(real_ip: str, port: int, status: int | None = 101):
        proto = factory.buildProtocol(None)
        wire = Wire(hostAddress=IPv4Address("TCP", "127.0.0.1", 28080),
                    peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        proto.makeConnection(wire)
        reader = wf.FrameReader()
        proto.dataReceived(wf.handshake(extra=(f"X-Real-IP: {real_ip}",))[0])
        reader.feed(wire.value())
        wire.clear()
        assert reader.status == status
        return proto, wire, reader

    def answers(proto, wire, reader, n: int) -> tuple[int, bool]:
        """How many of ``n`` pings got their 200, and whether sipgw sent a close frame."""
        for i in range(n):
            request = PING.format(host=f"{port_of(proto)}.invalid", n=f"ws{port_of(proto)}-{i}",
                                  params="", extra="")
            proto.dataReceived(wf.frame(wf.TEXT, request.replace("UDP", "WS").encode()))
        frames = reader.feed(wire.value())
        wire.clear()
        ok = sum(f.opcode == wf.TEXT and f.payload.startswith(b"SIP/2.0 200") for f in frames)
        return ok, any(f.opcode == wf.CLOSE for f in frames)

    def port_of(proto) -> int:
        return proto.transport.getPeer().port

    try:
        flooder = browser("198.51.100.7", 40001)
        other = browser("198.51.100.8", 40002)
        assert answers(*flooder, 40) == (30, True)
        assert answers(*other, 10) == (10, False)
        # A new connection of the blocked browser: dropped without an answer to its handshake.
        failed = svc.stats.get("websocket:ws_failed_handshakes")
        _, wire, _ = browser("198.51.100.7", 40003, status=None)
        assert wire.disconnecting
        assert svc.stats.get("websocket:ws_failed_handshakes") == failed + 1
        top = svc.proxy.pike.rpc_top("ALL")["list"]
        assert [(r["ip_addr"], r["status"]) for r in top] == [("198.51.100.7", "HOT"),
                                                              ("198.51.100.8", "WARM")]
    finally:
        svc.stopService()


def test_new_connections_from_a_blocked_address_are_closed_before_a_byte_is_read(service):
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    svc, reactor, sent = service
    [factory] = [f for port, f, _, _ in reactor.tcpServers if port == 25060]

    def connect(host: str) -> StringTransport:
        conn = factory.buildProtocol(None)
        wire = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 25060),
                               peerAddress=IPv4Address("TCP", host, 40000))
        conn.makeConnection(wire)
        return wire

    assert not connect("192.0.2.1").disconnecting
    ping(svc, "192.0.2.1", 31)  # blocked
    assert svc.proxy.screen("tcp", "192.0.2.1") == "address blocked by pike"
    assert connect("192.0.2.1").disconnecting
    assert not connect("192.0.2.2").disconnecting
    # Once quiet for remove_latency, connections are taken again.
    reactor.advance(10)
    assert not connect("192.0.2.1").disconnecting


def test_replies_do_not_count_but_a_blocked_source_loses_them_too():
    # An agent answering the calls it is offered (100, 180, 200 to each) is not a flood.
    pike, clock, stats = make()
    src = source()
    assert sum(pike.check(src, request=False) for _ in range(10 * DENSITY)) == 10 * DENSITY
    assert send(pike, DENSITY) == DENSITY
    assert stats.get("pike:blocked_ips") == 0
    assert send(pike, 1) == 0  # one request too many
    assert not pike.check(src, request=False)
    assert stats.get("pike:dropped_msgs") == 2
