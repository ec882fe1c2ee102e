"""State that holds across workers: two in-process cores on one ``task.Clock``, wired by
``service.share_state`` to a fake channel pair that relays what one publishes to the other
as the supervisor does (JSON, in order, a millisecond later).

What a user would notice: three wrong passwords spread over workers ban the user on
both; a flood split over the workers is blocked by both within its unit; a nonce answered
to the other worker is re-challenged, never accepted twice; one OPTIONS per interval per
backend, and a backend seen failing (or set by the operator) changes state on both.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from sipgw.proxy.core import Proxy
from sipgw.proxy.service import share_state
from sipgw.proxy.transport import Source
from sipgw.proxy.workers.spec import WorkerSpec
from sipgw.store import make_subscriber
from sipgw.store.memory import MemoryStore
from sipgw.tools.digest_client import challenges
from sipgw.tools.harness import config_with, core
from tests.proxy.auth.test_auth import PHONE, REALM, Link, answer, sip_request
from tests.proxy.dispatcher.test_dispatcher_relay import src
from tests.proxy.relay.test_relay import CALLER, reply_from_backend, request

DELAY = 0.001  # the supervisor's relay, as the tests see it


class Channel:
    """One worker's end of the fake pair: ``publish`` reaches every other end."""

    def __init__(self, hub: Hub, index: int) -> None:
        self.hub = hub
        self.index = index
        self.handlers: dict[str, list] = defaultdict(list)

    def on(self, topic: str, handler) -> None:
        self.handlers[topic].append(handler)

    def publish(self, topic: str, payload) -> None:
        data = json.dumps(payload)  # what crosses is JSON, as over AMP
        assert len(data.encode()) < 0xFFFF, "AMP carries at most 64 KiB in one value"
        self.hub.published.append((self.index, topic, payload))
        for other in self.hub.ends:
            if other is not self:
                self.hub.clock.callLater(DELAY, other.deliver, topic, data, self.index)

    def deliver(self, topic: str, data: str, origin: int) -> None:
        for handler in self.handlers[topic]:
            handler(json.loads(data), origin)


class Hub:
    def __init__(self, clock: Clock, count: int) -> None:
        self.clock = clock
        self.ends = [Channel(self, i) for i in range(count)]
        self.published: list[tuple[int, str, object]] = []

    def topics(self, topic: str) -> list:
        return [p for _, t, p in self.published if t == topic]


def workers(clock: Clock, links: list[Link], config, count: int = 2,
            store: MemoryStore | None = None) -> tuple[list[Proxy], Hub]:
    """``count`` cores sharing state over a hub, as ``make_service`` wires workers."""
    hub = Hub(clock, count)
    proxies = [worker(hub, index, link, config, store) for index, link in enumerate(links)]
    return proxies, hub


def worker(hub: Hub, index: int, link: Link, config, store: MemoryStore | None = None,
           started: bool = False) -> Proxy:
    """Worker ``index`` on ``hub`` (``started``: a new end, as for a restarted worker,
    which says hello as it starts)."""
    if started:
        hub.ends[index] = Channel(hub, index)
    proxy = core(clock=hub.clock, send=link, store=store, config=config,
                 dispatch=config.dispatcher.ping_interval > 0)
    hello = share_state(proxy, hub.ends[index],  # type: ignore[arg-type]
                        WorkerSpec(index=index, count=len(hub.ends), sockets=(), peers=(),
                                   control_socket=""))
    if started:
        hello()
    return proxy


def phone(port: int) -> Source:
    """The phone, from another source port: the kernel may hand it to another worker."""
    return Source(transport="udp", host=PHONE.host, port=port, local_host="127.0.0.1",
                  local_port=5060)


# -- auth ---------------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1_700_000_000)
    return c


@pytest.fixture
def auth_pair(clock):
    store = MemoryStore()
    store.records[("5001", REALM)] = make_subscriber("5001", REALM, "secret")
    links = [Link(), Link()]
    config = config_with(auth={"realm": REALM})
    proxies, hub = workers(clock, links, config, store=store)
    return proxies, links, hub


def send(proxy: Proxy, link: Link, data: bytes, source: Source):
    link.clear()
    proxy.receive(data, source)
    return link.last_reply() if link.sent and not link.to_backend() else None


def guess(proxy: Proxy, link: Link, source: Source, password: str = "guess"):
    """One REGISTER answered with ``password``: the reply (None when relayed)."""
    challenge = send(proxy, link, sip_request(), source)
    if challenge.status != 401:
        return challenge
    return send(proxy, link, sip_request(cseq=2, auth=answer(challenge, password=password)),
                source)


def test_three_failures_spread_over_two_workers_ban_the_user_on_both(auth_pair, clock):
    (w0, w1), (l0, l1), hub = auth_pair
    assert guess(w0, l0, phone(6000)).status == 401
    clock.advance(0.01)
    assert guess(w1, l1, phone(6001)).status == 401
    clock.advance(0.01)
    # The third failure, on worker 0: 2 of its own would not ban; with worker 1's it does.
    assert guess(w0, l0, phone(6002)).status == 401
    clock.advance(0.01)  # the failure reaches worker 1
    for proxy, link, port in ((w0, l0, 6003), (w1, l1, 6004)):
        assert guess(proxy, link, phone(port), password="secret").status == 403
        assert [row["NAME"] for row in proxy.auth.rpc_bans()["BANS"]] == [f"5001@{REALM}"]
    assert len(hub.topics("auth.failure")) == 3


def test_a_success_on_one_worker_clears_the_count_on_the_other(auth_pair, clock):
    (w0, w1), (l0, l1), hub = auth_pair
    guess(w0, l0, phone(6000))
    guess(w0, l0, phone(6000))
    clock.advance(0.01)
    assert guess(w1, l1, phone(6001), password="secret") is None  # relayed: right password
    clock.advance(0.01)
    guess(w0, l0, phone(6000))  # one failure since the success: no ban
    clock.advance(0.01)
    assert guess(w0, l0, phone(6000), password="secret") is None
    assert w0.auth.rpc_bans()["BANS"] == [] and w1.auth.rpc_bans()["BANS"] == []
    # A user with no failure counted costs the channel nothing when it registers.
    clock.advance(0.01)
    before = len(hub.published)
    assert guess(w1, l1, phone(6001), password="secret") is None
    assert len(hub.published) == before


def test_a_nonce_answered_to_the_other_worker_is_rechallenged_and_never_accepted_twice(
    auth_pair, clock
):
    (w0, w1), (l0, l1), _ = auth_pair
    challenge = send(w0, l0, sip_request(), phone(6000))
    credentials = answer(challenge)
    first = sip_request(cseq=2, auth=credentials, branch="z9hG4bKfirst")
    assert send(w0, l0, first, phone(6000)) is None and len(l0.to_backend()) == 1
    # The same request, replayed to worker 1 (another source port): a fresh challenge,
    # stale=true, and nothing reaches the backend.
    reply = send(w1, l1, sip_request(cseq=2, auth=credentials, branch="z9hG4bKreplay"),
                 phone(6001))
    assert reply.status == 401 and l1.to_backend() == []
    assert challenges(reply, "WWW-Authenticate")[0].params["stale"].lower() == "true"
    # Replayed to worker 0 (which accepted it once): refused too.
    reply = send(w0, l0, sip_request(cseq=2, auth=credentials, branch="z9hG4bKagain"),
                 phone(6000))
    assert reply.status == 401 and l0.to_backend() == []


# -- pike ---------------------------------------------------------------------------------

DENSITY = 30
FLOODER = "198.51.100.7"


@pytest.fixture
def pike_pair(clock):
    clock.advance(2 - clock.seconds() % 2)  # the start of a unit
    links = [Link(), Link()]
    config = config_with(pike={"enabled": True, "reqs_density_per_unit": DENSITY,
                               "sampling_time_unit": 2, "remove_latency": 10})
    proxies, hub = workers(clock, links, config)
    return proxies, hub


def options(n: int) -> bytes:
    return (f"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {FLOODER}:5060;"
            f"branch=z9hG4bKfl{n}\r\nFrom: <sip:x@{FLOODER}>;tag=a\r\nTo: <sip:127.0.0.1>\r\n"
            f"Call-ID: fl{n}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def source(port: int) -> Source:
    return Source(transport="udp", host=FLOODER, port=port, local_host="127.0.0.1",
                  local_port=5060)


def spread(proxies: list[Proxy], clock: Clock, n: int, every: float = 0.01) -> list[bool]:
    """``n`` requests from one address, alternately to each worker (two source ports):
    whether each was let through."""
    passed = []
    for i in range(n):
        passed.append(proxies[i % 2].pike.check(source(7000 + i % 2)))
        clock.advance(every)
    return passed


def test_a_flood_split_over_two_workers_is_blocked_by_both_within_its_unit(pike_pair, clock):
    proxies, hub = pike_pair
    # 20 a worker: neither alone would block (30 a unit), together they pass it.
    passed = spread(proxies, clock, 40)
    assert all(passed[:DENSITY]) and not any(passed[DENSITY + 4:])
    for proxy in proxies:
        assert proxy.pike.blocked(FLOODER)
        assert not proxy.pike.check(source(7009))  # a new port: the address is blocked
    # Small traffic: a report per 8 requests (30 / (2 x 2), rounded up) until blocked.
    assert 2 <= len(hub.topics("pike.hits")) <= 2 * 2 * 2
    assert 1 <= len(hub.topics("pike.block")) <= 2


def test_an_address_within_the_density_over_both_workers_is_not_blocked(pike_pair, clock):
    proxies, hub = pike_pair
    for _ in range(3):  # three units of 28 requests, 14 a worker
        assert all(spread(proxies, clock, 28, every=1.9 / 28))
        clock.advance(2 - clock.seconds() % 2)
    assert not any(p.pike.blocked(FLOODER) for p in proxies)
    assert hub.topics("pike.block") == []


def test_a_quiet_address_costs_the_channel_nothing(pike_pair, clock):
    proxies, hub = pike_pair
    spread(proxies, clock, 14)  # 7 a worker, below a step (8)
    assert hub.published == []


# -- dispatcher ---------------------------------------------------------------------------

A = ("127.0.0.1", 5081)
B = ("127.0.0.1", 5082)
LIST = "1 sip:127.0.0.1:5081 0 10\n1 sip:127.0.0.1:5082 0 10\n"


class RelayLink(Link):
    def options_to(self, host: str, port: int) -> int:
        return sum(1 for m, d in self.sent
                   if getattr(m, "method", None) == "OPTIONS" and (d.host, d.port) == (host, port))


def dispatcher_workers(clock: Clock, path, ping_interval: float = 10.0):
    path.write_text(LIST)
    links = [RelayLink(), RelayLink()]
    config = config_with(dispatcher={"ping_interval": ping_interval, "ping_timeout": 2.0,
                                     "list_file": str(path), "algorithm": 4})
    proxies, hub = workers(clock, links, config)
    for proxy in proxies:
        proxy.dispatcher.start()
    clock.advance(0)  # the first round of probes goes out as the reactor runs
    return proxies, links, hub


@pytest.fixture
def dispatcher_pair(clock, tmp_path):
    proxies, links, hub = dispatcher_workers(clock, tmp_path / "dispatcher.list")
    yield proxies, links, hub, tmp_path / "dispatcher.list"
    for proxy in proxies:
        proxy.dispatcher.stop()


def run(clock: Clock, seconds: float, step: float = 0.125) -> None:
    """Let ``seconds`` pass in steps (exact in binary), so timers armed on the way fire
    on time."""
    for _ in range(round(seconds / step)):
        clock.advance(step)


def answer_probes(proxy: Proxy, link: RelayLink, *alive) -> None:
    for m, d in list(link.sent):
        if getattr(m, "method", None) == "OPTIONS" and (d.host, d.port) in alive:
            proxy.receive(reply_from_backend(m, 200, "OK"), src((d.host, d.port)))
    link.clear()


def states(proxy: Proxy) -> dict[str, str]:
    [record] = proxy.dispatcher.rpc_list()["RECORDS"]
    return {t["DEST"]["URI"]: t["DEST"]["FLAGS"] for t in record["SET"]["TARGETS"]}


def test_only_worker_0_probes_one_options_per_interval_per_backend(dispatcher_pair, clock):
    (w0, w1), (l0, l1), _, _ = dispatcher_pair
    probes: dict[tuple, set] = {A: set(), B: set()}  # Call-IDs: a retransmission is no probe
    for _ in range(4):
        for m, d in l0.sent:
            if getattr(m, "method", None) == "OPTIONS":
                probes[(d.host, d.port)].add(m.header("call-id"))
        answer_probes(w0, l0, A, B)
        run(clock, 10)
    assert len(probes[A]) == len(probes[B]) == 4  # rounds at 0, 10, 20 and 30 s
    assert l1.options_to(*A) == l1.options_to(*B) == 0
    assert w1.stats.get("dispatcher:probes_sent") == 0


def test_a_probe_timeout_on_worker_0_takes_the_backend_down_on_both(dispatcher_pair, clock):
    (w0, w1), (l0, _), _, _ = dispatcher_pair
    answer_probes(w0, l0, B)  # A does not answer
    run(clock, 2.5)  # A's probe times out
    assert states(w0) == states(w1) == {"sip:127.0.0.1:5081": "IP", "sip:127.0.0.1:5082": "AP"}


def test_a_request_timeout_on_worker_1_reaches_worker_0(clock, tmp_path):
    # Probes every 300 s: worker 0 would not notice by itself before the next round.
    (w0, w1), (l0, l1), _ = dispatcher_workers(clock, tmp_path / "d.list", 300)
    answer_probes(w0, l0, A, B)
    assert not w1.dispatcher.probes
    w1.receive(request(), CALLER)
    host, port = next((d.host, d.port) for m, d in l1.sent
                      if getattr(m, "method", "") == "INVITE")
    run(clock, 33)  # timer B: the destination failed on worker 1
    assert states(w0)[f"sip:{host}:{port}"] == "IP" == states(w1)[f"sip:{host}:{port}"]
    assert l0.options_to(host, port) == 0  # not by a probe of worker 0's


def test_set_state_and_reload_on_one_worker_reach_the_other(dispatcher_pair, clock):
    (w0, w1), _, _, path = dispatcher_pair
    w1.dispatcher.rpc_set_state("d", 1, "sip:127.0.0.1:5082")
    clock.advance(DELAY)
    assert states(w0)["sip:127.0.0.1:5082"] == "DX"
    path.write_text(LIST + "1 sip:127.0.0.1:5083 0 10\n")
    w0.dispatcher.rpc_reload()
    clock.advance(DELAY)
    assert "sip:127.0.0.1:5083" in states(w1)
    # Asked of both (the control plane's way): each reads the file once, not twice.
    path.write_text(LIST)
    with capturedLogs() as events:
        w0.dispatcher.rpc_reload()
        w1.dispatcher.rpc_reload()
        clock.advance(DELAY)
    loads = [e for e in events if "loaded" in e.get("log_format", "")]
    assert len(loads) == 2 and states(w0).keys() == states(w1).keys() == {
        "sip:127.0.0.1:5081", "sip:127.0.0.1:5082"}
    path.write_text(LIST + "1 sip:127.0.0.1:5083 0 10\n")
    w0.dispatcher.rpc_reload()
    clock.advance(DELAY)
    assert states(w1)["sip:127.0.0.1:5082"] == "DX"  # kept across the reload
    w0.dispatcher.transport_error("127.0.0.1", 5083)
    clock.advance(DELAY)
    assert states(w1)["sip:127.0.0.1:5083"] == "IP"


# -- a worker that restarts ---------------------------------------------------------------


def test_a_restarted_worker_starts_with_the_others_bans_blocks_and_states(clock, tmp_path):
    path = tmp_path / "dispatcher.list"
    path.write_text(LIST)
    store = MemoryStore()
    store.records[("5001", REALM)] = make_subscriber("5001", REALM, "secret")
    config = config_with(auth={"realm": REALM}, pike={"enabled": True},
                         dispatcher={"ping_interval": 10.0, "list_file": str(path)})
    links = [Link(), Link()]
    (w0, _), hub = workers(clock, links, config, store=store)
    for port in (6000, 6001, 6002):
        guess(w0, links[0], phone(port))
    w0.pike.configure(dataclasses.replace(w0.pike.settings, reqs_density_per_unit=1))
    w0.pike.check(source(7000))
    assert not w0.pike.check(source(7000))  # blocked on worker 0
    w0.dispatcher.rpc_set_state("i", 1, "sip:127.0.0.1:5081")
    clock.advance(60)

    link1 = Link()
    w1 = worker(hub, 1, link1, config, store, started=True)  # worker 1 again, from nothing
    clock.advance(DELAY)  # its hello reaches worker 0
    clock.advance(DELAY)  # worker 0's answer reaches it
    assert [row["NAME"] for row in w1.auth.rpc_bans()["BANS"]] == [f"5001@{REALM}"]
    assert guess(w1, link1, phone(6009), password="secret").status == 403
    assert w1.pike.blocked(FLOODER)
    assert states(w1)["sip:127.0.0.1:5081"] == "IX"
    clock.advance(ban_time() - 60)  # the ban ends on it when it ends on worker 0
    assert w1.auth.rpc_bans()["BANS"] == []


def ban_time() -> float:
    return config_with().auth.ban_time


def test_a_backend_worker_0_finds_unreachable_fails_over_the_calls_worker_1_sent_there(
        clock, tmp_path):
    """Only worker 0 notices ICMP unreachable (its probes): worker 1's INVITEs already on
    their way there must fail over at once, not after timer B (a CI failover test)."""
    (w0, w1), (l0, l1), _ = dispatcher_workers(clock, tmp_path / "d.list", 300)
    answer_probes(w0, l0, A, B)
    w1.receive(request(), CALLER)
    first = next((d.host, d.port) for m, d in l1.sent if getattr(m, "method", "") == "INVITE")
    other = B if first == A else A
    w0.dispatcher.transport_error(*first)  # as worker 0's ICMP detector reports it
    clock.advance(DELAY)
    invites = [(d.host, d.port) for m, d in l1.sent if getattr(m, "method", "") == "INVITE"]
    assert invites[-1] == other
