"""Who may talk to sipgw (REQINIT): source addresses per listener transport, User-Agents.

Addresses (``[acl]`` allow/deny lists of CIDRs, for every transport and per transport):

* an address in ``acl.deny`` or ``acl.<transport>_deny`` is refused: deny wins;
* otherwise, each allow list that applies and is not empty (``acl.allow``,
  ``acl.<transport>_allow``) must contain it; an empty allow list allows everybody;
* the dispatcher's destinations are always admitted, whatever the lists say: an operator
  cannot cut sipgw off its own backends by mistake.

The address is ``Source.host``: for WebSocket behind a trusted reverse proxy, the client's
own (``transport.ws.client_address``). A refused message is dropped before parsing, with no
answer, and its TCP/TLS/WebSocket connection closed (``acl:denied_msgs``); a new connection
from a refused address is closed as soon as it is accepted (``Proxy.screen``). Decisions are
cached per (transport, address), so the cost per message is one dict lookup.

User-Agents (``acl.user_agent_deny``): a request whose User-Agent contains one of the listed
strings, ignoring case, is dropped without an answer (``acl:denied_user_agent``): scanners
learn nothing, not even that a SIP server listens. The default lists the User-Agents of the
well-known SIP scanners.

Every refusal is logged, at most one line per 10 s per key however many there are.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from twisted.logger import Logger

from sipgw.config import AclConfig
from sipgw.proxy.limits import CapLog
from sipgw.proxy.stats import StatDef, Stats
from sipgw.proxy.transport import Source, in_networks
from sipgw.sip.message import Request

log = Logger(namespace="sipgw.acl")

ACL_STATS = (
    StatDef(group="acl", name="denied_msgs", help="messages dropped unread because their source address is refused by the [acl] lists"),  # noqa: E501
    StatDef(group="acl", name="denied_user_agent", help="requests dropped without an answer because their User-Agent is in acl.user_agent_deny"),  # noqa: E501
)

TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")
_CACHE_MAX = 4096


class Acl:
    def __init__(self, stats: Stats, settings: AclConfig, *, now: Callable[[], float],
                 is_backend_host: Callable[[str], bool] = lambda host: False) -> None:
        self.stats = stats
        self.is_backend_host = is_backend_host
        self.cap_log = CapLog(log, now)
        self._cache: dict[tuple[str, str], bool] = {}
        stats.declare(ACL_STATS)
        self.configure(settings)

    def configure(self, settings: AclConfig) -> None:
        self.settings = settings
        self._cache.clear()
        # transport -> (its allow list, its deny list)
        self._lists = {t: (getattr(settings, f"{t}_allow"), getattr(settings, f"{t}_deny"))
                       for t in TRANSPORTS}
        # Is there any address list at all (else the address check is skipped)?
        self.by_address = bool(settings.allow or settings.deny
                               or any(a or d for a, d in self._lists.values()))
        agents = [re.escape(s) for s in settings.user_agent_deny if s]
        self._agents = re.compile("|".join(agents), re.IGNORECASE) if agents else None

    # -- addresses, before parsing ------------------------------------------------------

    def admits(self, source: Source) -> bool:
        ok = self.allowed(source.transport, source.host)
        if not ok:
            self.stats.values["acl:denied_msgs"] += 1
            self.cap_log.reached("acl", "{t} message from {h}:{p} dropped: address refused",
                                 t=source.transport, h=source.host, p=source.port)
        return ok

    def allowed(self, transport: str, host: str) -> bool:
        """May ``host`` send over ``transport``? Decided once per pair, then remembered."""
        key = (transport, host)
        ok = self._cache.get(key)
        if ok is None:
            ok = self._decide(transport, host)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = ok
        return ok

    def _decide(self, transport: str, host: str) -> bool:
        s = self.settings
        allow, deny = self._lists.get(transport, ((), ()))
        if in_networks(host, s.deny) or in_networks(host, deny):
            ok = False
        else:
            ok = ((not s.allow or in_networks(host, s.allow))
                  and (not allow or in_networks(host, allow)))
        return ok or self.is_backend_host(host)

    # -- User-Agent, on parsed requests -------------------------------------------------

    def denied_agent(self, req: Request, source: Source) -> bool:
        agents = self._agents
        if agents is None:
            return False
        ua = req.header("user-agent")
        if ua is None or agents.search(ua) is None:
            return False
        self.stats.values["acl:denied_user_agent"] += 1
        self.stats.values["core:drop_requests"] += 1
        self.cap_log.reached("acl.user_agent_deny", "{m} from {h}:{p} dropped: User-Agent {ua!r}",
                             m=req.method, h=source.host, p=source.port, ua=ua[:80])
        return True
