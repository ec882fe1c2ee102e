"""A stand-in for the proxy's control socket: canned answers, every request recorded.

Runs a ``socketserver`` thread on a unix socket in the test's directory; the CLI under test
finds it through a config file naming that socket. Stopped by the fixture that starts it.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


class FakeControl:
    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "sipgw.ctl")
        self.config = directory / "sipgw.toml"
        self.config.write_text(f'[control]\nsocket = "{self.path}"\n')
        self.answers: dict[str, Any] = {}
        self.requests: list[dict] = []
        self.streams: dict[str, list[Any]] = {}
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    request = json.loads(line)
                    fake.requests.append(request)
                    self.wfile.write(fake.answer(request) + b"\n")
                    for params in fake.streams.get(request["method"], []):
                        note = {"jsonrpc": "2.0", "method": "trace.message", "params": params}
                        self.wfile.write(json.dumps(note).encode() + b"\n")
                    if request["method"] in fake.streams:
                        return  # the stream ends: the client sees the proxy go

        self.server = socketserver.ThreadingUnixStreamServer(self.path, Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, request: dict) -> bytes:
        method = request["method"]
        rid = request.get("id")
        if method not in self.answers:
            out = {"jsonrpc": "2.0", "id": rid,
                   "error": {"code": -32601, "message": f"Method not found: {method}"}}
        else:
            value = self.answers[method]
            if isinstance(value, Callable):  # type: ignore[arg-type]
                value = value(request.get("params"))
            if isinstance(value, Exception):
                out = {"jsonrpc": "2.0", "id": rid,
                       "error": {"code": -32602, "message": str(value)}}
            else:
                out = {"jsonrpc": "2.0", "id": rid, "result": value}
        return json.dumps(out).encode()

    def methods_called(self) -> list[tuple[str, list]]:
        return [(r["method"], r.get("params")) for r in self.requests]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
