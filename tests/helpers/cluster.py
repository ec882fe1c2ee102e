"""A sipgw cluster on loopback with real peers, for the node-failure tests (issue 15):

::

    browsers, wsload ──ws──> nginx 127.0.0.1 ──> node A 127.0.0.2 ─┐   ┌─> Redis master
                                              └─> node B 127.0.0.3 ─┼───┤   + replica
                                                                    │   └─  + 3 Sentinels
                                 Kamailio registrar.cfg <──UDP──────┘
                                 (routes calls by Path, as Asterisk does)

Two ``sipgw serve`` nodes of two workers each (``sipgw.tools.cluster.Node``) on the
Sentinel cluster of ``tests/helpers/redis_sentinel.py`` (``redis+sentinel://``), with the
same nonce and route secrets, dispatching to one Kamailio ``registrar.cfg``; nginx's
upstream lists both nodes' WebSocket listeners: the shipped ``etc/nginx/sipgw.conf``
(``sipgw.tools.nginx.Nginx``), so that these tests prove the file users deploy. Every
process is started on free ports, polled until ready, and stopped by :meth:`SipCluster.stop`.
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sipgw.tools.cluster import Node, shared_toml
from sipgw.tools.kamailio import KamailioProcess, kamailio_executable
from sipgw.tools.nginx import Nginx
from sipgw.tools.process import run_cli
from tests.browser.kamailio_process import CONFIGS
from tests.helpers.redis_sentinel import Cluster as Sentinels

DOMAIN = "sipgw.test"
HOSTS = ("127.0.0.2", "127.0.0.3")
WORKERS = 2  # per node: the default on this 2-core machine ("auto")
NONCE_SECRET = "cluster-nonce-s3cret"
ROUTE_SECRET = "cluster-route-s3cret"


class SipCluster:
    def __init__(self, workdir: Path, *, workers: int = WORKERS) -> None:
        self.workdir = workdir
        self.workers = workers
        self.redis = Sentinels(workdir / "redis")
        executable = kamailio_executable()
        assert executable, "kamailio is not installed (Debian package kamailio): ./scripts/setup"
        self.kamailio = executable
        self.registrar: KamailioProcess | None = None
        self._control = Path(tempfile.mkdtemp(prefix="sipgw-cl-"))  # a short socket path
        self.nodes: list[Node] = []
        self.nginx: Nginx | None = None

    @property
    def a(self) -> Node:
        return self.nodes[0]

    @property
    def b(self) -> Node:
        return self.nodes[1]

    @property
    def backend(self) -> str:
        assert self.registrar is not None
        return f"127.0.0.1:{self.registrar.udp_port}"

    @property
    def ws_url(self) -> str:
        assert self.nginx is not None
        return self.nginx.ws_url

    def start(self) -> SipCluster:
        # A thousand phones are a thousand descriptors here and in each node, which inherit
        # this limit: the hard one, where a soft one of 1,024 would be too few.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        try:
            self.redis.start()
            # Its port taken once Redis listens (the Redis helper picks ports its own way).
            # Enough shared memory for a few thousand bindings.
            self.registrar = KamailioProcess(CONFIGS / "registrar.cfg", self.workdir,
                                             shm_mb=64, executable=self.kamailio)
            self.registrar.start().wait_ready(10)
            shared = shared_toml(subscribers=f'url = "{self.redis.url()}"', realm=DOMAIN,
                                 nonce_secret=NONCE_SECRET)
            for name, host in zip("ab", HOSTS, strict=True):
                node = Node(self.workdir / f"node-{name}", host=host, backend=self.backend,
                            shared_toml=shared, route_secret=ROUTE_SECRET,
                            control_dir=self._control, workers=self.workers)
                self.nodes.append(node)
                node.start(ready_timeout=30)
            self.nginx = Nginx(self.workdir / "nginx", [n.ws_address for n in self.nodes])
            self.nginx.start()
        except BaseException:
            self.stop()
            raise
        return self

    def add_users(self, users: dict[str, str]) -> None:
        """``sipgw users import`` into the cluster's Redis (through the Sentinels)."""
        csv = self.workdir / "users.csv"
        csv.write_text("username,password\n" + "".join(f"{u},{p}\n" for u, p in users.items()))
        done = run_cli("users", "import", str(csv), "-c", str(self.a.config_path), timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

    def describe(self) -> str:
        parts = [node.describe()[-2500:] for node in self.nodes]
        if self.nginx is not None:
            parts.append(self.nginx.describe())
        return "\n".join(parts)

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for node in self.nodes:
            if node.alive():
                node.kill()  # not judged here: a test asserts its clean stops itself
        if self.registrar is not None:
            self.registrar.stop()
        self.redis.stop()
        shutil.rmtree(self._control, ignore_errors=True)


@contextlib.contextmanager
def sip_cluster(workdir: Path, **options) -> Iterator[SipCluster]:
    cluster = SipCluster(workdir, **options).start()
    try:
        yield cluster
    finally:
        cluster.stop()
