"""Digest authentication as users run it: ``sipgw users`` provisions, real SIPp phones
authenticate through a real sipgw to a SIPp backend, on SQLite and on a real redis-server;
Redis stopped and restarted under the proxy; a replay. (Debian's sipvicious against it:
test_sipvicious.py.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipgw.store import make_subscriber
from sipgw.tools.digest_client import authorization, challenges
from sipgw.tools.process import SipgwProcess
from tests.helpers.redis_server import RedisServer
from tests.integration.sipgw_process import (
    UdpPeer,
    build_request,
    build_response,
    control_toml,
    statistics,
)
from tests.integration.sipp import SippProcess, SippRunner

pytestmark = pytest.mark.integration

REALM = "sipgw.test"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def auth_toml(url: str, subscribers: str = "", **auth: str) -> str:
    """``[subscribers]`` and ``[auth]`` with the default algorithms (MD5 alone): what SIPp,
    which reads only the first challenge and knows only MD5, can answer."""
    extra = "".join(f"{k} = {v}\n" for k, v in auth.items())
    return (f'[subscribers]\nurl = "{url}"\n{subscribers}\n[auth]\nrealm = "{REALM}"\n{extra}\n'
            f"[timers]\nt1 = 0.1\n")


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path}/state/subscribers.db"
        return
    server = RedisServer(tmp_path / "redis").start()
    yield server.url
    server.stop()


def users(gw: SipgwProcess, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
    """``sipgw users ARGS -c <the proxy's own config file>``."""
    return subprocess.run(
        [sys.executable, "-m", "sipgw", "users", *args, "-c", str(gw.config_path)],
        input=None if password is None else password + "\n",
        capture_output=True, text=True, timeout=20,
        env={k: v for k, v in os.environ.items() if k != "SIPGW_CONFIG"},
    )


def add_user(gw: SipgwProcess, user: str, password: str) -> None:
    done = users(gw, "add", user, "--password-stdin", password=password)
    assert done.returncode == 0, done.stderr


def credentials_file(path: Path, user: str, password: str) -> Path:
    return phones_file(path, [user], password)


def phones_file(path: Path, users: list[str], password: str) -> Path:
    """A SIPp injection file: one line per user, taken in turn (SEQUENTIAL)."""
    path.write_text("SEQUENTIAL\n" + "".join(
        f"{user};{REALM};[authentication username={user} password={password}]\n"
        for user in users))
    return path


def start_gw(sipgw, backend: str, url: str, subscribers: str = "", **auth: str) -> SipgwProcess:
    return sipgw(backend=backend, auth=True, extra_toml=auth_toml(url, subscribers, **auth))


# --- SIPp phones on both stores --------------------------------------------------------


def test_a_user_added_with_the_cli_registers_and_calls_with_digest_and_a_wrong_password_fails(
    sipgw, sipp: SippRunner, store_url: str, tmp_path: Path
):
    registrar = sipp.uas("uas_register", calls=1)
    gw = start_gw(sipgw, registrar.address, store_url)
    add_user(gw, "5001", "s3cret")

    phone = sipp.uac("uac_register_auth", remote=gw.address,
                     inf=credentials_file(tmp_path / "good.csv", "5001", "s3cret"))
    assert phone.wait() == 0, phone.describe()
    assert registrar.wait() == 0, registrar.describe()
    [register] = [m for m in registrar.messages()
                  if m.direction == "received" and m.method == "REGISTER"]
    assert register.header("Authorization") is None  # consumed by sipgw

    callee = sipp.uas("uas_call", calls=1)
    gw_call = start_gw(sipgw, callee.address, store_url)
    caller = sipp.uac("uac_call_auth", remote=gw_call.address, service="5002",
                      inf=credentials_file(tmp_path / "call.csv", "5001", "s3cret"))
    assert caller.wait() == 0, caller.describe()
    assert callee.wait() == 0, callee.describe()

    intruder = sipp.uac("uac_register_auth", remote=gw.address, timeout=3,
                        inf=credentials_file(tmp_path / "bad.csv", "5001", "guess"))
    assert intruder.wait() != 0
    assert intruder.stats().successful == 0
    statuses = [m.status for m in intruder.messages() if m.direction == "received"]
    assert statuses[:2] == [401, 401]


# --- Redis goes away and comes back ------------------------------------------------------


class Phone:
    """A hand-driven UDP phone for user ``raw`` (the harness's From user)."""

    def __init__(self, gw: SipgwProcess) -> None:
        self.gw = gw
        self.peer = UdpPeer(gw.address)
        self.n = 0

    def register(self, auth: str | None = None, *, branch: str | None = None) -> bytes:
        self.n += 1
        headers = [f"Authorization: {auth}"] if auth else []
        data = build_request(
            "REGISTER", f"sip:{self.gw.address}", peer=self.peer, call_id="reg-raw",
            branch=branch or f"z9hG4bKraw{self.n}", cseq=self.n, headers=headers,
            to=f"<sip:raw@{self.gw.address}>",
        )
        self.peer.send(data)
        return data

    def challenge(self):
        self.register()
        return self.peer.expect("401")

    def credentials(self, challenge, password: str = "pw", nc: int = 1) -> str:
        """An answer to the first challenge, as phones that read only the first do."""
        ch = challenges(challenge, "WWW-Authenticate")[0]
        return authorization(username="raw", password=password, realm=REALM,
                             nonce=ch.params["nonce"], method="REGISTER",
                             uri=f"sip:{self.gw.address}", nc=nc,
                             algorithm=ch.params.get("algorithm", "MD5"))

    def close(self) -> None:
        self.peer.close()


def store_raw_user(redis: RedisServer, user: str = "raw", password: str = "pw") -> None:
    sub = make_subscriber(user, REALM, password)
    redis.cli("HSET", f"subscriber:{user}", *[x for kv in sub.as_fields().items() for x in kv])


# sipgw tries Redis again every second at most (RECONNECT_MAX_DELAY): service is back about
# a second after Redis. This bound is that and a machine busy enough to make it several.
BACK_WITHIN = 6.0
# A command timeout far above the time a refusal takes, so that "at once" (no connection:
# refused without waiting) and "after the command timeout" cannot be mistaken for each
# other however busy the machine.
SLOW_TIMEOUT = 10.0


def test_redis_stopped_gives_prompt_503_and_auth_works_again_soon_after_its_restart(
    sipgw, redis: RedisServer
):
    backend = UdpPeer()
    gw = start_gw(sipgw, backend.address, redis.url,
                  subscribers=f"command_timeout = {SLOW_TIMEOUT}\n")
    store_raw_user(redis)
    phone = Phone(gw)
    try:
        phone.register(phone.credentials(phone.challenge()))
        backend.expect("REGISTER")

        redis.stop()
        started = time.monotonic()
        phone.register(phone.credentials(phone.challenge()))
        refused = phone.peer.expect("503", timeout=SLOW_TIMEOUT)
        assert time.monotonic() - started < SLOW_TIMEOUT / 2  # not the command timeout's
        assert refused.header("Retry-After") == "5"
        gw.wait_ready()  # still alive and answering

        redis.start()
        restarted = time.monotonic()
        store_raw_user(redis)  # no persistence: the data comes back with the test
        while True:
            phone.register(phone.credentials(phone.challenge()))
            if backend.receive(0.1) is not None:
                break
            assert time.monotonic() - restarted < BACK_WITHIN, gw.describe()
    finally:
        phone.close()
        backend.close()


@contextlib.contextmanager
def registered_phone(sipgw, redis: RedisServer, subscribers: str = ""):
    """A sipgw on ``redis`` and phone ``raw`` that has registered once through it."""
    backend = UdpPeer()
    gw = start_gw(sipgw, backend.address, redis.url, subscribers=subscribers)
    store_raw_user(redis)
    phone = Phone(gw)
    try:
        phone.register(phone.credentials(phone.challenge()))
        backend.expect("REGISTER")
        yield gw, phone, backend
    finally:
        phone.close()
        backend.close()


@contextlib.contextmanager
def stalled(redis: RedisServer):
    """Redis alive but answering nothing (SIGSTOP), as a host stuck for a moment."""
    assert redis.process is not None
    redis.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        redis.process.send_signal(signal.SIGCONT)


def test_a_redis_stall_costs_only_the_requests_that_timed_out(sipgw, redis: RedisServer):
    """A Redis that stops answering for a moment (a fork for BGSAVE, a busy host) is not a
    dead one: the connection stays, and a request waiting on it when Redis answers again is
    served. Dropping the connection at the first timeout would fail every request queued
    on it and the ones that come while it reconnects."""
    # A command timeout of 3 s, not 1 s: the second REGISTER must still be waiting when
    # the stall ends, however slowly this test gets to end it on a busy machine.
    with registered_phone(sipgw, redis, "command_timeout = 3\n") as (gw, phone, backend):
        with stalled(redis):
            phone.register(phone.credentials(phone.challenge()))
            phone.peer.expect("503", timeout=6.0)  # this one waited the whole timeout
            phone.register(phone.credentials(phone.challenge()))
            # The stall goes on a little after the first timeout, with this REGISTER
            # waiting on Redis: no answer meanwhile.
            assert phone.peer.receive(0.3) is None
        assert backend.receive(3.0) is not None, gw.describe()
        assert phone.peer.receive(0.2) is None  # no 503 for the second REGISTER


def test_a_redis_silent_for_five_command_timeouts_is_reconnected(sipgw, redis: RedisServer):
    """A Redis that answers nothing for long (a dead host behind a live TCP path, a
    failover to a new server at the same address) gets a new connection; service resumes
    on it."""
    with registered_phone(sipgw, redis, "command_timeout = 0.2") as (gw, phone, backend):
        with stalled(redis):
            deadline = time.monotonic() + 10.0  # 5 command timeouts is 1 s
            while "reconnecting" not in gw.log_text():
                assert time.monotonic() < deadline, gw.describe()
                phone.register(phone.credentials(phone.challenge()))
                phone.peer.expect("503", timeout=2.0)
        assert "no answer from redis://127.0.0.1" in gw.log_text()
        deadline = time.monotonic() + BACK_WITHIN
        while True:
            phone.register(phone.credentials(phone.challenge()))
            if backend.receive(0.2) is not None:
                break
            assert time.monotonic() < deadline, gw.describe()


def final_statuses(phone: SippProcess, cseq: str) -> dict[str, list[int]]:
    """Call-ID → the final statuses this SIPp received for ``cseq`` ("2 REGISTER"), in order."""
    finals: dict[str, list[int]] = {}
    for m in phone.messages():
        if m.direction == "received" and m.header("CSeq") == cseq and m.status >= 200:
            finals.setdefault(m.header("Call-ID"), []).append(m.status)
    return finals


def test_phones_registering_through_a_redis_restart_get_503_while_it_is_down_then_200_again(
    sipgw, sipp: SippRunner, redis: RedisServer, tmp_path: Path
):
    """50 phones keep registering (SIPp, 100 a second) while Redis is stopped and started
    again with its data (as a production Redis with persistence): each REGISTER gets a
    prompt answer, 503 with Retry-After while it is down, and 200 again once it is back,
    without touching sipgw."""
    # -deadcall_wait 0: the hand-driven phone below re-registers with one Call-ID.
    registrar = sipp.uas("uas_register", calls=100_000, timeout=60,
                         extra_args=["-deadcall_wait", "0"])
    gw = sipgw(backend=registrar.address, auth=True,
               extra_toml=auth_toml(redis.url) + control_toml(tmp_path))
    phones = [f"60{n:02d}" for n in range(50)]
    for user in ["raw", *phones]:
        store_raw_user(redis, user, "pw")
    assert redis.cli("SAVE").startswith(b"+OK")  # the restart loads it back
    inf = phones_file(tmp_path / "phones.csv", phones, "pw")
    # 10 s of load: the outage (about 1 s when idle) must end well before it does, on a
    # busy machine too, for the 200s after it to be seen.
    calls = 1000
    load = sipp.uac("uac_register_auth", remote=gw.address, inf=inf, calls=calls, rate=100,
                    timeout=30)
    phone = Phone(gw)
    try:
        phone.register(phone.credentials(phone.challenge()))
        phone.peer.expect("200", timeout=2.0)

        redis.stop()
        phone.register(phone.credentials(phone.challenge()))
        phone.peer.expect("503", timeout=5.0)
        # Down until the load has met it too (sipgw's own 5xx count, bounded; the hand
        # phone's 503s count there too, hence more than the 20 the load must see).
        deadline = time.monotonic() + 5.0
        while statistics(gw, "sl:5xx_replies")["sl:5xx_replies"] < 25:
            assert time.monotonic() < deadline, gw.describe()

        redis.start()
        restarted = time.monotonic()
        while True:
            phone.register(phone.credentials(phone.challenge()))
            if any(reply.status == 200 for reply in phone.peer.collect(0.1)):
                break
            assert time.monotonic() - restarted < BACK_WITHIN, gw.describe()
    finally:
        phone.close()
    load.wait(40)

    finals = final_statuses(load, "2 REGISTER")
    # Every authorized REGISTER was answered, each once, without a retransmission to wait.
    assert len(finals) == calls and all(len(v) == 1 for v in finals.values()), finals
    assert load.stats().retransmissions == 0
    order = [v[0] for v in finals.values()]  # in the order they arrived
    assert set(order) == {200, 503}, order
    refused = order.count(503)
    assert refused >= 20
    assert load.stats().failed == refused, load.stats().failures
    # One outage: 200s, then 503s, then 200s again to the end of the run.
    last = len(order) - 1 - order[::-1].index(503)
    first = order.index(503)
    assert order[first:last + 1] == [503] * refused, order
    assert len(order) - 1 - last >= 50, order
    retry = [m.header("Retry-After") for m in load.messages()
             if m.direction == "received" and m.status == 503]
    assert set(retry) == {"5"}


def test_a_kamailio_db_redis_layout_with_a_legacy_plaintext_record_is_read_as_it_is(
    sipgw, redis: RedisServer
):
    backend = UdpPeer()
    gw = start_gw(sipgw, backend.address, redis.url,
                  subscribers='key_template = "subscriber:entry::{username}:{domain}"\n')
    redis.cli("HSET", f"subscriber:entry::raw:{REALM}", "username", "raw", "domain", REALM,
              "password", "pw")
    phone = Phone(gw)
    try:
        phone.register(phone.credentials(phone.challenge()))
        backend.expect("REGISTER")
        listed = users(gw, "list")
        assert listed.returncode == 0, listed.stderr
        assert f"warning: raw@{REALM} has a plaintext password" in listed.stderr
    finally:
        phone.close()
        backend.close()


# --- replay ------------------------------------------------------------------------------


def gw_with_user(sipgw, tmp_path: Path, *users_: str) -> tuple[SipgwProcess, UdpPeer]:
    """A sipgw on SQLite relaying to a silent UDP backend, with these users (password pw)."""
    backend = UdpPeer()
    gw = start_gw(sipgw, backend.address, f"sqlite://{tmp_path}/subs.db")
    for user in users_:
        add_user(gw, user, "pw")
    return gw, backend


def test_a_replayed_authorized_register_with_the_same_nonce_and_nc_is_refused(
    sipgw, tmp_path: Path
):
    gw, backend = gw_with_user(sipgw, tmp_path, "raw")
    phone = Phone(gw)
    try:
        creds = phone.credentials(phone.challenge(), nc=1)
        captured = phone.register(creds, branch="z9hG4bKcaptured")
        relayed = backend.expect("REGISTER")
        backend.send(build_response(relayed, 200, "OK", to_tag="reg"), gw.address)
        phone.peer.expect("200")
        # The same bytes again are a retransmission: absorbed, nothing new relayed.
        phone.peer.send(captured)
        # Sent again as a new request (new branch), same nonce and nc: refused.
        phone.register(creds, branch="z9hG4bKreplayed")
        phone.peer.expect("401")
        assert backend.collect(0.5) == []
        # The honest phone's next request on the same nonce counts up: accepted.
        phone.register(phone.credentials(phone.challenge(), nc=1))
        backend.expect("REGISTER")
    finally:
        phone.close()
        backend.close()

