"""Service assembly: listeners from the config, SIGHUP reload keeps a good config."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock

from sipgw.proxy.config import load_config
from sipgw.proxy.service import ProxyService

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


def start(tmp_path, text=GOOD):
    path = tmp_path / "sipgw.toml"
    path.write_text(text)
    reactor = Reactor()
    svc = ProxyService(load_config(str(path)), reactor)
    svc.startService()
    return svc, reactor, path


def test_listeners_and_backend_come_from_the_config(tmp_path):
    svc, reactor, _ = start(tmp_path)
    assert reactor.udpPorts[25060][1:] == ("127.0.0.1", 65535)
    assert [(port, iface) for port, _, _, iface in reactor.tcpServers] == [(25060, "127.0.0.1")]
    assert svc.proxy.backend.destination.port == 25080
    assert svc.proxy.identity.is_us("127.0.0.1", 25060)
    assert not svc.proxy.identity.is_us("127.0.0.1", 25080)


def test_reload_with_a_bad_file_keeps_the_running_config(tmp_path):
    svc, _, path = start(tmp_path)
    path.write_text(GOOD.replace('destinations = ["sip:127.0.0.1:25080"]', "destinations = 5"))
    svc.reload()
    assert svc.proxy.backend.destination.port == 25080
    path.write_text(GOOD.replace("25080", "25081") + '[proxy]\nmax_forwards = 20\n')
    svc.reload()
    assert svc.proxy.backend.destination.port == 25081
    assert svc.proxy.max_forwards == 20


def test_wildcard_listeners_advertise_a_real_address(tmp_path):
    svc, _, _ = start(tmp_path, GOOD.replace("127.0.0.1:25060", "0.0.0.0:25060"))
    hosts = {lst.host for lst in svc.proxy.identity.listeners}
    assert "0.0.0.0" not in hosts
    # Any of our addresses with our port means us; our address with another port does not.
    assert svc.proxy.identity.is_us("127.0.0.1", 25060)
    assert not svc.proxy.identity.is_us("127.0.0.1", 25080)
