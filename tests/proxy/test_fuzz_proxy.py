"""The fuzzer's finds and a bounded fuzz run through the whole route script in-process.

``FuzzProxy`` (``sipgw/tools/fuzzproxy.py``) is the proxy as ``sipgw serve`` assembles it
(AUTH, dispatcher, dialogs, flows, NAT, a trace subscriber) on a fake clock. Contract: no
exception escapes ``Proxy.receive``, no failure is logged, no 500 is sent, and a plain
INVITE is still forwarded afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sipgw.sip.parser import parse_message
from sipgw.tools.fuzz import Mutator, load_seeds
from sipgw.tools.fuzzproxy import HOWS, FuzzProxy, contract_broken, fuzz_proxy
from sipgw.tools.harness import BACKEND, our_route
from tests.helpers.torture import TORTURE_DIR

CORPUS = Path(__file__).resolve().parent.parent / "data" / "fuzz-corpus"


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.sip")), ids=lambda p: p.stem)
def test_corpus_input_over_every_transport_keeps_the_proxy_contract(path: Path) -> None:
    data = path.read_bytes()
    with FuzzProxy() as h:
        for how in HOWS:
            assert contract_broken(h, data, how) is None, h.failure_text()
            assert contract_broken(h, data, how) is None, h.failure_text()  # retransmitted
        assert h.invite_still_forwarded()


def test_reply_whose_top_via_rport_is_not_a_port_is_dropped_and_counted() -> None:
    with FuzzProxy() as h:
        sent = h.feed((CORPUS / "via-rport-not-a-number.sip").read_bytes(), "backend")
        assert sent == [] and not h.failures
        assert h.proxy.stats.get("core:drop_replies") == 1


def test_in_dialog_request_with_alias_in_the_user_part_is_routed_by_its_uri() -> None:
    # "alias=" in the user part is no alias parameter: from a trusted address the request
    # goes where its Request-URI says, unchanged.
    with FuzzProxy() as h:
        bye = (CORPUS / "bye-alias-in-user-part.sip").read_bytes()
        sent = h.feed(bye, "trusted")
        (fwd,) = [s for s in sent if s.dest.host == "192.0.2.5"]
        assert fwd.dest.port == 5060 and fwd.start_line == b"BYE sip:alias=1@192.0.2.5 SIP/2.0"
        # From a client, 192.0.2.5 is neither a backend nor a client: no relay.
        from_client = bye.replace(b"branch=z9hG4bKa3", b"branch=z9hG4bKa4")
        assert [s.status for s in h.feed(from_client, "udp")] == [403]
        stray_ack = (CORPUS / "ack-alias-in-user-part.sip").read_bytes()
        # As captured it names no Route of ours: from a client, that ACK is not relayed.
        assert h.feed(stray_ack, "udp") == []
        # Within a dialog of ours (our signed Record-Route as its Route) it goes where its
        # URI says when a trusted address sends it, and nowhere when a client does.
        ack = parse_message(stray_ack)
        in_dialog = stray_ack.replace(
            b"\r\nFrom:", b"\r\n" + our_route(h.proxy, ack.call_id, ack.from_tag)
            .rstrip("\r\n").encode() + b"\r\nFrom:", 1)
        assert h.feed(in_dialog, "trusted")[0].dest.host == "192.0.2.5"
        assert h.feed(in_dialog, "udp") == []
        assert not h.failures


def test_four_thousand_mutations_over_udp_tcp_ws_and_from_the_backend_keep_the_contract(
) -> None:
    found = fuzz_proxy(Mutator(load_seeds([TORTURE_DIR]), seed=20261127), 4_000)
    assert found == {}, "\n".join(f"{i}: {why}" for why, (i, _) in found.items())


def test_harness_forwards_a_plain_invite_from_a_trusted_source_to_the_backend() -> None:
    with FuzzProxy() as h:
        assert h.invite_still_forwarded()
        assert h.to_backend()[-1].dest == BACKEND
