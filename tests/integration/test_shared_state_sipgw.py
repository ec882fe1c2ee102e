"""State that holds across workers, on a real ``sipgw serve --workers 2`` with real SIPp.

The kernel hands each (source address, source port) to one worker. A test that must reach
both workers first finds a source port for each: a REGISTER without credentials gets a
401 whose nonce names the process that issued it (``proxy/auth/nonce.py``), so two ports
whose nonces name different issuers are on different workers. Each worker also answers
on its own control socket (``control.socket`` + ``.wN``), where the tests look at what
that worker alone believes.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from sipgw.proxy.workers.spec import worker_control_path
from sipgw.rpc.client import Client
from sipgw.sip.message import Response
from sipgw.sip.parser import parse_message
from sipgw.tools.digest_client import authorization, challenges
from sipgw.tools.process import SipgwProcess
from tests.helpers.poll import wait_until
from tests.integration.sipgw_process import (
    UdpPeer,
    build_request,
    build_response,
    control_toml,
)
from tests.integration.sipp import LOOPBACK, SippMessage, SippRunner
from tests.integration.test_auth_sipp import REALM, add_user, auth_toml, credentials_file

pytestmark = pytest.mark.integration

PROPAGATION = 5.0  # seconds a test waits for what must take ~0.1 s (a busy shared machine)


def start(sipgw, tmp_path: Path, backend: str, pike: str = "enabled = false\n",
          **options) -> SipgwProcess:
    """Two workers with digest auth on SQLite and their control sockets in ``tmp_path``;
    ``pike``: its section (off unless a test is about it: everything here comes from
    loopback, which is not trusted when auth is on)."""
    toml = (auth_toml(f"sqlite://{tmp_path}/state/subscribers.db")
            + f'[state]\ndirectory = "{tmp_path}/state"\n' + control_toml(tmp_path)
            + f"[pike]\n{pike}")
    return both_ready(sipgw(backend=backend, auth=True, workers=2, extra_toml=toml, **options),
                      tmp_path)


def both_ready(gw: SipgwProcess, tmp_path: Path) -> SipgwProcess:
    """``gw``, started (both workers ready), with its control socket noted."""
    CONTROL[gw.pid] = str(tmp_path / "sipgw.ctl")
    return gw


CONTROL: dict[int | None, str] = {}  # the control socket of each sipgw started here


def ask(gw: SipgwProcess, index: int, method: str, *params):
    """``method`` answered by worker ``index`` alone, on its own control socket."""
    path = worker_control_path(CONTROL[gw.pid], index)
    with Client(path, timeout=5.0) as client:
        return client.call(method, list(params))


class Phone:
    """A UDP socket on ``host`` (a port of its own) speaking for user ``user``."""

    def __init__(self, gw: SipgwProcess, host: str = LOOPBACK, port: int = 0,
                 user: str = "5001") -> None:
        self.gw = gw
        self.user = user
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((host, port))
        self.address = f"{host}:{self.socket.getsockname()[1]}"
        self.port = self.socket.getsockname()[1]
        self.n = 0

    def request(self, method: str = "REGISTER", headers: tuple[str, ...] = ()) -> bytes:
        self.n += 1
        peer = type("P", (), {"transport": "udp", "address": self.address})()
        uri = f"sip:{REALM}" if method == "REGISTER" else f"sip:{self.gw.address}"
        data = build_request(method, uri, peer=peer, call_id=f"c{self.port}",
                             branch=f"z9hG4bK{self.port}x{self.n}", cseq=self.n,
                             to=f"<sip:{self.user}@{REALM}>", headers=headers)
        return data.replace(f"<sip:raw@{self.address}>;tag".encode(),
                            f"<sip:{self.user}@{REALM}>;tag".encode())

    def send(self, data: bytes) -> None:
        self.socket.sendto(data, self.gw.hostport)

    def reply(self, timeout: float = 5.0) -> Response | None:
        self.socket.settimeout(timeout)
        try:
            message = parse_message(self.socket.recv(65535))
        except TimeoutError:
            return None
        assert isinstance(message, Response)
        return message

    def challenge(self) -> Response:
        self.send(self.request())
        reply = self.reply()
        assert reply is not None and reply.status == 401, reply
        return reply

    def issuer(self) -> str:
        """Which worker this port reaches: the issuer its challenges' nonces name."""
        return nonce_of(self.challenge())[12:20]

    def close(self) -> None:
        self.socket.close()


def nonce_of(challenge: Response) -> str:
    return challenges(challenge, "WWW-Authenticate")[0].params["nonce"]


def ports_on_both_workers(gw: SipgwProcess, host: str = LOOPBACK) -> list[int]:
    """Two free source ports of ``host``, the first on one worker, the second on the
    other (the kernel's choice, found out, not assumed)."""
    seen: dict[str, int] = {}
    for _ in range(64):
        phone = Phone(gw, host)
        try:
            seen.setdefault(phone.issuer(), phone.port)
        finally:
            phone.close()
        if len(seen) == 2:
            return list(seen.values())
    raise AssertionError(f"64 source ports all reached one worker: {seen}")


# -- auth -------------------------------------------------------------------------------


def banned_users(gw: SipgwProcess, index: int) -> list[str]:
    return [row["NAME"] for row in ask(gw, index, "auth.bans")["BANS"]]


def test_three_wrong_passwords_over_two_workers_ban_the_user_on_both(
    sipgw, sipp: SippRunner, tmp_path: Path
):
    backend = UdpPeer()
    gw = start(sipgw, tmp_path, backend.address)
    add_user(gw, "5001", "s3cret")
    one, other = ports_on_both_workers(gw)
    wrong = credentials_file(tmp_path / "wrong.csv", "5001", "guess")
    # Two failures on one worker and one on the other: neither reaches 3 alone.
    for port in (one, other, one):
        intruder = sipp.uac("uac_register_auth", remote=gw.address, port=port, inf=wrong,
                            timeout=5)
        intruder.wait()
        received = [m.status for m in intruder.messages() if m.direction == "received"]
        assert received[:2] == [401, 401], intruder.describe()
    wait_until(lambda: banned_users(gw, 0) == banned_users(gw, 1) == [f"5001@{REALM}"],
               timeout=PROPAGATION, what="the ban on both workers", caller=gw)
    # The right password, on either worker: 403 at once, and nothing reaches the backend.
    right = credentials_file(tmp_path / "right.csv", "5001", "s3cret")
    for port in (other, one):
        phone = sipp.uac("uac_register_auth", remote=gw.address, port=port, inf=right,
                         timeout=5)
        phone.wait()
        received = [m.status for m in phone.messages() if m.direction == "received"]
        assert received == [403], phone.describe()
    assert [m for m in backend.collect(0.3) if m.method == "REGISTER"] == []

    # Worker 1 killed: the one restarted in its slot learns the ban from worker 0.
    [pid] = [w["pid"] for w in service(gw, "core.workers") if w["index"] == 1]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: any(w["index"] == 1 and w["ready"] and w["restarts"] == 1
                           for w in service(gw, "core.workers")),
               timeout=15, what="worker 1 restarted", caller=gw)
    wait_until(lambda: banned_users(gw, 1) == [f"5001@{REALM}"], timeout=PROPAGATION,
               what="the ban on the restarted worker 1", caller=gw)


def service(gw: SipgwProcess, method: str):
    """``method`` answered by the service's one control socket."""
    with Client(CONTROL[gw.pid], timeout=5.0) as client:
        return client.call(method, [])


def test_a_nonce_replayed_to_the_other_worker_is_rechallenged_stale_not_accepted(
    sipgw, tmp_path: Path
):
    backend = UdpPeer()
    gw = start(sipgw, tmp_path, backend.address)
    add_user(gw, "5001", "s3cret")
    one, other = ports_on_both_workers(gw)
    phone, replayer = Phone(gw, port=one), Phone(gw, port=other)
    try:
        nonce = nonce_of(phone.challenge())
        answer = authorization(username="5001", password="s3cret", realm=REALM, nonce=nonce,
                               method="REGISTER", uri=f"sip:{REALM}", nc=1)
        signed = phone.request(headers=(f"Authorization: {answer}",))
        phone.send(signed)
        accepted = backend.expect("REGISTER")  # once, by the worker that issued the nonce
        backend.send(build_response(accepted, 200, "OK"), to=via_of(accepted))
        assert phone.reply().status == 200
        replay = signed.replace(f"{LOOPBACK}:{one}".encode(), f"{LOOPBACK}:{other}".encode())
        replayer.send(replay)
        reply = replayer.reply()
        assert reply is not None and reply.status == 401
        assert challenges(reply, "WWW-Authenticate")[0].params["stale"].lower() == "true"
        branch = f"z9hG4bK{one}x{phone.n}".encode()
        phone.send(signed.replace(branch, branch + b"again"))  # the same, a new branch
        again = phone.reply()
        assert again is not None and again.status == 401
        assert [m for m in backend.collect(0.5) if m.method == "REGISTER"] == []
    finally:
        phone.close()
        replayer.close()


# -- pike -------------------------------------------------------------------------------

FLOODER = "127.0.0.2"
DENSITY = 40
UNIT = 1


def test_a_flood_spread_over_two_workers_is_blocked_by_both(sipgw, tmp_path: Path):
    """Each worker alone sees 70 % of the density, never enough to block by itself; the
    sum is 140 %: both must block the address within a unit or so."""
    gw = start(sipgw, tmp_path, "127.0.0.9:5080", pike=(
        f"sampling_time_unit = {UNIT}\nreqs_density_per_unit = {DENSITY}\n"
        "remove_latency = 30\n"))
    ports = ports_on_both_workers(gw, FLOODER)
    phones = [Phone(gw, FLOODER, port) for port in ports]
    stop = threading.Event()
    answered = [0, 0]

    def flood() -> None:
        """0.7 x DENSITY requests per unit from each port, evenly paced."""
        gap = UNIT / (0.7 * DENSITY)
        deadline = time.monotonic() + 10 * UNIT
        n = 0
        while not stop.is_set() and time.monotonic() < deadline:
            for i, phone in enumerate(phones):
                phone.send(phone.request("OPTIONS"))
                phone.socket.settimeout(0)
                try:
                    while phone.socket.recv(65535):
                        answered[i] += 1
                except BlockingIOError:
                    pass
            n += 1
            stop.wait(gap)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        wait_until(lambda: all(blocked(gw, i) for i in (0, 1)), timeout=8 * UNIT,
                   what=f"{FLOODER} blocked by both workers", caller=gw)
    finally:
        stop.set()
        thread.join(5)
    assert all(answered), answered  # each port was served before the block
    for phone in phones:  # and neither is now (answers to requests sent before may linger)
        phone.send(phone.request("OPTIONS"))
        answers = []
        while (reply := phone.reply(timeout=0.5)) is not None:
            answers.append(reply.header("cseq"))
        assert f"{phone.n} OPTIONS" not in answers, answers
        phone.close()
    log = gw.log_text()
    assert "pike blocking 127.0.0.2" in log and "on the other workers" in log


def blocked(gw: SipgwProcess, index: int) -> bool:
    rows = ask(gw, index, "pike.top", "HOT")["list"]
    return any(r["ip_addr"] == FLOODER for r in rows)


# -- dispatcher -------------------------------------------------------------------------


def test_one_options_per_interval_per_backend_and_set_state_reaches_both_workers(
    sipgw, tmp_path: Path
):
    backend = UdpPeer()
    uri = f"sip:{backend.address}"
    gw = start(sipgw, tmp_path, backend.address, dispatcher=(
        f'destinations = ["{uri}"]\nping_interval = 1\nping_timeout = 0.5\n'))
    probes: list[SippMessage] = []
    started = time.monotonic()
    while time.monotonic() - started < 4.0:
        for message in backend.collect(0.2):
            if message.method == "OPTIONS":
                probes.append(message)
                backend.send(build_response(message, 200, "OK"), to=via_of(message))
    elapsed = time.monotonic() - started
    calls = {m.header("Call-ID") for m in probes}
    # One prober: one probe a second (two would send twice as many, from two addresses).
    assert 2 <= len(calls) <= elapsed + 1, (len(calls), elapsed)
    assert len({via_of(m) for m in probes}) == 1
    for index in (0, 1):
        assert states(gw, index) == {uri: "AP"}

    # The operator disables it on worker 1 alone: worker 0 follows.
    ask(gw, 1, "dispatcher.set_state", "d", 1, uri)
    wait_until(lambda: states(gw, 0) == {uri: "DX"}, timeout=PROPAGATION,
               what="set_state on worker 0", caller=gw)


def via_of(message: SippMessage) -> str:
    via = message.header("Via") or ""
    return via.split()[1].split(";")[0]


def states(gw: SipgwProcess, index: int) -> dict[str, str]:
    answer = ask(gw, index, "dispatcher.list")
    return {t["DEST"]["URI"]: t["DEST"]["FLAGS"]
            for record in answer["RECORDS"] for t in record["SET"]["TARGETS"]}


def test_a_backend_that_timed_out_on_one_worker_is_down_on_the_other(sipgw, tmp_path: Path):
    """The backend answers its probes but not a call: the worker that sent the call marks
    it down at timer B, and so does the other, which probes nothing (worker 1) or not
    before 60 s (worker 0)."""
    backend = UdpPeer()
    uri = f"sip:{backend.address}"
    gw = both_ready(sipgw(backend=backend.address, workers=2, extra_toml=(
        control_toml(tmp_path) + "[timers]\ntimer_b = 2\n"), dispatcher=(
        f'destinations = ["{uri}"]\nping_interval = 60\nping_timeout = 5\n')), tmp_path)
    invites: list[SippMessage] = []

    def serve_probes() -> bool:
        for message in backend.collect(0.1):
            if message.method == "OPTIONS":
                backend.send(build_response(message, 200, "OK"), to=via_of(message))
            elif message.method == "INVITE":
                invites.append(message)
        return True

    phone = UdpPeer(gw.address)
    try:
        wait_until(lambda: serve_probes() and states(gw, 0) == states(gw, 1) == {uri: "AP"},
                   timeout=PROPAGATION, what="the backend up on both", caller=gw)
        phone.send(build_request("INVITE", f"sip:5002@{gw.address}", peer=phone,
                                 call_id="lost-call", branch="z9hG4bKlost"))
        wait_until(lambda: serve_probes() and invites, timeout=PROPAGATION,
                   what="the INVITE at the backend", caller=gw)
        backends = {w["backend_address"]: w["index"] for w in service(gw, "core.workers")}
        sender = backends[via_of(invites[0])]
        phone.expect("408", timeout=10)  # timer B
        other = 1 - sender
        wait_until(lambda: serve_probes() and states(gw, other) == {uri: "IP"},
                   timeout=PROPAGATION, what=f"the backend down on worker {other}", caller=gw)
        assert states(gw, sender) == {uri: "IP"}
    finally:
        phone.close()
