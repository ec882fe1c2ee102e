"""A backend over TLS behind sipgw with two workers (issue 14): each worker connects to it
itself, writes its own TLS listener in Via and Path, and the backend's calls by Path -- on
connections the backend opens, as Asterisk does -- reach the worker holding the client's
connection.

The backend is a Python TLS server with a certificate of the test's CA; the clients are
TCP connections, each held by the one worker the kernel gave it to.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.certs import CertAuthority
from tests.integration.sipgw_process import TcpPeer, build_request, build_response
from tests.integration.sipp import LOOPBACK, SippMessage, uri_of
from tests.integration.test_tls_sipgw import TlsBackend, TlsSipgw
from tests.integration.workers import WORKERS, Workers, control_directory, control_toml

pytestmark = pytest.mark.integration

CLIENTS_MAX = 24  # TCP clients tried at most until each worker holds one


@pytest.fixture
def control_dir() -> Iterator[Path]:
    with control_directory() as directory:
        yield directory


@pytest.fixture
def ca(tmp_path: Path) -> CertAuthority:
    return CertAuthority(tmp_path / "ca")


@pytest.fixture
def backend(ca: CertAuthority) -> Iterator[TlsBackend]:
    server = TlsBackend(ca)
    yield server
    server.close()


def hostport(entry: str) -> tuple[str, int]:
    match = re.match(r"<?sips?:(?:[^@;>]*@)?([\d.]+):(\d+)", uri_of(entry) if "<" in entry
                     else entry)
    assert match, entry
    return match[1], int(match[2])


def top_via_tls_port(message: SippMessage) -> int:
    match = re.match(r"SIP/2\.0/TLS [\d.]+:(\d+);", message.headers("Via")[0])
    assert match, f"top Via is not sipgw's over TLS:\n{message.text}"
    return int(match[1])


def test_a_tls_backend_reaches_each_worker_by_the_path_of_its_own_tls_listener(
    control_dir: Path, tmp_path: Path, ca: CertAuthority, backend: TlsBackend
) -> None:
    chain, key, _ = ca.issue("sipgw")
    gw = TlsSipgw(tmp_path / "sipgw", chain=chain, key=key, backend_ca=ca.root_path,
                  backend=f"sip:{LOOPBACK}:{backend.port};transport=tls", workers=WORKERS,
                  extra_toml=control_toml(control_dir))
    with gw:
        workers = Workers(gw, control_dir)
        # The Path port of a worker → a client it holds, and the Path written for it.
        clients: dict[int, tuple[TcpPeer, str]] = {}
        for n in range(CLIENTS_MAX):
            if len(clients) == WORKERS:
                break
            client = TcpPeer(gw.address)
            client.send(build_request(
                "REGISTER", f"sip:{gw.address}", peer=client, call_id=f"reg-{n}@tls",
                branch=f"z9hG4bKreg{n}", headers=["Supported: path", "Expires: 600"]))
            conn, register = backend.next_request("REGISTER")
            (path,) = register.headers("Path")
            path_port = hostport(path)[1]
            # What the backend answers and sends by Path goes to the worker's own listener.
            assert ";transport=tls" in path and top_via_tls_port(register) == path_port
            conn.send(build_response(register, 200, "OK", to_tag=f"reg{n}",
                                     headers=[f"Contact: {register.header('Contact')}"]))
            assert client.expect("200", timeout=5).header("Call-ID") == f"reg-{n}@tls"
            if path_port in clients:
                client.close()
            else:
                clients[path_port] = (client, path)
        assert len(clients) == WORKERS, f"every client went to one worker: {clients}"
        own_tls = {int(w["tls_address"].rsplit(":", 1)[1]) for w in workers.table()}
        assert set(clients) == own_tls and gw.tls_port not in own_tls
        # sipgw opened one connection to the backend per worker, from neither's own port.
        assert len(backend.accepted) == WORKERS

        for path_port, (client, path) in clients.items():
            # A call to the client by Path, on a connection the backend opens to it.
            with backend.connect(LOOPBACK, path_port) as conn:
                conn.send(build_request(
                    "MESSAGE", f"sip:raw@{client.address};transport=tcp", peer=conn,
                    call_id=f"msg-{path_port}@tls", branch=f"z9hG4bKmsg{path_port}",
                    headers=[f"Route: {path}"],
                    body="hello", content_type="text/plain"))
                message = client.expect("MESSAGE", timeout=5)
                assert message.header("Call-ID") == f"msg-{path_port}@tls"
                client.send(build_response(message, 200, "OK", to_tag="msg"))
                assert conn.expect("200", timeout=5).header("Call-ID") == \
                    f"msg-{path_port}@tls"
        for client, _ in clients.values():
            client.close()

