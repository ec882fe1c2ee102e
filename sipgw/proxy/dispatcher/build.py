"""The dispatcher from ``[dispatcher]``: the list, probes through the relay.

Kept here so that ``service.py`` stays a list of calls: build at start (a bad list stops the
start), reconfigure on SIGHUP (a bad list keeps the running one and says why).
"""

from __future__ import annotations

import socket

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipgw.config import Config
from sipgw.proxy.dispatcher import Dispatcher
from sipgw.proxy.dispatcher.icmp import UnreachableDetector
from sipgw.proxy.dispatcher.listfile import (
    ListFileError,
    check_uri,
    from_destinations,
    load_list,
)
from sipgw.proxy.relay import Relay
from sipgw.proxy.stats import Stats
from sipgw.proxy.transport import Destination, is_ip, uri_destination

log = Logger(namespace="sipgw.dispatcher")


def resolve_uri(text: str) -> Destination:
    """A destination URI → where to send: RFC 3263 without SRV, the host resolved once
    (at load and reload; per-message DNS would stall the relay)."""
    dest = uri_destination(check_uri(text))
    if not is_ip(dest.host):
        try:
            info = socket.getaddrinfo(dest.host, dest.port, type=socket.SOCK_DGRAM)
        except socket.gaierror as e:
            raise ValueError(f"cannot resolve {dest.host}: {e.strerror}") from None
        dest = Destination(transport=dest.transport, host=str(info[0][4][0]), port=dest.port)
    return dest


def build_dispatcher(clock: IReactorTime, stats: Stats, relay: Relay, config: Config, *,
                     icmp: bool = True) -> Dispatcher:
    """A loaded dispatcher probing through ``relay``; ListFileError when the list is bad.
    ``icmp``: also notice ICMP unreachable with sockets of its own (not in unit tests)."""

    def unreachable(dest: Destination) -> None:
        # Branches waiting on it fail over now; then it is marked down (if not already).
        relay.transport_failed(dest.host, dest.port, dest.transport)
        dispatcher.transport_error(dest.host, dest.port)

    dispatcher = Dispatcher(
        clock=clock,
        stats=stats,
        settings=config.dispatcher,
        inline=from_destinations(config.dispatcher.destinations, config.dispatcher.setid),
        resolve=resolve_uri,
        send_request=relay.send_request,
        detector=UnreachableDetector(clock, unreachable) if icmp else None,
        max_calls=config.limits.max_dialogs,
        fail_waiting=relay.transport_failed,
    )
    dispatcher.reload()
    return dispatcher


def reconfigure_dispatcher(dispatcher: Dispatcher, config: Config) -> None:
    """SIGHUP: new settings, the list read again; a bad list keeps the running one."""
    dispatcher.configure(
        config.dispatcher,
        from_destinations(config.dispatcher.destinations, config.dispatcher.setid),
        max_calls=config.limits.max_dialogs,
    )
    try:
        dispatcher.reload()
    except ListFileError as e:
        log.error("dispatcher reload refused, keeping the running list: {err}", err=e)


def check_destinations(config: Config) -> list[str]:
    """``sipgw serve`` (and ``--check``) before anything starts: the list file parses and
    every destination resolves; its warnings. Raises ListFileError naming file and line."""
    d = config.dispatcher
    dlist = load_list(d.list_file) if d.list_file else from_destinations(d.destinations, d.setid)
    for entry in dlist.entries:
        try:
            destination = resolve_uri(entry.uri)
        except ValueError as e:
            raise ListFileError(f"{entry.uri}: {e}", path=dlist.source, line=entry.line) from None
        if destination.transport == "tls" and not config.listen.tls:
            # Its answers would name, and its requests come back to, a listener we lack.
            raise ListFileError(f"{entry.uri}: a backend over TLS needs listen.tls",
                                path=dlist.source, line=entry.line)
    return list(dlist.warnings)
