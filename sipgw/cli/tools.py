"""``sipgw tools ...``: the doctor's checks one at a time."""

from __future__ import annotations

import json

import click

from sipgw.cli.app import EXIT_FAILED, App, pass_app
from sipgw.tools.options import NoAnswer, ping
from sipgw.tools.wscheck import HandshakeFailed, ws_check


@click.group()
def tools() -> None:
    """Stand-alone checks: OPTIONS ping, WebSocket handshake, HA1."""


@tools.command()
@click.argument("uri")
@click.option("--timeout", type=float, default=2.0, show_default=True, metavar="SECONDS")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@pass_app
def options(app: App, uri: str, timeout: float, as_json: bool) -> None:
    """Send a SIP OPTIONS to URI (sip:HOST[:PORT][;transport=tcp]) and show the answer."""
    try:
        pong = ping(uri, timeout=timeout)
    except (NoAnswer, ValueError) as e:
        app.fail(f"{uri}: {getattr(e, 'why', e)}", EXIT_FAILED)
    if as_json:
        app.out.out(json.dumps({"status": pong.status, "reason": pong.reason,
                                "latency_ms": round(pong.latency_ms, 3),
                                "server": pong.server}), highlight=False)
    else:
        server = f" ({pong.server})" if pong.server else ""
        app.out.print(f"{pong.status} {pong.reason} in {pong.latency_ms:.1f} ms{server}")


@tools.command("ws-check")
@click.argument("url")
@click.option("--timeout", type=float, default=3.0, show_default=True, metavar="SECONDS")
@click.option("--insecure", is_flag=True, help="wss: do not verify the certificate.")
@click.option("--origin", help="Send this Origin header, as a browser would.")
@pass_app
def ws_check_command(app: App, url: str, timeout: float, insecure: bool,
                     origin: str | None) -> None:
    """Make the WebSocket handshake of a SIP client to URL (ws:// or wss://)."""
    try:
        hs = ws_check(url, timeout=timeout, verify=not insecure, origin=origin)
    except HandshakeFailed as e:
        app.fail(f"{url}: {e.why}", EXIT_FAILED)
    app.out.print(f"{hs.status} {hs.reason}; subprotocol {hs.protocol or 'none'}; "
                  f"accept {'ok' if hs.accept_ok else 'WRONG'}; {hs.latency_ms:.1f} ms")
    if not hs.healthy:
        raise SystemExit(EXIT_FAILED)


@tools.command()
@click.argument("user")
@click.argument("domain")
@click.option("--realm", help="Digest realm (default: DOMAIN, as auth.realm \"\" means).")
@click.option("--json", "as_json", is_flag=True, help="Print ha1, ha1b and ha1_sha256 as JSON.")
@pass_app
def ha1(app: App, user: str, domain: str, realm: str | None, as_json: bool) -> None:
    """The digest hashes of USER@DOMAIN for the password read from stdin's first line:
    ha1 = MD5(user:realm:password), the value a store keeps (the guide's md5sum check)."""
    import sys

    from sipgw.sip import digest

    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        app.fail("no password on stdin", EXIT_FAILED)
    realm = realm or domain
    hashes = {"ha1": digest.ha1(user, realm, password),
              "ha1b": digest.ha1b(user, domain, realm, password),
              "ha1_sha256": digest.ha1(user, realm, password, "SHA-256")}
    if as_json:
        app.out.out(json.dumps(hashes), highlight=False)
    else:
        app.out.print(hashes["ha1"])
