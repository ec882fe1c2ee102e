"""The AUTH step, driven through ``Proxy.receive`` with a fake link, ``task.Clock`` and the
in-memory subscriber store.

sipgw at 127.0.0.1:5060 with realm sipgw.test; a phone at 192.0.2.10:5070 whose account is
5001 / secret; the backend at 127.0.0.1:5080.
"""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from sipgw.config import default_config
from sipgw.proxy.transport import Destination, Source
from sipgw.sip.parser import parse_message
from sipgw.store import StoreError, StoreUnavailable, Subscriber, make_subscriber
from sipgw.store.memory import MemoryStore
from sipgw.tools.digest_client import authorization, challenges
from sipgw.tools.harness import config_with, core, our_route

REALM = "sipgw.test"
PHONE = Source(transport="udp", host="192.0.2.10", port=5070, local_host="127.0.0.1",
               local_port=5060)
BACKEND_SRC = Source(transport="udp", host="127.0.0.1", port=5080, local_host="127.0.0.1",
                     local_port=5060)
BACKEND = Destination(transport="udp", host="127.0.0.1", port=5080)
SECRET = b"k" * 32

_ids = itertools.count(1)


class Link:
    def __init__(self) -> None:
        self.sent: list = []

    def __call__(self, data: bytes, dest: Destination) -> None:
        self.sent.append((parse_message(data), dest))

    def to_backend(self) -> list:
        return [m for m, d in self.sent if (d.host, d.port) == ("127.0.0.1", 5080)]

    def to_phone(self, port: int = 5070) -> list:
        return [m for m, d in self.sent if d.port == port and d.host != "127.0.0.1"]

    def last_reply(self):
        replies = [m for m, _ in self.sent if hasattr(m, "status") and m.status != 100]
        return replies[-1] if replies else None

    def clear(self) -> None:
        self.sent.clear()


class Rig:
    """A proxy with the AUTH step, its clock, its link and its store."""

    def __init__(self, secret: bytes = SECRET, **sections: dict) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.link = Link()
        self.store = MemoryStore()
        self.store.records[("5001", REALM)] = make_subscriber("5001", REALM, "secret")
        self.store.records[("5002", REALM)] = make_subscriber("5002", REALM, "other")
        self.proxy = core(clock=self.clock, send=self.link, store=self.store,
                          config=config_with(auth={"nonce_secret": secret.decode()}))
        self.auth = self.proxy.auth
        assert self.auth is not None
        self.reload(**sections)

    def reload(self, **sections: dict) -> None:
        """Configure the AUTH step as a reload would: the realm is REALM unless ``auth``
        says otherwise, the rest ``config_with(**sections)``."""
        config = config_with(**{**sections, "auth": {"realm": REALM, **sections.get("auth", {})}})
        self.auth.configure(config.auth, config.proxy, config.limits)

    def send(self, data: bytes, source: Source = PHONE):
        self.link.clear()
        self.proxy.receive(data, source)
        return self.link.last_reply() if self.link.sent and not self.link.to_backend() else None

    def stat(self, name: str) -> int:
        return self.proxy.stats.get(f"auth:{name}")


def sip_request(method: str = "REGISTER", *, user: str = "5001", to_user: str | None = None,
                domain: str = REALM, ruri: str | None = None, auth: str = "",
                branch: str | None = None, call_id: str = "c1@192.0.2.10", cseq: int = 1,
                extra: str = "", to_tag: str = "") -> bytes:
    branch = branch or f"z9hG4bKp{next(_ids)}"
    ruri = ruri or ("sip:127.0.0.1:5060" if method == "REGISTER" else "sip:5002@127.0.0.1:5060")
    to_user = to_user or (user if method == "REGISTER" else "5002")
    header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
    tag = f";tag={to_tag}" if to_tag else ""
    return (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5070;branch={branch};rport\r\n"
        f"From: <sip:{user}@{domain}>;tag=f1\r\n"
        f"To: <sip:{to_user}@{domain}>{tag}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: <sip:{user}@192.0.2.10:5070>\r\n"
        f"Max-Forwards: 70\r\n"
        + (f"{header}: {auth}\r\n" if auth else "")
        + extra
        + "Content-Length: 0\r\n\r\n"
    ).encode()


def answer(challenge_reply, *, method: str = "REGISTER", user: str = "5001",
           password: str = "secret", algorithm: str | None = None, nc: int = 1,
           qop: str | None = "auth", uri: str | None = None) -> str:
    """Credentials for the first challenge, as phones answer (SIPp, sipsak); with
    ``algorithm``, for the challenge of that algorithm (or, if none, the first one's nonce
    with that algorithm)."""
    name = "WWW-Authenticate" if challenge_reply.status == 401 else "Proxy-Authenticate"
    offered = challenges(challenge_reply, name)
    ch = next((c for c in offered if c.params["algorithm"] == algorithm), offered[0])
    algorithm = algorithm or ch.params["algorithm"]
    uri = uri or ("sip:127.0.0.1:5060" if method == "REGISTER" else "sip:5002@127.0.0.1:5060")
    return authorization(username=user, password=password, realm=ch.params["realm"],
                         nonce=ch.params["nonce"], method=method, uri=uri,
                         algorithm=algorithm, nc=nc, qop=qop)


@pytest.fixture
def rig() -> Rig:
    return Rig()


@pytest.fixture
def sha256_rig() -> Rig:
    """``[auth] algorithms = ["SHA-256", "MD5"]``."""
    return Rig(auth={"algorithms": ("SHA-256", "MD5")})


def register_ok(rig: Rig, **kw) -> None:
    challenge = rig.send(sip_request())
    rig.send(sip_request(auth=answer(challenge, **kw), cseq=2))
    assert len(rig.link.to_backend()) == 1


# --- challenges --------------------------------------------------------------------------


def test_register_without_credentials_is_challenged_401_with_md5_alone_by_default(rig):
    """One challenge, MD5: what phones that read only the first challenge (SIPp, sipsak)
    or only the last (JsSIP, SIP.js) and know only MD5 can all answer."""
    reply = rig.send(sip_request())
    assert reply.status == 401
    [offered] = challenges(reply, "WWW-Authenticate")
    assert offered.params["algorithm"] == "MD5"
    assert offered.params["realm"] == REALM and offered.params["qop"] == "auth"
    assert rig.link.to_backend() == []
    assert rig.stat("challenged") == 1


def test_the_configured_default_is_md5_alone():
    assert default_config().auth.algorithms == ("MD5",)


def test_sha256_can_be_offered_first_with_md5_after_it_under_one_nonce(sha256_rig):
    reply = sha256_rig.send(sip_request())
    offered = challenges(reply, "WWW-Authenticate")
    assert [c.params["algorithm"] for c in offered] == ["SHA-256", "MD5"]
    assert {c.params["nonce"] for c in offered} == {offered[0].params["nonce"]}
    assert all(c.params["realm"] == REALM and c.params["qop"] == "auth" for c in offered)


def test_an_algorithm_not_offered_is_rechallenged():
    rig = Rig(auth={"algorithms": ("SHA-256",)})
    challenge = rig.send(sip_request())
    reply = rig.send(sip_request(auth=answer(challenge, algorithm="MD5"), cseq=2))
    assert reply.status == 401 and rig.link.to_backend() == []


def test_invite_without_credentials_is_challenged_407_with_proxy_authenticate(rig):
    reply = rig.send(sip_request("INVITE"))
    assert reply.status == 407
    assert len(challenges(reply, "Proxy-Authenticate")) == 1
    assert reply.headers("WWW-Authenticate") == []


def test_the_realm_is_the_from_domain_when_none_is_configured():
    rig = Rig(auth={"realm": ""})
    rig.store.records[("5001", "example.org")] = make_subscriber("5001", "example.org", "pw")
    reply = rig.send(sip_request(domain="example.org", ruri="sip:127.0.0.1:5060"))
    assert challenges(reply, "WWW-Authenticate")[0].params["realm"] == "example.org"
    rig.send(sip_request(domain="example.org", ruri="sip:127.0.0.1:5060", cseq=2,
                         auth=answer(reply, password="pw")))
    assert len(rig.link.to_backend()) == 1


# --- success -----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_register_with_the_right_password_reaches_the_backend_without_our_credentials(
    sha256_rig, algorithm
):
    rig = sha256_rig
    challenge = rig.send(sip_request())
    other = 'Digest username="x", realm="elsewhere", nonce="n", uri="sip:a", response="00"'
    rig.send(sip_request(auth=answer(challenge, algorithm=algorithm), cseq=2,
                         extra=f"Authorization: {other}\r\n"))
    [fwd] = rig.link.to_backend()
    # RFC 3261 §22.3: our credentials are consumed; another realm's stay for its proxy.
    assert fwd.headers("authorization") == [other]
    assert rig.stat("authorized") == 1 and rig.stat("failed") == 0


def test_invite_with_the_right_password_is_relayed(rig):
    challenge = rig.send(sip_request("INVITE"))
    rig.send(sip_request("INVITE", auth=answer(challenge, method="INVITE"), cseq=2))
    [fwd] = rig.link.to_backend()
    assert fwd.method == "INVITE" and not fwd.has("proxy-authorization")


def test_a_client_without_qop_rfc2617_style_is_authenticated(rig):
    register_ok(rig, qop=None)


def test_username_as_user_at_domain_is_checked_against_ha1b(rig):
    challenge = rig.send(sip_request())
    rig.send(sip_request(auth=answer(challenge, user=f"5001@{REALM}"), cseq=2))
    assert len(rig.link.to_backend()) == 1


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_a_legacy_record_with_only_a_plaintext_password_still_authenticates(sha256_rig, algorithm):
    rig = sha256_rig
    rig.store.records[("5001", REALM)] = Subscriber(username="5001", domain=REALM,
                                                   password="secret")
    register_ok(rig, algorithm=algorithm)


def test_a_changed_password_counts_from_the_next_request_nothing_is_cached(rig):
    register_ok(rig)
    rig.store.records[("5001", REALM)] = make_subscriber("5001", REALM, "new")
    challenge = rig.send(sip_request(call_id="c2"))
    reply = rig.send(sip_request(call_id="c2", cseq=2, auth=answer(challenge)))
    assert reply.status == 401
    assert rig.store.lookups == 2


# --- failures look alike -----------------------------------------------------------------


def test_unknown_user_and_wrong_password_get_the_same_answer_and_cost_one_lookup_each(rig):
    def attempt(user: str, password: str):
        challenge = rig.send(sip_request(user=user))
        return rig.send(sip_request(user=user, cseq=2, auth=answer(challenge, user=user,
                                                                   password=password)))

    wrong = attempt("5001", "guess")
    unknown = attempt("7777", "guess")
    for reply in (wrong, unknown):
        assert (reply.status, reply.reason) == (401, "Unauthorized")
        assert [c.params["algorithm"] for c in challenges(reply, "WWW-Authenticate")] == ["MD5"]
        assert "stale" not in challenges(reply, "WWW-Authenticate")[0].params
    assert sorted(f.name for f in wrong.fields) == sorted(f.name for f in unknown.fields)
    assert rig.store.lookups == 2
    assert rig.stat("failed") == 2


def test_credentials_for_another_user_than_the_from_user_get_403(rig):
    challenge = rig.send(sip_request("INVITE", user="5001"))
    reply = rig.send(sip_request("INVITE", user="5001", cseq=2,
                                 auth=answer(challenge, method="INVITE", user="5002",
                                             password="other")))
    assert reply.status == 403 and rig.link.to_backend() == []


def test_a_register_for_another_address_of_record_than_the_user_gets_403(rig):
    challenge = rig.send(sip_request(to_user="5002"))
    reply = rig.send(sip_request(to_user="5002", cseq=2, auth=answer(challenge)))
    assert reply.status == 403


# --- nonces ------------------------------------------------------------------------------


def test_a_replayed_register_with_the_same_nonce_and_nc_is_challenged_again(rig):
    challenge = rig.send(sip_request())
    creds = answer(challenge, nc=1)
    rig.send(sip_request(auth=creds, cseq=2, branch="z9hG4bKfirst"))
    assert len(rig.link.to_backend()) == 1
    replay = rig.send(sip_request(auth=creds, cseq=2, branch="z9hG4bKreplay"))
    assert replay.status == 401 and rig.link.to_backend() == []
    # The honest client's next request, same nonce with nc 2, is accepted.
    rig.send(sip_request(auth=answer(challenge, nc=2), cseq=3))
    assert len(rig.link.to_backend()) == 1


def test_without_qop_a_nonce_serves_one_request(rig):
    challenge = rig.send(sip_request())
    creds = answer(challenge, qop=None)
    rig.send(sip_request(auth=creds, cseq=2))
    assert len(rig.link.to_backend()) == 1
    assert rig.send(sip_request(auth=creds, cseq=3)).status == 401


def test_an_expired_nonce_is_rechallenged_with_stale_true(rig):
    challenge = rig.send(sip_request())
    rig.clock.advance(301)
    reply = rig.send(sip_request(auth=answer(challenge), cseq=2))
    assert reply.status == 401
    assert challenges(reply, "WWW-Authenticate")[0].params["stale"] == "TRUE"
    assert rig.stat("stale") == 1 and rig.stat("failed") == 0
    rig.send(sip_request(auth=answer(reply), cseq=3))
    assert len(rig.link.to_backend()) == 1


def test_a_nonce_just_inside_its_lifetime_is_accepted(rig):
    challenge = rig.send(sip_request())
    rig.clock.advance(299)
    rig.send(sip_request(auth=answer(challenge), cseq=2))
    assert len(rig.link.to_backend()) == 1


def test_a_nonce_answered_to_another_process_with_the_same_secret_is_rechallenged_stale():
    """Another worker (or node) sharing the secret knows the nonce is sipgw's but not its
    count: it answers stale=true (the phone re-answers, no password prompt) and never lets
    the request through; a stranger's secret gets a plain challenge."""
    node_a, node_b, stranger = Rig(), Rig(), Rig(secret=b"x" * 32)
    challenge = node_a.send(sip_request())
    credentials = answer(challenge)
    reply = node_b.send(sip_request(auth=credentials, cseq=2))
    assert reply.status == 401 and node_b.link.to_backend() == []
    assert challenges(reply, "WWW-Authenticate")[0].params.get("stale", "").lower() == "true"
    assert node_b.stat("stale") == 1
    node_b.send(sip_request(auth=answer(reply), cseq=3))  # its own nonce: accepted
    assert len(node_b.link.to_backend()) == 1
    node_a.send(sip_request(auth=credentials, cseq=2))  # the issuer accepts it, once
    assert len(node_a.link.to_backend()) == 1
    assert node_a.send(sip_request(auth=credentials, cseq=2, branch="z9hG4bKreplay")).status == 401
    reply = stranger.send(sip_request(auth=credentials, cseq=2))
    assert reply.status == 401 and "stale" not in challenges(reply, "WWW-Authenticate")[0].params


# --- brute force -------------------------------------------------------------------------


def fail_once(rig: Rig, user: str = "5001", source: Source = PHONE):
    challenge = rig.send(sip_request(user=user), source)
    return rig.send(sip_request(user=user, cseq=2, auth=answer(challenge, user=user,
                                                               password="guess")), source)


def test_a_user_is_banned_403_after_three_failures_and_free_again_after_the_ban_time(rig):
    for _ in range(3):
        assert fail_once(rig).status == 401
    assert rig.send(sip_request()).status == 403
    assert rig.stat("banned") == 1
    assert rig.auth.rpc_bans()["BANS"] == [{"TYPE": "user", "NAME": "5001@sipgw.test",
                                            "EXPIRES": 900}]
    # Another user from the same address is not affected.
    assert rig.send(sip_request(user="5002")).status == 401
    rig.clock.advance(901)
    register_ok(rig)


def test_failures_spread_beyond_the_window_do_not_ban(rig):
    for _ in range(4):
        fail_once(rig)
        rig.clock.advance(200)
    assert rig.send(sip_request()).status == 401


def test_a_source_is_banned_only_after_twenty_failures_across_users(rig):
    for i in range(19):
        fail_once(rig, user=f"u{i}")
    assert rig.send(sip_request(user="5002")).status == 401
    fail_once(rig, user="u19")
    assert rig.send(sip_request(user="5002")).status == 403
    assert rig.auth.rpc_unban("192.0.2.10") == {"REMOVED": 1}
    assert rig.send(sip_request(user="5002")).status == 401


def warnings_of(logs) -> list[str]:
    return [formatEvent(e) for e in logs if e.get("log_namespace") == "sipgw.auth"
            and e["log_level"] is LogLevel.warn]


def test_a_ban_is_logged_at_warning_when_it_starts_and_by_its_timer_when_it_ends(rig):
    with capturedLogs() as logs:
        for _ in range(3):
            fail_once(rig)
        assert warnings_of(logs) == [
            "auth: user 5001@sipgw.test banned for 900 s after 3 failed authentications in "
            "0 s (the last from 192.0.2.10); requests refused 403 until then (sipgw ctl "
            "auth.unban 5001@sipgw.test lifts it)"]
        rig.clock.advance(899)
        assert len(warnings_of(logs)) == 1
        rig.clock.advance(1)  # no request needed: the end is told when it comes
        assert warnings_of(logs)[1:] == [
            "auth: ban of user 5001@sipgw.test ended: its 900 s are over"]
    assert rig.auth.rpc_bans() == {"BANS": []}
    register_ok(rig)


def test_a_source_ban_names_the_address_and_its_lifting_is_logged(rig):
    with capturedLogs() as logs:
        for i in range(20):
            fail_once(rig, user=f"u{i}")
        started = [w for w in warnings_of(logs) if "address" in w]
        assert started == [
            "auth: address 192.0.2.10 banned for 900 s after 20 failed authentications in "
            "0 s (the last for u19@sipgw.test); requests refused 403 until then (sipgw ctl "
            "auth.unban 192.0.2.10 lifts it)"]
        rig.clock.advance(100)
        rig.auth.rpc_unban("192.0.2.10")
        assert warnings_of(logs)[-1] == ("auth: ban of address 192.0.2.10 lifted "
                                         "(auth.unban) 800 s early")
        rig.clock.advance(800)  # its timer was cancelled with it: no second end
        assert sum("192.0.2.10 ended" in w for w in warnings_of(logs)) == 0
        for _ in range(3):
            fail_once(rig, user="5002")
        rig.auth.rpc_unban("all")  # one line, however many
        assert warnings_of(logs)[-1] == "auth: every ban lifted (auth.unban all): 1 of them"


def test_a_trusted_network_is_neither_challenged_nor_banned():
    rig = Rig(auth={"trusted": (ipaddress.ip_network("192.0.2.0/24"),)})
    rig.send(sip_request("INVITE"))
    assert len(rig.link.to_backend()) == 1
    assert rig.stat("challenged") == 0


def test_requests_from_the_backend_are_not_challenged(rig):
    rig.send(sip_request("INVITE", ruri="sip:5001@192.0.2.10:5070"), BACKEND_SRC)
    assert rig.stat("challenged") == 0
    assert [d.port for m, d in rig.link.sent if getattr(m, "method", None) == "INVITE"] == [5070]


# --- no open relay -----------------------------------------------------------------------


def test_foreign_from_and_foreign_request_uri_are_refused_not_relaying(rig):
    reply = rig.send(sip_request("INVITE", domain="evil.example",
                                 ruri="sip:victim@elsewhere.example"))
    assert (reply.status, reply.reason) == (403, "Not relaying")
    assert rig.stat("challenged") == 0


def test_a_foreign_request_uri_from_our_domain_is_challenged_not_relayed(rig):
    reply = rig.send(sip_request("INVITE", ruri="sip:0044123@pstn.example"))
    assert reply.status == 407 and rig.link.to_backend() == []


def infos_of(logs) -> list[str]:
    return [formatEvent(e) for e in logs if e.get("log_namespace") == "sipgw.auth"
            and e["log_level"] is LogLevel.info]


def store_domain_rig() -> Rig:
    """The embedded default: no auth.realm, no aliases; 5001 added for example.com."""
    rig = Rig(auth={"realm": ""})
    rig.store.records[("5001", "example.com")] = make_subscriber("5001", "example.com", "pw")
    return rig


def test_a_preloaded_route_to_another_host_gets_403_not_relaying_and_a_line_saying_so(rig):
    with capturedLogs() as logs:
        reply = rig.send(sip_request("INVITE", ruri="sip:5002@sipgw.test",
                                     extra="Route: <sip:192.0.2.99;lr>\r\n"))
    assert (reply.status, reply.reason) == (403, "Not relaying")
    assert [formatEvent(e) for e in logs if e.get("log_namespace") == "sipgw.router"] == [
        "INVITE from udp:192.0.2.10:5070: 403 Not relaying: its Route <sip:192.0.2.99;lr> "
        "names another host than sipgw"]


def test_without_a_realm_a_domain_with_users_in_the_store_is_ours_and_registers():
    rig = store_domain_rig()
    register = dict(domain="example.com", ruri="sip:example.com")
    challenge = rig.send(sip_request(**register))
    assert challenge.status == 401
    assert challenges(challenge, "WWW-Authenticate")[0].params["realm"] == "example.com"
    rig.send(sip_request(**register, cseq=2,
                         auth=answer(challenge, password="pw", uri="sip:example.com")))
    assert [m.method for m in rig.link.to_backend()] == ["REGISTER"]


def test_a_foreign_domain_gets_403_not_relaying_and_why_is_logged_at_info_once_per_interval():
    rig = store_domain_rig()
    foreign = dict(domain="evil.example", ruri="sip:victim@elsewhere.example")
    with capturedLogs() as logs:
        for _ in range(3):
            reply = rig.send(sip_request("INVITE", **foreign))
            assert (reply.status, reply.reason) == (403, "Not relaying")
        assert infos_of(logs) == [
            "auth: 403 Not relaying INVITE from 192.0.2.10:5070: neither the From domain "
            "evil.example nor the Request-URI sip:victim@elsewhere.example is ours "
            "(auth.realm, proxy.aliases, sipgw's own addresses, or a domain with users in "
            "the subscriber store)"]
        rig.clock.advance(10)
        rig.send(sip_request("INVITE", **foreign))
        assert infos_of(logs)[-1].endswith("(2 more since the last line)")
    assert rig.stat("challenged") == 0 and rig.link.to_backend() == []


def test_a_call_from_outside_to_a_user_of_a_store_domain_is_challenged_not_refused():
    rig = store_domain_rig()
    reply = rig.send(sip_request("INVITE", domain="elsewhere.example",
                                 ruri="sip:5001@example.com"))
    assert reply.status == 407


def test_a_user_added_to_a_new_domain_works_within_seconds_and_a_flood_asks_the_store_once():
    rig = store_domain_rig()
    new = dict(domain="new.example", ruri="sip:new.example")
    for _ in range(50):
        assert rig.send(sip_request(**new)).reason == "Not relaying"
    assert rig.store.domain_lookups == 1
    rig.store.records[("7001", "new.example")] = make_subscriber("7001", "new.example", "pw")
    assert rig.send(sip_request(**new)).reason == "Not relaying"  # the no is remembered...
    rig.clock.advance(5)
    assert rig.send(sip_request(**new)).status == 401  # ...for 5 s
    for _ in range(50):
        assert rig.send(sip_request(**new)).status == 401
    assert rig.store.domain_lookups == 2


def test_lookups_of_one_domain_in_flight_are_one_and_each_request_is_answered():
    rig = store_domain_rig()
    rig.store.hold = True
    rig.send(sip_request(domain="example.com", ruri="sip:example.com"))
    rig.proxy.receive(sip_request(domain="example.com", ruri="sip:example.com"), PHONE)
    assert rig.link.sent == [] and rig.store.domain_lookups == 1
    rig.store.release()
    assert [m.status for m, _ in rig.link.sent] == [401, 401]


def test_a_domain_lookup_in_a_store_that_is_down_gets_503_at_once():
    rig = store_domain_rig()
    rig.store.down = StoreUnavailable("redis down")
    reply = rig.send(sip_request(domain="example.com", ruri="sip:example.com"))
    assert (reply.status, reply.header("retry-after")) == (503, "5")


# --- in dialog ---------------------------------------------------------------------------


def test_an_in_dialog_request_through_our_record_route_is_not_rechallenged(rig):
    bye = sip_request("BYE", ruri="sip:5002@127.0.0.1:5080", to_tag="t1",
                      extra=our_route(rig.proxy, "c1@192.0.2.10", "f1"))
    rig.send(bye)
    assert [m.method for m in rig.link.to_backend()] == ["BYE"]
    assert rig.stat("challenged") == 0


# --- the store ---------------------------------------------------------------------------


def test_an_unreachable_store_gets_503_with_retry_after_at_once(rig):
    challenge = rig.send(sip_request())
    rig.store.down = StoreUnavailable("redis down")
    reply = rig.send(sip_request(auth=answer(challenge), cseq=2))
    assert (reply.status, reply.header("retry-after")) == (503, "5")


def test_a_failing_store_gets_500(rig):
    challenge = rig.send(sip_request())
    rig.store.down = StoreError("corrupt record")
    assert rig.send(sip_request(auth=answer(challenge), cseq=2)).status == 500


def test_retransmissions_during_a_slow_lookup_are_absorbed_and_answered_once(rig):
    challenge = rig.send(sip_request())
    rig.store.hold = True
    data = sip_request(auth=answer(challenge), cseq=2, branch="z9hG4bKslow")
    rig.send(data)
    rig.proxy.receive(data, PHONE)
    assert rig.store.lookups == 1 and rig.link.to_backend() == []
    rig.store.release()
    assert len(rig.link.to_backend()) == 1


def test_an_invite_cancelled_during_its_lookup_gets_487_and_is_never_relayed(rig):
    challenge = rig.send(sip_request("INVITE"))
    rig.store.hold = True
    invite = sip_request("INVITE", auth=answer(challenge, method="INVITE"), cseq=2,
                         branch="z9hG4bKc1")
    rig.send(invite)
    cancel = (invite.decode().replace("INVITE sip", "CANCEL sip", 1)
              .replace("2 INVITE", "2 CANCEL")).encode()
    rig.proxy.receive(cancel, PHONE)
    rig.store.release()
    statuses = [m.status for m, _ in rig.link.sent if hasattr(m, "status")]
    assert 487 in statuses and rig.link.to_backend() == []


def test_a_browser_over_websocket_is_challenged_and_authenticated_like_any_phone(rig):
    """JsSIP's REGISTER over a WebSocket flow; JsSIP keeps the last challenge and knows
    only MD5."""
    browser = Source(transport="ws", host="192.0.2.20", port=50000, local_host="127.0.0.1",
                     local_port=8080, flow_id=7)
    jssip = dict(extra="Supported: path,gruu,outbound\r\n")
    rig.link.clear()
    rig.proxy.receive(sip_request(**jssip).replace(b"UDP 192.0.2.10:5070", b"WS abc.invalid"),
                      browser)
    challenge = rig.link.last_reply()
    assert challenge.status == 401
    assert challenges(challenge, "WWW-Authenticate")[-1].params["algorithm"] == "MD5"
    assert [d.flow_id for _, d in rig.link.sent] == [7]
    rig.link.clear()
    rig.proxy.receive(sip_request(auth=answer(challenge), cseq=2, **jssip)
                      .replace(b"UDP 192.0.2.10:5070", b"WS abc.invalid"), browser)
    [fwd] = rig.link.to_backend()
    assert fwd.method == "REGISTER" and not fwd.has("authorization")


def test_bans_are_listed_and_lifted_over_the_control_plane(rig):
    from sipgw.proxy.control import owners_in
    from sipgw.rpc.registry import RpcError, methods_of

    methods = methods_of(*owners_in(rig.proxy))
    for _ in range(3):
        fail_once(rig)
    [ban] = methods["auth.bans"].handler()["BANS"]
    assert (ban["TYPE"], ban["NAME"]) == ("user", "5001@sipgw.test")
    assert methods["auth.unban"].handler("all") == {"REMOVED": 1}
    assert methods["auth.bans"].handler() == {"BANS": []}
    with pytest.raises(RpcError):
        methods["auth.unban"].handler("")
    register_ok(rig)


def test_a_reload_applies_new_limits_and_keeps_nonces_and_bans(rig):
    challenge = rig.send(sip_request())
    fail_once(rig, user="5002")
    rig.reload(auth={"max_failures_user": 2})
    fail_once(rig, user="5002")
    assert rig.send(sip_request(user="5002")).status == 403  # two failures now ban
    rig.send(sip_request(auth=answer(challenge), cseq=2))  # a nonce from before the reload
    assert len(rig.link.to_backend()) == 1


@pytest.mark.parametrize("transport", ["ws", "tcp"])
def test_a_client_whose_address_and_port_are_the_backends_over_another_transport_is_a_client(
    rig, transport
):
    """Behind nginx on the backend's host, a browser's source is nginx's address (X-Real-IP)
    and nginx's port, which may well be the number of the backend's UDP port; a TCP phone
    on that host may connect from it. Neither is the backend (Kamailio's ds_is_from_list
    matches the protocol too): each is challenged like any phone, and its REGISTER for our
    domain goes to the backend, never towards the domain's name."""
    client = Source(transport=transport, host=BACKEND.host, port=BACKEND.port,
                    local_host="127.0.0.1", local_port=8080, flow_id=9)
    via = b"WS abc.invalid" if transport == "ws" else b"TCP 127.0.0.1:5080"
    register = sip_request(ruri=f"sip:{REALM}").replace(b"UDP 192.0.2.10:5070", via)
    rig.link.clear()
    rig.proxy.receive(register, client)
    sent = [(getattr(m, "status", None) or m.method, d.host, d.flow_id) for m, d in rig.link.sent]
    assert sent == [(401, BACKEND.host, 9)]
    challenge = rig.link.last_reply()
    rig.link.clear()
    rig.proxy.receive(sip_request(ruri=f"sip:{REALM}", cseq=2,
                                  auth=answer(challenge, uri=f"sip:{REALM}"))
                      .replace(b"UDP 192.0.2.10:5070", via), client)
    [(fwd, dest)] = rig.link.sent
    assert fwd.method == "REGISTER" and dest == BACKEND
