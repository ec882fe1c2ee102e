"""Who the backends are: the dispatcher's destinations, or, in a proxy built without a
dispatcher (the relay's unit tests), the one backend it was given.

Requests from a backend are trusted: no AUTH step, routed towards clients.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipgw.proxy.dispatcher import Dispatcher
from sipgw.proxy.transport import Destination


@dataclass(frozen=True, slots=True, kw_only=True)
class Backend:
    """The first destination: where sipgw guesses its own address from."""

    uri: str
    destination: Destination


class Backends:
    def __init__(self, backend: Backend, dispatcher: Dispatcher | None = None, *,
                 own: frozenset[tuple[str, int]] = frozenset()) -> None:
        """``own``: a worker's own TCP and TLS listeners, ``(transport, port)``, that only
        backends are told of (``Identity.facing``)."""
        self.backend = backend
        self.dispatcher = dispatcher
        self.own = own

    def configure(self, backend: Backend) -> None:
        self.backend = backend

    def is_backend(self, peer) -> bool:
        """Is ``peer`` (a Source or a Destination: transport, host and port) one of our
        backends? The transport counts (Kamailio's ds_is_from_list): a browser behind nginx
        on a backend's host comes from nginx's port, a TCP phone there from a port of its
        own, and either may be the number of the backend's UDP port.

        A backend calling a browser by Path, or sending an in-dialog request, over TCP or
        TLS connects to the worker's own listener from a port of its own choosing: a
        connection there from a backend's address is that backend (a connection, unlike
        a datagram, cannot come from an address it does not have)."""
        if self.dispatcher is not None:
            if self.dispatcher.is_backend(peer):
                return True
        else:
            dest = self.backend.destination
            if (peer.transport, peer.host, peer.port) == (dest.transport, dest.host, dest.port):
                return True
        return bool(self.own) and (peer.transport, getattr(peer, "local_port", None)) in \
            self.own and self.is_backend_host(peer.host)

    def is_backend_address(self, host: str, port: int) -> bool:
        """Is ``host:port`` a backend's, over whatever transport?"""
        if self.dispatcher is not None:
            return self.dispatcher.is_backend_address(host, port)
        dest = self.backend.destination
        return (host, port) == (dest.host, dest.port)

    def is_backend_host(self, host: str) -> bool:
        """Is ``host`` the address of a backend, whatever the port it sends from?"""
        if self.dispatcher is not None:
            return self.dispatcher.is_backend_host(host)
        return host == self.backend.destination.host
