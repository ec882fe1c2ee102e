"""Service assembly: listeners from the config, SIGHUP reload keeps a good config."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock

from sipgw.config import load_config
from sipgw.proxy.service import make_service

GOOD = """
[listen]
udp = ["127.0.0.1:25060"]
tcp = ["127.0.0.1:25060"]
ws = []
[dispatcher]
destinations = ["sip:127.0.0.1:25080"]
"""


class Reactor(MemoryReactorClock):
    """MemoryReactorClock has no UDP; record UDP listeners the same way."""

    def __init__(self) -> None:
        super().__init__()
        self.udpPorts = {}

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        self.udpPorts[port] = (protocol, interface, maxPacketSize)
        return _Port()


class _Port:
    def stopListening(self):
        return None


def start(tmp_path, text=GOOD, send=None):
    path = tmp_path / "sipgw.toml"
    path.write_text(text)
    reactor = Reactor()
    svc = make_service(load_config(str(path)), reactor, send=send)
    svc.startService()
    return svc, reactor, path


def test_listeners_and_backend_come_from_the_config(tmp_path):
    svc, reactor, _ = start(tmp_path)
    assert reactor.udpPorts[25060][1:] == ("127.0.0.1", 65535)
    assert [(port, iface) for port, _, _, iface in reactor.tcpServers] == [(25060, "127.0.0.1")]
    assert svc.proxy.backends.backend.destination.port == 25080
    assert svc.proxy.identity.is_us("127.0.0.1", 25060)
    assert not svc.proxy.identity.is_us("127.0.0.1", 25080)


def test_reload_with_a_bad_file_keeps_the_running_config(tmp_path):
    svc, _, path = start(tmp_path)
    path.write_text(GOOD.replace('destinations = ["sip:127.0.0.1:25080"]', "destinations = 5"))
    svc.reload()
    assert svc.proxy.backends.backend.destination.port == 25080
    path.write_text(GOOD.replace("25080", "25081") + '[proxy]\nmax_forwards = 20\n')
    svc.reload()
    assert svc.proxy.backends.backend.destination.port == 25081
    assert svc.proxy.relay.max_forwards == 20


def test_wildcard_listeners_advertise_a_real_address(tmp_path):
    svc, _, _ = start(tmp_path, GOOD.replace("127.0.0.1:25060", "0.0.0.0:25060"))
    hosts = {lst.host for lst in svc.proxy.identity.listeners}
    assert "0.0.0.0" not in hosts
    # Any of our addresses with our port means us; our address with another port does not.
    assert svc.proxy.identity.is_us("127.0.0.1", 25060)
    assert not svc.proxy.identity.is_us("127.0.0.1", 25080)


INVITE = (
    "INVITE sip:5002@127.0.0.1:25060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{branch};rport\r\n"
    "From: <sip:5001@127.0.0.1>;tag=a\r\nTo: <sip:5002@127.0.0.1>\r\n"
    "Call-ID: {branch}@test\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)

def _drain_setup(tmp_path, timeout="5"):
    from sipgw.proxy.transport import Source
    from sipgw.sip.parser import parse_message

    text = GOOD + f'[auth]\ntrusted = ["127.0.0.0/8"]\n[proxy]\ndrain_timeout = {timeout}\n'
    text = text.replace("[dispatcher]\n", "[dispatcher]\nping_interval = 0\n")
    sent = []
    svc, reactor, _ = start(tmp_path, text,
                            send=lambda data, dest: sent.append((parse_message(data), dest)))
    caller = Source(transport="udp", host="127.0.0.1", port=5070, local_host="127.0.0.1",
                    local_port=25060)
    svc.proxy.receive(INVITE.format(branch="one").encode(), caller)
    return svc, reactor, sent, caller


def test_sigterm_drains_new_requests_get_503_and_stop_waits_for_the_pending_answer(tmp_path):
    from sipgw.proxy.transport import Source

    svc, reactor, sent, caller = _drain_setup(tmp_path)
    [fwd] = [m for m, d in sent if getattr(m, "method", None) == "INVITE"]
    stopped = svc.stopService()
    assert not stopped.called  # the INVITE has no final answer yet
    # The TCP listener closed; UDP open for the answers.
    assert svc.listeners.stream_ports == [] and svc.listeners.udp_ports
    sent.clear()
    svc.proxy.receive(INVITE.format(branch="two").encode(), caller)
    [(r, _)] = sent
    assert (r.status, r.header("retry-after")) == (503, "10")
    # The backend answers the pending INVITE: it goes up, and the stop completes.
    vias = "".join(f"Via: {v}\r\n" for v in fwd.values("via"))
    ok = (f"SIP/2.0 200 OK\r\n{vias}From: {fwd.header('from')}\r\n"
          f"To: {fwd.header('to')};tag=b\r\nCall-ID: {fwd.call_id}\r\nCSeq: 1 INVITE\r\n"
          f"Content-Length: 0\r\n\r\n").encode()
    backend = Source(transport="udp", host="127.0.0.1", port=25080, local_host="127.0.0.1",
                     local_port=25060)
    svc.proxy.receive(ok, backend)
    assert any(getattr(m, "status", 0) == 200 for m, _ in sent)
    reactor.advance(0.1)
    assert stopped.called


def test_draining_gives_up_after_drain_timeout(tmp_path):
    svc, reactor, _, _ = _drain_setup(tmp_path, timeout="2")
    stopped = svc.stopService()
    reactor.advance(1.9)
    assert not stopped.called
    reactor.advance(0.2)
    assert stopped.called



class _Flow:
    """A connection that closes when told (``leaves``), or never answers its close."""

    transport_name = "tcp"

    def __init__(self, flows, flow_id: int, leaves: bool) -> None:
        self.flows, self.flow_id, self.leaves = flows, flow_id, leaves
        self.told = 0
        flows.add(self, "tcp", "192.0.2.1", 40000 + flow_id)

    def send(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.told += 1
        if self.leaves:
            self.flows.remove(self, "tcp", "192.0.2.1", 40000 + self.flow_id)


def test_once_drained_connections_are_closed_and_waited_for_up_to_the_close_grace(tmp_path):
    from sipgw.proxy.service import CLOSE_GRACE

    svc, reactor, _ = start(tmp_path)
    quick = _Flow(svc.flows, 1, leaves=True)
    stuck = _Flow(svc.flows, 2, leaves=False)
    stopped: list = []
    svc.stopService().addCallback(stopped.append)
    assert (quick.told, stuck.told) == (1, 1) and len(svc.flows) == 1
    reactor.advance(CLOSE_GRACE - 0.1)
    assert not stopped  # the stuck one still gets its time
    reactor.advance(0.2)
    assert stopped

def test_a_raised_message_size_limit_reaches_new_tcp_connections_after_reload(tmp_path):
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    svc, reactor, path = start(tmp_path, GOOD + "[limits]\nmax_message_size = 2000\n")
    path.write_text(GOOD + "[limits]\nmax_message_size = 8000\n")
    svc.reload()
    factory = reactor.tcpServers[0][1]
    peer = IPv4Address("TCP", "192.0.2.9", 40000)
    conn = factory.buildProtocol(peer)
    wire = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 25060))
    conn.makeConnection(wire)
    body = b"x" * 3000
    conn.dataReceived(
        b"MESSAGE sip:bob@127.0.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP 192.0.2.9:40000;branch=z9hG4bKbig\r\n"
        b"From: <sip:a@192.0.2.9>;tag=1\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: big\r\n"
        b"CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 3000\r\n\r\n" + body
    )
    # Relayed (407: the proxy wants credentials), not refused as too large by the framer.
    assert not wire.value().startswith(b"SIP/2.0 513 "), wire.value()[:60]
    assert svc.proxy.stats.values["core:rcv_requests"] == 1


def test_a_reload_says_which_changes_need_a_restart(tmp_path):
    from twisted.logger import globalLogPublisher

    svc, _, path = start(tmp_path, GOOD + '[auth]\nnonce_secret = "one"\n')
    lines: list[str] = []

    def observe(event: dict) -> None:
        from twisted.logger import formatEvent

        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        path.write_text(GOOD.replace("25060", "25062") + '[auth]\nnonce_secret = "two"\n'
                        f'[subscribers]\nurl = "sqlite://{tmp_path}/other.db"\n')
        svc.reload()
    finally:
        globalLogPublisher.removeObserver(observe)
    text = "\n".join(lines)
    assert "listen changes need a restart" in text
    assert "[subscribers] changes need a restart" in text
    assert "auth.nonce_secret changes need a restart" in text
    assert "two" not in text and "other.db" not in text  # secrets and paths stay out
