"""The browser rig proven end to end against a real WebSocket SIP server: Kamailio 5.6
(``kamailio/ws-proxy.cfg``), with JsSIP and SIP.js in Debian's Chromium.

Two pages register over WS, one calls the other, the other answers, WebRTC audio flows
both ways (getStats inbound-rtp bytes on both pages), the caller hangs up and the callee
sees the BYE. The phone page shipped in the package is driven as a person drives it. A
wrong-password case needs a server that authenticates: it comes with sipgw's own tests.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from sipgw.tools.kamailio import KamailioProcess
from tests.browser.kamailio_process import KamailioRunner
from tests.browser.rig import BrowserRig, Page, PageServer, RigError, self_signed_certificate

pytestmark = pytest.mark.integration

DOMAIN = "sipgw.test"
# More than one packet: a stream (Opus at 20 ms per packet), not a stray datagram.
MEDIA_BYTES = 1000


def uri(user: str) -> str:
    return f"sip:{user}@{DOMAIN}"


@pytest.fixture
def ws_proxy(kamailio: KamailioRunner) -> KamailioProcess:
    return kamailio("ws-proxy.cfg", ws=True)


def registered(page: Page, server: KamailioProcess, user: str) -> Page:
    page.register(server.ws_url, uri(user), display_name=user.capitalize())
    page.wait("registered")
    return page


def assert_call_with_media_and_bye(caller: Page, callee: Page, callee_user: str) -> None:
    caller.call(uri(callee_user))
    incoming = callee.wait("incoming")
    assert incoming.detail["from"].startswith("sip:")
    callee.answer()
    caller.wait("confirmed")
    callee.wait("confirmed")

    assert caller.wait_inbound_bytes(MEDIA_BYTES) > MEDIA_BYTES
    assert callee.wait_inbound_bytes(MEDIA_BYTES) > MEDIA_BYTES

    caller.hangup()
    assert caller.wait("ended").detail["originator"] == "local"
    assert callee.wait("ended").detail["originator"] == "remote"


def test_two_jssip_pages_register_over_ws_call_each_other_with_audio_both_ways_and_hang_up(
    browser: BrowserRig, pages: PageServer, ws_proxy: KamailioProcess
) -> None:
    alice = registered(browser.open("alice", pages.url("/pages/jssip.html")), ws_proxy, "alice")
    bob = registered(browser.open("bob", pages.url("/pages/jssip.html")), ws_proxy, "bob")
    assert alice.library().startswith("JsSIP 3.13.")

    assert_call_with_media_and_bye(alice, bob, "bob")

    # The callee saw a real BYE: its cause is JsSIP's for a BYE, not a failure.
    assert bob.events("ended")[-1].detail["cause"] == "Terminated"
    assert not bob.events("failed") and not alice.events("failed")
    assert not alice.events("pageerror") and not bob.events("pageerror")


def test_a_sipjs_page_registers_and_calls_a_jssip_page_with_audio_both_ways(
    browser: BrowserRig, pages: PageServer, ws_proxy: KamailioProcess
) -> None:
    carol = registered(browser.open("carol", pages.url("/pages/sipjs.html")), ws_proxy, "carol")
    dave = registered(browser.open("dave", pages.url("/pages/jssip.html")), ws_proxy, "dave")
    assert carol.library().startswith("SIP.js ")

    assert_call_with_media_and_bye(carol, dave, "dave")
    assert not carol.events("pageerror")


def test_the_phone_page_driven_as_a_person_registers_calls_answers_and_hangs_up(
    browser: BrowserRig, pages: PageServer, ws_proxy: KamailioProcess, artifacts: Path
) -> None:
    phone = browser.open("phone", pages.url("/phone/"))
    assert phone.text("#status") == "Not registered."
    phone.fill("#ws-url", ws_proxy.ws_url)
    phone.fill("#sip-uri", uri("5001"))
    phone.fill("#password", "password5001")
    phone.fill("#display-name", "Desk 5001")
    phone.click("#register")
    phone.wait_text("#status", f"Registered as {uri('5001')}")

    other = registered(browser.open("other", pages.url("/pages/jssip.html")), ws_proxy, "5002")

    # The phone page calls.
    phone.fill("#target", uri("5002"))
    phone.click("#call")
    other.wait("incoming")
    other.answer()
    phone.wait_text("#status", f"In a call with {uri('5002')}")
    assert phone.wait_inbound_bytes(MEDIA_BYTES, api="sipgwPhone") > MEDIA_BYTES
    assert other.wait_inbound_bytes(MEDIA_BYTES) > MEDIA_BYTES
    phone.wait_text("#audio-stats", "Audio received:")
    phone.screenshot(artifacts / "phone-page-in-call.png")
    phone.click("#hangup")
    phone.wait_text("#status", "ended: you hung up")
    assert other.wait("ended").detail["originator"] == "remote"

    # The phone page is called, and answers.
    other.call(uri("5001"))
    phone.wait_text("#status", "Incoming call from sip:5002@")
    phone.click("#answer")
    other.wait("confirmed")
    phone.wait_text("#status", "In a call with sip:5002@")
    assert other.wait_inbound_bytes(MEDIA_BYTES) > MEDIA_BYTES
    other.hangup()
    phone.wait_text("#status", "ended: the other side hung up")

    log = phone.text("#log")
    assert "Registered as" in log and "Remote audio is playing." in log


def test_the_phone_page_defaults_to_its_own_origin_and_takes_its_fields_from_its_address(
    browser: BrowserRig, pages: PageServer
) -> None:
    plain = browser.open("plain", pages.url("/phone/"))
    assert plain.value("#ws-url") == pages.base_url.replace("http://", "ws://") + "/ws"
    assert plain.value("#sip-uri") == ""

    query = ("ws=wss%3A%2F%2Fedge.example%3A8443%2Fws&user=5001&password=password5001"
             "&name=Desk&target=5002")
    filled = browser.open("filled", pages.url(f"/phone/?{query}"))
    assert filled.value("#ws-url") == "wss://edge.example:8443/ws"
    assert filled.value("#sip-uri") == "sip:5001@127.0.0.1"
    assert filled.value("#password") == "password5001"
    assert filled.value("#display-name") == "Desk"
    assert filled.value("#target") == "5002"


def test_the_phone_page_says_plainly_when_the_jssip_bundle_is_missing(
    browser: BrowserRig, pages: PageServer
) -> None:
    phone = browser.open("phone", pages.url("/phone/"), block=["**/vendor/jssip.js"])
    status = phone.wait_text("#status", "JsSIP library (vendor/jssip.js) is missing")
    assert "install sipgw again" in status
    assert "install sipgw again" in phone.text("#missing")


def test_a_rig_told_to_ignore_certificate_errors_opens_a_self_signed_https_page_and_others_refuse_it(  # noqa: E501 - a test's name is its sentence
    tmp_path: Path, browser_setup: None
) -> None:
    server = PageServer(tls=self_signed_certificate(tmp_path / "tls")).start()
    url = server.url("/pages/jssip.html")
    try:
        with BrowserRig(tmp_path / "trusting", ignore_certificate_errors=True) as trusting:
            assert trusting.open("page", url).library().startswith("JsSIP ")
        with BrowserRig(tmp_path / "strict") as strict:
            with pytest.raises(RigError, match="ERR_CERT"):
                strict.open("page", url)
    finally:
        server.stop()


def test_closing_the_rig_leaves_no_chromium_running(
    tmp_path: Path, browser_setup: None, pages: PageServer
) -> None:
    rig = BrowserRig(tmp_path / "rig").start()
    rig.open("page", pages.url("/pages/jssip.html"))
    pid = rig.browser_pid
    assert pid is not None and _running(pid)
    rig.close()
    assert not _running(pid)


def test_a_driver_that_dies_fails_waits_at_once_and_its_chromium_is_still_killed(
    tmp_path: Path, browser_setup: None, pages: PageServer
) -> None:
    rig = BrowserRig(tmp_path / "rig").start()
    try:
        page = rig.open("page", pages.url("/pages/jssip.html"))
        chromium = rig.browser_pid
        assert chromium is not None and rig.driver_pid is not None
        os.kill(rig.driver_pid, signal.SIGKILL)

        started = time.monotonic()
        with pytest.raises(RigError, match="driver exited"):
            page.wait("registered", timeout=30)
        with pytest.raises(RigError, match="driver is gone"):
            page.call(uri("nobody"))
        # At once, not after the wait's 30 s (with room for a busy machine).
        assert time.monotonic() - started < 10
    finally:
        rig.close()
    assert not _running(chromium)


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its new parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X") and os.path.exists(f"/proc/{pid}")
