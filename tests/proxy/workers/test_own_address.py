"""A worker writes its own UDP address toward the backends (Via, the backend side of the
Record-Route, Path) and sends from it, so that what the backends send back reaches the
worker holding the transaction or the connection; the clients' side keeps the public one."""

from __future__ import annotations

from twisted.internet.task import Clock

from sipgw.proxy.identity import Identity, Listener
from sipgw.proxy.transport import FlowTable, Source
from sipgw.sip.parser import parse_message
from sipgw.tools.harness import BACKEND, PROXY_HOST, PROXY_PORT, config_with, core, valid_invite

OWN = 5091  # this worker's own port; the other worker's is 5092
TCP_CLIENT = Source(transport="tcp", host="192.0.2.7", port=40000, local_host=PROXY_HOST,
                    local_port=PROXY_PORT, flow_id=7)


def worker_core(sent: list, flows: FlowTable | None = None):
    identity = Identity(listeners=[Listener(transport="udp", host=PROXY_HOST, port=PROXY_PORT),
                                   Listener(transport="tcp", host=PROXY_HOST, port=PROXY_PORT)],
                        backend=Listener(transport="udp", host=PROXY_HOST, port=OWN),
                        peers=((PROXY_HOST, OWN), (PROXY_HOST, OWN + 1)))
    return core(clock=Clock(), send=lambda data, dest: sent.append((data, dest)),
                identity=identity, flows=flows,
                config=config_with(proxy={"nat_uac_test": 0}))


def client_source() -> Source:
    return Source(transport="udp", host="192.0.2.99", port=5062, local_host=PROXY_HOST,
                  local_port=PROXY_PORT)


def test_an_invite_to_the_backend_carries_the_workers_own_address_in_via_and_record_route():
    sent: list = []
    proxy = worker_core(sent)
    proxy.receive(valid_invite(), client_source())
    out = [parse_message(data) for data, dest in sent if dest.port == BACKEND.port]
    assert len(out) == 1
    invite = out[0]
    assert f"{PROXY_HOST}:{OWN};" in invite.header("via")
    # Two entries (r2=on): the one the backend uses names this worker, the one the caller
    # uses names the public listener it sent to.
    toward_backend, toward_caller = invite.headers("record-route")
    assert f"sip:{PROXY_HOST}:{OWN};lr;r2=on" in toward_backend
    assert f"sip:{PROXY_HOST}:{PROXY_PORT};lr;r2=on" in toward_caller


def test_a_route_naming_any_worker_names_us():
    sent: list = []
    proxy = worker_core(sent)
    assert proxy.identity.is_us(PROXY_HOST, OWN) and proxy.identity.is_us(PROXY_HOST, OWN + 1)
    assert not proxy.identity.is_us(PROXY_HOST, OWN + 2)


def test_a_register_over_a_connection_gets_a_path_through_this_worker():
    sent: list = []
    proxy = worker_core(sent)
    register = (
        b"REGISTER sip:example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP 192.0.2.7:40000;branch=z9hG4bKreg1\r\n"
        b"Max-Forwards: 70\r\nFrom: <sip:5001@example.com>;tag=r1\r\n"
        b"To: <sip:5001@example.com>\r\nCall-ID: reg1\r\nCSeq: 1 REGISTER\r\n"
        b"Supported: path, outbound\r\nContact: <sip:5001@192.0.2.7:40000;transport=tcp>\r\n"
        b"Content-Length: 0\r\n\r\n")
    proxy.receive(register, TCP_CLIENT)
    out = [parse_message(data) for data, dest in sent if dest.port == BACKEND.port]
    assert len(out) == 1
    assert f"@{PROXY_HOST}:{OWN};lr;ob>" in out[0].header("path")


def test_a_single_process_writes_its_public_address_as_before():
    sent: list = []
    proxy = core(clock=Clock(), send=lambda data, dest: sent.append((data, dest)),
                 config=config_with(proxy={"nat_uac_test": 0}))
    proxy.receive(valid_invite(), client_source())
    invite = parse_message(sent[-1][0])
    assert f"{PROXY_HOST}:{PROXY_PORT};" in invite.header("via")
    mac = proxy.signer.dialog(invite.call_id, invite.from_tag)
    assert invite.headers("record-route") == [f"<sip:{PROXY_HOST}:{PROXY_PORT};lr;sg={mac}>"]


class _Socket:
    def __init__(self, name: str, sent: list) -> None:
        self.host, self.name, self.sent = PROXY_HOST, name, sent

    def send(self, data: bytes, host: str, port: int) -> bool:
        self.sent.append((self.name, port))
        return True


def test_what_goes_to_a_backend_leaves_from_the_workers_own_socket():
    from sipgw.proxy.outbound import Outbound
    from sipgw.proxy.trace import Tap
    from sipgw.proxy.transport import Destination

    sent: list = []
    outbound = Outbound(None, FlowTable(), Tap())
    outbound.attach(udp=[_Socket("public", sent)], streams={}, on_failure=[],
                    backend_udp=_Socket("own", sent),
                    is_backend=lambda dest: dest.port == BACKEND.port)
    outbound.send(b"to the backend", BACKEND)
    outbound.send(b"to a client", Destination(transport="udp", host="192.0.2.99", port=5062))
    assert sent == [("own", BACKEND.port), ("public", 5062)]


def test_a_connection_to_the_workers_own_listener_from_a_backends_address_is_that_backend():
    """A backend over TCP or TLS calls a browser by Path from a port of its choosing."""
    from sipgw.proxy.backends import Backend, Backends
    from sipgw.proxy.transport import Destination

    backends = Backends(Backend(uri=f"sip:{BACKEND.host}:5061;transport=tls",
                                destination=Destination(transport="tls", host=BACKEND.host,
                                                        port=5061)),
                        own=frozenset({("tcp", OWN), ("tls", OWN + 10)}))

    def source(transport: str, host: str, local_port: int) -> Source:
        return Source(transport=transport, host=host, port=45123, local_host=PROXY_HOST,
                      local_port=local_port, flow_id=3)

    assert backends.is_backend(source("tls", BACKEND.host, OWN + 10))
    assert backends.is_backend(source("tcp", BACKEND.host, OWN))
    # Not on the public listener, not from another address, never over UDP (spoofable).
    assert not backends.is_backend(source("tls", BACKEND.host, PROXY_PORT))
    assert not backends.is_backend(source("tls", "192.0.2.99", OWN + 10))
    assert not backends.is_backend(source("udp", BACKEND.host, OWN))
