"""sipgw with two workers (issue 14) between real SIPp callers and real SIPp backends.

Every caller is bound to a source the kernel is known to give to one worker
(``workers.Workers.sources``), so each test drives both workers on purpose and can say
which worker each call went through: what reaches a backend names the worker's own UDP
address (``core.workers`` ``backend_address``) in its Via and Record-Route, and it is there
that the backend's answers, retransmissions and in-dialog requests come back.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from sipgw.tools.process import SipgwProcess
from tests.helpers.poll import wait_until
from tests.integration.sipgw_process import (
    SipgwRunner,
    TcpPeer,
    UdpPeer,
    build_request,
    build_response,
)
from tests.integration.sipp import (
    LOOPBACK,
    SippMessage,
    SippProcess,
    SippRunner,
    all_of,
    free_port,
    uri_of,
)
from tests.integration.test_proxy_sipp import SDP, branch_of, values
from tests.integration.workers import WORKERS, Workers, control_directory, control_toml

pytestmark = pytest.mark.integration


@pytest.fixture
def control_dir() -> Iterator[Path]:
    """Asked for first by each test, so that it goes last, after sipgw has stopped."""
    with control_directory() as directory:
        yield directory


def start_workers(sipgw: SipgwRunner, control_dir: Path, *, backend: str, extra_toml: str = "",
                  **options) -> tuple[SipgwProcess, Workers]:
    gw = sipgw(backend=backend, workers=WORKERS, log_level="info",
               extra_toml=control_toml(control_dir) + extra_toml, **options)
    return gw, Workers(gw, control_dir)  # started: both workers ready (READY=1)


def call_ids(uac: SippProcess) -> set[str]:
    return {m.header("Call-ID") or "" for m in all_of(uac.messages(), "sent", "INVITE")}


def top_via_port(message: SippMessage) -> int:
    match = re.match(r"SIP/2\.0/UDP [\d.]+:(\d+);", values(message, "Via")[0])
    assert match, f"top Via is not sipgw's over UDP:\n{message.text}"
    return int(match[1])


def names_port(entry: str, port: int) -> bool:
    return re.match(rf"sip:(?:[^@;>]*@)?{re.escape(LOOPBACK)}:{port}[;>]", uri_of(entry) + ">") \
        is not None


@dataclass
class Phase:
    """One kind of call: a caller scenario, and the backend's."""

    uac: str
    uas: str
    uac_options: dict
    uas_options: dict | None = None


PHASES = {
    # Over TCP SIPp takes a resent 200 for an unexpected message: the caller is not slow.
    "call": Phase("uac_call_slow_ack.xml", "uas_call_slow_bye.xml", {}),
    "cancel": Phase("uac_cancel.xml", "uas_cancel.xml", {}),
    "reinvite": Phase("uac_reinvite.xml", "uas_reinvite.xml", {"pause_ms": 100}),
    "bye from the backend": Phase("uac_call_callee_hangs_up.xml", "uas_bye_from_callee.xml", {},
                                  {"pause_ms": 100}),
}
SOURCES_PER_WORKER = 2
CALLS_PER_SOURCE = 2


def run_phase(sipp: SippRunner, workers: Workers, gw: SipgwProcess, phase: Phase,
              transport: str, backend_port: int) -> tuple[SippProcess, list[list[SippProcess]]]:
    """The phase's backend on ``backend_port``, and its callers: ``SOURCES_PER_WORKER`` on
    each worker, each placing ``CALLS_PER_SOURCE`` calls; all must succeed."""
    sources = workers.sources(transport, SOURCES_PER_WORKER)
    total = WORKERS * SOURCES_PER_WORKER * CALLS_PER_SOURCE
    uas = sipp.uas(phase.uas, port=backend_port, calls=total, timeout=30,
                   **(phase.uas_options or {}))
    scenario = "uac_call.xml" if transport == "tcp" and phase is PHASES["call"] else phase.uac
    callers = [[sipp.uac(scenario, remote=gw.address, transport=transport, ip=host, port=port,
                         calls=CALLS_PER_SOURCE, rate=10, timeout=30, **phase.uac_options)
                for host, port in on_worker] for on_worker in sources]
    for uac in (c for on_worker in callers for c in on_worker):
        assert uac.wait(40) == 0, uac.describe()
        stats = uac.stats()
        assert (stats.successful, stats.failed) == (CALLS_PER_SOURCE, 0), stats.failures
    assert uas.wait(40) == 0, uas.describe()
    return uas, callers


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_calls_cancels_and_reinvites_through_two_workers_each_by_its_own_backend_address(
    control_dir: Path, sipp: SippRunner, sipgw: SipgwRunner, transport: str
) -> None:
    backend_port = free_port("udp")
    gw, workers = start_workers(sipgw, control_dir, backend=f"{LOOPBACK}:{backend_port}")
    own = workers.backend_ports()
    assert sorted(own.values()) == list(range(WORKERS)), own
    assert gw.port not in own  # a port of its own, not the public one
    port_of = {index: port for port, index in own.items()}

    for name, phase in PHASES.items():
        forwarded = [workers.statistic(i, "core:fwd_requests") for i in range(WORKERS)]
        uas, callers = run_phase(sipp, workers, gw, phase, transport, backend_port)
        at_uas = uas.messages()
        for index, on_worker in enumerate(callers):
            mine = set().union(*(call_ids(uac) for uac in on_worker))
            got = [m for m in at_uas if m.direction == "received" and not m.is_response
                   and m.header("Call-ID") in mine]
            assert got, f"{name}: nothing from worker {index}'s callers reached the backend"
            # Everything the backend received for these calls came from the worker that
            # holds them, from its own address, as its Via says (the answers go there).
            for request in got:
                assert top_via_port(request) == port_of[index], (name, index, request.text)
            # The dialog's backend-side Record-Route names that address too, so the
            # backend's in-dialog requests would reach that worker.
            for invite in all_of(got, "received", "INVITE"):
                if invite.header("CSeq") == "1 INVITE":
                    toward_backend = values(invite, "Record-Route")[0]
                    assert names_port(toward_backend, port_of[index]), (name, toward_backend)
        after = [workers.statistic(i, "core:fwd_requests") for i in range(WORKERS)]
        assert all(a > b for a, b in zip(after, forwarded, strict=True)), (name, forwarded, after)

        if name == "call":
            assert_retransmissions_landed(uas, callers, transport)
        if name == "cancel":
            for cancel in all_of(at_uas, "received", "CANCEL"):
                invite = next(m for m in all_of(at_uas, "received", "INVITE")
                              if m.header("Call-ID") == cancel.header("Call-ID"))
                assert branch_of(values(cancel, "Via")[0]) == branch_of(values(invite, "Via")[0])
        if name == "reinvite":
            reinvites = [m for m in all_of(at_uas, "received", "INVITE")
                         if m.header("CSeq") == "2 INVITE"]
            assert len(reinvites) == WORKERS * SOURCES_PER_WORKER * CALLS_PER_SOURCE
        if name == "bye from the backend":
            # The backend's BYE went to the address in the Record-Route: the worker's own.
            for index, on_worker in enumerate(callers):
                mine = set().union(*(call_ids(uac) for uac in on_worker))
                byes = [m for m in all_of(at_uas, "sent", "BYE") if m.header("Call-ID") in mine]
                assert len(byes) == SOURCES_PER_WORKER * CALLS_PER_SOURCE
                for bye in byes:
                    assert names_port(values(bye, "Route")[0], port_of[index]), bye.text


def assert_retransmissions_landed(uas: SippProcess, callers: list[list[SippProcess]],
                                  transport: str) -> None:
    """The backend was slow to answer the BYE, the callers (UDP) slow to acknowledge the
    200: both sides retransmitted."""
    at_uas = uas.messages()
    for on_worker in callers:
        for uac in on_worker:
            at_uac = uac.messages()
            for cid in call_ids(uac):
                if transport == "udp":
                    # The backend's 200, resent until the ACK, came back through the worker.
                    oks = [m for m in all_of(at_uac, "received", "200")
                           if m.header("Call-ID") == cid and m.method == "INVITE"]
                    assert len(oks) >= 2, f"{cid}: the 200's retransmissions were not relayed"
                # Each BYE the backend got is one transaction's: a caller's retransmission
                # that reached the other worker would have come as a second branch.
                # The worker resent its BYE to the slow backend (the copies), from its own
                # address, and the caller's retransmissions stayed with that worker.
                byes = [m.text for m in all_of(at_uas, "received", "BYE")
                        if m.header("Call-ID") == cid]
                assert len(byes) >= 2 and len(set(byes)) == 1, byes
            if transport == "udp":
                assert uac.stats().retransmissions >= CALLS_PER_SOURCE, uac.describe()


# --- a worker killed under load ------------------------------------------------------------

# The head of one record of SIPp's -trace_msg file: when, which way, the first word.
_RECORD = re.compile(
    rb"^-{47} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n"
    rb"[A-Z]+ message (sent|received) [^\n]*\n\n(\S+) [^\n]*\n(?:[^\n]+\n)*?Call-ID: *([^\r\n]+)",
    re.MULTILINE,
)


def sent_times(uac: SippProcess, method: str) -> dict[str, list[float]]:
    """When the caller sent each ``method`` request (retransmissions too), by Call-ID."""
    times: dict[str, list[float]] = {}
    for stamp, direction, word, cid in _RECORD.findall(uac.message_file.read_bytes()):
        if direction == b"sent" and word == method.encode():
            when = datetime.strptime(stamp.decode(), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            times.setdefault(cid.decode().strip(), []).append(when)
    return times


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_kill_9_of_a_worker_under_load_leaves_the_other_workers_calls_alone_and_its_slot_restarts(
    control_dir: Path, sipp: SippRunner, sipgw: SipgwRunner, transport: str
) -> None:
    # The backend answers BYE after 1.2 s: callers retransmit their BYEs throughout.
    uas = sipp.uas("uas_call_slow_bye.xml", calls=1_000_000, timeout=60)
    # The restarted worker relays what callers resend of the dead one's transactions, and
    # SIPp leaves a BYE of a call it has ended unanswered: no long drain for those.
    gw, workers = start_workers(sipgw, control_dir, backend=uas.address,
                                extra_toml="[proxy]\ndrain_timeout = 1\n")
    port_of = {index: port for port, index in workers.backend_ports().items()}
    victim, survivor = workers.table()
    sources = workers.sources(transport, SOURCES_PER_WORKER)
    calls = 12
    callers = [[sipp.uac("uac_call.xml", remote=gw.address, ip=host, port=port, calls=calls,
                         rate=4, pause_ms=300, timeout=30, transport=transport)
                for host, port in on_worker] for on_worker in sources]
    # Kill worker 0 once both workers hold calls.
    wait_until(lambda: all(w["transactions"] > 0 for w in workers.table()), timeout=10,
               what="both workers busy", caller=gw)
    killed_at = time.time()
    os.kill(victim["pid"], signal.SIGKILL)

    # Worker 1's callers lost nothing: every call succeeded, retransmissions included.
    for uac in callers[1]:
        assert uac.wait(40) == 0, uac.describe()
        stats = uac.stats()
        assert (stats.successful, stats.failed) == (calls, 0), stats.failures
    # Among them (UDP), transactions that were pending when worker 0 died and whose
    # retransmissions came after: they reached worker 1 still (one branch at the backend).
    at_uas = uas.messages()
    late = 0
    for uac in callers[1]:
        for cid, times in sent_times(uac, "BYE").items():
            if len(times) > 1 and times[-1] > killed_at and times[0] < killed_at + 1.0:
                late += 1
            byes = [m for m in all_of(at_uas, "received", "BYE") if m.header("Call-ID") == cid]
            assert byes and len({m.text for m in byes}) == 1, [m.text for m in byes]
            assert top_via_port(byes[0]) == port_of[1]
    assert late > 0 or transport == "tcp", "no BYE of worker 1 was retransmitted across the kill"

    # The slot was restarted: a new process, counted, the other worker untouched.
    def restarted() -> bool:
        now = workers.table()
        return now[0]["ready"] and now[0]["pid"] not in (None, victim["pid"])

    wait_until(restarted, timeout=10, what="worker 0 restarted", caller=gw)
    after = workers.table()
    assert (after[0]["restarts"], after[0]["last_exit"]) == (1, "signal 9"), after
    assert (after[1]["pid"], after[1]["restarts"]) == (survivor["pid"], 0), after
    assert after[0]["backend_address"] == victim["backend_address"]  # the same address
    for uac in callers[0]:
        uac.stop()  # some of its calls may have died with the worker: not judged
    # The restarted worker serves its clients again, from the same sockets.
    host, port = workers.sources(transport, 1)[0][0]
    again = sipp.uac("uac_call.xml", remote=gw.address, ip=host, port=port, calls=2, rate=10,
                     timeout=20, transport=transport)
    assert again.wait(30) == 0, again.describe()
    got = [m for m in all_of(uas.messages(), "received", "INVITE")
           if m.header("Call-ID") in call_ids(again)]
    assert got and all(top_via_port(m) == port_of[0] for m in got)


# --- the dispatcher ------------------------------------------------------------------------


def pool_member(sipp: SippRunner) -> SippProcess:
    """A backend of the pool that answers calls and probes until stopped (probes count as
    SIPp calls; ``-deadcall_wait 0``: a repeated probe's Call-ID is a new call)."""
    return sipp.uas("uas_pool.xml", calls=1_000_000, timeout=60, pause_ms=None,
                    extra_args=["-deadcall_wait", "0"])


def flags(workers: Workers, worker: int) -> dict[str, str]:
    """``dispatcher.list`` on one worker's own socket: destination URI → its flags."""
    listing = workers.call("dispatcher.list", worker=worker)
    return {t["DEST"]["URI"]: t["DEST"]["FLAGS"]
            for record in listing["RECORDS"] for t in record["SET"]["TARGETS"]}


def test_dispatcher_failover_on_two_workers_a_dead_backend_is_left_by_both_and_no_call_fails(
    control_dir: Path, sipp: SippRunner, sipgw: SipgwRunner, tmp_path: Path
) -> None:
    a, b = pool_member(sipp), pool_member(sipp)
    listfile = tmp_path / "dispatcher.list"
    listfile.write_text(f"1 sip:{a.address} 0 10\n1 sip:{b.address} 0 10\n")
    gw, workers = start_workers(
        sipgw, control_dir, backend=a.address,
        dispatcher=(f'list_file = "{listfile}"\nalgorithm = 4\nping_interval = 0.5\n'
                    "ping_timeout = 0.5\nprobing_threshold = 1\n"))
    port_of = {index: port for port, index in workers.backend_ports().items()}
    sources = workers.sources("udp", SOURCES_PER_WORKER)

    def calls_from_both_workers(n: int) -> list[list[SippProcess]]:
        callers = [[sipp.uac("uac_call.xml", remote=gw.address, ip=host, port=port, calls=n,
                             rate=20, pause_ms=0, timeout=30)
                    for host, port in on_worker] for on_worker in sources]
        for uac in (c for on_worker in callers for c in on_worker):
            assert uac.wait(40) == 0, uac.describe()
            assert uac.stats().successful == n
        return callers

    def invites(member: SippProcess, callers: list[SippProcess]) -> list[SippMessage]:
        mine = set().union(*(call_ids(uac) for uac in callers))
        return [m for m in all_of(member.messages(), "received", "INVITE")
                if m.header("Call-ID") in mine]

    # Round robin in each worker: both backends get calls from both workers.
    before = calls_from_both_workers(4)
    for member in (a, b):
        for index in range(WORKERS):
            got = invites(member, before[index])
            assert got, f"{member.address} got nothing from worker {index}"
            assert {top_via_port(m) for m in got} == {port_of[index]}

    a.stop()  # gone without a word: what is sent to it meets ICMP port unreachable
    after = calls_from_both_workers(4)  # at once: every call succeeds, on b
    for index in range(WORKERS):
        assert len(invites(b, after[index])) == SOURCES_PER_WORKER * 4
    # Each worker has taken a out of service (probing), b stays in.
    wait_until(lambda: all(flags(workers, i)[f"sip:{a.address}"] == "IP"
                           for i in range(WORKERS)),
               timeout=5, what="a inactive in both workers", caller=gw)
    assert all(flags(workers, i)[f"sip:{b.address}"] == "AP" for i in range(WORKERS))


# --- one route key for every worker --------------------------------------------------------


def test_both_workers_sign_a_dialogs_record_route_alike_even_when_no_route_key_can_be_kept(
    control_dir: Path, sipgw: SipgwRunner, tmp_path: Path
) -> None:
    """An in-dialog request may reach the other worker than the dialog's INVITE (a NAT
    that gave the phone a new port, a TCP connection made again): it passes the check of
    sipgw's Record-Route only if both workers sign with one key. Without a kept route.key
    (state.directory cannot be made) the key is one of this start: one for the service."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    with UdpPeer() as backend:
        gw, workers = start_workers(sipgw, control_dir, backend=backend.address,
                                    extra_toml=f'[state]\ndirectory = "{blocked}/state"\n')
        macs = []
        for ((_, port),) in workers.sources("udp", 1, hosts=(LOOPBACK,)):
            with UdpPeer(gw.address, port=port) as phone:
                # The same dialog-forming INVITE (Call-ID, From tag) through each worker.
                phone.send(build_request("INVITE", f"sip:service@{gw.address}", peer=phone,
                                         call_id="one-key@test", from_tag="one-key",
                                         branch=f"z9hG4bK-one-key-{port}", body=SDP))
                relayed = backend.expect("INVITE")
                macs.append(re.search(r";sg=(\w+)", values(relayed, "Record-Route")[0])[1])
                backend.send(build_response(relayed, 486, "Busy Here", to_tag="busy"),
                             f"{LOOPBACK}:{top_via_port(relayed)}")
                busy = phone.expect("486")
                phone.send(build_request("ACK", f"sip:service@{gw.address}", peer=phone,
                                         call_id="one-key@test", from_tag="one-key",
                                         branch=f"z9hG4bK-one-key-{port}", to=busy.header("To")))
    assert len(macs) == WORKERS and macs[0] == macs[1], macs


# --- the config a restarted worker runs ----------------------------------------------------


def test_a_worker_restarted_after_the_file_was_edited_runs_the_config_the_others_run(
    control_dir: Path, sipp: SippRunner, sipgw: SipgwRunner
) -> None:
    """The file is edited (a typo, and another backend) but not reloaded yet: a worker that
    dies meanwhile comes back with the config the service checked and runs, not the file
    as it is now (which would stop it at start, again and again, or split the service)."""
    uas = sipp.uas("uas_call.xml", calls=2, timeout=20)
    gw, workers = start_workers(sipgw, control_dir, backend=uas.address)
    gw.write_config(gw.config_text(backend=f"sip:{LOOPBACK}:{free_port('udp')}")
                    + "\n[timers]\nt1 = = 0.5\n")
    victim = workers.table()[0]
    os.kill(victim["pid"], signal.SIGKILL)

    def back() -> bool:
        now = workers.table()[0]
        return now["ready"] and now["pid"] not in (None, victim["pid"])

    wait_until(back, timeout=10, what="worker 0 back", caller=gw)
    assert workers.table()[0]["restarts"] == 1
    # Both workers still relay to the backend they were started with.
    sources = workers.sources("udp", 1)
    for ((host, port),) in sources:
        uac = sipp.uac("uac_call.xml", remote=gw.address, ip=host, port=port, timeout=10)
        assert uac.wait(20) == 0, uac.describe()
    assert uas.wait(20) == 0, uas.describe()

    # The file mended and reloaded (SIGHUP): both workers take it, the restarted one too.
    second = sipp.uas("uas_call.xml", calls=2, timeout=20)
    gw.write_config(gw.config_text(backend=f"sip:{second.address}"))
    mark = len(gw.log_text())
    gw.reload()
    gw.wait_for_log(rf"reloaded .* in {WORKERS} workers", after=mark)
    for ((host, port),) in sources:
        uac = sipp.uac("uac_call.xml", remote=gw.address, ip=host, port=port, timeout=10)
        assert uac.wait(20) == 0, uac.describe()
    assert second.wait(20) == 0, second.describe()


# --- a backend over TCP --------------------------------------------------------------------


def test_over_a_tcp_backend_a_phones_path_names_its_workers_own_port_and_a_call_by_it_reaches_the_phone(  # noqa: E501 - a test's name is its sentence
    control_dir: Path, sipgw: SipgwRunner
) -> None:
    """A registrar behind sipgw over TCP (Asterisk with transport=tcp) reaches a phone by
    its Path on a connection of its own: it must land on the worker that holds the phone's
    connection, which only that worker's own TCP address guarantees (the public port's
    group spreads connections by their addresses)."""
    with socket.create_server((LOOPBACK, 0), reuse_port=True) as listener:
        listener.settimeout(10)
        backend_address = f"{LOOPBACK}:{listener.getsockname()[1]}"
        gw, workers = start_workers(sipgw, control_dir, backend=backend_address,
                                    transport="tcp")
        port_of = {index: port for port, index in workers.backend_ports().items()}
        for index, (source,) in enumerate(workers.sources("tcp", 1, hosts=(LOOPBACK,))):
            path = call_by_tcp_path(gw, listener, source, f"w{index}")
            assert names_port(path, port_of[index]), path


def test_over_a_tcp_backend_a_single_process_takes_a_call_by_path_on_its_own_port(
    sipgw: SipgwRunner,
) -> None:
    """One process (``workers = 1``) has its own TCP port toward the backends too: the
    registrar's connection there is the backend's, and its call reaches the phone."""
    with socket.create_server((LOOPBACK, 0), reuse_port=True) as listener:
        listener.settimeout(10)
        gw = sipgw(backend=f"{LOOPBACK}:{listener.getsockname()[1]}", transport="tcp")
        path = call_by_tcp_path(gw, listener, (LOOPBACK, 0), "single")
        assert not names_port(path, gw.hostport[1]), path


def call_by_tcp_path(gw: SipgwProcess, listener: socket.socket, source: tuple[str, int],
                     name: str) -> str:
    """A phone connected from ``source`` registers through ``gw`` with the registrar
    ``listener`` over TCP, which calls it back by its Path on a connection of its own (from
    its own address: sipgw tells a backend by its address and port); the phone answers
    486, which reaches the registrar. The Path."""
    phone = socket.socket()
    phone.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    phone.bind(source)
    phone.connect(gw.hostport)
    with phone, TcpPeer.adopt(phone) as peer:
        peer.send(build_request(
            "REGISTER", f"sip:{gw.address}", peer=peer, call_id=f"path-{name}@test",
            branch=f"z9hG4bK-path-{name}", headers=["Supported: path"]))
        upstream, _ = listener.accept()
        with upstream, TcpPeer.adopt(upstream) as registrar:
            register = registrar.expect("REGISTER")
            (path,) = values(register, "Path")
            assert "transport=tcp" in path, path
            registrar.send(build_response(register, 200, "OK", to_tag="reg"))
            peer.expect("200")
        target = re.match(r"<sip:[^@]+@([\d.]+):(\d+)", path)
        assert target
        out = socket.socket()
        out.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        out.bind(listener.getsockname())
        out.connect((target[1], int(target[2])))
        with out, TcpPeer.adopt(out) as caller:
            caller.send(build_request(
                "INVITE", uri_of(register.header("Contact") or ""), peer=caller,
                call_id=f"by-path-{name}@test", branch=f"z9hG4bK-by-path-{name}",
                headers=[f"Route: {path}"], body=SDP))
            invite = peer.expect("INVITE", timeout=5)
            assert invite.header("Call-ID") == f"by-path-{name}@test"
            peer.send(build_response(invite, 486, "Busy Here", to_tag="busy"))
            assert caller.expect("486", timeout=5).header("Call-ID") == invite.header("Call-ID")
    return path


def test_a_reload_while_a_worker_is_starting_reaches_it_once_it_is_ready(
    control_dir: Path, sipp: SippRunner, sipgw: SipgwRunner
) -> None:
    first = sipp.uas("uas_call.xml", timeout=20)
    gw, workers = start_workers(sipgw, control_dir, backend=first.address)
    victim = workers.table()[0]
    os.kill(victim["pid"], signal.SIGKILL)
    # Catch the new worker 0 between its start and its Ready, and hold it there.
    starting = None
    while starting is None:
        now = workers.table()[0]
        if now["pid"] not in (None, victim["pid"]):
            os.kill(now["pid"], signal.SIGSTOP)
            if workers.table()[0]["ready"]:  # too late: this one was ready already
                os.kill(now["pid"], signal.SIGCONT)
                victim = now
                os.kill(victim["pid"], signal.SIGKILL)
                continue
            starting = now["pid"]
    second = sipp.uas("uas_call.xml", calls=2, timeout=20)
    gw.write_config(gw.config_text(backend=f"sip:{second.address}"))
    mark = len(gw.log_text())
    gw.reload()
    gw.wait_for_log(r"reloaded .* in 1 workers", after=mark)
    os.kill(starting, signal.SIGCONT)
    wait_until(lambda: workers.table()[0]["ready"], timeout=10, what="worker 0 ready",
               caller=gw)
    # Both workers run the reloaded config: calls through either go to the new backend.
    for ((host, port),) in workers.sources("udp", 1):
        uac = sipp.uac("uac_call.xml", remote=gw.address, ip=host, port=port, timeout=10)
        assert uac.wait(20) == 0, uac.describe()
    assert second.wait(20) == 0, second.describe()
