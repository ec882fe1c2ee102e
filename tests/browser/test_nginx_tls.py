"""The README's "Behind nginx, with TLS", done as it says: the shipped ``etc/nginx/sipgw.conf``
with its three commented TLS lines uncommented (a certificate made now), in front of a
sipgw whose WebSocket listener is plain and on loopback. The phone page, opened on https
through nginx, takes wss through nginx by default, registers, and answers a call from a
JsSIP page that is on wss through nginx too, with audio both ways.

::

    Chromium ──https/wss──> nginx (TLS) ──ws──> sipgw ──UDP──> Kamailio registrar.cfg
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sipgw.tools.nginx import NGINX_SITE, Nginx
from tests.browser.kamailio_process import KamailioRunner
from tests.browser.rig import BrowserRig, PageServer, self_signed_certificate
from tests.browser.test_sipgw_browsers import (  # noqa: F401 (trusting_browser: a fixture)
    MEDIA_BYTES,
    control_directory,
    password,
    registered,
    start_edge,
    trusting_browser,
    uri,
)
from tests.integration.sipp import LOOPBACK, free_port

pytestmark = pytest.mark.integration

# What the README tells the operator to uncomment.
TLS_LINES = ("listen 443 ssl;", "ssl_certificate ", "ssl_certificate_key ")


class TlsNginx(Nginx):
    """The shipped site with its TLS lines uncommented: port 443 a free loopback port too,
    the certificate and key ours."""

    def __init__(self, workdir: Path, upstream_port: int, certificate: tuple[Path, Path]) -> None:
        super().__init__(workdir, upstream_port)
        self.tls_port = free_port("tcp")
        self.listens["443"] = self.tls_port
        self.certificate = certificate

    def shipped(self) -> str:
        lines, uncommented = [], 0
        for line in super().shipped().splitlines():
            code = line.strip()
            if code.startswith("# ") and code[2:].startswith(TLS_LINES):
                line, uncommented = line.replace("# ", "", 1), uncommented + 1
            lines.append(line)
        assert uncommented == len(TLS_LINES), f"{NGINX_SITE.name} lacks the commented TLS lines"
        site = "\n".join(lines) + "\n"
        site = re.sub(r"(?m)^(\s*ssl_certificate\s+)\S+;", rf"\g<1>{self.certificate[0]};", site)
        return re.sub(
            r"(?m)^(\s*ssl_certificate_key\s+)\S+;", rf"\g<1>{self.certificate[1]};", site
        )


def test_the_phone_page_on_https_through_nginx_registers_over_wss_and_answers_a_call(
    tmp_path: Path, kamailio: KamailioRunner, trusting_browser: BrowserRig, pages: PageServer
) -> None:
    browser = trusting_browser
    backend = kamailio("registrar.cfg")
    with control_directory() as control_dir:
        gw = start_edge(tmp_path / "sipgw", backend, control_dir, ["5071", "5072"])
        nginx = TlsNginx(tmp_path / "nginx", gw.ws_port, self_signed_certificate(tmp_path / "tls"))
        try:
            nginx.start()
            origin = f"{LOOPBACK}:{nginx.tls_port}"
            phone = browser.open("phone", f"https://{origin}/")
            assert phone.value("#ws-url") == f"wss://{origin}/ws"
            phone.fill("#sip-uri", uri("5071"))
            phone.fill("#password", password("5071"))
            phone.click("#register")
            phone.wait_text("#status", f"Registered as {uri('5071')}")

            caller = registered(browser.open("caller", pages.url("/pages/jssip.html")),
                                f"wss://{origin}/ws", "5072")
            caller.call(uri("5071"))
            phone.wait_text("#status", f"Incoming call from {uri('5072')}")
            phone.click("#answer")
            caller.wait("confirmed")
            phone.wait_text("#status", f"In a call with {uri('5072')}")
            assert caller.wait_inbound_bytes(MEDIA_BYTES) > MEDIA_BYTES
            assert phone.wait_inbound_bytes(MEDIA_BYTES, api="sipgwPhone") > MEDIA_BYTES
            caller.hangup()
            phone.wait_text("#status", "ended")
            # Both WebSockets were nginx's, over TLS: it logs each (101) when it closes.
            for page in (caller, phone):
                page.close()
            assert len(nginx.wait_access_lines(r'"GET /ws HTTP/1\.1" 101 ', 2)) == 2
        finally:
            nginx.stop()
            gw.stop()
