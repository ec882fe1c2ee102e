"""Two nodes on one Redis: two real ``sipgw serve`` processes sharing a real redis-server
(their subscriber store) and their secrets, as a cluster behind nginx runs them.

- Failed authentications are counted over both nodes, and a ban reaches the other node
  within a second; ``auth.unban`` on one node lifts it on both.
- A nonce one node issued, replayed at the other, is re-challenged stale, never accepted.
- The Redis round trips of each request type, counted with Redis's ``MONITOR``: one per
  authenticated REGISTER or INVITE, two per failed authentication (and one more, once,
  for the success that follows), and the ban poll's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipgw.proxy.auth.cluster import POLL_INTERVAL
from sipgw.tools.digest_client import authorization, challenges
from sipgw.tools.doctor import PASS, WARN, Doctor
from sipgw.tools.process import SipgwProcess
from tests.helpers.poll import wait_until
from tests.helpers.redis_sentinel import Cluster, cluster_fixture
from tests.helpers.redis_server import Monitor, RedisServer, command
from tests.integration.sipgw_process import UdpPeer, build_response, control_toml
from tests.integration.test_auth_sipp import REALM, add_user, auth_toml
from tests.integration.test_shared_state_sipgw import Phone, ask, both_ready, via_of

pytestmark = pytest.mark.integration

USER = f"5001@{REALM}"
WITHIN = 1.0  # the bound for a ban to reach every node
FAILOVER_WITHIN = 30.0  # Sentinels acting fast take a few seconds; a busy machine more


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


SECRETS = {"nonce_secret": '"the cluster nonce secret"'}
ROUTE_SECRET = '[proxy]\nroute_secret = "the cluster route secret"\n'


def node(sipgw, tmp_path: Path, name: str, redis: RedisServer | str, backend: UdpPeer,
         workers: int = 1, shared: bool = True, subscribers: str = "") -> SipgwProcess:
    """One node: its own state directory and control socket, the cluster's Redis (a server
    or a URL, with ``subscribers`` for the rest of its section) and (``shared``) secrets
    (pike off: everything here comes from loopback)."""
    home = tmp_path / name
    url = redis if isinstance(redis, str) else redis.url
    toml = (auth_toml(url, subscribers, **(SECRETS if shared else {}))
            + f'[state]\ndirectory = "{home}/state"\n' + control_toml(home)
            + (ROUTE_SECRET if shared else "") + "[pike]\nenabled = false\n")
    return sipgw(backend=backend.address, auth=True, workers=workers, extra_toml=toml)


def banned(gw: SipgwProcess) -> list[str]:
    return [row["NAME"] for row in gw.rpc("auth.bans")["BANS"]]


def worker_bans(gw: SipgwProcess, index: int) -> list[str]:
    """What worker ``index`` of ``gw`` alone holds."""
    return [row["NAME"] for row in ask(gw, index, "auth.bans")["BANS"]]


def answer(phone: Phone, password: str, method: str = "REGISTER") -> bytes:
    """``phone``'s request answering a fresh challenge of its node with ``password``."""
    phone.send(phone.request(method))
    challenge = phone.reply()
    assert challenge is not None and challenge.status in (401, 407), challenge
    header = "WWW-Authenticate" if method == "REGISTER" else "Proxy-Authenticate"
    uri = f"sip:{REALM}" if method == "REGISTER" else f"sip:{phone.gw.address}"
    value = authorization(username=phone.user, password=password, realm=REALM,
                          nonce=challenges(challenge, header)[0].params["nonce"],
                          method=method, uri=uri)
    name = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
    return phone.request(method, headers=(f"{name}: {value}",))


def fail(phone: Phone) -> None:
    """One wrong password: answered with a new challenge."""
    assert try_wrong_password(phone) == 401


def try_wrong_password(phone: Phone) -> int | None:
    """The status a wrong password gets (503 while the store has no master)."""
    phone.send(answer(phone, "guess"))
    reply = phone.reply()
    return None if reply is None else reply.status


def registers(phone: Phone, backend: UdpPeer) -> None:
    """The right password: the REGISTER reaches the backend, its 200 the phone."""
    phone.send(answer(phone, "s3cret"))
    register = backend.expect("REGISTER")
    backend.send(build_response(register, 200, "OK"), to=via_of(register))
    reply = phone.reply()
    assert reply is not None and reply.status == 200, reply


def refused(phone: Phone) -> bool:
    phone.send(phone.request())
    reply = phone.reply()
    return reply is not None and reply.status == 403


def test_failures_spread_over_two_nodes_ban_on_both_and_an_unban_on_one_lifts_both(
    sipgw, tmp_path: Path, redis: RedisServer
):
    backend = UdpPeer()
    a = node(sipgw, tmp_path, "a", redis, backend)
    # B runs two workers: each asks Redis for itself.
    b = both_ready(node(sipgw, tmp_path, "b", redis, backend, workers=2), tmp_path / "b")
    add_user(a, "5001", "s3cret")
    at_a, at_b = Phone(a), Phone(b)
    try:
        # Two at A, one at B: neither node alone reaches auth.max_failures_user (3).
        fail(at_a)
        fail(at_b)
        assert banned(a) == banned(b) == []
        fail(at_a)
        third = time.monotonic()
        # A counted the third over the cluster (one round trip) and banned once Redis
        # answered, B's workers at their next poll.
        wait_until(lambda: banned(a) == [USER], timeout=5, what="the ban at node A", caller=a)
        wait_until(lambda: all(worker_bans(b, i) == [USER] for i in (0, 1)), timeout=5,
                   what="the ban in both workers of node B", caller=b)
        assert time.monotonic() - third <= WITHIN
        assert refused(at_b) and refused(at_a)
        assert [m for m in backend.collect(0.2) if m.method == "REGISTER"] == []
        assert "banned for 900 s after 3 failed authentications over the cluster" \
            in a.log_text()

        # Lifted at B: A lets the user in again within the same bound.
        assert b.rpc("auth.unban", USER) == {"REMOVED": 1}
        lifted = time.monotonic()
        assert worker_bans(b, 0) == worker_bans(b, 1) == []
        wait_until(lambda: banned(a) == [], timeout=5, what="the unban at node A", caller=a)
        assert time.monotonic() - lifted <= WITHIN
        registers(at_a, backend)
        registers(at_b, backend)
        # The count started again from zero on both: one more failure bans nobody.
        fail(at_b)
        assert banned(a) == banned(b) == []
    finally:
        at_a.close()
        at_b.close()


def test_bans_outlive_a_redis_restarted_empty_and_are_given_back_to_it(
    sipgw, tmp_path: Path, redis: RedisServer
):
    """Redis without persistence restarts empty: the nodes keep refusing the banned user
    meanwhile (whether a request is banned is never asked of Redis), then give it their
    bans again, and an unban still reaches both."""
    backend = UdpPeer()
    a = node(sipgw, tmp_path, "a", redis, backend)
    b = node(sipgw, tmp_path, "b", redis, backend)
    add_user(a, "5001", "s3cret")
    at_a, at_b = Phone(a), Phone(b)
    try:
        for _ in range(3):
            fail(at_a)
        wait_until(lambda: banned(b) == [USER], timeout=5, what="the ban at node B", caller=b)
        redis.stop()
        assert refused(at_a) and refused(at_b)
        redis.start()
        assert redis.cli("ZSCORE", "sipgw:auth:bans", f"user:{USER}").startswith(b"$-1")
        wait_until(lambda: not redis.cli("ZSCORE", "sipgw:auth:bans",
                                         f"user:{USER}").startswith(b"$-1"),
                   timeout=10, what="the ban given back to Redis", caller=a)
        assert banned(a) == banned(b) == [USER]
        add_user(a, "5001", "s3cret")  # Redis lost the subscriber too
        assert a.rpc("auth.unban", USER) == {"REMOVED": 1}
        wait_until(lambda: banned(b) == [], timeout=5, what="the unban at node B", caller=b)
        registers(at_b, backend)
        assert "Redis lost the bans it held" in a.log_text() + b.log_text()
    finally:
        at_a.close()
        at_b.close()


@pytest.mark.parametrize("shared", [True, False], ids=["shared secrets", "secrets per machine"])
def test_a_nonce_of_one_node_replayed_at_the_other_is_never_accepted(
    sipgw, tmp_path: Path, redis: RedisServer, shared: bool
):
    """With the secrets shared, the other node knows the nonce for sipgw's and answers
    stale=true (a phone that moved answers again at once); with a key per machine (what
    ``sipgw doctor`` warns of) it is a stranger's: a plain challenge, which phones take for
    a wrong password. Either way the replay is not accepted."""
    backend = UdpPeer()
    a = node(sipgw, tmp_path, "a", redis, backend, shared=shared)
    b = node(sipgw, tmp_path, "b", redis, backend, shared=shared)
    add_user(a, "5001", "s3cret")
    phone, replayer = Phone(a), Phone(b)
    try:
        signed = answer(phone, "s3cret")
        phone.send(signed)
        accepted = backend.expect("REGISTER")  # once, by the node that issued the nonce
        backend.send(build_response(accepted, 200, "OK"), to=via_of(accepted))
        assert phone.reply().status == 200
        # The same request, the same nonce and count, at B (from the replayer's address).
        replay = signed.replace(phone.address.encode(), replayer.address.encode())
        replayer.send(replay)
        reply = replayer.reply()
        assert reply is not None and reply.status == 401, reply
        stale = challenges(reply, "WWW-Authenticate")[0].params.get("stale", "false")
        assert stale.lower() == ("true" if shared else "false")
        assert [m for m in backend.collect(0.5) if m.method == "REGISTER"] == []
    finally:
        phone.close()
        replayer.close()
    doctor = Doctor(str(b.config_path))
    assert doctor.check_config().status == PASS
    warned = [check.status for check in doctor.check_cluster_secrets()]
    assert warned == ([] if shared else [WARN])


def final(phone: Phone):
    """The first final answer ``phone`` receives (a 100 Trying skipped)."""
    while (reply := phone.reply()) is not None and reply.status < 200:
        pass
    return reply


def test_redis_round_trips_one_per_authenticated_request_two_per_failure_and_the_poll(
    sipgw, tmp_path: Path, redis: RedisServer
):
    """What ARCHITECTURE.md says each request type costs in Redis, counted by Redis itself:
    the commands each client sent (a script's own commands are not round trips)."""
    backend = UdpPeer()
    a = node(sipgw, tmp_path, "a", redis, backend)
    add_user(a, "5001", "s3cret")
    phone = Phone(a)
    monitor = Monitor(redis.port)
    started = time.monotonic()
    try:
        registrations = 10
        for _ in range(registrations):
            registers(phone, backend)
        phone.send(answer(phone, "s3cret", "INVITE"))
        invite = backend.expect("INVITE")
        backend.send(build_response(invite, 486, "Busy Here", to_tag="b"), to=via_of(invite))
        assert final(phone).status == 486
        failures = 2
        for _ in range(failures):
            fail(phone)
        # The right password after them clears the count over the cluster, once.
        registers(phone, backend)
        registers(phone, backend)
        # Two polls after the last request: Redis ran its commands before those, so
        # MONITOR's ordered stream has given them to us by then.
        before = polls_seen(monitor)
        wait_until(lambda: polls_seen(monitor) >= before + 2, timeout=5,
                   what="two more ban polls", caller=a)
    finally:
        phone.close()
        monitor.stop()
    elapsed = time.monotonic() - started
    sent = [args for who, args in monitor.commands() if who != "lua"]
    kinds = [_kind(args) for args in sent]
    counted = {kind: kinds.count(kind) for kind in set(kinds)}
    polls = counted.pop("poll script", 0)
    assert counted == {"HGETALL": registrations + 1 + failures + 2, "failure script": failures,
                       "success script": 1}, sent
    assert 1 <= polls <= elapsed / POLL_INTERVAL + 2, (polls, elapsed)


def polls_seen(monitor: Monitor) -> int:
    return [_kind(args) for who, args in monitor.commands() if who != "lua"].count(
        "poll script")


def _kind(args: list[str]) -> str:
    """A command's name; a script's by its keys (a success's is one counter, a failure's
    are the poll's and a counter per user and address)."""
    name = args[0].upper()
    if name in ("EVAL", "EVALSHA"):
        keys = args[3:3 + int(args[2])]
        counters = [k for k in keys if k.startswith("sipgw:auth:failures:")]
        if not counters:
            return "poll script"
        return "success script" if keys == counters else "failure script"
    return name


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[Cluster]:
    yield from cluster_fixture(tmp_path / "sentinel")


def test_bans_go_on_reaching_every_node_across_a_sentinel_failover(
    sipgw, tmp_path: Path, sentinels: Cluster
):
    """The poll goes wherever the store's connection goes: after the master is killed and
    the replica promoted, the bans made before are still in force everywhere (the replica
    had them, version included: nothing is lifted or given back), a ban made after reaches
    the other node, and an unban still lifts on both."""
    backend = UdpPeer()
    a = node(sipgw, tmp_path, "a", sentinels.url(), backend,
             subscribers=sentinels.subscribers_toml())
    b = node(sipgw, tmp_path, "b", sentinels.url(), backend,
             subscribers=sentinels.subscribers_toml())
    add_user(a, "5001", "s3cret")
    add_user(a, "5002", "s3cret")
    first, second = Phone(a), Phone(b, user="5002")
    try:
        for _ in range(3):
            fail(first)
        wait_until(lambda: banned(b) == [USER], timeout=5, what="the ban at node B", caller=b)
        # Every write on the replica before the master dies.
        assert command(sentinels.master.port, "WAIT", "1", "5000",
                       auth=sentinels.auth) == b":1\r\n"
        assert sentinels.master.process is not None
        sentinels.master.process.kill()
        wait_until(lambda: sentinels.master_named() == {sentinels.replica_port},
                   timeout=FAILOVER_WITHIN, what="the replica promoted", caller=b)
        assert refused(first) and banned(a) == banned(b) == [USER]
        # B counts on the new master once it follows it (503 until then).
        wait_until(lambda: try_wrong_password(second) == 401, timeout=10,
                   what="a failure counted at B on the new master", caller=b)
        for _ in range(2):
            fail(second)
        other = f"5002@{REALM}"
        wait_until(lambda: sorted(banned(a)) == [USER, other], timeout=5,
                   what="B's new ban at node A", caller=a)
        assert a.rpc("auth.unban", "all") == {"REMOVED": 2}
        wait_until(lambda: banned(b) == [], timeout=5, what="the unban at node B", caller=b)
        assert "Redis lost the bans" not in a.log_text() + b.log_text()
    finally:
        first.close()
        second.close()
