"""Overload control (``sipgw.proxy.overload``): the share of new requests taken on, its
hysteresis, and what the route script does with a request while sipgw sheds."""

from __future__ import annotations

import dataclasses

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from sipgw.config import OverloadConfig
from sipgw.proxy.load import TICK
from sipgw.proxy.overload import DROP_HOLD, INCREASE, PATIENCE, Overload
from sipgw.proxy.replies import Replies
from sipgw.proxy.stats import Stats
from sipgw.tools.fuzzproxy import FuzzProxy
from sipgw.tools.harness import BACKEND, TCP_SOURCE, ProxyHarness, our_route, valid_invite

SETTINGS = OverloadConfig()  # shed_delay 0.05 s, stream_shed_delay 2 s, drop_delay 0.15 s,
# Retry-After 5..60


def overload(settings: OverloadConfig = SETTINGS, *,
             cpu_seconds=None) -> tuple[Clock, Overload]:
    """An Overload on a fake clock; sipgw busy all the time unless ``cpu_seconds`` says
    otherwise."""
    clock = Clock()
    clock.advance(1_000_000)
    stats = Stats()
    return clock, Overload(clock=clock, stats=stats,
                           replies=Replies(stats=stats, send=lambda data, dest: None),
                           settings=settings, cpu_seconds=cpu_seconds or clock.seconds)


def late(clock: Clock, shedder: Overload, *delays: float, stream: float | None = None) -> None:
    """One tick of the load signal per delay (seconds late); what a request over a stream
    waits is ``stream``, or all of it (the event loop behind) when not given."""
    for delay in delays:
        clock.advance(TICK)
        shedder.on_load(delay, delay if stream is None else stream)


def shed_percent(shedder: Overload) -> int:
    return shedder.stats.get("core:shed_percent")


# -- the share and its hysteresis ----------------------------------------------------------


def test_one_late_tick_is_a_stall_not_overload_and_two_are():
    clock, shedder = overload()
    late(clock, shedder, 0.7, 0.0, 0.0)  # a long collection pass
    assert not shedder.shedding and shed_percent(shedder) == 0
    late(clock, shedder, 0.2, 0.2)  # four times shed_delay, twice in a row
    assert shedder.shedding and shed_percent(shedder) == 50
    assert not shedder.dropping or shedder.delay > SETTINGS.drop_delay


def test_late_while_sipgw_had_time_to_spare_is_not_its_own_overload():
    cpu = [0.0]
    clock, shedder = overload(cpu_seconds=lambda: cpu[0])
    for _ in range(30):  # other processes hold the CPU: sipgw runs 40 % of the time
        cpu[0] += 0.4 * TICK
        late(clock, shedder, 0.3)
    assert not shedder.shedding
    for _ in range(2):  # its own work: it was on the CPU 90 % of the time
        cpu[0] += 0.9 * TICK
        late(clock, shedder, 0.3)
    assert shedder.shedding


def test_a_backlog_draining_is_not_cut_again_and_a_standing_one_is():
    clock, shedder = overload()
    late(clock, shedder, 0.1, 0.1)  # twice shed_delay: cut to 1/sqrt(2)
    assert 0.70 < shedder.admit < 0.71
    # Later than shed_delay for much longer than the queue's own wait, but less so
    # every tick: the cut was enough, the backlog drains.
    late(clock, shedder, *[0.088 - 0.004 * n for n in range(10)])
    assert 0.70 < shedder.admit < 0.71
    # A queue that stands: cut again, once per its own wait (0.1 s, a tick), no faster.
    clock, shedder = overload()
    late(clock, shedder, 0.1, 0.1, 0.1)
    assert 0.49 < shedder.admit < 0.51
    clock, shedder = overload()
    late(clock, shedder, 0.3, 0.3, 0.3, 0.3)  # a 0.3 s wait: no second cut within it
    assert 0.49 < shedder.admit < 0.51
    late(clock, shedder, 0.3, 0.3)
    assert 0.24 < shedder.admit < 0.26
    # A queue seconds deep is not given seconds: a cut every PATIENCE at the longest.
    clock, shedder = overload()
    late(clock, shedder, *[2.0] * (2 + round(4 * PATIENCE / TICK)))
    assert 0.03 < shedder.admit < 0.07  # four or five cuts by half in 1.4 s, not one


def test_the_share_holds_in_the_band_and_grows_back_once_sipgw_is_on_time():
    clock, shedder = overload()
    late(clock, shedder, 0.2, 0.2)
    assert shed_percent(shedder) == 50
    late(clock, shedder, *[0.04] * 30)  # between half of shed_delay and shed_delay
    assert shed_percent(shedder) == 50
    with capturedLogs() as events:
        late(clock, shedder, 0.0)
        assert shed_percent(shedder) == round(100 * (0.5 - INCREASE))
        ticks = 1
        while shedder.shedding:
            late(clock, shedder, 0.0)
            ticks += 1
    assert ticks == -(-0.5 // INCREASE)  # a few seconds from half to nothing shed
    assert shed_percent(shedder) == 0
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == "sipgw.overload"]
    assert len(lines) == 1 and lines[0].startswith("overload over"), lines


def test_dropping_starts_past_drop_delay_and_stops_only_after_two_calm_seconds():
    clock, shedder = overload()
    late(clock, shedder, 0.3, 0.3)
    assert shedder.dropping and shedder.stats.get("core:shed_dropping") == 1
    calm = SETTINGS.drop_delay / 2 - 0.01  # under half of drop_delay
    ticks = round(DROP_HOLD / TICK)
    late(clock, shedder, *[calm] * (ticks - 1), SETTINGS.drop_delay / 2 + 0.01)
    assert shedder.dropping  # calm, but not for long enough
    late(clock, shedder, *[calm] * ticks)
    assert shedder.dropping
    late(clock, shedder, calm, calm)  # two seconds from the first calm tick, give or take
    assert not shedder.dropping and shedder.stats.get("core:shed_dropping") == 0
    assert shedder.shedding  # still refusing some: answered with 503 again


def test_a_late_spike_while_most_is_taken_on_is_answered_not_dropped():
    clock, shedder = overload()
    late(clock, shedder, 0.06, 0.06, 0.4)  # a little late, then a spike past drop_delay
    assert shedder.admit > 0.5 and shedder.shedding and not shedder.dropping


def test_disabled_it_takes_everything_however_late():
    clock, shedder = overload(dataclasses.replace(SETTINGS, enabled=False))
    late(clock, shedder, *[5.0] * 50)
    assert (shedder.shedding, shedder.dropping, shed_percent(shedder)) == (False, False, 0)
    shedder.configure(SETTINGS)
    late(clock, shedder, 0.2, 0.2)
    assert shedder.shedding
    shedder.configure(dataclasses.replace(SETTINGS, enabled=False))  # a reload turns it off
    assert not shedder.shedding and shed_percent(shedder) == 0


# -- what the route script does with requests while shedding -------------------------------


def shedding(h: ProxyHarness, *delays: float, stream: float | None = None) -> Overload:
    shedder = h.proxy.overload
    shedder.cpu_seconds = h.clock.seconds  # busy all the time
    late(h.clock, shedder, *delays, stream=stream)
    assert shedder.shedding
    return shedder


def retry_after(sent) -> int:
    return int(sent.parse().header("retry-after"))


def test_new_requests_are_refused_with_503_before_auth_and_each_gets_the_same_answer_again():
    with FuzzProxy() as h:
        shedder = shedding(h, 0.1, 0.1)  # about 70 % taken on, answers still sent
        first = {}
        for n in range(60):
            invite = valid_invite(f"shed{n}")
            sent = h.feed(invite, "udp")
            assert len(sent) == 1
            first[invite] = sent[0].status
            if sent[0].status == 503:
                assert SETTINGS.retry_after <= retry_after(sent[0]) <= SETTINGS.retry_after_max
        # Taken on: AUTH answers (a challenge, or 403 for a domain not ours); refused:
        # before AUTH ever looked.
        assert {status for status in first.values() if status != 503} <= {401, 403}
        assert 503 in first.values() and len(set(first.values())) == 2
        assert h.proxy.stats.get("core:shed_503") == list(first.values()).count(503)
        assert 0.1 < list(first.values()).count(503) / 60 < 0.5
        for invite, status in first.items():  # retransmissions, or a client retrying
            assert [s.status for s in h.feed(invite, "udp")] == [status]
        assert shedder.admit < 1


def test_retry_after_spreads_wider_the_more_is_refused():
    def spread(h: ProxyHarness) -> set[int]:
        seen = set()
        for n in range(400):
            for sent in h.udp(valid_invite(f"spread{n}")):
                if sent.status == 503:
                    seen.add(retry_after(sent))
        return seen

    little = ProxyHarness()
    shedding(little, 0.06, 0.06)  # a little over: about 9 % refused
    refused = 1 - little.proxy.overload.admit
    few = spread(little)
    assert max(few) <= SETTINGS.retry_after + (SETTINGS.retry_after_max
                                               - SETTINGS.retry_after) * refused + 1
    much = ProxyHarness()
    shedding(much, *[0.14] * 40)  # later and later: most refused
    assert much.proxy.overload.admit < 0.1
    many = spread(much)
    # (One in twenty answered, the rest dropped unread: a score of Retry-Afters.)
    assert min(many) < SETTINGS.retry_after + 10 and max(many) > SETTINGS.retry_after_max - 10
    assert len(many) > 2 * len(few)


def test_refusing_most_over_udp_sipgw_answers_few_of_them_and_drops_the_rest_unread():
    """Answering every refusal of a storm at four times its capacity costs sipgw more than
    the answers save: over UDP it answers as many as half of what it takes on, or one in
    twenty new requests, and drops the others unread (their senders retransmit and draw
    again). Over TCP every refusal is answered: nobody retransmits there."""
    h = ProxyHarness()
    shedder = shedding(h, *[0.14] * 40, stream=5.0)  # over TCP too: past stream_shed_delay
    assert shedder.admit < 0.01 and shedder.stream_admit < 0.01 and not shedder.dropping
    stats = h.proxy.stats
    statuses = [s.status for n in range(1000) for s in h.udp(new_register(n))]
    assert 30 <= statuses.count(503) <= 70 and set(statuses) == {503}, statuses
    assert stats.get("core:shed_dropped") == 1000 - statuses.count(503)
    assert stats.get("core:rcv_requests") == statuses.count(503)  # the rest never parsed
    over_tcp = [s.status for n in range(1000, 1100) for s in h.tcp(new_register(n))]
    assert over_tcp.count(503) >= 99 and set(over_tcp) == {503}


def test_in_dialog_requests_options_to_sipgw_cancel_and_responses_are_served_at_any_share():
    with FuzzProxy() as h:
        shedder = shedding(h, *[1.0] * 60)  # everything new is refused, and dropped
        assert shedder.admit < 0.02 and shedder.dropping
        route = our_route(h.proxy, "held-1", "caller")
        bye = (f"BYE sip:uas@{BACKEND.host}:{BACKEND.port} SIP/2.0\r\n"
               "Via: SIP/2.0/UDP 192.0.2.99:5999;branch=z9hG4bKheldbye;rport\r\n" + route +
               "From: <sip:a@example.com>;tag=caller\r\nTo: <sip:b@example.com>;tag=callee\r\n"
               "Call-ID: held-1\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        assert [s.dest for s in h.feed(bye.encode(), "udp")] == [BACKEND]
        options = ("OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n"
                   "Via: SIP/2.0/UDP 192.0.2.99:5999;branch=z9hG4bKkeepalive\r\n"
                   "From: <sip:a@example.com>;tag=k\r\nTo: <sip:127.0.0.1:5060>\r\n"
                   "Call-ID: keepalive-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        assert [s.status for s in h.feed(options.encode(), "udp")] == [200]
        cancel = valid_invite("nobody").replace(b"INVITE", b"CANCEL").split(b"\r\n\r\n")[0]
        cancel = cancel.replace(b"Content-Type: application/sdp\r\n", b"")
        cancel = cancel.rsplit(b"Content-Length", 1)[0] + b"Content-Length: 0\r\n\r\n"
        assert [s.status for s in h.feed(cancel, "udp")] == [481]  # answered, not shed
        assert h.proxy.stats.get("core:shed_503") == 0
        assert h.proxy.stats.get("core:shed_dropped") == 0


def test_a_retransmission_of_a_request_already_taken_is_absorbed_never_refused():
    h = ProxyHarness()
    invites = [valid_invite(f"taken{n}") for n in range(20)]
    for invite in invites:
        assert [s.status for s in h.responses(h.udp(invite))] == [100]
    assert len(h.to_backend()) == 20
    shedding(h, 0.1, 0.1)  # about 70 % taken on: every refusal answered
    shedder = h.proxy.overload
    refused_now = [i for i in invites
                   if shedder._share(i.split(b"Call-ID: ")[1].split(b"\r\n")[0]) >= shedder.admit]
    assert refused_now  # some of these Call-IDs would be refused as new requests now
    for invite in invites:  # the transaction's 100 again
        assert [s.status for s in h.responses(h.udp(invite))] == [100]
    shedding(h, *[0.14] * 40)  # almost nothing taken on: most refusals dropped unread
    assert shedder.admit < 0.1 and not shedder.dropping
    for invite in invites:  # the transaction's 100, or dropped with the storm
        assert [s.status for s in h.responses(h.udp(invite))] in ([100], [])
    # One branch to the backend each (the same INVITE, resent on its timer), no new one.
    assert len({s.data for s in h.to_backend()}) == 20
    assert h.proxy.stats.get("core:shed_503") == 0


def new_register(n: int) -> bytes:
    """A REGISTER as a storm of them would bring: a new Call-ID each."""
    return (f"REGISTER sip:example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.99:5999;branch=z9hG4bKstorm{n};rport\r\n"
            f"From: <sip:5001@example.com>;tag=r{n}\r\nTo: <sip:5001@example.com>\r\n"
            f"Call-ID: storm-{n}\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <sip:5001@192.0.2.99:5999>\r\nContent-Length: 0\r\n\r\n").encode()


def test_very_late_a_new_udp_request_is_dropped_unread_and_one_over_tcp_is_answered():
    h = ProxyHarness()
    shedding(h, *[1.0] * 60, stream=5.0)  # over TCP too: past stream_shed_delay
    stats = h.proxy.stats
    register = new_register(1)
    assert h.udp(register) == []
    assert (stats.get("core:rcv_requests"), stats.get("core:shed_dropped")) == (0, 1)
    assert [s.status for s in h.tcp(register)] == [503]  # nobody retransmits over TCP
    assert stats.get("core:shed_503") == 1
    # A request with a To tag is in a dialog: not dropped, whatever its method.
    reinvite = valid_invite("re").replace(b"To: <sip:bob@example.com>",
                                          b"To: <sip:bob@example.com>;tag=callee")
    h.udp(reinvite)
    assert stats.get("core:rcv_requests") == 2 and stats.get("core:shed_dropped") == 1


def fate(sent) -> list[int | str | None]:
    """What became of a request: forwarded to the backend (taken on), or answered."""
    return ["forwarded" if s.dest == BACKEND else s.status for s in sent]


def test_a_udp_queue_refuses_none_over_tcp_and_websocket_and_their_own_wait_does_past_2_s():
    h = ProxyHarness()
    # A UDP storm: datagrams wait a second in the kernel, the loop is 10 ms late.
    shedder = shedding(h, *[1.0] * 60, stream=0.01)
    assert shedder.admit < 0.02 and shedder.dropping and shedder.stream_admit == 1.0
    assert shed_percent(shedder) > 98  # what the service shows: the share refused most
    ws = dataclasses.replace(TCP_SOURCE, transport="ws", flow_id=2)
    stats = h.proxy.stats
    for n in range(50):  # a registration storm of browsers at the same time: all taken on
        assert h.udp(new_register(100 + n)) == []
        assert fate(h.tcp(new_register(200 + n))) == ["forwarded"]
        before = len(h.sent)
        h.proxy.receive(new_register(300 + n), ws)
        assert fate(h.sent[before:]) == ["forwarded"]
    assert (stats.get("core:shed_dropped"), stats.get("core:shed_503")) == (50, 0)

    # The loop itself 1.5 s behind: late for UDP, not yet for streams (stream_shed_delay).
    late(h.clock, shedder, *[1.5] * 30)
    assert shedder.stream_admit == 1.0
    assert fate(h.tcp(new_register(400))) == ["forwarded"]
    # Past it, two ticks in a row: their share is cut, by the square root of how far over.
    late(h.clock, shedder, 3.0, 3.0)
    assert abs(shedder.stream_admit - (2.0 / 3.0) ** 0.5) < 1e-9
    late(h.clock, shedder, *[3.0] * 60)  # a cut every PATIENCE while it stands
    assert shedder.stream_admit < 0.1
    answers = [h.tcp(new_register(500 + n)) for n in range(20)]
    refusals = [sent[0] for sent in answers if fate(sent) == [503]]
    assert len(refusals) > 15 and all(fate(sent) in ([503], ["forwarded"]) for sent in answers)
    assert stats.get("core:shed_dropped") == 50  # over a stream, answered: never dropped
    assert all(SETTINGS.retry_after <= retry_after(s) <= SETTINGS.retry_after_max
               for s in refusals)
    # Held between half of stream_shed_delay and it; grown back under half of it.
    held = shedder.stream_admit
    late(h.clock, shedder, *[1.5] * 20)
    assert shedder.stream_admit == held
    late(h.clock, shedder, *[0.5] * 40)
    assert shedder.stream_admit == 1.0


def test_stream_shed_delay_as_low_as_shed_delay_sheds_over_streams_as_over_udp():
    clock, shedder = overload(dataclasses.replace(SETTINGS, stream_shed_delay=0.05))
    late(clock, shedder, 0.2, 0.2)
    assert shedder.admit == shedder.stream_admit == 0.5
    shedder.configure(SETTINGS)  # a reload back to the default: 0.2 s is no longer late
    late(clock, shedder, *[0.2] * 20)
    assert shedder.stream_admit == 1.0 and shedder.admit < 0.1


def test_the_ack_of_a_503_is_taken_by_nobody():
    h = ProxyHarness()
    shedding(h, *[0.14] * 40)
    for n in range(400):  # most are refused, one in twenty answered; the first that is
        invite = valid_invite(f"refused{n}")
        sent = h.udp(invite)
        if [s.status for s in sent] == [503]:
            break
    else:
        raise AssertionError("no INVITE refused")
    tag = sent[0].parse().to_tag
    ack = invite.split(b"\r\n\r\n")[0].replace(b"INVITE sip", b"ACK sip").replace(
        b"CSeq: 1 INVITE", b"CSeq: 1 ACK").replace(
        b"To: <sip:bob@example.com>", f"To: <sip:bob@example.com>;tag={tag}".encode())
    ack = ack.replace(b"Content-Type: application/sdp\r\n", b"").rsplit(
        b"Content-Length", 1)[0] + b"Content-Length: 0\r\n\r\n"
    drops = h.proxy.stats.get("core:drop_requests")
    assert h.udp(ack) == []
    assert h.proxy.stats.get("core:drop_requests") == drops + 1
