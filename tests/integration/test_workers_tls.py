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


@pytest.fixture
def gw(control_dir: Path, tmp_path: Path, ca: CertAuthority,
       backend: TlsBackend) -> Iterator[TlsSipgw]:
    """Two workers, a TLS listener, the backend over TLS checked against the test's CA."""
    chain, key, _ = ca.issue("sipgw")
    service = TlsSipgw(tmp_path / "sipgw", chain=chain, key=key, backend_ca=ca.root_path,
                       backend=f"sip:{LOOPBACK}:{backend.port};transport=tls",
                       workers=WORKERS, extra_toml=control_toml(control_dir))
    with service:
        yield service


def registered_on_each_worker(gw: TlsSipgw, backend: TlsBackend) -> dict[int, tuple[TcpPeer,
                                                                                   str]]:
    """TCP clients registered through sipgw until each worker holds one: the worker's own
    TLS port (in the Path it wrote) → its client and that Path."""
    clients: dict[int, tuple[TcpPeer, str]] = {}
    for n in range(CLIENTS_MAX):
        if len(clients) == WORKERS:
            return clients
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
    raise AssertionError(f"every client went to one worker: {clients}")


def test_a_tls_backend_reaches_each_worker_by_the_path_of_its_own_tls_listener(
    control_dir: Path, gw: TlsSipgw, backend: TlsBackend
) -> None:
    clients = registered_on_each_worker(gw, backend)
    own_tls = {int(w["tls_address"].rsplit(":", 1)[1]) for w in Workers(gw, control_dir).table()}
    assert set(clients) == own_tls and gw.tls_port not in own_tls
    # sipgw opened one connection to the backend per worker, from neither's own port.
    assert len(backend.accepted) == WORKERS

    for path_port, (client, path) in clients.items():
        # A call to the client by Path, on a connection the backend opens to it.
        with client, backend.connect(LOOPBACK, path_port) as conn:
            conn.send(build_request(
                "MESSAGE", f"sip:raw@{client.address};transport=tcp", peer=conn,
                call_id=f"msg-{path_port}@tls", branch=f"z9hG4bKmsg{path_port}",
                headers=[f"Route: {path}"], body="hello", content_type="text/plain"))
            message = client.expect("MESSAGE", timeout=5)
            assert message.header("Call-ID") == f"msg-{path_port}@tls"
            client.send(build_response(message, 200, "OK", to_tag="msg"))
            assert conn.expect("200", timeout=5).header("Call-ID") == f"msg-{path_port}@tls"


def test_a_tls_backends_in_dialog_request_reaches_the_worker_of_the_dialog(
    gw: TlsSipgw, backend: TlsBackend
) -> None:
    """The backend hangs up a call a client of each worker placed: its BYE follows the
    Record-Route, on a connection of its own, to the worker holding the client's."""
    for path_port, (client, _) in registered_on_each_worker(gw, backend).items():
        call = f"call-{path_port}@tls"
        with client:
            client.send(build_request("INVITE", "sip:bob@example.com", peer=client,
                                      call_id=call, branch=f"z9hG4bKinv{path_port}"))
            conn, invite = backend.next_request("INVITE")
            route_set = invite.headers("Record-Route")
            # The entry the backend uses first names the worker's own TLS listener.
            assert hostport(route_set[0])[1] == path_port, route_set
            conn.send(build_response(invite, 200, "OK", to_tag="bob", headers=[
                *(f"Record-Route: {rr}" for rr in route_set),
                f"Contact: <sip:bob@{LOOPBACK}:{backend.port};transport=tls>"]))
            assert client.expect("200", timeout=5).header("Call-ID") == call
            with backend.connect(*hostport(route_set[0])) as hangup:
                hangup.send(build_request(
                    "BYE", uri_of(invite.header("Contact") or ""), peer=hangup, call_id=call,
                    branch=f"z9hG4bKbye{path_port}", cseq=1, from_tag="bob",
                    to=f"{invite.header('From')}",
                    headers=[f"Route: {rr}" for rr in route_set]))
                bye = client.expect("BYE", timeout=5)
                assert bye.header("Call-ID") == call
                client.send(build_response(bye, 200, "OK"))
                assert hangup.expect("200", timeout=5).header("Call-ID") == call
