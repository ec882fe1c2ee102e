"""NATDETECT and the way back to clients: Kamailio's force_rport, nat_uac_test,
add_contact_alias and handle_ruri_alias, on top of the pure rules in ``sipgw.sip.nat``.

WebSocket clients are always behind a NAT (a browser's Contact names ``x.invalid``);
other clients are tested with ``proxy.nat_uac_test`` (Kamailio's default 19). A NATed
client's requests and replies get ``received``/``rport`` on the top Via and the alias on
every Contact, so a backend that later sends a request to that Contact reaches the right
connection (or, over UDP, the right public address and port).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from sipgw.proxy.runtime.log import debugging
from sipgw.proxy.signing import RouteSigner
from sipgw.proxy.transport import RELIABLE, Destination, FlowTable, Source, transport_address
from sipgw.sip.address import STAR, message_address_list, remember_address_list
from sipgw.sip.errors import ParseError
from sipgw.sip.message import Field, Message, Request
from sipgw.sip.nat import (
    NatTest,
    add_alias,
    nat_uac_test,
    needs_alias,
    split_alias_mac,
    take_alias,
)
from sipgw.sip.uri import SipURI

log = Logger(namespace="sipgw.nat")

WEBSOCKET = frozenset({"ws", "wss"})


class FlowGone(Exception):
    """The alias names a connection that is closed: the client is unreachable now."""

    def __init__(self, transport: str, host: str, port: int) -> None:
        super().__init__(f"no open {transport} flow to {host}:{port}")
        self.transport = transport
        self.host = host
        self.port = port


class ForgedAlias(Exception):
    """A client's request names an alias sipgw did not write (no MAC, or a wrong one)."""


class Nat:
    def __init__(
        self,
        signer: RouteSigner,
        flows: FlowTable | None = None,
        tests: NatTest = NatTest(19),
        is_client: Callable[[str, int], bool] = lambda host, port: False,
    ) -> None:
        self.signer = signer
        self.flows = flows
        self.tests = tests  # for UDP/TCP/TLS clients; WebSocket adds its own test
        self.is_client = is_client

    def configure(self, tests: NatTest) -> None:
        """proxy.nat_uac_test, at start and reload."""
        self.tests = tests

    # -- from clients -------------------------------------------------------------------

    def from_client(self, msg: Message, source: Source) -> NatTest:
        """NATDETECT for a request or reply from a client; returns the tests that fired."""
        contacts = msg.headers("contact")
        uri = _first_contact_uri(msg, contacts)
        via = msg.top_via
        tests = self.tests | NatTest.WEBSOCKET if source.transport in WEBSOCKET else self.tests
        found = nat_uac_test(
            tests,
            source_host=source.host, source_port=source.port,
            source_transport=source.transport,
            via_host=via.host.strip("[]"), via_port=via.port,
            contact=uri, body=msg.body,
        )  # fmt: skip
        if not found:
            return found
        if debugging():  # the Kamailio guide's grep: "NAT detected"
            log.debug("NAT detected for {a} ({why}): Via {v}, Contact {c}", a=transport_address(source.transport, source.host, source.port), why=found.name or int(found), v=via.sent_by, c=uri)  # noqa: E501
        if isinstance(msg, Request):
            _force_rport(msg, source)
        if contacts:
            _alias_contacts(msg, source, self.signer.alias)
        return found

    # -- towards clients ----------------------------------------------------------------

    def toward_client(self, req: Request, target: Destination, *,
                      signed_only: bool = False) -> Destination:
        """handle_ruri_alias: the alias in the Request-URI, if any, is where it goes.

        The alias is removed from the Request-URI. A malformed one raises ``ParseError``
        (400); one naming a closed connection raises ``FlowGone``; one naming an address
        that is not a client (ourselves, a backend) is not followed. With ``signed_only``
        (the request comes from a client), an alias without sipgw's MAC raises
        ``ForgedAlias``: only what sipgw wrote may aim a client's request.
        """
        if "alias=" not in req.uri:
            return target
        uri = req.parsed_uri()
        if not isinstance(uri, SipURI):
            return target
        bare, alias = take_alias(uri)
        if alias is None:
            return target  # "alias=" was in the user part or another parameter's name
        if signed_only and not self.signer.alias_ok(*split_alias_mac(uri.param("alias") or "")):
            raise ForgedAlias(uri.param("alias"))
        req.uri = str(bare)
        host, port, transport = alias
        if transport not in RELIABLE:
            # Over UDP there is no flow to check; never let an alias turn us towards
            # ourselves or a backend (a client could otherwise reach it as if trusted).
            if not self.is_client(host, port):
                log.info("alias to udp:{h}:{p} is not a client; not followed", h=host, p=port)
                return target
            return Destination(transport="udp", host=host, port=port)
        flow = self.flows.find(transport, host, port) if self.flows is not None else None
        if flow is None:
            raise FlowGone(transport, host, port)
        return Destination(transport=transport, host=host, port=port, flow_id=flow.flow_id)


def _first_contact_uri(msg: Message, values: list[str]) -> SipURI | None:
    if not values:
        return None
    try:
        parsed = message_address_list(msg, values[0])
    except ParseError:
        return None
    if parsed is STAR or not parsed:
        return None
    uri = parsed[0].uri  # type: ignore[index]
    return uri if isinstance(uri, SipURI) else None


def _force_rport(req: Request, source: Source) -> None:
    """RFC 3581 §4 with Kamailio's force_rport: received and rport on the top Via."""
    via = req.top_via.with_param("received", source.host).with_param("rport", str(source.port))
    req.replace_top_via(via)


def _alias_contacts(msg: Message, source: Source, sign: Callable[[str], str]) -> None:
    """add_contact_alias on every Contact value (REGISTER may carry several)."""
    rewritten = []
    for value in msg.headers("contact"):
        try:
            parsed = message_address_list(msg, value)
        except ParseError:
            return  # leave a Contact we cannot read alone; the backend will judge it
        if parsed is STAR:
            return
        out = []
        for addr in parsed:  # type: ignore[union-attr]
            uri = addr.uri
            if isinstance(uri, SipURI) and needs_alias(uri, source.host, source.port,
                                                       source.transport):
                addr = addr.replace(uri=add_alias(uri, source.host, source.port,
                                                  source.transport, sign))
            out.append(addr)
        text = ", ".join(str(addr) for addr in out)
        remember_address_list(msg, text, out)
        rewritten.append(text)
    lines = iter(rewritten)
    fields = msg.fields
    for i, f in enumerate(fields):  # in place: the header order stays as the client wrote it
        if f.key == "contact":
            fields[i] = Field("contact", f.name, next(lines))
