"""Connections sipgw opens over TLS: to its backends only, with their certificate checked;
a TLS client whose connection is gone is not connected to."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory

from sipgw.config import TlsConfig
from sipgw.proxy.transport import FlowTable
from sipgw.proxy.transport.tls import BackendTls, TlsTransport
from sipgw.sip.parser import Limits

BACKEND = ("192.0.2.5", 5061)


def make_stack():
    reactor = MemoryReactorClock()
    failed: list = []
    stack = TlsTransport(reactor, reactor, FlowTable(), lambda data, src: None, limits=Limits(),
                         on_send_failed=lambda h, p, t: failed.append((h, p, t)),
                         backend=BackendTls(TlsConfig(), is_backend=lambda host, port:
                                            (host, port) == BACKEND))
    return reactor, stack, failed


def test_a_message_for_a_backend_opens_one_tls_connection_to_it():
    reactor, stack, failed = make_stack()
    stack.send(b"OPTIONS", *BACKEND, None)
    stack.send(b"OPTIONS", *BACKEND, None)  # the same connection, still being made
    [(host, port, factory, timeout, _)] = reactor.tcpClients
    assert (host, port, failed) == (*BACKEND, [])
    assert isinstance(factory, TLSMemoryBIOFactory)


def test_a_message_for_a_tls_client_without_its_connection_fails_at_once():
    reactor, stack, failed = make_stack()
    stack.send(b"BYE", "192.0.2.9", 5061, None)
    assert reactor.tcpClients == []
    assert failed == [("192.0.2.9", 5061, "tls")]
