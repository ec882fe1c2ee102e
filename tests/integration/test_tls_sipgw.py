"""SIP over TLS and secure WebSocket through a real sipgw, with a CA made at test time:
handshakes, TLS 1.2 as the floor, a clear start-up error for a missing certificate, and
SIGHUP swapping the certificate without dropping live connections."""

from __future__ import annotations

import selectors
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipgw.tools.process import SipgwProcess
from tests.helpers.certs import CertAuthority
from tests.integration.sipgw_process import TcpPeer, build_request
from tests.integration.sipp import LOOPBACK, SippMessage, SippRunner, free_port
from tests.integration.wspeer import WsPeer

pytestmark = pytest.mark.integration


class TlsSipgw(SipgwProcess):
    """The test sipgw with tls and wss listeners and a [tls] section."""

    def __init__(self, workdir: Path, *, chain: Path, key: Path, min_version: str = "1.2",
                 backend_ca: Path | None = None, **options) -> None:
        super().__init__(workdir, **options)
        self.min_version = min_version
        self.backend_ca = backend_ca
        self.tls_port = free_port("tcp")
        self.wss_port = free_port("tcp")
        self.chain, self.key = chain, key

    def config_text(self, **kw) -> str:
        text = (
            super()
            .config_text(**kw)
            .replace(
                "ws = []\n",
                f'ws = []\ntls = ["{LOOPBACK}:{self.tls_port}"]\n'
                f'wss = ["{LOOPBACK}:{self.wss_port}"]\n',
                1,
            )
        )
        ca = f'backend_ca_file = "{self.backend_ca}"\n' if self.backend_ca else ""
        return text + (f'\n[tls]\ncertificate = "{self.chain}"\nprivate_key = "{self.key}"\n'
                       f'min_version = "{self.min_version}"\n{ca}')


class TlsPeer(TcpPeer):
    transport = "tls"

    def __init__(self, remote: str, context: ssl.SSLContext) -> None:
        super().__init__(remote)
        self.socket = context.wrap_socket(self.socket, server_hostname="localhost")

    def _read(self, timeout: float) -> list[bytes]:
        try:
            return super()._read(timeout)
        except ssl.SSLWantReadError:
            return []


class TlsBackend:
    """A backend over TLS on loopback: accepts sipgw's connections and reads requests from
    whichever connection they come on; opens connections of its own to sipgw."""

    def __init__(self, ca: CertAuthority) -> None:
        chain, key, _ = ca.issue("backend")
        self.server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server.load_cert_chain(str(chain), str(key))
        self.client = ssl.create_default_context(cafile=str(ca.root_path))
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[TlsPeer] = []

    def next_request(self, method: str, timeout: float = 5.0) -> tuple[TlsPeer, SippMessage]:
        """The next ``method`` request sipgw sends, and the connection it came on."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            for peer in self.accepted:
                selector.register(peer.socket, selectors.EVENT_READ, peer)
            while True:
                for peer in self.accepted:
                    for i, message in enumerate(peer.inbox):
                        if message.method == method and not message.is_response:
                            return peer, peer.inbox.pop(i)
                left = deadline - time.monotonic()
                assert left > 0, f"no {method} from sipgw within {timeout:g}s"
                for key, _ in selector.select(left):
                    if key.data is None:
                        peer = self.accept(left)
                        selector.register(peer.socket, selectors.EVENT_READ, peer)
                    else:
                        key.data._fill(0)

    def accept(self, timeout: float) -> TlsPeer:
        """sipgw's next connection, once the TLS handshake is done (ssl.SSLError if sipgw
        refuses our certificate)."""
        self.listener.settimeout(timeout)
        raw, _ = self.listener.accept()
        raw.settimeout(timeout)
        peer = TlsPeer.adopt(self.server.wrap_socket(raw, server_side=True))
        self.accepted.append(peer)
        return peer

    def connect(self, host: str, port: int) -> TlsPeer:
        raw = socket.create_connection((host, port), timeout=5)
        return TlsPeer.adopt(self.client.wrap_socket(raw, server_hostname=host))

    def close(self) -> None:
        for peer in self.accepted:
            peer.close()
        self.listener.close()


@pytest.fixture
def ca(tmp_path: Path) -> CertAuthority:
    return CertAuthority(tmp_path / "ca")


@pytest.fixture
def client_tls(ca: CertAuthority) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.root_path))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@pytest.fixture
def tls_sipgw(tmp_path: Path, ca: CertAuthority, sipp: SippRunner) -> Iterator[TlsSipgw]:
    uas = sipp.uas("uas_options.xml", transport="udp", timeout=20)
    chain, key, _ = ca.issue("one")
    gw = TlsSipgw(tmp_path / "sipgw-tls", chain=chain, key=key, backend=uas.address)
    gw.start()
    yield gw
    gw.stop()


def options(peer, uri: str, n: int) -> bytes:
    return build_request("OPTIONS", uri, peer=peer, call_id=f"tls-{n}@test",
                         branch=f"z9hG4bKtls{n}-{time.monotonic_ns()}", cseq=n)


def served_serial(port: int, context: ssl.SSLContext) -> int:
    import socket

    from cryptography import x509

    with socket.create_connection((LOOPBACK, port), timeout=3) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as s:
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def test_sip_over_tls_and_wss_answer_with_the_configured_chain(tls_sipgw, client_tls):
    gw = tls_sipgw
    with TlsPeer(f"{LOOPBACK}:{gw.tls_port}", client_tls) as peer:
        peer.send(options(peer, f"sip:{LOOPBACK}:{gw.tls_port};transport=tls", 1))
        assert peer.expect("200", timeout=5).header("Call-ID") == "tls-1@test"
    with WsPeer(f"{LOOPBACK}:{gw.wss_port}", tls=client_tls) as ws:
        assert ws.status == 101
        ws.send(options(ws, f"sip:{LOOPBACK}:{gw.wss_port};transport=ws", 2))
        assert ws.expect("200", timeout=5).header("Call-ID") == "tls-2@test"


def test_a_client_below_tls_min_version_is_refused_by_sipgw(tmp_path, ca, client_tls, sipp):
    uas = sipp.uas("uas_options.xml", transport="udp", timeout=20)
    chain, key, serial = ca.issue("strict")
    gw = TlsSipgw(tmp_path / "strict", chain=chain, key=key, min_version="1.3",
                  backend=uas.address)
    with gw:
        assert served_serial(gw.tls_port, client_tls) == serial  # TLS 1.3 is fine
        old = ssl.create_default_context(cafile=str(ca.root_path))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            served_serial(gw.tls_port, old)


def test_sighup_serves_a_new_certificate_without_dropping_live_connections(
    tls_sipgw, ca, client_tls
):
    gw = tls_sipgw
    before = served_serial(gw.wss_port, client_tls)
    with WsPeer(f"{LOOPBACK}:{gw.wss_port}", tls=client_tls) as ws:
        assert ws.status == 101
        chain, key, serial = ca.issue("two")
        gw.chain.write_bytes(chain.read_bytes())
        gw.key.write_bytes(key.read_bytes())
        mark = len(gw.log_text())
        gw.reload()
        gw.wait_for_log(r"tls: certificate .* loaded", after=mark)
        ws.send(options(ws, f"sip:{LOOPBACK}:{gw.wss_port};transport=ws", 3))
        assert ws.expect("200", timeout=5).header("Call-ID") == "tls-3@test"
    assert served_serial(gw.wss_port, client_tls) == serial != before
    assert served_serial(gw.tls_port, client_tls) == serial


def test_a_missing_certificate_stops_sipgw_at_start_with_the_file_named(tmp_path):
    config = tmp_path / "sipgw.toml"
    port = free_port()
    config.write_text(
        f'[listen]\nudp = ["{LOOPBACK}:{port}"]\ntcp = []\nws = []\n'
        f'wss = ["{LOOPBACK}:{free_port("tcp")}"]\n'
        f'[tls]\ncertificate = "{tmp_path}/missing.pem"\n'
        f'[control]\nsocket = "{tmp_path}/ctl"\n[state]\ndirectory = "{tmp_path}"\n'
    )
    done = subprocess.run([sys.executable, "-m", "sipgw", "serve", "-c", str(config)],
                          capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "tls.certificate" in out and "missing.pem" in out


def test_a_tls_flow_answers_an_rfc_5626_double_crlf_ping_with_a_crlf(tls_sipgw, client_tls):
    import socket

    with socket.create_connection((LOOPBACK, tls_sipgw.tls_port), timeout=3) as raw:
        with client_tls.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"\r\n\r\n")
            assert s.recv(16) == b"\r\n"


def test_sipgw_relays_to_a_backend_over_tls_whose_certificate_it_checks(tmp_path, ca):
    """A destination with transport=tls: sipgw connects, checks the backend's certificate
    against tls.backend_ca_file, and the answer comes back on that connection; a backend
    whose certificate another authority signed is refused, and the request fails at once
    rather than when its timer runs out."""
    from tests.integration.sipgw_process import UdpPeer, build_response

    chain, key, _ = ca.issue("sipgw")
    good = TlsBackend(ca)
    rogue = TlsBackend(CertAuthority(tmp_path / "other-ca"))
    gw = TlsSipgw(tmp_path / "gw", chain=chain, key=key, backend_ca=ca.root_path,
                  dispatcher=f'destinations = ["sip:{LOOPBACK}:{good.port};transport=tls"]\n'
                             "ping_interval = 0\n", backend="127.0.0.1:9")
    try:
        with gw, UdpPeer(gw.address) as phone:
            phone.send(options(phone, "sip:alice@example.com", 10))
            conn, request = good.next_request("OPTIONS")
            # Its own TLS port toward the backends (proxy.worker_ports + the workers).
            own_tls = gw.worker_ports + gw.workers
            assert request.headers("Via")[0].startswith(f"SIP/2.0/TLS {LOOPBACK}:{own_tls};")
            conn.send(build_response(request, 200, "OK", to_tag="good"))
            assert phone.expect("200", timeout=5).header("Call-ID") == "tls-10@test"

            gw.write_config(gw.config_text().replace(f":{good.port};transport=tls",
                                                     f":{rogue.port};transport=tls"))
            mark = len(gw.log_text())
            gw.reload()
            gw.wait_for_log(r"reloaded", after=mark)
            asked = time.monotonic()
            phone.send(options(phone, "sip:alice@example.com", 11))
            with pytest.raises(ssl.SSLError):  # sipgw aborts the handshake: unknown CA
                rogue.accept(5)
            answer = phone.expect("503", timeout=5)
            assert answer.header("Call-ID") == "tls-11@test"
            assert time.monotonic() - asked < 5
            gw.wait_for_log(rf"tls connection to {LOOPBACK}:{rogue.port} failed", after=mark)
    finally:
        good.close()
        rogue.close()
