"""Dialogs as operators count them: active from the 2xx to an INVITE until its BYE or the
timeout; dlg.list and dlg.stats_active in Kamailio's shape."""

from __future__ import annotations

from twisted.internet.task import Clock

from sipgw.proxy.dialogs import Dialogs
from sipgw.proxy.stats import Stats
from sipgw.sip.parser import parse_message

INVITE = (b"INVITE sip:5002@example.com SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK1\r\n"
          b"From: \"A\" <sip:5001@example.com>;tag=aa\r\nTo: <sip:5002@example.com>\r\n"
          b"Call-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:5001@192.0.2.7:5060>\r\n"
          b"Content-Length: 0\r\n\r\n")
OK = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK1\r\n"
      b"From: \"A\" <sip:5001@example.com>;tag=aa\r\nTo: <sip:5002@example.com>;tag=bb\r\n"
      b"Call-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:5002@198.51.100.9>\r\n"
      b"Content-Length: 0\r\n\r\n")
BYE = (b"BYE sip:5002@198.51.100.9 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK2\r\n"
       b"From: <sip:{f}@example.com>;tag={ft}\r\nTo: <sip:{t}@example.com>;tag={tt}\r\n"
       b"Call-ID: {cid}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n")


def msg(template: bytes, **values: str):
    text = template
    for key, value in values.items():
        text = text.replace(b"{" + key.encode() + b"}", value.encode())
    return parse_message(text)


def answered(dialogs: Dialogs, cid: str) -> None:
    dialogs.confirmed(msg(INVITE, cid=cid), msg(OK, cid=cid))


def make():
    clock, stats = Clock(), Stats()
    return clock, stats, Dialogs(clock, stats, timeout=100, wall=lambda: 1795700000.0)


def test_a_2xx_to_an_invite_makes_one_active_dialog_retransmissions_do_not_add():
    clock, stats, dialogs = make()
    answered(dialogs, "c1")
    answered(dialogs, "c1")
    assert stats.get("dialog:active_dialogs") == 1
    assert stats.get("dialog:processed_dialogs") == 1
    clock.advance(7)
    (entry,) = dialogs.rpc_list()
    assert entry["call-id"] == "c1"
    assert (entry["from_uri"], entry["from_tag"]) == ("sip:5001@example.com", "aa")
    assert (entry["to_uri"], entry["to_tag"]) == ("sip:5002@example.com", "bb")
    assert entry["state"] == 4 and entry["lifetime"] == 7
    assert entry["start_ts"] == 1795700000 and entry["timeout"] == 1795700100
    assert entry["callee_contact"] == "sip:5002@198.51.100.9"
    assert dialogs.rpc_stats_active() == {"starting": 0, "connecting": 0, "answering": 0,
                                          "ongoing": 1, "all": 1}


def test_a_bye_from_either_side_ends_the_dialog():
    _, stats, dialogs = make()
    answered(dialogs, "c1")
    answered(dialogs, "c2")
    dialogs.ended(msg(BYE, cid="c1", f="5001", ft="aa", t="5002", tt="bb"))
    dialogs.ended(msg(BYE, cid="c2", f="5002", ft="bb", t="5001", tt="aa"))  # the callee's
    assert stats.get("dialog:active_dialogs") == 0
    assert dialogs.rpc_list() == []
    dialogs.ended(msg(BYE, cid="c9", f="x", ft="1", t="y", tt="2"))  # unknown: nothing
    assert stats.get("dialog:processed_dialogs") == 2


def test_a_dialog_without_bye_expires_at_the_timeout_and_not_before():
    clock, stats, dialogs = make()
    answered(dialogs, "c1")
    clock.advance(50)
    answered(dialogs, "c2")
    clock.advance(49.9)
    assert stats.get("dialog:active_dialogs") == 2
    clock.advance(0.1)
    assert [d["call-id"] for d in dialogs.rpc_list()] == ["c2"]
    assert stats.get("dialog:expired_dialogs") == 1
    clock.advance(50)
    assert dialogs.rpc_list() == []
    assert stats.get("dialog:expired_dialogs") == 2
    assert clock.getDelayedCalls() == []  # nothing left armed


def test_a_relayed_call_is_counted_and_its_bye_uncounts_it():
    from sipgw.tools.harness import BACKEND_SOURCE, ProxyHarness, valid_invite

    harness = ProxyHarness()
    stats = harness.proxy.stats
    harness.udp(valid_invite("d1"))
    out = parse_message(harness.to_backend()[-1].data)
    ok = ("SIP/2.0 200 OK\r\n"
          + "".join(f"Via: {v}\r\n" for v in out.headers("via"))
          + f"From: {out.header('from')}\r\nTo: {out.header('to')};tag=callee\r\n"
          f"Call-ID: {out.call_id}\r\nCSeq: {out.header('cseq')}\r\n"
          "Contact: <sip:callee@127.0.0.1:5080>\r\nContent-Length: 0\r\n\r\n").encode()
    harness.udp(ok, BACKEND_SOURCE)
    assert stats.get("dialog:active_dialogs") == 1
    assert harness.proxy.dialogs.rpc_list()[0]["call-id"] == out.call_id
