"""The real Redis the benchmarks authenticate against, and its own count of commands.

One ``redis-server`` on loopback (no persistence) holds the subscribers in Kamailio's
db_redis layout (``subscriber:entry::USER:DOMAIN`` hashes with ``ha1``): sipgw reads that
layout as it is (``subscribers.key_template``), so both servers under test check digest
against the very same records, written once by ``sipgw users import``. ``INFO
commandstats`` counts the commands each server sent, per command.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from targets import stop

# sipgw's subscribers.key_template for Kamailio's db_redis layout; Kamailio's auth_db
# queries subscriber by username and domain, db_redis makes this key of them.
KEY_TEMPLATE = "subscriber:entry::{username}:{domain}"
DB = 2


class Redis:
    """``redis-server`` on 127.0.0.1:``port``, ready when it answers PING (bounded)."""

    def __init__(self, port: int, work: Path):
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/{DB}"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(work)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if self.command("PING") == b"+PONG\r\n":
                    return
            except OSError:
                pass
            try:
                self.proc.wait(0.02)
            except subprocess.TimeoutExpired:
                continue
            raise SystemExit("redis-server exited")
        self.stop()
        raise SystemExit("redis-server did not answer PING in time")

    def command(self, *args: str) -> bytes:
        payload = b"".join([f"*{len(args)}\r\n".encode()] + [
            b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args])
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(payload)
            return s.recv(1 << 20)

    def commands(self) -> dict[str, int]:
        """Commands served since start, by name, but INFO: only the bench asks that."""
        info = self.command("INFO", "commandstats").decode()
        return {m.group(1): int(m.group(2))
                for m in re.finditer(r"cmdstat_([\w|]+):calls=(\d+)", info)
                if m.group(1) != "info"}

    def provision(self, users: int, realm: str, work: Path, *, first: int = 7000,
                  password: str | None = None) -> list[tuple[str, str]]:
        """Users ``first``, ``first`` + 1, ... with passwords pw0, pw1, ... (or all
        ``password``) in ``realm``, written by ``sipgw users import`` in Kamailio's layout;
        returns (user, password) pairs."""
        accounts = [(str(first + i), password or f"pw{i}") for i in range(users)]
        csv = work / "accounts.csv"
        csv.write_text("username,password\n" + "".join(f"{u},{p}\n" for u, p in accounts))
        config = work / "provision.toml"
        config.write_text(f'[subscribers]\nurl = "{self.url}"\nkey_template = "{KEY_TEMPLATE}"\n'
                          f'[auth]\nrealm = "{realm}"\n')
        subprocess.run([sys.executable, "-m", "sipgw", "users", "import", str(csv),
                        "-c", str(config)], check=True, stdout=subprocess.DEVNULL)
        return accounts

    def stop(self) -> None:
        stop(self.proc)
