"""Overload (issue 16): offered twice and four times what it can do, sipgw keeps completing
calls at about its capacity, hangs up the calls already set up without delay, and is
back to normal within seconds once the storm ends.

Real SIPp processes on loopback: a backend answering calls, callers on four addresses
(127.0.2.1-4, so that sipgw sees many sources) placing INVITE→200→ACK→BYE→200 calls, and
one more (127.0.2.50) holding calls set up before each storm and hanging them up in its
middle, timing each BYE. Pike is off: a storm from many phones is what overload control
is for, not a flood from one address.

The capacity is measured first, on this machine as it is now: sipgw's CPU time per call
at a rate it keeps up with, hence the calls a second one core gives it. The storms are
offered as multiples of that, and what is asserted is relative to it: a machine-dependent
rate never appears. Each storm lasts ``STORM`` seconds; each case about 12.

Over UDP (the callers' and the backend's) the kernel's receive queue holds the storm; over
TCP the callers' connections do (``load:stream_queue_delay_us``), each refusal is a 503
with a Retry-After, and nothing is dropped unread. Over streams sipgw sheds only past
``overload.stream_shed_delay`` (2 s): a WebSocket registration storm during a UDP one
registers every browser while the phones over UDP are shed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from sipgw.tools.process import SipgwProcess
from sipgw.tools.wsload import run_load
from tests.helpers.poll import wait_until
from tests.integration.sipgw_process import (
    SipgwRunner,
    UdpPeer,
    build_request,
    build_response,
    control_toml,
    kernel_udp_drops,
    statistics,
)
from tests.integration.sipp import SippProcess, SippRunner, free_port
from tests.integration.test_proxy_sipp import SDP
from tests.integration.test_ws_sipp import WsSipgw

pytestmark = pytest.mark.integration

CALLERS = [f"127.0.2.{n}" for n in range(1, 5)]
HOLDER = "127.0.2.50"
CALIBRATION_RATE = 300  # calls a second: well under what sipgw does on a loaded machine
CALIBRATION_SECONDS = 2.0
STORM = 4.0  # seconds each storm lasts
HELD = 40  # calls set up before each storm, hung up in its middle
HOLD_MS = 1500  # from each held call's ACK to its BYE
# Of the capacity measured at the start, what the calls completed during a storm must
# reach: the targets are 90 % at 2x and 80 % at 4x (bench/overload.py measures
# them); a shared CI machine gives sipgw less than a core while the SIPps run, so the
# test holds half of those.
GOODPUT_SHARE = {2: 0.45, 4: 0.4}
BYE_WAIT = 2.5  # seconds a held call's BYE may take on average, there and back
RECOVERY = 8.0  # seconds from the storm's end to sipgw taking every new call again
BUCKETS = ("<100", "<200", "<500", "<1000", ">=1000")  # of the held calls' BYE times


def calls(sipp: SippRunner, gw: SipgwProcess, *, ip: str, rate: float, count: int,
          scenario: str = "uac_call", pause_ms: int = 0, timeout: float = 30.0,
          transport: str = "udp", trace_messages: bool = False,
          retransmit: bool = True) -> SippProcess:
    """A caller, by default without message trace; up to 10,000 calls open (SIPp's
    default limit, three times the rate times the call's length, would throttle a storm).
    Over TCP each SIPp sends all its calls on one connection."""
    return sipp.uac(scenario, remote=gw.address, ip=ip, calls=count, rate=rate,
                    pause_ms=pause_ms, trace_messages=trace_messages, stats_period=1,
                    timeout=timeout, transport=transport,
                    extra_args=["-l", "10000"] + ([] if retransmit else ["-nr"]))


def calibrate(sipp: SippRunner, gw: SipgwProcess, transport: str = "udp",
              scenario: str = "uac_call") -> float:
    """Calls a second sipgw completes per second of its CPU (its capacity on one core)."""
    before = gw.cpu_seconds()
    caller = calls(sipp, gw, ip=CALLERS[0], rate=CALIBRATION_RATE,
                   count=int(CALIBRATION_RATE * CALIBRATION_SECONDS), transport=transport,
                   scenario=scenario)
    assert caller.wait() == 0, caller.describe()
    return caller.stats().successful / (gw.cpu_seconds() - before)


def storm(sipp: SippRunner, gw: SipgwProcess, rate: float,
          transport: str = "udp") -> tuple[float, float]:
    """``rate`` calls a second from every caller address at once for STORM seconds;
    the calls completed a second, and how long they waited for their 200 on average
    (seconds)."""
    per_caller = rate / len(CALLERS)
    callers = [calls(sipp, gw, ip=ip, rate=per_caller, count=int(per_caller * STORM) + 1,
                     timeout=STORM + 20, transport=transport) for ip in CALLERS]
    started = time.monotonic()
    time.sleep(STORM)  # the storm itself: what is measured is what sipgw does during it
    for caller in callers:
        caller.stop()  # SIPp writes its last statistics as it ends
    elapsed = time.monotonic() - started
    done = [(c.stats().successful, seconds(c.stats().values["ResponseTime1(C)"]))
            for c in callers]
    completed = sum(n for n, _ in done)
    return completed / elapsed, sum(n * wait for n, wait in done) / max(1, completed)


def seconds(sipp_time: str) -> float:
    """SIPp's ``HH:MM:SS:mmmuuu`` as seconds."""
    hours, minutes, secs, micros = (int(part) for part in sipp_time.split(":"))
    return hours * 3600 + minutes * 60 + secs + micros / 1e6


def shed(gw: SipgwProcess) -> dict[str, int]:
    return statistics(gw, "core:shed_503", "core:shed_dropped", "core:shed_percent")


@pytest.mark.parametrize(("factor", "workers"), [(2, 1), (4, 1), (4, 2)])
def test_offered_a_multiple_of_its_capacity_sipgw_sheds_new_calls_and_serves_the_rest(
        sipgw: SipgwRunner, sipp: SippRunner, tmp_path: Path, factor: int, workers: int):
    overloaded(sipgw, sipp, tmp_path, factor=factor, workers=workers, transport="udp")


@pytest.mark.parametrize("factor", [2, 4])
def test_over_tcp_a_storm_on_few_connections_is_shed_with_503_and_a_retry_after(
        sipgw: SipgwRunner, sipp: SippRunner, tmp_path: Path, factor: int):
    """Callers and holder over TCP, each SIPp on one connection (as a trunk from another
    proxy would be): the storm waits in those connections' receive queues. The backend
    is reached over UDP, as sipgw's usually are (a SIPp over TCP cannot keep up with the
    storm's pace on its one connection, and exits when sipgw drops it).

    ``overload.stream_shed_delay`` is set as low as ``shed_delay`` (50 ms) here: at the
    default (2 s) a storm of this length is answered late but never shed over TCP, which
    the WebSocket test below holds. What this one holds is how a stream sheds once its
    wait crosses that threshold: 503 with a Retry-After, nothing dropped unread.

    Without shedding, TCP's flow control keeps the goodput up (no caller retransmits) but
    every call waits behind the queue: measured at 2x, 0.5 to 1.2 s for its 200 without,
    0.07 to 0.11 s with shedding, but 1 s with it too while other processes took sipgw's
    CPU: too dependent on what else runs for a bound here."""
    refused, told, prober = overloaded(sipgw, sipp, tmp_path, factor=factor, workers=1,
                                       transport="tcp", probe=True,
                                       overload_toml="[overload]\nstream_shed_delay = 0.05\n")
    # Over a stream nothing is dropped unread: nobody would retransmit it.
    assert refused[1] == 0, told
    assert prober is not None
    answers = [m for m in prober.messages() if m.direction == "received" and m.is_response
               and m.method == "INVITE" and (m.status or 0) >= 200]
    refusals = [m for m in answers if m.status == 503]
    # Every refusal says when to come back, spread over [overload] retry_after (5) up to
    # retry_after_max (60): the defaults.
    retry_after = [int((m.header("Retry-After") or "0").split(";")[0]) for m in refusals]
    assert refusals and all(5 <= s <= 60 for s in retry_after), (told, retry_after)
    # And some calls of the same caller got through: shedding is a share, not a wall.
    assert len(refusals) < len(answers), (told, len(answers))


BROWSERS = 3000  # WebSocket connections registering at once, one REGISTER each
BROWSERS_AT_ONCE = 500  # connecting or registering at the same time
BROWSER_TIMEOUT = 20.0  # seconds a browser's connection and REGISTER may take (JsSIP: 32)
UDP_FACTOR = 2  # the phones over UDP offer this many times sipgw's capacity


def test_a_websocket_registration_storm_is_not_shed_while_phones_over_udp_are(
        sipp: SippRunner, tmp_path: Path):
    """Browsers whose node died come back all at once (``wsload``: one connection and one
    REGISTER each, as JsSIP does on connecting; JsSIP does not retry a REGISTER refused
    with 503 until it reconnects) while phones over UDP offer twice what sipgw can do.
    The phones are shed, 503 or dropped; every browser registers and none is refused: a
    UDP socket's queue is not what a request over a WebSocket waits in, and shedding UDP
    keeps the event loop far under ``overload.stream_shed_delay`` (2 s).
    With one share for both (as before it), about 80 % of the browsers got 503.

    The phones do not retransmit (SIPp ``-nr``): what they offer stays twice the
    capacity, where the retransmissions of what sipgw drops unread would multiply it
    and overflow sipgw's UDP socket in the kernel, which takes the backend's answers to
    the browsers' REGISTERs as well (measured on a busy machine: 167,000 datagrams
    dropped there, 121 browsers timed out). For what the kernel still drops, the
    registrar answers a REGISTER that comes again (``uas_register_load``), as sipgw
    retransmits it."""
    backend = sipp.uas("uas_register_load", calls=1_000_000, trace_messages=False, timeout=120,
                       extra_args=["-buff_size", str(4 << 20)])
    gw = WsSipgw(tmp_path / "sipgw", ws_port=free_port("tcp"), backend=backend.address,
                 log_level="info",
                 extra_toml=control_toml(tmp_path) + "[pike]\nenabled = false\n"
                 f"[limits]\nws_max_connections_per_address = {BROWSERS}\n")
    with gw:
        capacity = calibrate(sipp, gw, scenario="uac_register")
        per_phone = UDP_FACTOR * capacity / len(CALLERS)
        phones = [calls(sipp, gw, ip=ip, rate=per_phone, count=int(per_phone * 30),
                        scenario="uac_register", timeout=40, retransmit=False)
                  for ip in CALLERS]
        try:
            wait_until(lambda: shed(gw)["core:shed_percent"] > 0, timeout=10,
                       what=f"sipgw shedding phones over UDP at {UDP_FACTOR}x its capacity",
                       caller=phones[0])
            before = shed(gw)
            browsers = asyncio.run(run_load(f"ws://{gw.ws_address}/", count=BROWSERS,
                                            concurrency=BROWSERS_AT_ONCE,
                                            timeout=BROWSER_TIMEOUT))
            during = shed(gw)
            load = statistics(gw, "load:reactor_lag_max_us", "load:udp_queue_delay_max_us",
                              "load:stream_queue_delay_max_us")
            kernel_drops = kernel_udp_drops(gw)
        finally:
            for phone in phones:
                phone.stop()
    told = (f"capacity {capacity:.0f} REGISTER/s, phones offering {UDP_FACTOR}x over UDP; "
            f"browsers: {browsers.report()}; shed before the browsers came {before}, "
            f"once all had registered {during}; load then {load}; datagrams the kernel "
            f"dropped: {kernel_drops}")
    assert browsers.failures == {} and browsers.registered == BROWSERS, told
    # Meanwhile the phones were shed: what was refused then was theirs, since no browser
    # failed.
    refused = (during["core:shed_503"] - before["core:shed_503"]
               + during["core:shed_dropped"] - before["core:shed_dropped"])
    assert refused > 0, told


PROBER = "127.0.2.60"
PROBE_RATE = 20  # new calls a second from one more caller during the storm, traced


def overloaded(sipgw: SipgwRunner, sipp: SippRunner, tmp_path: Path, *, factor: int,
               workers: int, transport: str, probe: bool = False, overload_toml: str = ""
               ) -> tuple[tuple[int, int], str, SippProcess | None]:
    """One case: the capacity measured, calls held, a storm of ``factor`` times the
    capacity from callers over ``transport`` (to a backend over UDP), what holds whatever
    the transport asserted. Returns the requests refused with 503 and dropped during the
    storm, a description of it, and with ``probe`` a caller from PROBER at PROBE_RATE
    whose messages were traced. ``overload_toml``: more of sipgw's configuration."""
    backend = sipp.uas("uas_load", calls=1_000_000, trace_messages=False, timeout=120,
                       extra_args=["-buff_size", str(4 << 20)])
    # With workers, each sheds on its own signal and the control plane shows the whole:
    # the counters summed, the share refused the largest of theirs.
    gw = sipgw(backend=backend.address, log_level="info", workers=workers,
               extra_toml=control_toml(tmp_path) + "[pike]\nenabled = false\n" + overload_toml)
    capacity = calibrate(sipp, gw, transport)

    holder = calls(sipp, gw, ip=HOLDER, rate=HELD * 5, count=HELD,
                   scenario="uac_call_timed_bye", pause_ms=HOLD_MS, transport=transport)
    wait_until(lambda: statistics(gw, "dialog:active_dialogs")["dialog:active_dialogs"] >= HELD,
               timeout=5, what=f"{HELD} calls set up before the storm", caller=holder)
    before, cpu = shed(gw), gw.cpu_seconds()
    prober = calls(sipp, gw, ip=PROBER, rate=PROBE_RATE, count=int(PROBE_RATE * STORM),
                   timeout=STORM + 20, transport=transport,
                   trace_messages=True) if probe else None
    goodput, answered = storm(sipp, gw, factor * capacity, transport)
    during, cpu = shed(gw), (gw.cpu_seconds() - cpu) / STORM
    ended = time.monotonic()
    if prober is not None:
        prober.stop()

    holder.wait()
    held = holder.stats()
    repartition = [held.count(f"ResponseTimeRepartition1_{bucket}") for bucket in BUCKETS]
    refused = (during["core:shed_503"] - before["core:shed_503"],
               during["core:shed_dropped"] - before["core:shed_dropped"])
    told = (f"over {transport}: capacity {capacity:.0f} calls/s, offered "
            f"{factor * capacity:.0f}/s, completed {goodput:.0f}/s answered in "
            f"{answered * 1e3:.0f} ms on average, sipgw at {cpu:.0%} of a core; refused "
            f"with 503 and dropped: {refused}; held calls: "
            f"{held.successful} hung up, BYEs answered in {held.values['ResponseTime1(C)']} "
            f"on average, {held.retransmissions} retransmitted, answered within 100, 200, "
            f"500, 1000 ms and more: {repartition}")
    assert sum(refused) > 0, f"sipgw shed nothing: {told}"
    assert goodput >= GOODPUT_SHARE[factor] * capacity, told

    # The calls set up before the storm were all hung up during it: every BYE answered,
    # in under BYE_WAIT on average. A collapsed proxy takes many seconds: the kernel's
    # 8 MB receive queue alone holds more than a second of datagrams, and whatever it
    # loses waits for the callers' retransmissions; over TCP the BYE waits behind every
    # request queued on its connection.
    assert (held.successful, held.failed) == (HELD, 0), (told, held.failures)
    assert seconds(held.values["ResponseTime1(C)"]) < BYE_WAIT, told

    # The storm over, sipgw takes every new call again within seconds.
    wait_until(lambda: shed(gw)["core:shed_percent"] == 0, timeout=RECOVERY,
               what=f"sipgw still shedding {RECOVERY} s after the storm ({told})", caller=gw)
    # Counted from here, not from the storm's end: until the share is back at all, the
    # storm's last requests and retransmissions are still refused, as they should be.
    recovered = shed(gw)
    after = calls(sipp, gw, ip=CALLERS[0], rate=50, count=20, transport=transport)
    assert after.wait() == 0, after.describe()
    assert time.monotonic() - ended < RECOVERY + 5
    assert shed(gw)["core:shed_503"] == recovered["core:shed_503"]

    # Said in the log, at most one line per kind and 10 seconds.
    log = gw.log_text()
    lines = [line for line in log.splitlines() if "overload: " in line]
    assert lines, log[-2000:]
    assert sum("refused with 503" in line for line in lines) <= 2
    assert sum("dropped unread" in line for line in lines) <= 2
    return refused, told, prober


FLOOD = 40_000  # datagrams of 100 bytes: the kernel charges each over 700, 28 MB in all


def test_a_single_process_hears_its_backend_on_a_socket_of_its_own_so_a_flood_loses_no_answer(
    sipgw: SipgwRunner, tmp_path: Path,
) -> None:
    """With one process (``workers = 1``) as with workers, what sipgw sends to a backend
    names a socket of its own: a storm that fills the public port's kernel queue (and
    loses what arrives there meanwhile) cannot lose the backend's answers. What the
    kernel lost, sipgw counts (``load:udp_kernel_drops``)."""
    with UdpPeer() as backend:
        gw = sipgw(backend=backend.address, extra_toml=control_toml(tmp_path))
        with UdpPeer(gw.address) as phone:
            phone.send(build_request("INVITE", f"sip:5002@{backend.address}", peer=phone,
                                     call_id="own-socket@test", branch="z9hG4bK-own",
                                     body=SDP))
            invite = backend.expect("INVITE", timeout=5)
            top = invite.headers("Via")[0]
            assert top.startswith(f"SIP/2.0/UDP {gw.backend_address};"), top
            assert gw.backend_address != gw.address
            said = gw.wait_for_log(r"toward the backends: ")  # for the firewall
            assert said.endswith(f"udp:{gw.backend_address}, tcp:{gw.backend_address}"), said
            busy = build_response(invite, 486, "Busy Here", to_tag="busy")

            # sipgw stopped while a storm fills its public port's queue; the backend
            # answers meanwhile, to the address in the Via.
            assert gw.pid is not None
            os.kill(gw.pid, signal.SIGSTOP)
            try:
                with UdpPeer() as storm:
                    for _ in range(FLOOD):
                        storm.send(b"\r\n" * 50, gw.address)  # keepalives: cheap to read
                    full = kernel_udp_drops(gw)
                    storm.send(busy, gw.address)  # an answer there now is lost
                    assert kernel_udp_drops(gw) == full + 1
                backend.send(busy, top.split()[1].split(";")[0])
            finally:
                os.kill(gw.pid, signal.SIGCONT)
            assert phone.expect("486", timeout=10).header("Call-ID") == "own-socket@test"
            lost = kernel_udp_drops(gw)
            wait_until(lambda: statistics(gw, "load:udp_kernel_drops")[
                "load:udp_kernel_drops"] == lost, timeout=5, caller=gw,
                what=f"sipgw did not count the {lost} datagrams the kernel dropped")
