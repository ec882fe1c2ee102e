"""A Redis master, a replica and three Sentinels (Debian's redis-server and
redis-sentinel) on free loopback ports: what ``redis+sentinel://`` URLs are tested on.

Sentinels are told to act fast (``down-after-milliseconds`` 1000, a short failover
timeout) so that a failover takes a few seconds. ``acl`` puts the data behind a Redis ACL
user (``default`` off: nothing works without it), the replica and the Sentinels log in as
that user, and the Sentinels themselves ask a password (``requirepass``). ``tls`` makes
every server and Sentinel speak TLS only, replication and Sentinel's own links included.
Readiness is polled with a bound; ``stop`` ends every process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from tests.helpers.certs import CertAuthority
from tests.helpers.poll import wait_until
from tests.helpers.redis_server import RedisServer, command, free_port

SERVICE = "mymaster"
USER, PASSWORD = "sipgw", "data-s3cret"
SENTINEL_PASSWORD = "sentinel-s3cret"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
# Sentinels find each other and the replica through the master's hello channel, every 2 s.
SETTLE_TIMEOUT = 20.0


class Sentinel(RedisServer):
    def __init__(self, workdir: Path, conf: str, **kwargs) -> None:
        super().__init__(workdir, **kwargs)
        self.conf = conf
        self.tls_port = 0

    def argv(self) -> list[str]:
        path = self.workdir / "sentinel.conf"
        # Rewritten by the Sentinel as it learns; tls_port is set by the Cluster.
        path.write_text(self.conf.format(port=self.port, tls_port=self.tls_port))
        return [self.executable, str(path)]


class Cluster:
    def __init__(self, workdir: Path, *, acl: bool = False, tls: bool = False) -> None:
        self.workdir = workdir
        self.acl, self.tls = acl, tls
        self.ca: CertAuthority | None = None
        common: list[str] = []
        sentinel_conf = ""
        if tls:
            self.ca = CertAuthority(workdir / "ca")
            chain, key, _ = self.ca.issue("redis")
            tls_args = ["--tls-cert-file", str(chain), "--tls-key-file", str(key),
                        "--tls-ca-cert-file", str(self.ca.root_path),
                        "--tls-auth-clients", "no", "--tls-replication", "yes"]
            common += tls_args
            sentinel_conf += "".join(f"{tls_args[i][2:]} {tls_args[i + 1]}\n"
                                     for i in range(0, len(tls_args), 2))
            sentinel_conf += "tls-port {tls_port}\n"
        sentinel_conf += "port {port}\n"
        if acl:
            # One word per argument: redis-server quotes an argument with a space in it.
            common += ["--user", "default", "off",
                       "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all",
                       "--masteruser", USER, "--masterauth", PASSWORD]
            self.auth: tuple[str, ...] = (USER, PASSWORD)
        else:
            self.auth = ()
        self.master_port, self.replica_port = free_port(), free_port()
        self.master = self._server("master", self.master_port, common)
        self.replica = self._server("replica", self.replica_port, [
            *common, "--replicaof", "127.0.0.1", str(self.master_port)])
        sentinel_conf += (
            f"bind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n")
        if acl:
            sentinel_conf += (f"sentinel auth-user {SERVICE} {USER}\n"
                              f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
                              f"requirepass {SENTINEL_PASSWORD}\n"
                              f"sentinel sentinel-pass {SENTINEL_PASSWORD}\n")
        self.sentinels = [Sentinel(workdir / f"sentinel{i}", sentinel_conf,
                                   program="redis-sentinel",
                                   auth=(SENTINEL_PASSWORD,) if acl else ())
                          for i in range(3)]
        # The port sipgw dials: the TLS one when there is one.
        self.sentinel_ports = [free_port() if tls else s.port for s in self.sentinels]
        for sentinel, port in zip(self.sentinels, self.sentinel_ports, strict=True):
            sentinel.tls_port = port

    def _server(self, name: str, port: int, args: list[str]) -> RedisServer:
        if self.tls:  # clients and Sentinels on the TLS port; the plain one for the test
            return RedisServer(self.workdir / name, args=["--tls-port", str(port), *args],
                               auth=self.auth)
        return RedisServer(self.workdir / name, port, args=args, auth=self.auth)

    # -- addresses --------------------------------------------------------------------

    def url(self, *, user: str = USER, password: str = PASSWORD, db: int = 2) -> str:
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        creds = f"{user}:{password}@" if self.acl else ""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"{scheme}://{creds}{hosts}/{SERVICE}/{db}"

    def subscribers_toml(self) -> str:
        """What ``[subscribers]`` needs besides ``url``."""
        out = ""
        if self.acl:
            out += f'sentinel_password = "{SENTINEL_PASSWORD}"\n'
        if self.ca is not None:
            out += f'tls_ca_file = "{self.ca.root_path}"\n'
        return out

    # -- life -------------------------------------------------------------------------

    def start(self) -> Cluster:
        try:
            for server in (self.master, self.replica, *self.sentinels):
                server.start()
            self.wait_settled()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.master):
            server.stop()

    def sentinel_ask(self, sentinel: Sentinel, *args: str) -> bytes:
        return command(sentinel.port, *args, auth=sentinel.auth)

    def master_named(self) -> set[int]:
        """The master port each reachable Sentinel names now."""
        named = set()
        for sentinel in self.sentinels:
            try:
                reply = self.sentinel_ask(sentinel, "SENTINEL", "get-master-addr-by-name",
                                          SERVICE)
            except OSError:
                continue
            ports = re.findall(rb"\b(\d{4,5})\b", reply)
            if ports:
                named.add(int(ports[-1]))
        return named

    def wait_settled(self) -> None:
        """Until every Sentinel knows the replica and the two other Sentinels (a failover
        needs them), and the replica is in sync."""
        wait_until(self._settled, timeout=SETTLE_TIMEOUT, what="the Sentinels did not settle",
                   caller=self)

    def _settled(self) -> bool:
        try:
            return all(
                self._count(self.sentinel_ask(s, "SENTINEL", "replicas", SERVICE)) >= 1
                and self._count(self.sentinel_ask(s, "SENTINEL", "sentinels", SERVICE)) >= 2
                for s in self.sentinels
            ) and b"master_link_status:up" in self.info(self.replica)
        except OSError:
            return False

    def describe(self) -> str:
        """The end of each server's log (what ``wait_until`` shows when it gives up)."""
        return "\n".join(f"--- {log} ---\n{log.read_text(errors='replace')[-1500:]}"
                         for log in sorted(self.workdir.glob("*/redis.log")))

    @staticmethod
    def _count(reply: bytes) -> int:
        """Entries in a SENTINEL replicas/sentinels answer (each has a "name" field)."""
        return len(re.findall(rb"(?m)^(?:\$4\r\n)?name\r?$", reply))

    def info(self, server: RedisServer) -> bytes:
        return command(server.port, "INFO", "replication", auth=self.auth)


def cluster_fixture(workdir: Path, **options) -> Iterator[Cluster]:
    cluster = Cluster(workdir, **options).start()
    try:
        yield cluster
    finally:
        cluster.stop()
