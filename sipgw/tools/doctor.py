"""``sipgw doctor``: the troubleshooting section of the Kamailio guide as checks.

Each check returns ``Check(name, status, detail, fix)`` with status ``pass``, ``warn`` or
``fail``; ``fix`` says what to do when it is not ``pass``. The checks run in order and
later ones use what earlier ones found (the config, the control socket).

Checks today: the config file is valid; the control socket answers; each UDP/TCP listener
answers an OPTIONS to sipgw itself; each WebSocket listener completes the handshake with
the ``sip`` subprotocol; each backend answers OPTIONS (with its latency) and is active in
the dispatcher; a nonce secret is set when the subscriber store is a shared Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sipgw.rpc.client import Client, RemoteError, Unreachable, find_socket
from sipgw.tools.options import NoAnswer, ping
from sipgw.tools.wscheck import HandshakeFailed, ws_check

PASS, WARN, FAIL = "pass", "warn", "fail"
WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail,
                "fix": self.fix}


class Doctor:
    def __init__(self, config_path: str | None, *, timeout: float = 2.0) -> None:
        self.config_path = config_path
        self.timeout = timeout
        self.config = None
        self.client: Client | None = None

    def run(self) -> Iterator[Check]:
        yield self.check_config()
        if self.config is None:
            return
        yield self.check_control()
        yield from self.check_listeners()
        yield from self.check_websocket()
        yield from self.check_backends()
        yield from self.check_nonce_secret()
        if self.client is not None:
            self.client.close()

    # -- the checks -------------------------------------------------------------------

    def check_config(self) -> Check:
        from sipgw.proxy.config import ConfigError, load_config

        shown = self.config_path or "embedded default config"
        try:
            self.config = load_config(self.config_path).config
        except ConfigError as e:
            return Check(name="config", status=FAIL, detail=str(e),
                         fix="correct the file at the line named; sipgw serve --check -c FILE "
                             "checks it again")
        return Check(name="config", status=PASS, detail=f"{shown} is valid")

    def check_control(self) -> Check:
        c = self.config.control
        path = find_socket(c.socket, self.config.state.directory)
        try:
            self.client = Client(path, timeout=self.timeout * 2)
            version = self.client.call("core.version")
        except Unreachable as e:
            self.client = None
            return Check(name="control socket", status=FAIL, detail=f"{path}: {e.why}",
                         fix=f"start the proxy (systemctl start sipgw); {e.hint}")
        except (RemoteError, TimeoutError) as e:
            self.client = None
            return Check(name="control socket", status=FAIL, detail=f"{path}: {e}",
                         fix="the proxy is stuck or not sipgw: look at journalctl -u sipgw")
        return Check(name="control socket", status=PASS, detail=f"{version} answers on {path}")

    def check_listeners(self) -> Iterator[Check]:
        for transport in ("udp", "tcp"):
            for addr in getattr(self.config.listen, transport):
                host = WILDCARD.get(addr.host, addr.host)
                shown = f"[{host}]" if ":" in host else host
                uri = f"sip:{shown}:{addr.port};transport={transport}"
                name = f"listener {transport}:{addr}"
                try:
                    pong = ping(uri, timeout=self.timeout)
                except NoAnswer as e:
                    yield Check(name=name, status=FAIL,
                                detail=f"OPTIONS to sipgw itself: {e.why}",
                                fix="is sipgw running with this config? ss -lunpt shows who "
                                    f"holds port {addr.port}")
                    continue
                status = PASS if pong.status == 200 else WARN
                yield Check(name=name, status=status,
                            detail=f"OPTIONS to itself: {pong.status} {pong.reason} in "
                                   f"{pong.latency_ms:.1f} ms",
                            fix="" if status == PASS else "sipgw should answer 200 to OPTIONS "
                                                          "for itself: check proxy.aliases")

    def check_websocket(self) -> Iterator[Check]:
        for addr in self.config.listen.ws:
            host = WILDCARD.get(addr.host, addr.host)
            shown = f"[{host}]" if ":" in host else host
            url = f"ws://{shown}:{addr.port}/"
            name = f"websocket ws:{addr}"
            try:
                hs = ws_check(url, timeout=self.timeout)
            except HandshakeFailed as e:
                yield Check(name=name, status=FAIL, detail=f"{url}: {e.why}",
                            fix="browsers cannot connect: is sipgw listening there (listen.ws)? "
                                "a firewall in between?")
                continue
            if hs.healthy:
                yield Check(name=name, status=PASS,
                            detail=f"{url}: 101 with subprotocol sip in {hs.latency_ms:.1f} ms")
            else:
                yield Check(name=name, status=FAIL,
                            detail=f"{url}: {hs.status} {hs.reason}, subprotocol "
                                   f"{hs.protocol or 'none'}",
                            fix="the handshake must return 101 with Sec-WebSocket-Protocol: "
                                "sip (websocket.allowed_origins may refuse the Origin)")

    def _destinations(self) -> list[tuple[str, str | None]]:
        """(URI, FLAGS) from the running dispatcher, else the config's destinations."""
        if self.client is not None:
            try:
                listing = self.client.call("dispatcher.list")
            except (RemoteError, Unreachable, TimeoutError):
                listing = None
            if isinstance(listing, dict):
                out = []
                for record in listing.get("RECORDS", []) or []:
                    for target in record.get("SET", {}).get("TARGETS", []) or []:
                        dest = target.get("DEST", {})
                        out.append((dest.get("URI"), dest.get("FLAGS")))
                if out:
                    return out
        return [(uri, None) for uri in self.config.dispatcher.destinations]

    def check_backends(self) -> Iterator[Check]:
        for uri, flags in self._destinations():
            name = f"backend {uri}"
            try:
                pong = ping(uri, timeout=self.timeout)
            except (NoAnswer, ValueError) as e:
                yield Check(name=name, status=FAIL,
                            detail=f"OPTIONS: {getattr(e, 'why', e)}",
                            fix="is the backend (Asterisk) running and listening there? "
                                "(asterisk -rx 'pjsip show transports'; ss -lunp)")
                continue
            server = f" ({pong.server})" if pong.server else ""
            detail = f"OPTIONS: {pong.status} {pong.reason} in {pong.latency_ms:.1f} ms{server}"
            if flags and not flags.startswith("A"):
                yield Check(name=name, status=WARN,
                            detail=f"{detail}, but the dispatcher has it as {flags}",
                            fix=f"sipgw ctl dispatcher.set_state ap 1 {uri}, or wait for the "
                                "next probe (dispatcher.ping_interval)")
                continue
            yield Check(name=name, status=PASS, detail=detail)

    def check_nonce_secret(self) -> Iterator[Check]:
        url = self.config.subscribers.url
        if url.startswith("redis://") and not self.config.auth.nonce_secret:
            yield Check(name="nonce secret", status=WARN,
                        detail="subscribers in Redis (shared by several nodes?) but "
                               "auth.nonce_secret is empty: each node makes its own",
                        fix="set the same auth.nonce_secret on every node, or a client "
                            "answering another node's challenge is refused")


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


def summary(checks: list[Check]) -> dict[str, Any]:
    return {s: sum(1 for c in checks if c.status == s) for s in (PASS, WARN, FAIL)}
