"""The embedded subscriber store: one SQLite file, no server (the default).

Table ``subscriber`` with Kamailio's column names, one row per (username, domain).

Concurrency: the database is in WAL mode, so the proxy's reads never wait for ``sipgw
users`` writing in another process, and the CLI's short write transactions wait at most
``busy_timeout`` for each other.

Lookups run synchronously on the reactor thread, on purpose: a primary-key read from a
local WAL database takes microseconds (a thread hop via ``deferToThread`` costs more than
the read, and the thread pool would serialise on the one connection anyway). What could
block longer -- a missing directory, a locked or corrupt file -- fails fast instead
(``busy_timeout`` 100 ms) and becomes ``StoreUnavailable``/``StoreError``.

The file holds HA1 hashes, which are as good as passwords for digest authentication: a
new file is created 0600 (SQLite gives its -wal and -shm files the same mode) and a
directory ``sipgw users`` makes, 0700. Created by root (``sudo sipgw users add``) in a
directory owned by another user (the systemd unit's /var/lib/sipgw, owned by sipgw), the
file is given to that directory's owner and group, so the service can open it. An existing
file is left as it is; ``sipgw doctor`` says when others can read it.
"""

from __future__ import annotations

import os
import sqlite3
import time

from twisted.internet import defer

from sipgw.store.base import (
    FIELDS,
    StoreError,
    StoreUnavailable,
    Subscriber,
    subscriber_from_fields,
)

BUSY_TIMEOUT = 0.1  # seconds
OPEN_RETRY = 0.005  # seconds between attempts to open a file another process is opening

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriber (
    username   TEXT NOT NULL,
    domain     TEXT NOT NULL,
    ha1        TEXT NOT NULL DEFAULT '',
    ha1b       TEXT NOT NULL DEFAULT '',
    ha1_sha256 TEXT NOT NULL DEFAULT '',
    password   TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (username, domain)
)
"""
# has_domain: the primary key serves lookups by username first, not by domain alone.
_INDEX = "CREATE INDEX IF NOT EXISTS subscriber_domain ON subscriber (domain)"
_COLUMNS = ", ".join(FIELDS)


class SqliteStore:
    def __init__(self, path: str, *, create_directory: bool = False,
                 busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = path
        self.create_directory = create_directory
        # The proxy must not block its reactor on a lock (100 ms, then "unavailable");
        # ``sipgw users`` can afford to wait for the proxy or another CLI run.
        self.busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                self._db = self._open()
                return self._db
            except sqlite3.OperationalError as e:
                # Switching a new file to WAL takes an exclusive lock, and SQLite answers
                # "locked" at once (its busy handler is not called there) when another
                # process is opening the same file: two `sipgw users add` at once, or
                # workers starting together. The open is retried until the busy timeout.
                if _is_busy(e) and time.monotonic() < deadline:
                    time.sleep(OPEN_RETRY)
                    continue
                raise StoreUnavailable(
                    f"cannot open the subscriber database {self.path}: {e}") from e
            except (OSError, sqlite3.Error) as e:
                raise StoreUnavailable(
                    f"cannot open the subscriber database {self.path}: {e}") from e

    def _open(self) -> sqlite3.Connection:
        if self.create_directory:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        _create_private(self.path)
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            db.execute(_INDEX)
        except BaseException:
            db.close()
            raise
        return db

    def _run(self, fn) -> defer.Deferred:
        try:
            return defer.succeed(fn(self._connect()))
        except StoreError as e:
            return defer.fail(e)
        except sqlite3.OperationalError as e:
            # "database is locked", disk I/O: worth retrying later.
            self._drop()
            return defer.fail(StoreUnavailable(f"{self.path}: {e}"))
        except sqlite3.Error as e:
            self._drop()
            return defer.fail(StoreError(f"{self.path}: {e}"))

    def _drop(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def get(self, username: str, domain: str) -> defer.Deferred:
        def read(db: sqlite3.Connection) -> Subscriber | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM subscriber WHERE username = ? AND domain = ?",
                (username, domain),
            ).fetchone()
            if row is None:
                return None
            return subscriber_from_fields(dict(zip(FIELDS, row, strict=True)), username, domain)

        return self._run(read)

    def put(self, subscriber: Subscriber) -> defer.Deferred:
        def write(db: sqlite3.Connection) -> None:
            values = [getattr(subscriber, name) for name in FIELDS]
            db.execute(f"INSERT OR REPLACE INTO subscriber ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                       values)

        return self._run(write)

    def put_many(self, subscribers: list[Subscriber]) -> defer.Deferred:
        """All or nothing, in one transaction (``sipgw users import``)."""

        def write(db: sqlite3.Connection) -> None:
            rows = [[getattr(s, name) for name in FIELDS] for s in subscribers]
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(
                    f"INSERT OR REPLACE INTO subscriber ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    rows)

        return self._run(write)

    def delete(self, username: str, domain: str) -> defer.Deferred:
        def remove(db: sqlite3.Connection) -> bool:
            cur = db.execute("DELETE FROM subscriber WHERE username = ? AND domain = ?",
                             (username, domain))
            return cur.rowcount > 0

        return self._run(remove)

    def all(self) -> defer.Deferred:
        def read(db: sqlite3.Connection) -> list[Subscriber]:
            rows = db.execute(f"SELECT {_COLUMNS} FROM subscriber ORDER BY domain, username")
            return [subscriber_from_fields(dict(zip(FIELDS, row, strict=True)), row[0], row[1])
                    for row in rows]

        return self._run(read)

    def has_domain(self, domain: str) -> defer.Deferred:
        def read(db: sqlite3.Connection) -> bool:
            return db.execute("SELECT 1 FROM subscriber WHERE domain = ? LIMIT 1",
                              (domain,)).fetchone() is not None

        return self._run(read)

    def close(self) -> defer.Deferred:
        self._drop()
        return defer.succeed(None)


def _create_private(path: str) -> None:
    """Create ``path`` 0600 if it does not exist (SQLite would make it 0644 by the umask),
    owned as its directory is when made by root."""
    if path in ("", ":memory:") or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        if os.geteuid() == 0:
            directory = os.stat(os.path.dirname(path) or ".")
            os.fchown(fd, directory.st_uid, directory.st_gid)
    finally:
        os.close(fd)


def _is_busy(error: sqlite3.OperationalError) -> bool:
    text = str(error)
    return "locked" in text or "busy" in text
