"""autobahn's debug-log arguments: lazy, and the same text when written."""

from __future__ import annotations

import autobahn.twisted.websocket
import autobahn.websocket.protocol
from autobahn import util

import sipgw.proxy.transport.ws  # noqa: F401 - installs the lazy helpers


def test_debug_lines_read_the_same_but_cost_nothing_until_written(monkeypatch):
    method = autobahn.websocket.protocol.WebSocketProtocol.sendData
    expected_type, expected_val = util.hltype(method), util.hlval(1234)
    calls = []
    real_hl = util.hl
    monkeypatch.setattr(util, "hl", lambda *a, **k: calls.append(a) or real_hl(*a, **k))
    for module in (autobahn.websocket.protocol, autobahn.twisted.websocket):
        lazy_type, lazy_val = module.hltype(method), module.hlval(1234)
        assert calls == []  # nothing styled while nobody writes the line
        assert f"{lazy_type} sent {lazy_val} bytes" == f"{expected_type} sent {expected_val} bytes"
        assert calls  # styled when written
        calls.clear()
