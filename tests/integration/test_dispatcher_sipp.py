"""The dispatcher's acceptance tests: a SIPp caller → sipgw → a pool of three SIPp backends.

Each backend runs ``uas_pool.xml`` (answers calls, and OPTIONS probes as Asterisk does).
What a backend received is read from its own message trace; sipgw's dispatcher state is
read from the one log line it writes per state change
(``dispatcher: set 1 sip:127.0.0.1:PORT AP -> IP (probe timeout)``), polled with a bound.
Probes run every 0.5 s with a 0.5 s timeout, so the tests take seconds, not minutes.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from sipgw.tools.process import SipgwProcess, run_cli
from tests.helpers.poll import wait_until
from tests.integration.sipgw_process import SipgwRunner, UdpPeer, build_request
from tests.integration.sipp import SippProcess, SippRunner

pytestmark = pytest.mark.integration

PING_INTERVAL = 0.5
PING_TIMEOUT = 0.5
THRESHOLD = 1
POOL = "uas_pool.xml"


def member(sipp: SippRunner, port: int | None = None) -> SippProcess:
    """One backend of the pool, alive until stopped (SIPp ends after -m calls or -timeout;
    probes count as calls). ``-deadcall_wait 0``: a new request with the Call-ID of an
    ended "call" (a repeated OPTIONS) is a new call, not a stray to ignore for 33 s."""
    return sipp.uas(POOL, port=port, calls=1_000_000, timeout=300, pause_ms=None,
                    extra_args=["-deadcall_wait", "0"])


def uri(backend: SippProcess) -> str:
    return f"sip:{backend.address}"


def pool(sipp: SippRunner, sipgw: SipgwRunner, tmp_path: Path, lines: str, *, algorithm: int,
         members: int = 3) -> tuple[SipgwProcess, list[SippProcess], Path]:
    """``members`` backends, a dispatcher.list made from ``lines`` (``{0}``, ``{1}``... are
    the backends' URIs) and a sipgw dispatching to them."""
    backends = [member(sipp) for _ in range(members)]
    listfile = tmp_path / "dispatcher.list"
    listfile.write_text(lines.format(*[uri(b) for b in backends]))
    gw = sipgw(
        backend=backends[0].address,
        log_level="info",
        extra_toml=f'[control]\nsocket = "{tmp_path}/sipgw.ctl"\n',
        dispatcher=(
            f'list_file = "{listfile}"\nalgorithm = {algorithm}\n'
            f"ping_interval = {PING_INTERVAL}\nping_timeout = {PING_TIMEOUT}\n"
            f"probing_threshold = {THRESHOLD}\n"
        ),
    )
    return gw, backends, listfile


def calls(sipp: SippRunner, gw: SipgwProcess, n: int, *, rate: float = 250,
          pause_ms: int = 0) -> SippProcess:
    """Start ``n`` calls through sipgw (SIPp ``uac_call.xml``)."""
    return sipp.uac("uac_call.xml", remote=gw.address, calls=n, rate=rate, pause_ms=pause_ms,
                    timeout=60)


def all_succeed(uac: SippProcess, n: int) -> None:
    assert uac.wait(90) == 0, uac.describe()
    stats = uac.stats()
    assert (stats.successful, stats.failed) == (n, 0), (stats.failures, uac.describe())


def received(backend: SippProcess, method: str = "INVITE") -> Counter:
    """Call-IDs of the ``method`` requests this backend received (retransmissions once)."""
    return Counter({m.header("Call-ID"): 1 for m in backend.messages()
                    if m.direction == "received" and m.kind == method})


def invites(backend: SippProcess) -> int:
    return len(received(backend))


def dispatcher_list(gw: SipgwProcess) -> dict[str, dict]:
    """``sipgw ctl dispatcher.list --json``: destination URI → its DEST record."""
    done = run_cli("ctl", "-c", str(gw.config_path), "dispatcher.list", "--json")
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    return {t["DEST"]["URI"]: t["DEST"]
            for record in listing["RECORDS"] for t in record["SET"]["TARGETS"]}


def wait_state(gw: SipgwProcess, backend: SippProcess, old: str, new: str, *, after: int,
               timeout: float = 5.0) -> str:
    return gw.wait_for_log(rf"dispatcher: set 1 {re.escape(uri(backend))} {old} -> {new}",
                           after=after, timeout=timeout)


def test_round_robin_splits_evenly_a_dead_member_is_skipped_and_the_backup_takes_over(
    sipp: SippRunner, sipgw: SipgwRunner, tmp_path: Path
) -> None:
    gw, (a, b, backup), _ = pool(sipp, sipgw, tmp_path, "1 {0} 0 10\n1 {1} 0 10\n1 {2} 0 0\n",
                                 algorithm=4)
    all_succeed(calls(sipp, gw, 1000), 1000)
    split = [invites(a), invites(b), invites(backup)]
    assert abs(split[0] - 500) <= 20 and abs(split[1] - 500) <= 20, split
    assert split[2] == 0, "the backup takes nothing while the primaries are up"
    listed = dispatcher_list(gw)  # what an operator sees, through the control socket
    assert [listed[uri(x)]["FLAGS"] for x in (a, b, backup)] == ["AP", "AP", "AP"]
    assert [listed[uri(x)]["STATS"]["REQUESTS"] for x in (a, b, backup)] == split
    assert [listed[uri(x)]["PRIORITY"] for x in (a, b, backup)] == [10, 10, 0]

    # One primary dies while calls keep coming. It goes IP within ping_interval x
    # threshold (the keepalive of the next probe round meets ICMP port unreachable), the
    # calls sent to it meanwhile fail over to the other one, and only a call that was up
    # on it at that instant may fail -- with a final response, not a timeout.
    flow = calls(sipp, gw, 300, rate=100)
    wait_until(lambda: invites(a) + invites(b) >= 1000 + 60, timeout=5.0,
               what="calls not reaching the primaries", caller=flow)
    mark = len(gw.log_text())
    a.stop()
    died = time.monotonic()
    wait_state(gw, a, "AP", "IP", after=mark, timeout=5.0)
    detected = time.monotonic() - died
    # Measured 0.46 s; the margin is the keepalive check (0.1 s), the 50 ms log poll and
    # a busy machine: a few probe rounds.
    assert detected <= PING_INTERVAL * THRESHOLD + 2.0, detected
    flow.wait(60)
    stats = flow.stats()
    assert stats.successful >= 300 - 3, (stats.failures, flow.describe())
    assert "FailedMaxUDPRetrans(C)" not in stats.failures, stats.failures
    assert "FailedCmdNotSent(C)" not in stats.failures, stats.failures
    before_b = invites(b)
    all_succeed(calls(sipp, gw, 100), 100)
    assert invites(b) - before_b == 100

    # It comes back: active again after its first answered probe.
    mark = len(gw.log_text())
    a = member(sipp, port=a.port)
    wait_state(gw, a, "IP", "AP", after=mark, timeout=5.0)

    # Both primaries die: the backup gets every call.
    mark = len(gw.log_text())
    a.stop()
    b.stop()
    wait_state(gw, a, "AP", "IP", after=mark)
    wait_state(gw, b, "AP", "IP", after=mark)
    all_succeed(calls(sipp, gw, 50), 50)
    assert invites(backup) == 50

    # Nobody left: 503 with Retry-After, at once.
    mark = len(gw.log_text())
    backup.stop()
    wait_state(gw, backup, "AP", "IP", after=mark)
    assert {d["FLAGS"] for d in dispatcher_list(gw).values()} == {"IP"}
    with UdpPeer(gw.address) as caller:
        caller.send(build_request("INVITE", f"sip:service@{gw.address}", peer=caller,
                                  call_id="none-left@test", branch="z9hG4bK-none-left"))
        final = caller.expect("503", timeout=2.0)
    assert final.header("Retry-After") == "10"


def test_weights_70_30_split_2000_calls_70_30(
    sipp: SippRunner, sipgw: SipgwRunner, tmp_path: Path
) -> None:
    gw, (a, b), _ = pool(sipp, sipgw, tmp_path, "1 {0} 0 0 weight=70\n1 {1} 0 0 weight=30\n",
                         algorithm=9, members=2)
    all_succeed(calls(sipp, gw, 2000, rate=200), 2000)
    share = invites(a) / 2000
    assert 0.67 <= share <= 0.73, (invites(a), invites(b))
    assert invites(a) + invites(b) == 2000


def test_hash_over_call_id_sends_every_request_of_a_call_to_one_backend(
    sipp: SippRunner, sipgw: SipgwRunner, tmp_path: Path
) -> None:
    gw, backends, _ = pool(sipp, sipgw, tmp_path, "1 {0}\n1 {1}\n1 {2}\n", algorithm=0)
    all_succeed(calls(sipp, gw, 150), 150)
    owner: dict[str, int] = {}
    for index, backend in enumerate(backends):
        for method in ("INVITE", "ACK", "BYE"):
            for call_id in received(backend, method):
                assert owner.setdefault(call_id, index) == index, call_id
    assert len(owner) == 150
    assert len(set(owner.values())) == 3  # different calls do spread

    # Out-of-dialog requests repeated with one Call-ID (a refresh, a retry): one backend.
    with UdpPeer(gw.address) as peer:
        answered_by: dict[str, set[str]] = {}
        for n in range(12):
            call_id = f"sticky-{n}@test"
            for cseq in range(1, 5):
                peer.send(build_request("OPTIONS", f"sip:service@{gw.address}", peer=peer,
                                        call_id=call_id, cseq=cseq,
                                        branch=f"z9hG4bK-sticky-{n}-{cseq}"))
                reply = peer.expect("200", timeout=2.0)
                answered_by.setdefault(reply.header("Call-ID"), set()).add(
                    reply.header("X-Backend"))
    assert all(len(ports) == 1 for ports in answered_by.values()), answered_by
    assert len(set().union(*answered_by.values())) > 1


def test_reload_while_calls_run_new_calls_use_the_new_list_and_a_bad_file_is_refused(
    sipp: SippRunner, sipgw: SipgwRunner, tmp_path: Path
) -> None:
    gw, (a, b, c), listfile = pool(sipp, sipgw, tmp_path, "1 {0}\n1 {1}\n", algorithm=4)
    running = calls(sipp, gw, 40, rate=20, pause_ms=1500)  # 2 s of new calls, 1.5 s each
    wait_until(lambda: invites(a) + invites(b) >= 10, timeout=5.0,  # up on the old list
               what="calls not up on the old list", caller=running)
    mark = len(gw.log_text())
    listfile.write_text(f"# a and b retired\n1 {uri(c)}\n")
    gw.reload()
    gw.wait_for_log(r"dispatcher: loaded 1 destinations in 1 sets", after=mark)
    old_calls = invites(a) + invites(b)
    all_succeed(running, 40)  # the calls up before the reload completed too
    assert invites(a) + invites(b) == old_calls, "no new call went to the old list"
    assert invites(c) == 40 - old_calls > 0

    mark = len(gw.log_text())
    listfile.write_text(f"1 {uri(a)}\nnot a line\n")
    gw.reload()
    line = gw.wait_for_log(r"dispatcher reload refused, keeping the running list", after=mark)
    assert f"{listfile}:2: setid" in line
    all_succeed(calls(sipp, gw, 10), 10)
    assert invites(c) == 40 - old_calls + 10
