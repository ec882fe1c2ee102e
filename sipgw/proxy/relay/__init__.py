"""Stateful relay (RFC 3261 §16.6–§16.10): carries out what the transaction machines ask.

One ``ServerCtx`` per request received (the response context of §16), one ``ClientCtx`` per
branch sent. The transaction machines decide; this module sends, arms the one timer each
transaction needs, and applies the proxy rules on top: 100 Trying, no forwarding of 100,
the best final response only once, every 2xx, timer C, CANCEL matching, 408/503 when a
branch dies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipgw.config import LimitsConfig, ProxyConfig, TimersConfig
from sipgw.proxy.dialogs import Dialogs
from sipgw.proxy.identity import BRANCH_PREFIX, Identity, loop_hash, make_branch
from sipgw.proxy.limits import CapLog
from sipgw.proxy.relay.retired import Retired, RetiredTable
from sipgw.proxy.relay.timerq import Entry, TimerQueue
from sipgw.proxy.replies import Replies, SendFunction, response_destination, via_destination
from sipgw.proxy.signing import PARAM as SIGNATURE
from sipgw.proxy.signing import RouteSigner
from sipgw.proxy.stats import Stats
from sipgw.proxy.transport import Destination, Source, forbidden_target
from sipgw.sip.effects import Deliver, Send, Terminated, Timeout, TransportError
from sipgw.sip.message import Request, Response, build_cancel
from sipgw.sip.timers import TimerConfig
from sipgw.sip.transaction import (
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    invite_key_for_cancel,
    server_key,
)

log = Logger(namespace="sipgw.relay")


class ServerCtx:
    """A request we received and must answer: its transaction and its branches."""

    __slots__ = (
        "key", "tx", "request", "dest", "timer", "branches", "final_sent", "cancelled",
        "timer_c", "on_branch_failed",
    )

    def __init__(self, key, tx, request: Request, dest: Destination) -> None:
        self.key = key
        self.tx = tx
        self.request = request
        self.dest = dest
        self.timer = None
        self.branches: list[ClientCtx] = []
        self.final_sent = False
        self.cancelled = False
        self.timer_c: Entry | None = None
        # The DISPATCH step's failover hook: ``(dest, status, local) -> bool``, called when
        # a branch ends with a final status >= 300 (``local``: our 408 timeout or 503
        # transport error); True means it sent the request on a new branch instead.
        self.on_branch_failed = None


class ClientCtx:
    """One branch: a request we sent and its client transaction."""

    __slots__ = (
        "key", "tx", "request", "dest", "timer", "server", "provisional", "cancel_pending",
        "is_cancel", "done", "on_result", "retired",
    )

    def __init__(self, key, tx, request: Request, dest: Destination, server: ServerCtx | None):
        self.key = key
        self.tx = tx
        self.request = request
        self.dest = dest
        self.timer = None
        self.server = server
        self.provisional = False
        self.cancel_pending = False
        self.is_cancel = False
        self.done = False
        self.retired = False  # its transaction moved to Relay.retired_clients
        self.on_result = None  # a request of sipgw's own: ``(status, local)`` on its end


class Relay:
    def __init__(self, *, clock: IReactorTime, stats: Stats, send: SendFunction,
                 identity: Identity, signer: RouteSigner, replies: Replies,
                 dialogs: Dialogs | None, timers: TimersConfig, proxy: ProxyConfig,
                 limits: LimitsConfig, is_backend: Callable[[Destination], bool] | None = None
                 ) -> None:
        self.clock = clock
        # Asked only in a worker, which writes its own address toward the backends.
        self.is_backend = is_backend or (lambda peer: False)
        self.stats = stats
        self.send = send
        self.identity = identity
        self.signer = signer
        self.replies = replies
        self.dialogs = dialogs
        self.configure(timers, proxy, limits)
        self.servers: dict[tuple, ServerCtx] = {}
        self.clients: dict[tuple, ClientCtx] = {}
        self._ids = itertools.count(1)
        self.cap_log = CapLog(log, clock.seconds)
        # Each transaction's one timer, and timer C of each INVITE being forwarded.
        self.timers = TimerQueue(self.clock, self._fire)
        self.timers_c = TimerQueue(self.clock, self._timer_c_fired)
        # Transactions past their last decision, until their end timer (sipgw.proxy.relay.retired).
        self.retired_servers = RetiredTable(self.clock, self._inuse)
        self.retired_clients = RetiredTable(self.clock, self._inuse)

    def configure(self, timers: TimersConfig, proxy: ProxyConfig, limits: LimitsConfig) -> None:
        """[timers], proxy.max_forwards and limits.max_transactions, at start and reload:
        transactions already running keep the timers they started with."""
        self.timer_config = TimerConfig(t1=timers.t1, t2=timers.t2, t4=timers.t4,
                                        timer_b=timers.timer_b, timer_f=timers.timer_f)
        self.timer_c = timers.timer_c
        self.max_forwards = proxy.max_forwards
        self.max_transactions = limits.max_transactions

    # -- server side ------------------------------------------------------------------

    def find_server(self, request: Request) -> ServerCtx | None:
        return self.servers.get(server_key(request))

    def absorb(self, request: Request, source: Source) -> bool:
        """A retransmission, or the ACK of a non-2xx we sent: let its transaction take it."""
        key = server_key(request)
        ctx = self.servers.get(key)
        if ctx is None:
            gone = self.retired_servers.get(key)
            if gone is None:
                return False
            if gone.resend is not None:
                self.send(gone.resend, gone.dest)  # type: ignore[arg-type]
            return True
        self._run_server(ctx, ctx.tx.on_request(request, self.clock.seconds()))
        return True

    def new_server(self, request: Request, source: Source) -> ServerCtx | None:
        """Create the server transaction, or answer 503 when the table is full."""
        if len(self.servers) + len(self.clients) >= self.max_transactions:
            self.replies.reply(request, source, 503, "Service Unavailable",
                               [("Retry-After", "5")])
            self.cap_log.reached("limits.max_transactions",
                                 "transaction table full ({n}); {m} from {h} refused with 503",
                                 n=self.max_transactions, m=request.method, h=source.host)
            return None
        cls = InviteServerTransaction if request.method == "INVITE" else NonInviteServerTransaction
        tx = cls(request, reliable=source.reliable, timers=self.timer_config)
        key = server_key(request)
        ctx = ServerCtx(key, tx, request, response_destination(request, source))
        self.servers[key] = ctx
        self.stats.inc("tm:UAS_transactions")
        self._inuse()
        return ctx

    def respond(self, ctx: ServerCtx, status: int, reason: str, extra=None) -> None:
        """Answer a request from sipgw itself, through its server transaction."""
        resp = self.replies.local_response(ctx.request, status, reason, extra)
        if status >= 200:
            ctx.final_sent = True
            self._stop_timer_c(ctx)
        self._run_server(ctx, ctx.tx.respond(resp, self.clock.seconds()))

    def _run_server(self, ctx: ServerCtx, effects) -> None:
        for e in effects:
            t = type(e)
            if t is Send:
                self.send(e.message.to_bytes(), ctx.dest)
            elif t is Terminated:
                if self.servers.get(ctx.key) is ctx:
                    del self.servers[ctx.key]
                    self._inuse()
                self._stop_timer_c(ctx)
                # Break the server ↔ branch and server ↔ failover-hook cycles so that
                # refcounting frees them at once, instead of leaving thousands a second to
                # the cyclic collector (tests/proxy/relay/test_no_cycles.py).
                for branch in ctx.branches:
                    branch.server = None
                ctx.branches = []
                ctx.on_branch_failed = None
        if ctx.tx.absorbing() and self._retire_server(ctx):
            return
        self._arm(ctx, ctx.tx)

    # -- forwarding (§16.6) -----------------------------------------------------------

    def forward(
        self,
        ctx: ServerCtx,
        request: Request,
        target: Destination,
        *,
        inbound: str,
        record_route: bool,
        from_backend: bool = False,
    ) -> None:
        """Send a copy of ``request`` on a new branch to ``target``."""
        if forbidden_target(target.host):
            self.respond(ctx, 400, "Bad Destination Address")
            return
        if request.method == "BYE" and self.dialogs is not None:
            self.dialogs.ended(request)
        out = request.copy()
        _decrement_max_forwards(out, self.max_forwards)
        to_backend = self._to_backend(target)
        if record_route:
            sig = f";{SIGNATURE}={self.signer.dialog(request.call_id, request.from_tag)}"
            for rr in reversed(self.identity.record_route_pair(
                    inbound, target.transport, sig, from_backend=from_backend,
                    to_backend=to_backend)):
                out.prepend("record-route", rr)
        branch = make_branch(loop_hash(request), f"{next(self._ids):x}")
        out.prepend("via", self.identity.via(target.transport, branch, backend=to_backend))
        self._start_branch(ctx, out, branch, target, cancel=False)
        self.stats.inc("core:fwd_requests")
        if request.method == "INVITE" and self.timer_c:
            self._restart_timer_c(ctx)

    def _to_backend(self, target: Destination) -> bool:
        return self.identity.backend is not None and self.is_backend(target)

    def _start_branch(
        self,
        ctx: ServerCtx | None,
        out: Request,
        branch_id: str,
        target: Destination,
        *,
        cancel: bool,
        timers=None,
        on_result=None,
    ) -> ClientCtx:
        cls = InviteClientTransaction if out.method == "INVITE" else NonInviteClientTransaction
        key = (branch_id, out.method)
        tx = cls(out, reliable=target.reliable, timers=timers or self.timer_config, key=key)
        branch = ClientCtx(key, tx, out, target, ctx)
        branch.is_cancel = cancel
        branch.on_result = on_result
        self.clients[key] = branch
        if ctx is not None and not cancel:
            ctx.branches.append(branch)
        self.stats.inc("tm:UAC_transactions")
        self._inuse()
        self._run_client(branch, tx.start(self.clock.seconds()))
        return branch

    def send_request(self, request: Request, target: Destination, *, timeout: float,
                     on_result) -> None:
        """A request of sipgw's own (a dispatcher probe), on a client transaction whose
        timer F is ``timeout``; its outcome goes to ``on_result(status, local)`` only."""
        if forbidden_target(target.host):
            on_result(503, True)
            return
        branch = make_branch(loop_hash(request), f"{next(self._ids):x}")
        request.prepend("via", self.identity.via(target.transport, branch,
                                                 backend=self._to_backend(target)))
        timers = dataclasses.replace(self.timer_config, timer_f=timeout)
        self._start_branch(None, request, branch, target, cancel=False, timers=timers,
                           on_result=on_result)

    def forward_stateless(self, request: Request, target: Destination) -> None:
        """§16.11: an ACK for a 2xx goes end to end, without a transaction."""
        if forbidden_target(target.host):
            return
        out = request.copy()
        _decrement_max_forwards(out, self.max_forwards)
        # The same incoming branch must give the same outgoing branch (§16.11).
        incoming = request.top_via.branch or request.header("via") or ""
        txid = hashlib.blake2s(incoming.encode("latin-1"), digest_size=6).hexdigest()
        out.prepend("via", self.identity.via(target.transport,
                                             make_branch(loop_hash(request), txid),
                                             backend=self._to_backend(target)))
        self.send(out.to_bytes(), target)
        self.stats.inc("core:fwd_requests")

    # -- CANCEL (§16.10) ----------------------------------------------------------------

    def cancel(self, request: Request, source: Source) -> None:
        invite_key = invite_key_for_cancel(request)
        invite = self.servers.get(invite_key)
        if invite is None and self.retired_servers.get(invite_key) is not None:
            # Answered already and only absorbing retransmissions: nothing left to cancel.
            ctx = self.new_server(request, source)
            if ctx is not None:
                self.respond(ctx, 200, "OK")
            return
        if invite is None or invite.request.method != "INVITE":
            self.replies.reply(request, source, 481, "Call/Transaction Does Not Exist")
            return
        ctx = self.new_server(request, source)
        if ctx is None:
            return
        self.respond(ctx, 200, "OK")
        if invite.final_sent or invite.cancelled:
            return
        invite.cancelled = True
        for branch in invite.branches:
            self._cancel_branch(branch)

    def _cancel_branch(self, branch: ClientCtx) -> None:
        if branch.done:
            return
        if not branch.provisional:
            # §9.1: no CANCEL before a provisional response; send it when one arrives.
            branch.cancel_pending = True
            return
        # §9.1: same branch as the request it cancels, so it reaches the same transaction.
        self._start_branch(None, build_cancel(branch.request), branch.key[0], branch.dest,
                           cancel=True)

    # -- responses (§16.7) --------------------------------------------------------------

    def on_response(self, response: Response, source: Source) -> None:
        via = response.top_via
        branch = via.branch or ""
        if not branch.startswith(BRANCH_PREFIX) or not self.identity.is_us(via.host, via.port):
            # §16.7 step 1 / §18.1.2: not ours; a proxy drops it.
            self.stats.inc("core:drop_replies")
            return
        key = (branch, response.cseq[1])
        ctx = self.clients.get(key)
        if ctx is None:
            gone = self.retired_clients.get(key)
            if gone is None:
                self._forward_response_stateless(response)
            else:
                self._retired_response(gone, response)
            return
        self._run_client(ctx, ctx.tx.on_response(response, self.clock.seconds()))

    def _forward_response_stateless(self, response: Response) -> None:
        """§16.11: late 2xx retransmissions and strays, routed by the next Via."""
        up = response.copy()
        up.pop_first("via")
        if not up.has("via"):
            self.stats.inc("core:drop_replies")
            return
        dest = via_destination(up)
        if dest is None or forbidden_target(dest.host):
            self.stats.inc("core:drop_replies")
            return
        self.send(up.to_bytes(), dest)
        self.stats.inc("core:fwd_replies")

    def _run_client(self, ctx: ClientCtx, effects) -> None:
        for e in effects:
            t = type(e)
            if t is Send:
                self.send(e.message.to_bytes(), ctx.dest)
            elif t is Deliver:
                self._branch_response(ctx, e.response)
            elif t is Timeout:
                self._branch_failed(ctx, 408, "Request Timeout")
            elif t is TransportError:
                self._branch_failed(ctx, 503, "Service Unavailable")
            elif t is Terminated:
                ctx.done = True
                if self.clients.get(ctx.key) is ctx:
                    del self.clients[ctx.key]
                    self._inuse()
                self._detach(ctx)
        if ctx.retired or (ctx.tx.absorbing() and self._retire_client(ctx)):
            return
        self._arm(ctx, ctx.tx)

    # -- retiring (sipgw.proxy.relay.retired) ---------------------------------------------------

    def _retire_server(self, ctx: ServerCtx) -> bool:
        """Keep only what the absorbing server transaction still needs, with its branches
        (an INVITE's branch is in Accepted once the 2xx went up); False while a branch
        still has work to do."""
        if self.servers.get(ctx.key) is not ctx:
            return False
        branches = list(ctx.branches)
        if not all(b.done or b.tx.absorbing() for b in branches):
            return False
        del self.servers[ctx.key]
        self._disarm(ctx)
        self._stop_timer_c(ctx)
        self._keep(self.retired_servers, ctx, None)
        for branch in branches:
            if not branch.done:
                self._retire_client(branch)
        ctx.branches = []
        ctx.on_branch_failed = None
        self._inuse()
        return True

    def _retire_client(self, ctx: ClientCtx) -> bool:
        if self.clients.get(ctx.key) is not ctx:
            return False
        del self.clients[ctx.key]
        self._disarm(ctx)
        ctx.retired = ctx.done = True
        server = ctx.server
        self._detach(ctx)
        self._keep(self.retired_clients, ctx, None if server is None else server.dest)
        self._inuse()
        if server is not None and server.tx.absorbing():
            self._retire_server(server)  # it was waiting for this branch (or retiring now)
        return True

    @staticmethod
    def _keep(table: RetiredTable, ctx, upstream: Destination | None) -> None:
        """Put ``ctx``'s transaction in ``table``: its key, the bytes its repeat() sends
        and where, until its end timer."""
        send = ctx.tx.repeat()
        table.add(Retired(ctx.key, ctx.request.method,
                          None if send is None else send.message.to_bytes(), ctx.dest, upstream),
                  ctx.tx.next_deadline())

    @staticmethod
    def _detach(branch: ClientCtx) -> None:
        """The branch leaves its server context's list (and the cycle between them)."""
        server = branch.server
        if server is not None:
            try:
                server.branches.remove(branch)
            except ValueError:
                pass
            branch.server = None

    def _retired_response(self, gone: Retired, response: Response) -> None:
        """What the retired client transaction would have done with ``response``."""
        status = response.status
        if status < 200:
            return  # absorbed
        if status < 300 and gone.method == "INVITE":
            # §16.7 step 5, RFC 6026 Accepted: every 2xx to an INVITE goes upstream.
            if gone.upstream is None:
                self._forward_response_stateless(response)
                return
            up = response.copy()
            up.pop_first("via")
            self.stats.inc("core:fwd_replies")
            self.send(up.to_bytes(), gone.upstream)
        elif gone.resend is not None and gone.dest is not None and status >= 300:
            self.send(gone.resend, gone.dest)  # the ACK again (§17.1.1.2)

    def _branch_response(self, ctx: ClientCtx, response: Response) -> None:
        server = ctx.server
        status = response.status
        if ctx.is_cancel:
            return  # the 200 to our CANCEL ends here (§16.10)
        if ctx.on_result is not None:
            if status >= 200:
                ctx.on_result(status, False)
            return
        if server is None:
            if 200 <= status < 300:
                self._forward_response_stateless(response)  # a late 2xx (§16.7 step 5)
            return
        if status < 200:
            if not ctx.provisional:
                ctx.provisional = True
                if ctx.cancel_pending:
                    self._cancel_branch(ctx)
            if server.request.method == "INVITE" and status > 100:
                self._restart_timer_c(server)  # §16.7 step 2
            if status == 100:
                return  # §16.7 step 3: never forwarded
        else:
            if status >= 300:
                if server.final_sent:
                    return  # one final response only (§16.7 step 6)
                if self._failover(server, ctx, status, local=False):
                    return  # sent to the next destination; the caller never sees this one
            self._stop_timer_c(server)
            server.final_sent = True
        if 200 <= status < 300 and self.dialogs is not None and (
            server.request.method == "INVITE"
        ):
            self.dialogs.confirmed(server.request, response)
        up = response.copy()
        up.pop_first("via")  # §16.7 step 9: our Via is ours alone
        self.stats.inc("core:fwd_replies")
        self._run_server(server, server.tx.respond(up, self.clock.seconds()))

    def _branch_failed(self, ctx: ClientCtx, status: int, reason: str) -> None:
        if ctx.on_result is not None:
            ctx.on_result(status, True)
            return
        server = ctx.server
        self.stats.inc("tm:timeouts")
        log.info(
            "{m} to {h}:{p} failed ({why})",
            m=ctx.request.method, h=ctx.dest.host, p=ctx.dest.port, why=reason,
        )
        if ctx.is_cancel or server is None or server.final_sent:
            return
        if server.cancelled:
            status, reason = 487, "Request Terminated"
        elif self._failover(server, ctx, status, local=True):
            return
        self.respond(server, status, reason)

    @staticmethod
    def _failover(server: ServerCtx, branch: ClientCtx, status: int, *, local: bool) -> bool:
        """Let the DISPATCH step send the request elsewhere, unless it was cancelled."""
        hook = server.on_branch_failed
        if hook is None or server.cancelled:
            return False
        return bool(hook(branch.dest, status, local))

    # -- timer C (§16.6 step 11, §16.8) -------------------------------------------------

    def _restart_timer_c(self, ctx: ServerCtx) -> None:
        self._stop_timer_c(ctx)
        ctx.timer_c = self.timers_c.at(self.clock.seconds() + self.timer_c, ctx)

    def _stop_timer_c(self, ctx: ServerCtx) -> None:
        if ctx.timer_c is not None:
            self.timers_c.cancel(ctx.timer_c)
            ctx.timer_c = None

    def _timer_c_fired(self, ctx: ServerCtx) -> None:
        ctx.timer_c = None
        if ctx.final_sent:
            return
        log.info("timer C fired for {cid}", cid=ctx.request.call_id)
        self.stats.inc("tm:timeouts")
        for branch in ctx.branches:
            if branch.done:
                continue
            if branch.provisional:
                self._cancel_branch(branch)  # its 487 then goes upstream
            else:
                branch.done = True
        if not any(b.provisional and not b.done for b in ctx.branches):
            self.respond(ctx, 408, "Request Timeout")

    # -- timers -------------------------------------------------------------------------

    def _arm(self, ctx, tx) -> None:
        """Keep the context's one timer entry on the transaction's next deadline."""
        deadline = tx.next_deadline()
        entry = ctx.timer
        if entry is not None:
            if entry[0] == deadline:
                return
            self.timers.cancel(entry)
            ctx.timer = None
        if deadline is not None:
            ctx.timer = self.timers.at(deadline, ctx)

    def _disarm(self, ctx) -> None:
        if ctx.timer is not None:
            self.timers.cancel(ctx.timer)
            ctx.timer = None

    def _fire(self, ctx) -> None:
        ctx.timer = None
        effects = ctx.tx.on_timer(self.clock.seconds())
        if type(ctx) is ServerCtx:
            self._run_server(ctx, effects)
            return
        if any(type(e) is Send for e in effects):
            self.stats.inc("tm:retransmissions")
        self._run_client(ctx, effects)

    def _inuse(self) -> None:
        self.stats.set("tm:inuse_transactions", len(self.servers) + len(self.clients)
                             + len(self.retired_servers) + len(self.retired_clients))

    def transport_failed(self, host: str, port: int, transport: str) -> None:
        """A connection could not be made: every branch waiting on it fails now."""
        now = self.clock.seconds()
        for ctx in list(self.clients.values()):
            d = ctx.dest
            if (d.host, d.port, d.transport) == (host, port, transport) and not ctx.done:
                self._run_client(ctx, ctx.tx.on_transport_error(now))


def _decrement_max_forwards(msg: Request, default: int) -> None:
    """§16.6 step 3: decrement, or add one when the request had none."""
    mf = msg.header("max-forwards")
    if mf is None:
        msg.prepend("max-forwards", str(default))
    else:
        msg.set("max-forwards", str(max(int(mf) - 1, 0)))
