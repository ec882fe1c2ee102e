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
    def __init__(self, backend: Backend, dispatcher: Dispatcher | None = None) -> None:
        self.backend = backend
        self.dispatcher = dispatcher

    def configure(self, backend: Backend) -> None:
        self.backend = backend

    def is_backend(self, peer) -> bool:
        """Is ``peer`` (a Source or a Destination: host and port) one of our backends?"""
        if self.dispatcher is not None:
            return self.dispatcher.is_backend(peer)
        dest = self.backend.destination
        return peer.host == dest.host and peer.port == dest.port

    def is_backend_host(self, host: str) -> bool:
        """Is ``host`` the address of a backend, whatever the port it sends from?"""
        if self.dispatcher is not None:
            return self.dispatcher.is_backend_host(host)
        return host == self.backend.destination.host
