"""Overload control: past its capacity, sipgw sheds new work first (issue 16).

The signal is the load monitor's (``load.py``): every tick (100 ms) ``on_load`` gets how
late sipgw is: the least a datagram read in that tick had waited in the kernel, how late
the tick itself ran, or how long the bytes left unread on a stream connection will wait,
whichever is worst. Over streams a storm from many connections shows as lag, one from a
peer sending faster than sipgw reads it as that wait. From it ``Overload`` keeps
``admit``, the share of new initial requests over UDP sipgw takes on, somewhat as TCP
keeps its window (``Share``):

- later than ``overload.shed_delay`` two ticks in a row, sipgw busy on the CPU at least
  half the time: cut, by up to half at once the further over it is (four times over:
  half). Not again until what sipgw reads arrived after that cut (what it reads
  meanwhile queued up before it and says nothing of it), or ``PATIENCE`` passed (a queue
  seconds deep must not wait seconds between cuts), and only if sipgw is no less late
  than at the cut: a backlog draining shows the cut was enough;
- less than half that late: grown back by ``INCREASE`` a tick, so that a whole refusal
  takes a few seconds to wear off;
- in between: held. That band is the hysteresis: the share settles where sipgw keeps up
  instead of flapping on and off.

Over TCP, TLS and WebSocket there is no collapse to prevent: nobody retransmits, and TCP's
flow control bounds what a connection queues, so past capacity requests wait longer but
as many are served; refusing some shortens the wait of the others, it does not raise the
goodput. And a refusal costs more there: JsSIP does not retry a REGISTER answered 503
until its WebSocket reconnects, so a browser refused in a registration storm (its node
died, its users all come back at once) stays unregistered. So requests over a stream
have their own share, ``stream_admit``, kept the same way on their own signal (the lag
and the stream wait: a UDP socket's queue is not theirs to wait in) against
``overload.stream_shed_delay``, seconds: cut only once an answer would come too late to
be of use.

What is never shed: responses, ACK, CANCEL and requests with a To tag (in-dialog, BYE
among them); retransmissions of requests already being processed, which the route script
hands to their transaction before it asks here; OPTIONS to sipgw itself, answered by
REQINIT before; and every request from a backend (explicit configuration, trusted): a
call from the contact center to a browser costs no authentication, and the load that
sipgw sheds is the clients' (a registration storm that slows the loop must not turn the
calls to the browsers already back away; seen as a 503 to the registrar's INVITE right
after a node's kill -9). A new request is admitted when a hash of its Call-ID (salted anew every
``ROTATION`` seconds) falls below the share: a request, its retransmissions and the
authorized retry after a digest challenge (same Call-ID) get the same verdict, so the
work spent on the challenge is not thrown away, and a client refused now draws again when
it comes back. The others are refused statelessly, before AUTH looks anything up: 503
with a Retry-After spread over a range that grows with the share refused (RFC 3261
§21.5.4), from ``overload.retry_after`` up to ``overload.retry_after_max``, so the
refused do not all come back at once.

Over UDP a refusal is answered only for the Call-IDs just past the share, as many as
``ANSWERED`` (half) per request taken on, or one in twenty new requests if that is more;
the others are dropped unread. When sipgw refuses
most, answering all costs more than the answers save (a REGISTER storm at four times the
capacity: 55-80 % of it served when every refusal was answered in some runs, as its
phases of answering ran sipgw late again), and a phone whose request is dropped simply
retransmits and draws again.

Later than ``overload.drop_delay`` with half of new requests or more refused already,
even answering costs too much (a 503 and its ACK cost about a tenth of a call; a late
spike alone is no reason to drop, and the retransmissions of what is dropped add load): a
refused request over UDP is dropped unread, decided from the datagram's first bytes
(method, To tag, Call-ID) before it is parsed; its sender retransmits and draws again.
This holds until sipgw has been less than half that late for ``DROP_HOLD`` seconds. Over
TCP, TLS and WebSocket a refused request is always answered: nobody retransmits on those.
"""

from __future__ import annotations

import re
import struct
import time
import zlib
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipgw.config import OverloadConfig
from sipgw.proxy.limits import CapLog
from sipgw.proxy.replies import Replies, local_tag
from sipgw.proxy.stats import StatDef, Stats
from sipgw.proxy.transport import Source
from sipgw.sip.message import Request

log = Logger(namespace="sipgw.overload")

INCREASE = 0.03  # of the share, per tick (100 ms) once sipgw is on time again
LOW_WATER = 0.5  # of a threshold: below it sipgw counts as on time
LARGEST_CUT = 0.5  # one cut keeps at least half of the share,
SMALLEST_CUT = 0.9  # and at most 90 % of it
PATIENCE = 0.3  # seconds: the longest a cut is given to show, however deep the queue
DRAINING = 0.9  # of the delay at the last cut: less, and the backlog is draining
DROP_SHARE = 0.5  # dropping starts only once at most this share is taken on
ANSWERED = 0.5  # over UDP, refusals answered 503: at most this many per request taken on,
ANSWERED_FLOOR = 0.05  # or this share of all new requests (a deep storm still learns
# Retry-After)
BUSY = 0.5  # of a tick's wall time spent on the CPU: less, and sipgw is not the bottleneck
DROP_HOLD = 2.0  # seconds under half of drop_delay before refusals are answered again
ROTATION = 4.0  # seconds between two salts of the Call-ID hash

OVERLOAD_STATS = (
    StatDef(group="core", name="shed_503",
            help="new initial requests refused with 503 and a Retry-After because sipgw "
                 "was late (overload.shed_delay; over TCP, TLS and WebSocket "
                 "overload.stream_shed_delay)"),
    StatDef(group="core", name="shed_dropped",
            help="new initial requests dropped unread and unanswered because sipgw was "
                 "very late (overload.drop_delay)"),
    StatDef(group="core", name="shed_percent", gauge=True,
            help="share of new initial requests being refused now, in percent, over UDP "
                 "or over streams whichever is more (0 when sipgw keeps up)"),
    StatDef(group="core", name="shed_dropping", gauge=True,
            help="1 while refused requests over UDP are dropped unread instead of "
                 "answered 503"),
)

# What may be dropped before parsing: requests that start something new. OPTIONS is not
# among them (keepalives and probes of sipgw itself are always answered), nor anything
# that lives in a dialog (BYE, ACK, CANCEL, PRACK, UPDATE, INFO); a NOTIFY or a re-INVITE
# with a To tag is kept by the To tag.
_NEW_WORK = frozenset({b"REGISTER", b"INVITE", b"SUBSCRIBE", b"MESSAGE", b"PUBLISH",
                       b"REFER", b"NOTIFY"})
# A To header (or its compact form t) with a tag parameter, folded lines included. A tag
# inside a URI's angle brackets matches too: kept, the safe way to be wrong.
_TO_TAG = re.compile(rb"\r\n(?:to|t)[ \t]*:(?:[^\r\n]|\r\n[ \t])*?;[ \t]*tag[ \t]*=", re.I)
_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.I)
_HASH_SPAN = float(1 << 32)


class Share:
    """The share of new initial requests taken on, kept on one signal against one
    threshold (the module's docstring says how)."""

    __slots__ = ("admit", "_over", "_cut_at", "_cut_delay")

    def __init__(self) -> None:
        self.admit = 1.0
        self._over = False  # the tick before was over the threshold
        self._cut_at = float("-inf")  # when the share was last cut
        self._cut_delay = 0.0  # and how late sipgw was then

    def tick(self, now: float, delay: float, threshold: float, busy: bool) -> float:
        """One tick ``delay`` seconds late, sipgw ``busy`` or not: the share now."""
        over = delay > threshold
        if over:
            # A single late tick (a long collection pass, a slow disk) is not overload, nor
            # is lateness while sipgw had time to spare: other processes held the CPU,
            # and refusing more work would not give it back.
            if (self._over and busy and now - min(delay, PATIENCE) >= self._cut_at
                    and delay >= self._cut_delay * DRAINING):
                self.admit *= min(SMALLEST_CUT, max(LARGEST_CUT, (threshold / delay) ** 0.5))
                self._cut_at, self._cut_delay = now, delay
        elif delay < threshold * LOW_WATER:
            self.admit = min(1.0, self.admit + INCREASE)
            self._cut_delay = 0.0
        self._over = over
        return self.admit


class Overload:
    """The shedding decision of one process, on its own load signal."""

    def __init__(self, *, clock: IReactorTime, stats: Stats, replies: Replies,
                 settings: OverloadConfig,
                 cpu_seconds: Callable[[], float] = time.process_time,
                 exempt: Callable[[Source], bool] = lambda source: False) -> None:
        self.clock = clock
        self.exempt = exempt  # never shed: the backends
        self.cpu_seconds = cpu_seconds
        self.stats = stats
        self.replies = replies
        stats.declare(OVERLOAD_STATS)
        self.cap_log = CapLog(log, clock.seconds)
        self.admit = 1.0  # the share of new requests over UDP taken on
        self.stream_admit = 1.0  # and over TCP, TLS and WebSocket
        self.shedding = False  # either share < 1: some new requests are refused
        self.dropping = False  # refusals over UDP are dropped unread
        self.delay = 0.0  # the last tick's signal, seconds
        self.stream_delay = 0.0  # and the part of it a request over a stream waits
        self._datagrams = Share()  # keeps admit
        self._streams = Share()  # keeps stream_admit
        self._ticked = (clock.seconds(), cpu_seconds())  # the last tick: wall and CPU time
        self._calm_since: float | None = None  # under half of drop_delay since, when dropping
        self._salt = b""
        self._salted_at = float("-inf")
        self.configure(settings)

    def configure(self, settings: OverloadConfig) -> None:
        self.enabled = settings.enabled
        self.shed_delay = settings.shed_delay
        self.drop_delay = settings.drop_delay
        self.retry_after = settings.retry_after
        self.retry_after_max = settings.retry_after_max
        self.stream_shed_delay = settings.stream_shed_delay
        if not self.enabled:
            self._datagrams, self._streams = Share(), Share()
            self._set(1.0, 1.0, dropping=False)

    # -- the signal -------------------------------------------------------------------

    def on_load(self, delay: float, stream_delay: float) -> None:
        """One tick of the load signal: how late sipgw is now (seconds), for a datagram
        and for a request over a stream (which waits for the loop and its connection,
        not in a UDP socket's queue)."""
        if not self.enabled:
            return
        now = self.clock.seconds()
        if now - self._salted_at >= ROTATION:
            self._salted_at = now
            self._salt = struct.pack("!d", now)
        self.delay, self.stream_delay = delay, stream_delay
        cpu = self.cpu_seconds()
        (then, cpu_then), self._ticked = self._ticked, (now, cpu)
        busy = now <= then or cpu - cpu_then >= BUSY * (now - then)
        admit = self._datagrams.tick(now, delay, self.shed_delay, busy)
        stream_admit = self._streams.tick(now, stream_delay, self.stream_shed_delay, busy)
        dropping = self.dropping
        if delay > self.drop_delay and (dropping or admit <= DROP_SHARE):
            dropping, self._calm_since = True, None
        elif dropping:
            if delay >= self.drop_delay * LOW_WATER:
                self._calm_since = None
            elif self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= DROP_HOLD:
                dropping, self._calm_since = False, None
        if self.shedding and min(admit, stream_admit) >= 1.0:
            self.cap_log.once("overload over", "overload over: sipgw takes on every new "
                              "request again ({ms:.0f} ms late; shed so far: {a} answered "
                              "503, {d} dropped)", ms=delay * 1e3,
                              a=self.stats.get("core:shed_503"),
                              d=self.stats.get("core:shed_dropped"))
        self._set(admit, stream_admit, dropping=dropping)

    def _set(self, admit: float, stream_admit: float, *, dropping: bool) -> None:
        self.admit, self.stream_admit = admit, stream_admit
        self.shedding = min(admit, stream_admit) < 1.0
        self.dropping = dropping and admit < 1.0
        self.stats.set("core:shed_percent", round((1.0 - min(admit, stream_admit)) * 100))
        self.stats.set("core:shed_dropping", int(self.dropping))

    # -- the decisions ------------------------------------------------------------------

    def drops_unread(self, data: bytes, source: Source) -> bool:
        """Before parsing, while ``shedding`` (a datagram): True when ``data`` is a new
        request to drop unread (refused, and ``dropping`` or past the refusals it answers),
        counted and logged."""
        method = data[:data.find(b" ", 0, 10)]
        if method not in _NEW_WORK or _TO_TAG.search(data) is not None or self.exempt(source):
            return False
        call_id = _CALL_ID.search(data)
        if call_id is None:
            return False  # the parser will have something to say about it
        share = self._share(call_id.group(1).strip())
        admit = self.admit
        if share < admit or (not self.dropping and share < self._answered(admit)):
            return False  # taken on, or refused with a 503 once parsed
        self._dropped(method.decode("latin-1"), source)
        return True

    def refuses(self, req: Request, source: Source) -> bool:
        """After REQINIT, for a new initial request while ``shedding``: True when it was
        refused (503, or dropped over UDP while ``dropping``), counted and logged."""
        call_id = req.call_id.encode("latin-1")
        if source.reliable:
            admit, delay, cap = self.stream_admit, self.stream_delay, "overload.stream_shed_delay"
        else:
            admit, delay, cap = self.admit, self.delay, "overload.shed_delay"
        if self._share(call_id) < admit or self.exempt(source):
            return False
        if self.dropping and not source.reliable:
            self._dropped(req.method, source)
            return True
        seconds = self._retry_after(call_id, admit,
                                    1.0 if source.reliable else self._answered(admit))
        self.stats.inc("core:shed_503")
        self.replies.reply(req, source, 503, "Service Unavailable",
                           [("Retry-After", str(seconds))])
        self.cap_log.reached(cap, "overload: {m} from {h}:{p} refused with 503, "
                             "Retry-After {s}: sipgw is {ms:.0f} ms late, taking on "
                             "{pct:.0f} % of new requests over {t}", m=req.method,
                             h=source.host, p=source.port, s=seconds, ms=delay * 1e3,
                             pct=admit * 100, t=source.transport.upper())
        return True

    def absorbs_ack(self, ack: Request) -> bool:
        """While ``shedding``: True for the ACK of a reply sipgw made itself (a 503 of
        ours, hop by hop), which needs nothing more, counted as dropped as the route
        script would; before REQINIT, at a tenth of its cost."""
        if ack.to_tag != local_tag(ack):
            return False
        self.stats.inc("core:drop_requests")
        return True

    def _dropped(self, method: str, source: Source) -> None:
        self.stats.inc("core:shed_dropped")
        self.cap_log.reached("overload.drop_delay", "overload: {m} from {h}:{p} dropped "
                             "unread: sipgw is {ms:.0f} ms late, taking on {pct:.0f} % of "
                             "new requests", m=method, h=source.host, p=source.port,
                             ms=self.delay * 1e3, pct=self.admit * 100)

    def _share(self, call_id: bytes) -> float:
        """Where ``call_id`` falls in [0, 1): the same for the same Call-ID until the salt
        changes, spread evenly over different ones."""
        return zlib.crc32(call_id, zlib.crc32(self._salt)) / _HASH_SPAN

    @staticmethod
    def _answered(admit: float) -> float:
        """Over UDP, the Call-IDs refused with a 503 fall from ``admit`` up to this; those
        above it are dropped unread."""
        return admit + max(admit * ANSWERED, ANSWERED_FLOOR)

    def _retry_after(self, call_id: bytes, admit: float, answered: float) -> int:
        """Seconds, spread evenly over the refusals answered by their hash (those between
        ``admit`` and ``answered``): from retry_after up to a bound that reaches
        retry_after_max when everything is refused."""
        refused = 1.0 - admit
        if refused <= 0.0:
            return self.retry_after
        band = min(answered, 1.0) - admit
        place = min((self._share(call_id) - admit) / band, 1.0) if band > 0.0 else 0.0
        spread = (self.retry_after_max - self.retry_after) * refused
        return self.retry_after + int(max(0.0, place) * (spread + 1))
