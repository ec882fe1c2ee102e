"""The load signal on a real sipgw: datagrams that wait in the kernel while sipgw cannot read
them show as queueing delay, a stalled event loop as lag, and both fall back after."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from sipgw.rpc.client import Client
from sipgw.tools.process import SipgwProcess
from tests.helpers.poll import wait_until
from tests.integration.sipgw_process import SipgwRunner, UdpPeer, build_request, control_toml

pytestmark = pytest.mark.integration

BURST = 50  # OPTIONS to sipgw itself: each answered 200 by REQINIT, no backend involved
STALL = 0.5  # seconds sipgw is stopped while the burst waits in its socket


def options(peer: UdpPeer, gw: SipgwProcess, n: int) -> bytes:
    return build_request("OPTIONS", f"sip:{gw.address}", peer=peer, call_id=f"load-{n}",
                         branch=f"z9hG4bKload{n}")


def load(client: Client) -> dict[str, int]:
    got = client.call("stats.fetch", ["load:"])
    return {name.replace(".", ":", 1): value for name, value in got.items()}


def test_queueing_delay_rises_while_sipgw_is_stopped_and_falls_back_after(
        sipgw: SipgwRunner, tmp_path: Path):
    with UdpPeer() as backend:
        gw = sipgw(backend=backend.address, extra_toml=control_toml(tmp_path))
        assert gw.pid is not None
        client = Client(str(tmp_path / "sipgw.ctl"), timeout=5)
        try:
            with UdpPeer(gw.address) as caller:
                caller.send(options(caller, gw, 0))
                assert caller.expect("200", timeout=5)
                wait_until(lambda: load(client)["load:udp_queue_delay_max_us"] < STALL * 1e6 / 5,
                           timeout=10, what="an idle sipgw shows no queueing", caller=gw)

                os.kill(gw.pid, signal.SIGSTOP)
                try:
                    first_sent = time.time()
                    for n in range(1, BURST + 1):
                        caller.send(options(caller, gw, n))
                    # The stall itself: how long the burst waits is what is measured.
                    time.sleep(STALL)
                    resumed = time.time()
                finally:
                    os.kill(gw.pid, signal.SIGCONT)
                answered = {caller.expect("200", timeout=10).header("Call-ID")
                            for _ in range(BURST)}
                assert len(answered) == BURST

                waited_us = (resumed - first_sent) * 1e6
                seen: dict[str, int] = {}

                def spike_shown() -> bool:
                    seen.update(load(client))
                    return seen["load:udp_queue_delay_max_us"] >= waited_us * 0.9

                wait_until(spike_shown, timeout=5, caller=gw,
                           what=f"the burst's wait ({waited_us:.0f} µs) in {seen}")
                assert seen["load:udp_queue_delay_us"] > 1000  # 1 ms: well above idle
                assert seen["load:reactor_lag_max_us"] >= STALL * 1e6 * 0.8

                def calm() -> bool:
                    seen.update(load(client))
                    return (seen["load:udp_queue_delay_max_us"] < waited_us / 5
                            and seen["load:udp_queue_delay_us"] < 1000
                            and seen["load:reactor_lag_max_us"] < STALL * 1e6 / 5)

                wait_until(calm, timeout=15, caller=gw, what=f"back to calm: {seen}")
                # Traffic at a pace sipgw keeps up with does not bring it back.
                for n in range(BURST + 1, BURST + 21):
                    caller.send(options(caller, gw, n))
                    assert caller.expect("200", timeout=5)
                assert load(client)["load:udp_queue_delay_max_us"] < waited_us / 5
        finally:
            client.close()
