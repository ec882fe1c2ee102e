"""The subscriber store as ``sipgw doctor`` reads it: blocking, read-only, bounded.

The proxy's own stores are Twisted (``sipgw.store``); the doctor is a plain script that must
say within its timeout whether Redis answers, so it speaks RESP (the protocol redis-cli
speaks) over a socket (TLS for rediss://, through the Sentinels for redis+sentinel://),
and opens SQLite read-only so that it never takes a write lock the
running proxy could wait on.
"""

from __future__ import annotations

import socket
import sqlite3
import ssl
from dataclasses import dataclass

from sipgw.config.redis_url import parse_redis_url
from sipgw.sip.hostport import join_hostport
from sipgw.store import DOMAIN_INDEX, FIELDS, Subscriber, subscriber_from_fields

SCAN_BATCH = 500


class RedisRefused(OSError):
    """Redis answered with an error (``-ERR ...``), e.g. to AUTH or SELECT."""


class RedisLink:
    """One connection to a Redis server (or a Sentinel), past AUTH and SELECT; a context
    manager. ``shown`` names it, never with the password."""

    def __init__(self, host: str, port: int, timeout: float, *, tls: ssl.SSLContext | None = None,
                 auth: tuple[str, ...] = (), db: int = 0, shown: str = "") -> None:
        self.host, self.port = host, port
        self.shown = shown or join_hostport(host, port)
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            self.sock = tls.wrap_socket(sock, server_hostname=host) if tls else sock
        except BaseException:
            sock.close()
            raise
        self.sock.settimeout(timeout)
        self.reader = self.sock.makefile("rb")
        try:
            if auth:
                self.call("AUTH", *auth)
            if db:
                self.call("SELECT", str(db))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> RedisLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def call(self, *command: str):
        self.sock.sendall(encode(list(command)))
        return self.read()

    def pipeline(self, commands: list[list[str]]) -> list:
        """Many commands in one write, their answers in order: one round trip per batch."""
        self.sock.sendall(b"".join(encode(c) for c in commands))
        return [self.read() for _ in commands]

    def read(self):
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise OSError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2].decode("utf-8", "replace")
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RedisRefused(rest)
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.reader.read(size + 2)[:-2].decode("utf-8",
                                                                                 "replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.read() for _ in range(size)]
        raise OSError(f"not a Redis answer: {line[:40]!r}")


@dataclass(frozen=True, slots=True)
class SentinelAnswer:
    """What one Sentinel says of the service (``SENTINEL MASTER``), or why it said nothing."""

    sentinel: str
    master: tuple[str, int] | None = None
    flags: str = ""
    quorum: int = 0
    other_sentinels: int = 0
    replicas: int = 0
    error: str = ""

    @property
    def names_a_master(self) -> bool:
        """It names one it does not think down (what sipgw would connect to)."""
        flags = set(self.flags.split(","))
        return self.master is not None and "master" in flags and not flags & {"s_down",
                                                                              "o_down"}


class StoreAccess:
    """How the doctor reaches a Redis store: the URL, and the settings that go with it."""

    def __init__(self, url: str, timeout: float, *, tls_ca_file: str = "",
                 sentinel_password: str = "") -> None:
        self.url = parse_redis_url(url)
        self.timeout = timeout
        self.tls = ssl.create_default_context(cafile=tls_ca_file or None) if self.url.tls \
            else None
        self.sentinel_password = sentinel_password

    def sentinels(self) -> list[SentinelAnswer]:
        """Each Sentinel's answer, in the URL's order."""
        answers = []
        for host, port in self.url.hosts:
            where = join_hostport(host, port)
            try:
                with RedisLink(host, port, self.timeout, tls=self.tls, auth=(
                        (self.sentinel_password,) if self.sentinel_password else ())) as link:
                    fields = link.call("SENTINEL", "MASTER", self.url.service)
            except OSError as e:
                answers.append(SentinelAnswer(where, error=_why(e)))
                continue
            state = dict(zip(fields[::2], fields[1::2], strict=False))
            answers.append(SentinelAnswer(
                where, master=(state["ip"], int(state["port"])), flags=state.get("flags", ""),
                quorum=int(state.get("quorum", 0)),
                other_sentinels=int(state.get("num-other-sentinels", 0)),
                replicas=int(state.get("num-slaves", 0))))
        return answers

    def link(self, address: tuple[str, int] | None = None) -> RedisLink:
        """To the server of a direct URL, or to ``address`` (the master a Sentinel names)."""
        host, port = address or (self.url.host, self.url.port)
        url = self.url
        auth: tuple[str, ...] = () if url.password is None else (
            (url.username, url.password) if url.username else (url.password,))
        shown = str(self.url) if address is None else \
            f"{join_hostport(host, port)} (master of {self.url.service})"
        return RedisLink(host, port, self.timeout, tls=self.tls, auth=auth, db=self.url.db,
                         shown=shown)

    def master_link(self) -> RedisLink:
        """To the store's server: through the first Sentinel that names a master."""
        if not self.url.sentinel:
            return self.link()
        answers = self.sentinels()
        for answer in answers:
            if answer.names_a_master:
                return self.link(answer.master)
        raise OSError("no Sentinel names a master of " + self.url.service + ": " + "; ".join(
            f"{a.sentinel}: {a.error or a.flags}" for a in answers))


def _why(e: OSError) -> str:
    return str(e.strerror or e)


def replication(link: RedisLink) -> dict[str, str]:
    """``INFO replication`` as a dict (role, connected_slaves, slave0...)."""
    text = link.call("INFO", "replication") or ""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def encode(command: list[str]) -> bytes:
    """A Redis command in RESP."""
    out = [f"*{len(command)}\r\n".encode()]
    for word in command:
        data = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def open_sqlite(path: str, timeout: float) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)


def read_record(url: str, key_template: str, user: str, domain: str | None,
                timeout: float, *, tls_ca_file: str = "",
                sentinel_password: str = "") -> dict[str, str] | None:
    """One subscriber's stored fields, or None (OSError/sqlite3.Error when the store fails)."""
    if url.startswith("sqlite://"):
        db = open_sqlite(url[len("sqlite://"):], timeout)
        try:
            db.row_factory = sqlite3.Row
            args: tuple[str, ...]
            query, args = "SELECT * FROM subscriber WHERE username = ?", (user,)
            if domain:
                query, args = query + " AND domain = ?", (user, domain)
            row = db.execute(query, args).fetchone()
        finally:
            db.close()
        return dict(row) if row else None
    access = StoreAccess(url, timeout, tls_ca_file=tls_ca_file,
                         sentinel_password=sentinel_password)
    with access.master_link() as redis:
        items = redis.call("HGETALL", key_template.format(username=user, domain=domain or ""))
    if not items:
        return None
    record = dict(zip(items[::2], items[1::2], strict=False))
    record.setdefault("username", user)
    return record


def sqlite_plaintext(path: str, timeout: float) -> list[Subscriber]:
    """Every row that keeps a plaintext password."""
    db = open_sqlite(path, timeout)
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(subscriber)")}
        if "password" not in columns:
            return []  # a table older than the column: nothing plaintext in it
        wanted = [name for name in FIELDS if name in columns]
        rows = db.execute(f"SELECT {', '.join(wanted)} FROM subscriber "
                          "WHERE password IS NOT NULL AND password != ''").fetchall()
    finally:
        db.close()
    return [subscriber_from_fields(dict(zip(wanted, row, strict=True)), "", "") for row in rows]


def redis_plaintext(redis: RedisLink, key_template: str) -> list[Subscriber]:
    """Every hash under the key template that keeps a plaintext password: SCAN (which
    never blocks Redis the way KEYS does), one pipelined HMGET per batch of keys."""
    pattern = key_template.format(username="*", domain="*")
    out = []
    cursor = "0"
    while True:
        cursor, keys = redis.call("SCAN", cursor, "MATCH", pattern, "COUNT", str(SCAN_BATCH))
        keys = [k for k in keys if not k.startswith(DOMAIN_INDEX)]  # a template "{username}"
        answers = redis.pipeline([["HMGET", key, *FIELDS] for key in keys]) if keys else []
        for key, values in zip(keys, answers, strict=False):
            fields = {n: v for n, v in zip(FIELDS, values or [], strict=False) if v}
            if fields.get("password"):
                # A legacy record may lack the username field: the key still names it.
                out.append(subscriber_from_fields(fields, fields.get("username") or key, ""))
        if cursor == "0":
            return out
