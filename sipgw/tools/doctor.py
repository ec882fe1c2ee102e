"""``sipgw doctor``: the troubleshooting section of the Kamailio guide as checks.

Each check returns ``Check(name, status, detail, fix)`` with status ``pass``, ``warn`` or
``fail``; ``fix`` says what to do when it is not ``pass``. The checks run in order and
later ones use what earlier ones found (the config, the control socket).

Checks today: the config file is valid; the control socket answers; each UDP/TCP listener
answers an OPTIONS to sipgw itself; each ws/wss listener completes the handshake with the
``sip`` subprotocol (wss through TLS, its served certificate in date); each public URL
(``websocket.public_urls``, through nginx) too, and sipgw records the client's own address
for it, neither nginx's nor one the client made up; trusted proxies are neither everyone
nor missing in front of loopback listeners; each backend answers OPTIONS (with its latency)
and is active in the dispatcher, and can reach the address sipgw writes in Path and
Record-Route toward it (this host's on the route to it, and listened on); the TLS
certificate is readable, valid (days left) and names the advertised host; the subscriber
store answers (Redis PING, SQLite table), keeps no plaintext password, and (SQLite) is a
file only its owner can read; with the store in Redis (several nodes possible), the nonce
and route secrets come from the config, not a key of this machine.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import socket
import sqlite3
import ssl
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sipgw.config.redis_url import is_redis_url, mask_url
from sipgw.proxy.signing import KEY_FILE
from sipgw.proxy.transport import in_networks, route_source
from sipgw.rpc.client import Client, RemoteError, Unreachable, find_socket
from sipgw.sip.hostport import join_hostport, split_hostport
from sipgw.tools.options import NoAnswer, ping
from sipgw.tools.storecheck import (
    RedisRefused,
    StoreAccess,
    open_sqlite,
    read_record,
    redis_plaintext,
    replication,
    sqlite_plaintext,
)
from sipgw.tools.wscheck import Handshake, HandshakeFailed, ws_session

if TYPE_CHECKING:
    from sipgw.config import Config

PASS, WARN, FAIL = "pass", "warn", "fail"
WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
# TEST-NET-1 (RFC 5737): an address no real client has, claimed to see whether it is believed.
SPOOFED = "192.0.2.99"
SHOW_USERS = 10  # users named in a warning; the rest are counted
REPLICA_LAG = 10  # seconds since a replica last acknowledged, beyond which it is behind


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail,
                "fix": self.fix}


class Doctor:
    def __init__(self, config_path: str | None, *, timeout: float = 2.0,
                 user: str | None = None, domain: str | None = None,
                 password: str | None = None) -> None:
        self.config_path = config_path
        self.timeout = timeout
        self.user = user
        self.domain = domain
        self.password = password
        self._config: Config | None = None
        self.client: Client | None = None

    @property
    def config(self) -> Config:
        """The config check_config loaded; the other checks run only once it has."""
        assert self._config is not None
        return self._config

    def run(self) -> Iterator[Check]:
        yield self.check_config()
        if self._config is None:
            return
        yield self.check_control()
        yield from self.check_listeners()
        yield from self.check_websocket()
        yield from self.check_backends()
        yield from self.check_path_address()
        yield from self.check_certificate()
        yield from self.check_store()
        if self.user:
            yield from self.check_user()
        yield from self.check_cluster_secrets()
        if self.client is not None:
            self.client.close()

    # -- the checks -------------------------------------------------------------------

    def check_config(self) -> Check:
        from sipgw.config import ConfigError, load_config

        shown = self.config_path or "embedded default config"
        try:
            self._config = load_config(self.config_path).config
        except ConfigError as e:
            return Check(name="config", status=FAIL, detail=str(e),
                         fix="correct the file at the line named; sipgw serve --check -c FILE "
                             "checks it again")
        return Check(name="config", status=PASS, detail=f"{shown} is valid")

    def check_control(self) -> Check:
        c = self.config.control
        path = find_socket(c.socket, self.config.state.directory)
        try:
            self.client = Client(path, timeout=self.timeout * 2)
            version = self.client.call("core.version")
        except Unreachable as e:
            self.client = None
            return Check(name="control socket", status=FAIL, detail=f"{path}: {e.why}",
                         fix=f"start the proxy (systemctl start sipgw); {e.hint}")
        except (RemoteError, TimeoutError) as e:
            self.client = None
            return Check(name="control socket", status=FAIL, detail=f"{path}: {e}",
                         fix="the proxy is stuck or not sipgw: look at journalctl -u sipgw")
        return Check(name="control socket", status=PASS, detail=f"{version} answers on {path}")

    def check_listeners(self) -> Iterator[Check]:
        for transport in ("udp", "tcp"):
            for addr in getattr(self.config.listen, transport):
                uri = f"sip:{_reachable(addr)};transport={transport}"
                name = f"listener {transport}:{addr}"
                try:
                    pong = ping(uri, timeout=self.timeout)
                except NoAnswer as e:
                    yield Check(name=name, status=FAIL,
                                detail=f"OPTIONS to sipgw itself: {e.why}",
                                fix="is sipgw running with this config? ss -lunpt shows who "
                                    f"holds port {addr.port}")
                    continue
                status = PASS if pong.status == 200 else WARN
                yield Check(name=name, status=status,
                            detail=f"OPTIONS to itself: {pong.status} {pong.reason} in "
                                   f"{pong.latency_ms:.1f} ms",
                            fix="" if status == PASS else "sipgw should answer 200 to OPTIONS "
                                                          "for itself: check proxy.aliases")

    def check_websocket(self) -> Iterator[Check]:
        """Each ws/wss listener completes the handshake browsers make (wss through TLS),
        then each public URL (through nginx when it is in front), then the trust given to
        X-Forwarded-For / X-Real-IP."""
        for scheme in ("ws", "wss"):
            for addr in getattr(self.config.listen, scheme):
                url = f"{scheme}://{_reachable(addr)}/"
                name = f"websocket {scheme}:{addr}"
                # The listener is reached by address, not by the name its certificate
                # carries: the certificate check names a wrong host, this one its dates.
                try:
                    with ws_session(url, timeout=self.timeout, verify=False) as hs:
                        yield self._handshake(name, url, hs)
                except HandshakeFailed as e:
                    yield self._unreachable(name, url, e)
        for url in self.config.websocket.public_urls:
            yield from self._public_url(url)
        yield from self.check_trusted_proxies()

    def _handshake(self, name: str, url: str, hs: Handshake) -> Check:
        if not hs.healthy:
            return Check(name=name, status=FAIL,
                         detail=f"{url}: {hs.status} {hs.reason}, subprotocol "
                                f"{hs.protocol or 'none'}",
                         fix="the handshake must return 101 with Sec-WebSocket-Protocol: sip "
                             "(websocket.allowed_origins or allowed_hosts may refuse it; "
                             "through nginx, the Upgrade and Connection headers must be "
                             "passed on, as etc/nginx/sipgw.conf does)")
        tls = f" over {hs.tls_version}" if hs.tls_version else ""
        if hs.certificate is not None:
            from cryptography import x509

            served = x509.load_der_x509_certificate(hs.certificate)
            now = datetime.datetime.now(datetime.UTC)
            if served.not_valid_after_utc < now:
                return Check(name=name, status=FAIL,
                             detail=f"{url}: the certificate it serves "
                                    f"({served.subject.rfc4514_string()}) expired on "
                                    f"{served.not_valid_after_utc:%Y-%m-%d}: browsers refuse "
                                    "to connect",
                             fix="renew it (certbot renew), then systemctl reload sipgw (a "
                                 "renewed file is served only after a reload)")
        return Check(name=name, status=PASS,
                     detail=f"{url}: 101 with subprotocol sip{tls} in {hs.latency_ms:.1f} ms")

    @staticmethod
    def _unreachable(name: str, url: str, e: HandshakeFailed) -> Check:
        return Check(name=name, status=FAIL, detail=f"{url}: {e.why}",
                     fix="browsers cannot connect: is sipgw (or nginx, for a public URL) "
                         "listening there (listen.ws, listen.wss)? a firewall in between?")

    def _public_url(self, url: str) -> Iterator[Check]:
        """The URL browsers use, verified as a browser would; while the connection is open,
        ``ws.dump`` says which client address sipgw recorded for it. The check claims to
        be SPOOFED in X-Forwarded-For: a proxy that passes that on, and a sipgw that
        believes it, let any client dodge the per-address bans and limits."""
        name = f"websocket {url}"
        source = _distinct_source(url)
        before = self._ws_ids()
        try:
            with ws_session(url, timeout=self.timeout, source=source,
                            headers={"X-Forwarded-For": SPOOFED}) as hs:
                check = self._handshake(name, url, hs)
                yield check
                if check.status == PASS and before is not None:
                    yield self._seen_address(url, hs, before)
        except HandshakeFailed as e:
            yield self._unreachable(name, url, e)

    def _ws_ids(self) -> set | None:
        if self.client is None:
            return None
        try:
            return {c.get("id") for c in self.client.call("ws.dump").get("connections", [])}
        except (RemoteError, Unreachable, TimeoutError, AttributeError):
            return None

    def _seen_address(self, url: str, hs: Handshake, before: set) -> Check:
        name = f"client address via {url}"
        ours = hs.local[0] if hs.local else ""
        try:
            # None when the control check failed: the AttributeError is caught below.
            conns = self.client.call("ws.dump").get("connections", [])  # type: ignore[union-attr]
        except (RemoteError, Unreachable, TimeoutError, AttributeError) as e:
            return Check(name=name, status=WARN, detail=f"ws.dump failed: {e}",
                         fix="is the control socket that of the proxy behind this URL?")
        new = [c for c in conns if c.get("id") not in before]
        hosts = [split_hostport(str(c.get("src", "")))[0] for c in new]
        mine = [h for h in hosts if h in (ours, SPOOFED)] or hosts
        if len(mine) != 1:
            return Check(name=name, status=WARN,
                         detail=f"cannot tell this check's connection among {len(mine)} new "
                                "ones in ws.dump (a busy proxy, or another proxy behind the URL)",
                         fix="run sipgw doctor again when fewer browsers connect")
        seen = mine[0]
        trusted = self.config.websocket.trusted_proxies
        if seen == SPOOFED and not in_networks(ours, trusted):
            return Check(name=name, status=FAIL,
                         detail=f"sipgw recorded {SPOOFED}, the address this check made up in "
                                "X-Forwarded-For: any client can pose as any address and "
                                "dodge the bans and per-address limits",
                         fix="nginx must send X-Real-IP $remote_addr and X-Forwarded-For "
                             "$proxy_add_x_forwarded_for (etc/nginx/sipgw.conf), and "
                             "websocket.trusted_proxies list nginx's own address only")
        if seen in (ours, SPOOFED):
            how = "" if seen == ours else f" ({ours} is itself a trusted proxy)"
            return Check(name=name, status=PASS,
                         detail=f"sipgw sees this client as {seen}, its own address{how}")
        return Check(name=name, status=FAIL,
                     detail=f"sipgw sees this client ({ours}) as {seen}: every browser through "
                            f"{url} shares that address for the bans, the per-address limits "
                            "and the logs",
                     fix=f'if {seen} is your nginx, set websocket.trusted_proxies = '
                         f'["{seen}/32"], then systemctl reload sipgw')

    def check_trusted_proxies(self) -> Iterator[Check]:
        """What the config alone says about a reverse proxy in front (nginx)."""
        listeners = [*self.config.listen.ws, *self.config.listen.wss]
        if not listeners:
            return
        name = "trusted proxies"
        trusted = self.config.websocket.trusted_proxies
        everyone = [str(n) for n in trusted if n.prefixlen == 0]
        if everyone:
            yield Check(name=name, status=FAIL,
                        detail=f"websocket.trusted_proxies has {', '.join(everyone)}: every "
                               "client's X-Forwarded-For is believed, so any client can pose "
                               "as any address",
                        fix="list only the addresses of your reverse proxies (nginx), e.g. "
                            '["127.0.0.1/32"]')
            return
        loopback = all(_is_loopback(a.host) for a in listeners)
        if not trusted and loopback:
            yield Check(name=name, status=WARN,
                        detail="the WebSocket listeners are on loopback only, so browsers "
                               "come through a proxy on this host (nginx?), but "
                               "websocket.trusted_proxies is empty: sipgw sees every browser "
                               "as that proxy's address",
                        fix='set websocket.trusted_proxies = ["127.0.0.1/32"] (and '
                            "websocket.public_urls to the URL browsers use)")
            return
        if trusted and not self.config.websocket.public_urls:
            yield Check(name=name, status=WARN,
                        detail=f"websocket.trusted_proxies is {', '.join(map(str, trusted))} "
                               "(a proxy in front), but websocket.public_urls is empty: only "
                               "the listeners were checked, not the URL browsers use",
                        fix='set websocket.public_urls = ["wss://YOUR-HOST/ws"] (the URL '
                            "the phones are given)")
            return
        detail = (f"X-Forwarded-For / X-Real-IP believed from {', '.join(map(str, trusted))}"
                  if trusted else "none: sipgw uses each connection's own address")
        yield Check(name=name, status=PASS, detail=detail)

    def _destinations(self) -> list[tuple[str, str | None]]:
        """(URI, FLAGS) from the running dispatcher, else the config's destinations."""
        if self.client is not None:
            try:
                listing = self.client.call("dispatcher.list")
            except (RemoteError, Unreachable, TimeoutError):
                listing = None
            if isinstance(listing, dict):
                out = []
                for record in listing.get("RECORDS", []) or []:
                    for target in record.get("SET", {}).get("TARGETS", []) or []:
                        dest = target.get("DEST", {})
                        out.append((dest.get("URI"), dest.get("FLAGS")))
                if out:
                    return out
        return [(uri, None) for uri in self.config.dispatcher.destinations]

    def check_backends(self) -> Iterator[Check]:
        for uri, flags in self._destinations():
            name = f"backend {uri}"
            try:
                pong = ping(uri, timeout=self.timeout)
            except (NoAnswer, ValueError) as e:
                yield Check(name=name, status=FAIL,
                            detail=f"OPTIONS: {getattr(e, 'why', e)}",
                            fix="is the backend (Asterisk) running and listening there? "
                                "(asterisk -rx 'pjsip show transports'; ss -lunp)")
                continue
            server = f" ({pong.server})" if pong.server else ""
            detail = f"OPTIONS: {pong.status} {pong.reason} in {pong.latency_ms:.1f} ms{server}"
            if flags and not flags.startswith("A"):
                yield Check(name=name, status=WARN,
                            detail=f"{detail}, but the dispatcher has it as {flags}",
                            fix=f"sipgw ctl dispatcher.set_state ap 1 {uri}, or wait for the "
                                "next probe (dispatcher.ping_interval)")
                continue
            yield Check(name=name, status=PASS, detail=detail)

    def check_path_address(self) -> Iterator[Check]:
        """This node's address in Path and Record-Route, reachable from each backend: the
        one the running sipgw writes toward it (``core.info`` ``toward_backends``, one per
        worker) is an address of this host, on the kernel's route to that backend (not
        loopback toward a remote one), and a socket listens there."""
        if self.client is None:
            return  # the control check said why
        try:
            toward = self.client.call("core.info").get("toward_backends")
        except (RemoteError, Unreachable, TimeoutError, AttributeError):
            return
        if not toward:
            return  # a sipgw from before toward_backends
        for uri, _ in self._destinations():
            yield self._path_address(uri, toward)

    def _path_address(self, uri: str, toward: list[str]) -> Check:
        from sipgw.proxy.dispatcher.build import resolve_uri

        name = f"path address toward {uri}"
        try:
            dest = resolve_uri(uri)
        except ValueError as e:
            return Check(name=name, status=WARN, detail=str(e),
                         fix="the dispatcher cannot reach it either: correct the destination")
        written = [split_hostport(a.split(":", 1)[1]) for a in toward
                   if a.startswith(f"{dest.transport}:")]
        source = route_source(dest.host)
        shown = ", ".join(join_hostport(h, p or 0) for h, p in written)
        for host, port in written:
            problem = _unreachable_address(dest.host, dest.transport, host, port or 0, source,
                                           self.timeout)
            if problem is not None:
                status, why, fix = problem
                return Check(name=name, status=status,
                             detail=f"sipgw writes {join_hostport(host, port or 0)} in Path and "
                                    f"Record-Route toward {dest.host}: {why}", fix=fix)
        return Check(name=name, status=PASS,
                     detail=f"{shown} in Path and Record-Route: this host's, on its route to "
                            f"{dest.host}, and sipgw listens there")

    def check_certificate(self, now: float | None = None) -> Iterator[Check]:
        """tls.certificate: readable, in its validity period (days left), names our host."""
        path = self.config.tls.certificate
        if not path:
            return
        from cryptography import x509

        name = "tls certificate"
        try:
            with open(path, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
        except (OSError, ValueError) as e:
            yield Check(name=name, status=FAIL, detail=f"{path}: cannot read it: {e}",
                        fix="tls.certificate must name a readable PEM file (the full chain)")
            return
        when = datetime.datetime.fromtimestamp(
            now if now is not None else datetime.datetime.now().timestamp(),
            datetime.UTC)
        days = (cert.not_valid_after_utc - when).total_seconds() / 86400
        subject = cert.subject.rfc4514_string()
        if when < cert.not_valid_before_utc:
            yield Check(name=name, status=FAIL, detail=f"{path} ({subject}) is not valid "
                        f"before {cert.not_valid_before_utc:%Y-%m-%d}",
                        fix="check the clock, or install the certificate when it is valid")
            return
        if days < 0:
            yield Check(name=name, status=FAIL,
                        detail=f"{path} ({subject}) expired on "
                               f"{cert.not_valid_after_utc:%Y-%m-%d} ({-days:.0f} days ago)",
                        fix="renew it (certbot renew), then systemctl reload sipgw")
            return
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = set(names.get_values_for_type(x509.DNSName))
            ips = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
        except x509.ExtensionNotFound:
            dns, ips = set(), set()
        advertise = self.config.listen.advertise
        host = advertise.host if advertise is not None else None
        if host is not None and not _names_host(host, dns, ips):
            yield Check(name=name, status=FAIL,
                        detail=f"{path} ({subject}) does not name {host} "
                               f"(names: {', '.join(sorted(dns | ips)) or 'none'})",
                        fix="browsers refuse wss:// to a host the certificate does not name: "
                            "get one for that host, or set listen.advertise to a name it has")
            return
        status = WARN if days < 14 else PASS
        yield Check(name=name, status=status,
                    detail=f"{path} ({subject}) valid for {days:.0f} more days",
                    fix="renew it soon (certbot renew)" if status == WARN else "")

    def check_store(self) -> Iterator[Check]:
        """The subscriber store answers: Redis a PING (after AUTH and SELECT; through
        Sentinel, the master it names, with its replicas), SQLite opens with its subscriber
        table; then no record in it keeps a plaintext password."""
        s = self.config.subscribers
        url, template = s.url, s.key_template
        if is_redis_url(url):
            access = StoreAccess(url, self.timeout, tls_ca_file=s.tls_ca_file,
                                 sentinel_password=s.sentinel_password)
            master = None
            if access.url.sentinel:
                check, master = self._check_sentinels(access)
                yield check
                if master is None:
                    return
            try:
                link = access.link(master)
            except OSError as e:
                yield self._redis_down(access, e, master)
                return
            with link:
                try:
                    link.call("PING")
                    info = replication(link) if master is not None else {}
                except OSError as e:
                    yield self._redis_down(access, e, master)
                    return
                yield Check(name="subscriber store", status=PASS, detail=f"{link.shown} "
                            "answers PING")
                if master is not None:
                    yield _replication_check(link.shown, info)
                yield self._plaintext(lambda: redis_plaintext(link, template))
        elif url.startswith("sqlite://"):
            path = url[len("sqlite://"):]
            check = self._check_sqlite(path)
            yield check
            if os.path.exists(path):
                yield _store_mode(path)
            if check.status == PASS:
                yield self._plaintext(lambda: sqlite_plaintext(path, self.timeout))

    def _check_sentinels(self, access: StoreAccess) -> tuple[Check, tuple[str, int] | None]:
        """Which Sentinels answer and the master they name: the one sipgw would use."""
        name, service = "redis sentinels", access.url.service
        answers = access.sentinels()
        up = [a for a in answers if not a.error]
        named = [a for a in up if a.names_a_master]
        silent = "; ".join(f"{a.sentinel}: {a.error}" for a in answers if a.error)
        if not named:
            said = "; ".join(f"{a.sentinel}: {a.error}" if a.error else
                             f"{a.sentinel}: master {_at(a.master)} is down ({a.flags})"
                             for a in answers)
            return Check(name=name, status=FAIL,
                         detail=f"no Sentinel names a master of {service}: {said}",
                         fix="is redis-sentinel running (redis-cli -p 26379 sentinel masters)? "
                             "a wrong subscribers.sentinel_password, or a service name the "
                             "Sentinels do not monitor (sentinel monitor NAME ...), is said "
                             "above; every REGISTER gets 503 meanwhile"), None
        first = named[0]
        masters = {a.master for a in named}
        where = _at(first.master)
        detail = (f"{len(up)} of {len(answers)} Sentinels answer; they name {where} as the "
                  f"master of {service} (quorum {first.quorum}, {first.replicas} replica(s), "
                  f"{first.other_sentinels} other Sentinel(s) known)")
        if len(masters) > 1:
            return Check(name=name, status=WARN,
                         detail=detail + "; but not all agree: " + ", ".join(
                             f"{a.sentinel} names {_at(a.master)}" for a in named),
                         fix="a failover in progress settles within seconds; if not, the "
                             "Sentinels do not see each other (sentinel sentinels "
                             f"{service})"), first.master
        if silent:
            return Check(name=name, status=WARN, detail=f"{detail}; {silent}",
                         fix="start the Sentinels that do not answer: with fewer than the "
                             "quorum up, a failover cannot happen"), first.master
        return Check(name=name, status=PASS, detail=detail), first.master

    def _redis_down(self, access: StoreAccess, e: OSError,
                    master: tuple[str, int] | None = None) -> Check:
        shown = str(access.url) if master is None else \
            f"{join_hostport(*master)} (master of {access.url.service})"
        if isinstance(e, RedisRefused):
            return Check(name="subscriber store", status=FAIL, detail=f"{shown}: {e}",
                         fix="check the user, password and database in subscribers.url")
        if isinstance(e, ssl.SSLError):
            return Check(name="subscriber store", status=FAIL, detail=f"{shown}: {e}",
                         fix="is it a TLS port (tls-port), and is its certificate signed by "
                             "an authority of subscribers.tls_ca_file, for the host dialled?")
        return Check(name="subscriber store", status=FAIL,
                     detail=f"{shown}: {e.strerror or e}",
                     fix="is Redis running and reachable (systemctl status redis-server; "
                         "redis-cli -h HOST -p PORT ping)? every REGISTER fails meanwhile")

    def _plaintext(self, scan) -> Check:
        """The guide keeps HA1 only: a stored password leaks every account with the store."""
        name = "plaintext passwords"
        try:
            found = scan()
        except (OSError, sqlite3.Error) as e:
            return Check(name=name, status=WARN, detail=f"cannot read the whole store: {e}",
                         fix="sipgw users list shows what sipgw can read")
        if not found:
            return Check(name=name, status=PASS,
                         detail="no subscriber record keeps a plaintext password")
        users = [f"{s.username}@{s.domain}" if s.domain else s.username for s in found]
        shown = ", ".join(users[:SHOW_USERS])
        if len(users) > SHOW_USERS:
            shown += f" and {len(users) - SHOW_USERS} more"
        legacy = sum(1 for s in found if s.legacy)
        only = f" ({legacy} with no hash at all)" if legacy else ""
        first = found[0]
        return Check(name=name, status=WARN,
                     detail=f"{len(found)} record(s) keep a plaintext password{only}: {shown}",
                     fix=f"sipgw users passwd USER for each (e.g. sipgw users passwd "
                         f"{first.username}" + (f" --domain {first.domain}" if first.domain
                                                else "") + "): it stores the hashes only")

    def _check_sqlite(self, path: str) -> Check:
        name = "subscriber store"
        if not os.path.exists(path):
            return Check(name=name, status=WARN, detail=f"{path} does not exist yet",
                         fix="add users with sipgw users add USER (it creates the file)")
        try:
            db = open_sqlite(path, self.timeout)
            try:
                (count,) = db.execute("SELECT count(*) FROM subscriber").fetchone()
            finally:
                db.close()
        except sqlite3.Error as e:
            return Check(name=name, status=FAIL, detail=f"{path}: {e}",
                         fix="the file is not a sipgw subscriber store, or not readable by the "
                             "user sipgw runs as")
        return Check(name=name, status=PASS if count else WARN,
                     detail=f"{path}: {count} subscriber(s)",
                     fix="" if count else "add users with sipgw users add USER")

    def check_user(self) -> Iterator[Check]:
        """--user: the subscriber exists, its domain is the realm, its HA1 matches the
        password (--password-stdin), no plaintext password is stored."""
        from sipgw.sip import digest

        assert self.user is not None  # run() checks a user only when given one
        name = f"user {self.user}"
        try:
            s = self.config.subscribers
            record = read_record(s.url, s.key_template, self.user, self.domain, self.timeout,
                                 tls_ca_file=s.tls_ca_file,
                                 sentinel_password=s.sentinel_password)
        except Exception as e:  # the store check above already named why
            yield Check(name=name, status=FAIL, detail=f"cannot read the store: {e}",
                        fix="fix the subscriber store first (see its check)")
            return
        if record is None:
            yield Check(name=name, status=FAIL,
                        detail=f"{self.user} is not in {mask_url(self.config.subscribers.url)}",
                        fix=f"sipgw users add {self.user}"
                            + (f" --domain {self.domain}" if self.domain else ""))
            return
        domain = record.get("domain") or self.domain or ""
        realm = self.config.auth.realm or domain
        yield Check(name=name, status=PASS, detail=f"{self.user}@{domain} exists")
        if self.config.auth.realm and domain != self.config.auth.realm:
            yield Check(name=f"{name} domain", status=FAIL,
                        detail=f"stored for domain {domain}, but auth.realm is "
                               f"{self.config.auth.realm}",
                        fix=f"sipgw users passwd {self.user} --domain {self.config.auth.realm} "
                            "(the HA1 is computed with the realm)")
        if record.get("password"):
            yield Check(name=f"{name} password", status=WARN,
                        detail="a plaintext password is stored",
                        fix=f"sipgw users passwd {self.user} stores HA1 only")
        if self.password is not None:
            stored = record.get("ha1") or ""
            if stored and stored == digest.ha1(self.user, realm, self.password):
                yield Check(name=f"{name} ha1", status=PASS,
                            detail=f"HA1 matches MD5({self.user}:{realm}:password)")
            else:
                yield Check(name=f"{name} ha1", status=FAIL,
                            detail=f"stored HA1 is not MD5({self.user}:{realm}:password): a "
                                   "wrong password, or computed for another realm/domain",
                            fix=f"sipgw users passwd {self.user} --domain {realm}")

    def check_cluster_secrets(self) -> Iterator[Check]:
        """Subscribers in Redis make a cluster possible, and nodes of one must sign and
        check with the same keys: without ``auth.nonce_secret`` or ``proxy.route_secret``
        both keys come from this machine's ``state.directory/route.key``. A warning, not
        a failure: one node on Redis is a valid setup."""
        c = self.config
        if not is_redis_url(c.subscribers.url) or c.auth.nonce_secret or c.proxy.route_secret:
            return
        key = os.path.join(c.state.directory, KEY_FILE)
        yield Check(name="cluster secrets", status=WARN,
                    detail="subscribers in Redis, which several nodes may share, but neither "
                           "auth.nonce_secret nor proxy.route_secret is set: the route signing "
                           f"key and the nonce secret come from {key}, a key of this machine "
                           "alone. Another node would refuse this one's signed Record-Route "
                           "and contact aliases (403 to in-dialog requests that reach it) and "
                           "take its nonces for a stranger's (a new challenge without "
                           "stale=true, which phones take for a wrong password)",
                    fix="alone on Redis, nothing to do; for several nodes, set the same "
                        "auth.nonce_secret and proxy.route_secret on every node (openssl "
                        "rand -hex 32 for each) and restart them")


def _at(address: tuple[str, int] | None) -> str:
    return join_hostport(*address) if address is not None else "?"


def _replication_check(master: str, info: dict[str, str]) -> Check:
    """The master's replicas (``INFO replication``): what a failover could promote."""
    name = "redis replication"
    if info.get("role") != "master":
        return Check(name=name, status=FAIL,
                     detail=f"{master} says it is a {info.get('role', '?')}, not a master",
                     fix="a failover is in progress, or the Sentinels' view is stale: "
                         "redis-cli -p 26379 sentinel masters")
    replicas = [dict(kv.split("=", 1) for kv in value.split(","))
                for key, value in sorted(info.items()) if re.fullmatch(r"slave\d+", key)]
    if not replicas:
        return Check(name=name, status=WARN, detail=f"{master} has no replica",
                     fix="a failover needs a replica to promote (replicaof MASTER PORT on "
                         "another redis-server)")
    shown = ", ".join(f"{join_hostport(r.get('ip', '?'), int(r.get('port', 0)))} "
                      f"{r.get('state', '?')} (lag {r.get('lag', '?')} s)" for r in replicas)
    behind = [r for r in replicas if r.get("state") != "online"
              or int(r.get("lag", "0") or 0) > REPLICA_LAG]
    if behind:
        return Check(name=name, status=WARN, detail=f"{len(replicas)} replica(s): {shown}",
                     fix="a replica not online, or lagging, may lose recent accounts if "
                         "promoted: check its redis log")
    return Check(name=name, status=PASS,
                 detail=f"{len(replicas)} replica(s) in sync: {shown}")


def _unreachable_address(backend: str, transport: str, host: str, port: int,
                         source: str | None, timeout: float) -> tuple[str, str, str] | None:
    """Why a backend could not reach ``host:port``, written in Path and Record-Route toward
    it, with the status and the fix; None when nothing is wrong. ``source``: this host's
    address on the kernel's route to the backend."""
    where = f"set listen.advertise = \"{source}\" (this host's address toward {backend})" \
        if source else f"route {backend} (ip route get {backend})"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return (WARN, f"{host} is a name: the backend must resolve it to this host", where)
    if ip.is_unspecified:
        return (FAIL, "a wildcard address, which no backend can send to", where)
    if ip.is_loopback and not _is_loopback(backend):
        return (FAIL, f"a loopback address, which {backend} cannot reach: answers, in-dialog "
                      "requests and calls to browsers would never come back",
                f"listen on an address {backend} reaches (listen.udp, listen.tcp; with a "
                "wildcard sipgw writes the route's address), or " + where)
    if source is None:
        return (FAIL, f"this host has no route to {backend}", where)
    if not _is_local(host):
        return (WARN, f"{host} is not an address of this host (listen.advertise?): the "
                      "backend reaches this node only through a NAT that sends it here",
                f"if the backends are on this host's network, {where}")
    if host != source and not (ip.is_loopback and _is_loopback(backend)):
        return (WARN, f"this host reaches {backend} from {source}, not from {host}: the backend "
                      f"must route {host} back here", where)
    if not _listened(transport, host, port, timeout):
        return (FAIL, f"nothing listens there over {transport.upper()}: the port is not one "
                      "sipgw listens on",
                "listen.advertise's port must be one of the ports of listen.udp and listen.tcp "
                "(or leave the port out)")
    return None


def _listened(transport: str, host: str, port: int, timeout: float) -> bool:
    """Does a socket of this host listen on ``host:port``? For UDP, one is bound there when
    another cannot be; for TCP and TLS, a connection is accepted. (An OPTIONS would not
    do: a worker answers a non-backend from the public port, which a connected socket
    never hears.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if transport == "udp":
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                return True
        return False
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _is_local(host: str) -> bool:
    """Is ``host`` an address of this host? Only one of its own can be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, 0))
        except OSError:
            return False
    return True


def _store_mode(path: str) -> Check:
    """The store keeps HA1 hashes: as good as the passwords for digest authentication,
    so nobody but its owner (the service user) should read the file or its -wal/-shm."""
    name = "subscriber store file mode"
    files = [f for f in (path, f"{path}-wal", f"{path}-shm") if os.path.exists(f)]
    shown = {f: stat.S_IMODE(os.stat(f).st_mode) for f in files}
    readable = [f for f, mode in shown.items() if mode & 0o044]
    if not readable:
        return Check(name=name, status=PASS,
                     detail=f"{path} is {shown[path]:04o}: only its owner reads it")
    who = {0o040: "its group", 0o004: "everyone", 0o044: "its group and everyone"}
    mode = shown[readable[0]]
    return Check(name=name, status=WARN,
                 detail=f"{readable[0]} is {mode:04o}: {who[mode & 0o044]} can read the HA1 "
                        "hashes in it, as good as the passwords for digest authentication",
                 fix=f"chmod 600 {' '.join(readable)} (sipgw creates it 0600)")


def _reachable(addr) -> str:
    """host:port where the doctor reaches a listener: loopback for a wildcard address."""
    host = WILDCARD.get(addr.host, addr.host)
    return f"[{host}]:{addr.port}" if ":" in host else f"{host}:{addr.port}"


def _distinct_source(url: str) -> str | None:
    """A loopback source address other than the URL's host, so that the client address a
    local nginx forwards (ours) differs from nginx's own: both would be 127.0.0.1."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or (_is_loopback(host) and "." in host):
        return "127.0.0.3" if host == "127.0.0.2" else "127.0.0.2"
    return None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _names_host(host: str, dns: set[str], ips: set[str]) -> bool:
    try:
        return str(ipaddress.ip_address(host)) in ips
    except ValueError:
        pass
    host = host.lower().rstrip(".")
    for name in dns:
        name = name.lower().rstrip(".")
        if name == host or (name.startswith("*.") and host.split(".", 1)[-1] == name[2:]):
            return True
    return False


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


def summary(checks: list[Check]) -> dict[str, Any]:
    return {s: sum(1 for c in checks if c.status == s) for s in (PASS, WARN, FAIL)}
