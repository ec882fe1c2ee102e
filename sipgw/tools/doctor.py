"""``sipgw doctor``: the troubleshooting section of the Kamailio guide as checks.

Each check returns ``Check(name, status, detail, fix)`` with status ``pass``, ``warn`` or
``fail``; ``fix`` says what to do when it is not ``pass``. The checks run in order and
later ones use what earlier ones found (the config, the control socket).

Checks today: the config file is valid; the control socket answers; each UDP/TCP listener
answers an OPTIONS to sipgw itself; each WebSocket listener completes the handshake with
the ``sip`` subprotocol; each backend answers OPTIONS (with its latency) and is active in
the dispatcher; the TLS certificate is readable, valid (days left) and names the advertised
host; the subscriber store answers (Redis PING, SQLite table); a nonce secret is set when
the subscriber store is a shared Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sipgw.rpc.client import Client, RemoteError, Unreachable, find_socket
from sipgw.tools.options import NoAnswer, ping
from sipgw.tools.wscheck import HandshakeFailed, ws_check

PASS, WARN, FAIL = "pass", "warn", "fail"
WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


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
        self.config = None
        self.client: Client | None = None

    def run(self) -> Iterator[Check]:
        yield self.check_config()
        if self.config is None:
            return
        yield self.check_control()
        yield from self.check_listeners()
        yield from self.check_websocket()
        yield from self.check_backends()
        yield from self.check_certificate()
        yield from self.check_store()
        if self.user:
            yield from self.check_user()
        yield from self.check_nonce_secret()
        if self.client is not None:
            self.client.close()

    # -- the checks -------------------------------------------------------------------

    def check_config(self) -> Check:
        from sipgw.proxy.config import ConfigError, load_config

        shown = self.config_path or "embedded default config"
        try:
            self.config = load_config(self.config_path).config
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
                host = WILDCARD.get(addr.host, addr.host)
                shown = f"[{host}]" if ":" in host else host
                uri = f"sip:{shown}:{addr.port};transport={transport}"
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
        for addr in self.config.listen.ws:
            host = WILDCARD.get(addr.host, addr.host)
            shown = f"[{host}]" if ":" in host else host
            url = f"ws://{shown}:{addr.port}/"
            name = f"websocket ws:{addr}"
            try:
                hs = ws_check(url, timeout=self.timeout)
            except HandshakeFailed as e:
                yield Check(name=name, status=FAIL, detail=f"{url}: {e.why}",
                            fix="browsers cannot connect: is sipgw listening there (listen.ws)? "
                                "a firewall in between?")
                continue
            if hs.healthy:
                yield Check(name=name, status=PASS,
                            detail=f"{url}: 101 with subprotocol sip in {hs.latency_ms:.1f} ms")
            else:
                yield Check(name=name, status=FAIL,
                            detail=f"{url}: {hs.status} {hs.reason}, subprotocol "
                                   f"{hs.protocol or 'none'}",
                            fix="the handshake must return 101 with Sec-WebSocket-Protocol: "
                                "sip (websocket.allowed_origins may refuse the Origin)")

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

    def check_certificate(self, now: float | None = None) -> Iterator[Check]:
        """tls.certificate: readable, in its validity period (days left), names our host."""
        path = self.config.tls.certificate
        if not path:
            return
        import datetime
        import ipaddress

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
            datetime.timezone.utc)
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
        if host is not None and not _names_host(host, dns, ips, ipaddress):
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
        """The subscriber store answers: Redis a PING (after AUTH and SELECT), SQLite opens
        with its subscriber table."""
        url = self.config.subscribers.url
        if url.startswith("redis://"):
            yield self._check_redis(url)
        elif url.startswith("sqlite://"):
            yield self._check_sqlite(url[len("sqlite://"):])

    def _check_redis(self, url: str) -> Check:
        import socket
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        shown = f"redis://{host}:{port}{parts.path}"
        name = "subscriber store"
        commands = []
        if parts.password:
            commands.append(["AUTH", *([parts.username] if parts.username else []),
                             parts.password])
        if parts.path.strip("/"):
            commands.append(["SELECT", parts.path.strip("/")])
        commands.append(["PING"])
        try:
            with socket.create_connection((host, port), timeout=self.timeout) as s:
                s.settimeout(self.timeout)
                reader = s.makefile("rb")
                for command in commands:
                    s.sendall(_resp(command))
                    line = reader.readline().decode("latin-1").strip()
                    if not line.startswith("+"):
                        return Check(name=name, status=FAIL,
                                     detail=f"{shown}: {command[0]} answered {line or 'nothing'}",
                                     fix="check the password and database in subscribers.url")
        except OSError as e:
            return Check(name=name, status=FAIL,
                         detail=f"{shown}: {e.strerror or e}",
                         fix="is Redis running and reachable (systemctl status redis-server; "
                             "redis-cli -h HOST -p PORT ping)? every REGISTER fails meanwhile")
        return Check(name=name, status=PASS, detail=f"{shown} answers PING")

    def _check_sqlite(self, path: str) -> Check:
        import os
        import sqlite3

        name = "subscriber store"
        if not os.path.exists(path):
            return Check(name=name, status=WARN, detail=f"{path} does not exist yet",
                         fix="add users with sipgw users add USER (it creates the file)")
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=self.timeout)
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

    def _record(self) -> dict[str, str] | None:
        """The user's stored fields (OSError/sqlite3.Error when the store fails)."""
        url = self.config.subscribers.url
        if url.startswith("sqlite://"):
            import sqlite3

            db = sqlite3.connect(f"file:{url[len('sqlite://'):]}?mode=ro", uri=True,
                                 timeout=self.timeout)
            try:
                db.row_factory = sqlite3.Row
                query = "SELECT * FROM subscriber WHERE username = ?"
                args: tuple = (self.user,)
                if self.domain:
                    query += " AND domain = ?"
                    args += (self.domain,)
                row = db.execute(query, args).fetchone()
            finally:
                db.close()
            return dict(row) if row else None
        import socket
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        key = self.config.subscribers.key_template.format(username=self.user,
                                                          domain=self.domain or "")
        commands = []
        if parts.password:
            commands.append(["AUTH", *([parts.username] if parts.username else []),
                             parts.password])
        if parts.path.strip("/"):
            commands.append(["SELECT", parts.path.strip("/")])
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379),
                                      timeout=self.timeout) as sock:
            reader = sock.makefile("rb")
            for command in commands:
                sock.sendall(_resp(command))
                reader.readline()
            sock.sendall(_resp(["HGETALL", key]))
            items = _read_resp(reader)
        if not items:
            return None
        record = dict(zip(items[::2], items[1::2]))
        record.setdefault("username", self.user)
        return record

    def check_user(self) -> Iterator[Check]:
        """--user: the subscriber exists, its domain is the realm, its HA1 matches the
        password (--password-stdin), no plaintext password is stored."""
        from sipgw.sip import digest

        name = f"user {self.user}"
        try:
            record = self._record()
        except Exception as e:  # the store check above already named why
            yield Check(name=name, status=FAIL, detail=f"cannot read the store: {e}",
                        fix="fix the subscriber store first (see its check)")
            return
        if record is None:
            yield Check(name=name, status=FAIL,
                        detail=f"{self.user} is not in {self.config.subscribers.url}",
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

    def check_nonce_secret(self) -> Iterator[Check]:
        url = self.config.subscribers.url
        if url.startswith("redis://") and not self.config.auth.nonce_secret:
            yield Check(name="nonce secret", status=WARN,
                        detail="subscribers in Redis (shared by several nodes?) but "
                               "auth.nonce_secret is empty: each node makes its own",
                        fix="set the same auth.nonce_secret on every node, or a client "
                            "answering another node's challenge is refused")


def _resp(command: list[str]) -> bytes:
    """A Redis command in RESP (the protocol redis-cli speaks)."""
    out = [f"*{len(command)}\r\n".encode()]
    for word in command:
        data = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_resp(reader) -> list[str]:
    """An HGETALL answer (a RESP array of bulk strings) as a list."""
    head = reader.readline().decode("latin-1").strip()
    if not head.startswith("*"):
        raise OSError(f"Redis answered {head}")
    out = []
    for _ in range(max(int(head[1:]), 0)):
        size = int(reader.readline().decode("latin-1").strip()[1:])
        out.append(reader.read(size + 2)[:-2].decode("utf-8", "replace"))
    return out


def _names_host(host: str, dns: set[str], ips: set[str], ipaddress) -> bool:
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
