"""Faults around a running sipgw (issue 7): a backend that dies mid-call, and a log output
that fails. Real ``sipgw serve`` processes, real SIPp callers and backends on loopback.

A dead backend on loopback answers every datagram with ICMP port unreachable; the
dispatcher's probe round sees it (dispatcher/icmp.py) and fails every branch waiting on it.
So a BYE or a pending INVITE toward it is answered within a probe interval, not after
timer F or C, and an INVITE fails over to the next backend.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import time
from pathlib import Path

import pytest

from sipgw.tools.process import SipgwProcess
from tests.helpers.poll import wait_until
from tests.integration.sipgw_process import (
    SipgwRunner,
    UdpPeer,
    build_request,
    build_response,
    control_toml,
    statistics,
)
from tests.integration.sipp import SippProcess, SippRunner, all_of
from tests.integration.test_dispatcher_sipp import (
    dispatcher_list,
    invites,
    received,
    uri,
    wait_state,
)

pytestmark = pytest.mark.integration

PING_INTERVAL = 0.5
# t1 = 0.1 makes timer L (64*T1, RFC 6026) 6.4 s and t4 = 0.05 timer K 50 ms, so transactions
# of finished calls and answered probes are gone within seconds and a leak shows as a
# tm:inuse_transactions that never comes back to 0.
TIMERS = "[timers]\nt1 = 0.1\nt4 = 0.05\n"


def wait_statistic(gw: SipgwProcess, name: str, wanted: int, *, timeout: float) -> None:
    """Poll the statistic through the control socket until it is ``wanted`` (bounded)."""
    deadline = time.monotonic() + timeout
    while (value := statistics(gw, name)[name]) != wanted:
        assert time.monotonic() < deadline, f"{name} = {value}, not {wanted}\n{gw.describe()}"


def member(sipp: SippRunner, scenario: str = "uas_pool.xml") -> SippProcess:
    """A pool member alive until killed (OPTIONS probes count as SIPp calls)."""
    return sipp.uas(scenario, calls=1_000_000, timeout=120, pause_ms=None,
                    extra_args=["-deadcall_wait", "0"])


def pool_gw(sipgw: SipgwRunner, tmp_path: Path, members: list[SippProcess]) -> SipgwProcess:
    """sipgw round-robining over ``members``, probing them every 0.5 s."""
    listfile = tmp_path / "dispatcher.list"
    listfile.write_text("".join(f"1 {uri(m)} 0 10\n" for m in members))
    return sipgw(
        backend=members[0].address,
        log_level="info",
        extra_toml=control_toml(tmp_path) + TIMERS,
        dispatcher=(f'list_file = "{listfile}"\nalgorithm = 4\n'
                    f"ping_interval = {PING_INTERVAL}\nping_timeout = 0.5\n"
                    "probing_threshold = 1\n"),
    )


def kill(backend: SippProcess) -> None:
    """SIGKILL: the backend vanishes without a word (no BYE, no 503)."""
    assert backend.pid is not None
    os.kill(backend.pid, signal.SIGKILL)
    backend.stop()  # reaps it


def test_a_backend_killed_with_calls_up_bye_to_it_gets_a_prompt_503_and_others_keep_calling(
    sipp: SippRunner, sipgw: SipgwRunner, tmp_path: Path
) -> None:
    a, b = member(sipp), member(sipp)
    gw = pool_gw(sipgw, tmp_path, [a, b])
    calls = 20
    # Calls stay up 3 s after their ACK; the caller hangs up then.
    caller = sipp.uac("uac_call.xml", remote=gw.address, calls=calls, rate=100,
                      pause_ms=3000, timeout=30)
    wait_until(lambda: len(received(a, "ACK")) + len(received(b, "ACK")) == calls,
               timeout=5.0, what="calls not all up", caller=caller)
    on_a = set(received(a))
    assert len(on_a) == calls // 2
    mark = len(gw.log_text())
    killed = time.monotonic()
    kill(a)
    wait_state(gw, a, "AP", "IP", after=mark, timeout=5.0)

    # Every BYE got a final answer: 200 through b, 503 at once for the calls on a (not
    # a 408 after timer F, and no BYE left unanswered).
    caller.wait(30)
    ended = time.monotonic() - killed
    messages = caller.messages()
    # (SIPp then sends a BYE of its own, CSeq 3, for a call whose BYE failed: left out.)
    finals = {m.header("Call-ID"): m.status for m in messages
              if m.direction == "received" and m.header("CSeq") == "2 BYE" and m.status >= 200}
    assert sorted(finals.values()) == [200] * (calls // 2) + [503] * (calls // 2), finals
    assert {cid for cid, status in finals.items() if status == 503} == on_a
    # The BYEs went out 3 s after the ACKs; each refusal came at once, not after timer F
    # (6.4 s here: 9.4 s in all), with room for a busy machine.
    assert ended < 3.0 + 5.0, ended
    stats = caller.stats()
    assert stats.successful == calls // 2, (stats.failures, caller.describe())
    assert "FailedMaxUDPRetrans(C)" not in stats.failures, stats.failures

    # Other clients keep being served, by b alone.
    before = invites(b)
    again = sipp.uac("uac_call.xml", remote=gw.address, calls=calls, rate=100, pause_ms=0,
                     timeout=20)
    assert again.wait(30) == 0, again.describe()
    assert invites(b) - before == calls
    assert dispatcher_list(gw)[uri(a)]["FLAGS"] == "IP"
    # Nothing leaked: every transaction of those calls ends (timer L is 6.4 s here).
    wait_statistic(gw, "tm:inuse_transactions", 0, timeout=15.0)


def test_invites_ringing_on_a_backend_that_dies_fail_over_to_the_next_one(
    sipp: SippRunner, sipgw: SipgwRunner, tmp_path: Path
) -> None:
    ringing, b = member(sipp, "uas_pool_ringing.xml"), member(sipp)
    gw = pool_gw(sipgw, tmp_path, [ringing, b])
    calls = 10
    caller = sipp.uac("uac_call.xml", remote=gw.address, calls=calls, rate=100, pause_ms=0,
                      timeout=30)
    # Half the calls ring on the first member (it sent 180 and will never answer).
    wait_until(lambda: invites(ringing) == calls // 2, timeout=5.0,
               what="calls not ringing", caller=caller)
    mark = len(gw.log_text())
    killed = time.monotonic()
    kill(ringing)
    wait_state(gw, ringing, "AP", "IP", after=mark, timeout=5.0)

    # The pending INVITEs were sent on to b, which answered: every call succeeded, at
    # once rather than after timer C (180 s).
    assert caller.wait(30) == 0, caller.describe()
    assert time.monotonic() - killed < 20.0  # far from timer C's 180 s
    assert invites(b) == calls
    got = caller.messages()
    assert len(all_of(got, "received", "180")) >= calls // 2  # they did ring first
    wait_statistic(gw, "tm:inuse_transactions", 0, timeout=15.0)


# --- the log output fails ---------------------------------------------------------------


def garbage_and_options(gw: SipgwProcess, backend: UdpPeer, n: int, tag: str) -> None:
    """``n`` rounds of a datagram sipgw cannot parse (one log line each) and an OPTIONS
    relayed to the backend and its answer relayed back."""
    with UdpPeer(gw.address) as phone:
        for i in range(n):
            phone.send(f"GARBAGE {tag}{i}\r\n\r\n")
            phone.send(build_request("OPTIONS", f"sip:svc@{gw.address}", peer=phone,
                                     call_id=f"{tag}{i}@test", branch=f"z9hG4bK-{tag}{i}"))
            relayed = backend.expect("OPTIONS", timeout=2.0)
            assert relayed.header("Call-ID") == f"{tag}{i}@test"
            backend.send(build_response(relayed, 200, "OK"), gw.address)
            phone.expect("200", timeout=2.0)


def test_with_its_output_on_a_full_device_sipgw_keeps_relaying_and_counts_lost_log_lines(
    sipgw: SipgwRunner, tmp_path: Path
) -> None:
    with UdpPeer() as backend:
        gw = sipgw(backend=backend.address, output="/dev/full",
                   extra_toml=control_toml(tmp_path))
        garbage_and_options(gw, backend, 200, "full")
        dropped = statistics(gw, "core:dropped_log_lines")["core:dropped_log_lines"]
        assert dropped >= 200
        assert gw.stop() == 0  # and it still stops cleanly on SIGTERM


def test_a_log_disk_that_fills_loses_whole_lines_only_and_says_how_many_once_it_has_room(
    sipgw: SipgwRunner, tmp_path: Path
) -> None:
    with UdpPeer() as backend:
        gw = sipgw(backend=backend.address, extra_toml=control_toml(tmp_path))
        assert gw.pid is not None
        # The file may grow 30 bytes more: the next line is cut short, later ones fail
        # with EFBIG as they would with ENOSPC on a full disk.
        full_at = gw.log_path.stat().st_size + 30
        resource.prlimit(gw.pid, resource.RLIMIT_FSIZE, (full_at, resource.RLIM_INFINITY))
        garbage_and_options(gw, backend, 100, "lost")
        assert gw.log_path.stat().st_size == full_at
        dropped = statistics(gw, "core:dropped_log_lines")["core:dropped_log_lines"]
        assert dropped >= 100

        resource.prlimit(gw.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        garbage_and_options(gw, backend, 1, "back")
        gw.wait_for_log(r"INFO core: bad message from udp:.*: Bad request line")
        gw.wait_for_log(r"WARNING log: \d+ log line\(s\) could not be written "
                        r"\(File too large\); writing again", after=full_at)
        text = gw.log_text()
    lines = text.splitlines()
    # The cut line stands alone: no line carries a second timestamp glued to a fragment.
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
    assert not [line for line in lines if stamp.search(line, 1)], lines
    reported = int(re.search(r"WARNING log: (\d+) log line", text)[1])
    assert reported >= dropped


def waiting(fd: int) -> bytes:
    """What a non-blocking pipe holds now."""
    data = b""
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    return data


def test_a_log_pipe_nobody_reads_costs_log_lines_never_service(
    sipgw: SipgwRunner, tmp_path: Path
) -> None:
    read_end, write_end = os.pipe()  # 64 kB the reader never empties until told to
    try:
        with UdpPeer() as backend:
            gw = sipgw(backend=backend.address, output=f"/proc/self/fd/{write_end}",
                       extra_toml=control_toml(tmp_path))
            os.close(write_end)
            write_end = -1
            garbage_and_options(gw, backend, 1000, "stuck")  # ~150 kB of log lines
            dropped = statistics(gw, "core:dropped_log_lines")["core:dropped_log_lines"]
            assert dropped > 0

            os.set_blocking(read_end, False)
            waiting(read_end)  # the reader catches up
            garbage_and_options(gw, backend, 1, "back")
            deadline = time.monotonic() + 5.0
            text = waiting(read_end)
            while b"writing again" not in text:
                assert time.monotonic() < deadline, text[-2000:]
                time.sleep(0.05)  # the pause between looks at the pipe
                text += waiting(read_end)
            assert re.search(rb"WARNING log: \d+ log line\(s\) could not be written "
                             rb"\(Resource temporarily unavailable\)", text), text
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
