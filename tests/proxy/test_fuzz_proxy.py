"""The fuzzer's finds and a bounded fuzz run through the whole route script in-process.

``FuzzProxy`` (``tests/helpers/fuzzproxy.py``) is the proxy as ``sipgw serve`` assembles it
(AUTH, dispatcher, dialogs, flows, NAT, a trace subscriber) on a fake clock. Contract: no
exception escapes ``Proxy.receive``, no failure is logged, no 500 is sent, and a plain
INVITE is still forwarded afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sipgw.tools.fuzz import Mutator, load_seeds
from tests.helpers.fakes import BACKEND
from tests.helpers.fuzzproxy import HOWS, FuzzProxy, contract_broken, fuzz_proxy
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
    # "alias=" in the user part is no alias parameter: the request goes where its
    # Request-URI says, unchanged.
    with FuzzProxy() as h:
        sent = h.feed((CORPUS / "bye-alias-in-user-part.sip").read_bytes(), "udp")
        (fwd,) = [s for s in sent if s.dest.host == "192.0.2.5"]
        assert fwd.dest.port == 5060 and fwd.start_line == b"BYE sip:alias=1@192.0.2.5 SIP/2.0"
        stray_ack = (CORPUS / "ack-alias-in-user-part.sip").read_bytes()
        # As captured it names no Route of ours: from a client, that ACK is not relayed.
        assert h.feed(stray_ack, "udp") == []
        # Within our dialog (our Record-Route as its Route) it goes where its URI says.
        in_dialog = stray_ack.replace(b"\r\nFrom:", b"\r\nRoute: <sip:127.0.0.1:5060;lr>"
                                                  b"\r\nFrom:", 1)
        assert h.feed(in_dialog, "udp")[0].dest.host == "192.0.2.5"
        assert not h.failures


def test_four_thousand_mutations_over_udp_tcp_ws_and_from_the_backend_keep_the_contract(
) -> None:
    found = fuzz_proxy(Mutator(load_seeds([TORTURE_DIR]), seed=20261127), 4_000)
    assert found == {}, "\n".join(f"{i}: {why}" for why, (i, _) in found.items())


def test_harness_forwards_a_plain_invite_from_a_trusted_source_to_the_backend() -> None:
    with FuzzProxy() as h:
        assert h.invite_still_forwarded()
        assert h.to_backend()[-1].dest == BACKEND
