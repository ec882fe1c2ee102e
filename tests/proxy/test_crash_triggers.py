"""Other proxies' crash triggers (``tests/helpers/triggers.py``) through the whole route
script in-process: the right 400 naming the bad part, a silent drop, or forwarding with the
body byte for byte; then the proxy still forwards a plain INVITE."""

from __future__ import annotations

import pytest

from sipgw.sip.parser import parse_message
from sipgw.tools.fuzzproxy import SOURCES, FuzzProxy
from sipgw.tools.harness import BACKEND
from tests.helpers.triggers import TRIGGERS, request


@pytest.mark.parametrize("name", sorted(TRIGGERS))
@pytest.mark.parametrize("how", ["udp", "tcp", "ws"])
def test_crash_trigger_gets_its_answer_and_the_proxy_goes_on(name: str, how: str) -> None:
    kwargs, expect = TRIGGERS[name]
    source = SOURCES[how]
    data = request(host=source.host, port=source.port, transport=how.upper(), **kwargs)
    with FuzzProxy() as h:
        sent = h.feed(data, "trusted" if expect.status is None and not expect.dropped else how)
        assert not h.failures, h.failure_text()
        replies = [s for s in sent if s.status not in (None, 100)]
        if expect.dropped:
            assert sent == [] and h.proxy.stats.get("core:bad_msg") == 1
        elif expect.status is not None:
            (reply,) = replies
            assert reply.status == expect.status
            assert expect.reason in reply.start_line.decode("latin-1")
            assert reply.dest.host == source.host and reply.dest.transport == how
            assert not h.to_backend()
        else:
            (fwd,) = h.to_backend(sent)
            assert replies == [] and fwd.dest == BACKEND
            assert fwd.parse().body == parse_message(data).body  # body never touched
        assert h.invite_still_forwarded()
