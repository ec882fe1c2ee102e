"""HEP v3 export from a real sipgw to a UDP collector on loopback."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from sipgw.wire.hep import decode
from tests.integration.sipgw_process import SipgwRunner, UdpPeer, build_request

pytestmark = pytest.mark.integration


def test_every_message_in_and_out_reaches_the_hep_collector(sipgw: SipgwRunner,
                                                            tmp_path: Path):
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    port = collector.getsockname()[1]
    try:
        gw = sipgw(backend="127.0.0.1:9", extra_toml=(
            f'[control]\nsocket = "{tmp_path}/c.ctl"\n'
            f'[trace]\nhep = "127.0.0.1:{port}"\nhep_agent_id = 2001\n'))
        with UdpPeer(gw.address) as peer:
            peer.send(build_request("OPTIONS", f"sip:{gw.address}", peer=peer,
                                    call_id="hep-call", branch="z9hG4bK-hep-1"))
            peer.expect("200")
        seen = []
        deadline = time.monotonic() + 5
        while len([p for p in seen if p.get("correlation") == "hep-call"]) < 2:
            left = deadline - time.monotonic()
            assert left > 0, seen
            collector.settimeout(left)
            seen.append(decode(collector.recv(65535)))
    finally:
        collector.close()
    ours = [p for p in seen if p.get("correlation") == "hep-call"]
    request, reply = ours[0], ours[1]
    assert request["payload"].startswith(b"OPTIONS sip:")
    assert (request["src_port"], request["dst_port"]) == (peer.port, gw.port)
    assert reply["payload"].startswith(b"SIP/2.0 200 OK")
    assert (reply["src_port"], reply["dst_port"]) == (gw.port, peer.port)
    assert {p["agent_id"] for p in ours} == {2001}
    assert all(p["proto_type"] == 1 and p["ip_proto"] == 17 for p in ours)
