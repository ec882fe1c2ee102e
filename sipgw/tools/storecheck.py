"""The subscriber store as ``sipgw doctor`` reads it: blocking, read-only, bounded.

The proxy's own stores are Twisted (``sipgw.store``); the doctor is a plain script that must
say within its timeout whether Redis answers, so it speaks RESP (the protocol redis-cli
speaks) over a socket, and opens SQLite read-only so that it never takes a write lock the
running proxy could wait on.
"""

from __future__ import annotations

import socket
import sqlite3
from urllib.parse import urlsplit

from sipgw.store import DOMAIN_INDEX, FIELDS, Subscriber, subscriber_from_fields

SCAN_BATCH = 500


class RedisRefused(OSError):
    """Redis answered with an error (``-ERR ...``), e.g. to AUTH or SELECT."""


class RedisLink:
    """One connection to the store's Redis, past AUTH and SELECT; a context manager."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 6379
        self.shown = f"redis://{self.host}:{self.port}{parts.path}"  # never the password
        self.sock = socket.create_connection((self.host, self.port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.reader = self.sock.makefile("rb")
        try:
            if parts.password:
                self.call("AUTH", *([parts.username] if parts.username else []),
                          parts.password)
            if parts.path.strip("/"):
                self.call("SELECT", parts.path.strip("/"))
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
                timeout: float) -> dict[str, str] | None:
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
    with RedisLink(url, timeout) as redis:
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
