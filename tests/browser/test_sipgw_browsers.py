"""Issue 4's browser acceptance through sipgw: real browsers (JsSIP, SIP.js, the phone page
sipgw serves) register over WS, WSS and nginx with digest passwords made by ``sipgw users``,
and call each other through sipgw and a real registrar behind it (``kamailio/registrar.cfg``,
the Asterisk stand-in that routes by Path), with WebRTC audio both ways.

::

    Chromium pages ──WS/WSS(/nginx)──> sipgw ──UDP──> Kamailio registrar.cfg
         ^                               │  <──UDP── (INVITE by the Path, in-dialog by RR)
         └──────── the callee's flow ────┘

One Kamailio and one sipgw (WS, digest auth on SQLite with the default algorithms, its
control socket) serve the whole module: every test uses users of its own. JsSIP and SIP.js
keep only the last challenge of a 401/407 and know only MD5; the default, MD5 alone, is what
they answer (``tests/integration/test_default_clients.py`` has the other phones). The WSS test
starts a sipgw of its own with a certificate made at test time; the nginx test an nginx of its
own from the shipped ``etc/nginx/sipgw.conf``. Each test has its own Chromium.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipgw.rpc.client import Client
from sipgw.tools.kamailio import KamailioProcess, kamailio_executable
from sipgw.tools.nginx import Nginx
from sipgw.tools.process import run_cli
from tests.browser.kamailio_process import KamailioRunner
from tests.browser.rig import ARTIFACTS, BrowserRig, Page, PageServer, self_signed_certificate
from tests.integration.sipp import LOOPBACK, free_port
from tests.integration.test_ws_sipp import WsSipgw

pytestmark = pytest.mark.integration

DOMAIN = "sipgw.test"
REALM = DOMAIN
# More than one packet: a stream (Opus at 20 ms per packet), not a stray datagram.
MEDIA_BYTES = 1000


def uri(user: str) -> str:
    return f"sip:{user}@{DOMAIN}"


def password(user: str) -> str:
    return f"pw-{user}-s3cret"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("SIPGW_CONFIG", "JOURNAL_STREAM")}


# --- sipgw with digest authentication ------------------------------------------------------


class EdgeSipgw(WsSipgw):
    """The test sipgw with a WS listener, digest auth on SQLite, a control socket (in a short
    directory: a unix socket path has 107 bytes at most) and, with ``wss_port`` and
    ``certificate``, a WSS listener."""

    def __init__(self, workdir: Path, *, ws_port: int, backend: str, control_dir: Path,
                 wss_port: int | None = None, certificate: tuple[Path, Path] | None = None) -> None:
        state = workdir / "state"
        extra = (
            f'[state]\ndirectory = "{state}"\n\n'
            f'[subscribers]\nurl = "sqlite://{state}/subscribers.db"\n\n'
            f'[auth]\nrealm = "{REALM}"\n\n'
            f'[control]\nsocket = "{control_dir}/sipgw.ctl"\n\n'
            # nginx on loopback in front: its X-Real-IP is believed.
            '[websocket]\ntrusted_proxies = ["127.0.0.1/32"]\n'
        )
        if certificate is not None:
            extra += (
                f'\n[tls]\ncertificate = "{certificate[0]}"\nprivate_key = "{certificate[1]}"\n'
            )
        super().__init__(workdir, ws_port=ws_port, backend=backend, auth=True, extra_toml=extra,
                         log_level="debug")
        self.wss_port = wss_port
        self.control_socket = control_dir / "sipgw.ctl"
        state.mkdir(parents=True, exist_ok=True)

    @property
    def ws_url(self) -> str:
        return f"ws://{self.ws_address}/ws"

    @property
    def wss_url(self) -> str:
        return f"wss://{LOOPBACK}:{self.wss_port}/ws"

    def config_text(self, **kw) -> str:
        text = super().config_text(**kw)
        if self.wss_port is not None:
            text = text.replace("ws = [", f'wss = ["{LOOPBACK}:{self.wss_port}"]\nws = [', 1)
        return text

    def add_users(self, added: list[str], imported: list[str] = ()) -> None:
        """``imported`` with one ``sipgw users import FILE.csv`` (it makes the database),
        then each of ``added`` with ``sipgw users add USER --password-stdin``, all at once
        (WAL, busy timeout); every one with ``-c`` this sipgw's own config file."""
        if imported:
            csv = self.workdir / "users.csv"
            csv.write_text(
                "username,password\n" + "".join(f"{u},{password(u)}\n" for u in imported)
            )
            done = run_cli("users", "import", str(csv), "-c", str(self.config_path))
            assert done.returncode == 0, f"sipgw users import: {done.stdout}{done.stderr}"
        running = [(user, subprocess.Popen(
            [sys.executable, "-m", "sipgw", "users", "add", user, "--password-stdin",
             "-c", str(self.config_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=_env())) for user in added]
        for user, proc in running:
            out, _ = proc.communicate(password(user) + "\n", timeout=30)
            assert proc.returncode == 0, f"sipgw users add {user}: {out}"

    def ctl(self, *args: str):
        """``sipgw ctl -c <config> --json ARGS``, decoded."""
        done = run_cli("ctl", "-c", str(self.config_path), "--json", *args)
        assert done.returncode == 0, f"sipgw ctl {' '.join(args)}: {done.stdout}{done.stderr}"
        return json.loads(done.stdout)

    def ws_stats(self) -> dict[str, int]:
        """``sipgw ctl --json stats.get_statistics websocket:`` as a dict."""
        out = {}
        for line in self.ctl("stats.get_statistics", "websocket:"):
            name, _, value = line.partition(" = ")
            out[name.strip()] = int(value)
        return out


@dataclass
class Edge:
    backend: KamailioProcess
    gw: EdgeSipgw


@contextlib.contextmanager
def control_directory() -> Iterator[Path]:
    """A short directory for the control socket (pytest's tmp_path can be too long)."""
    directory = Path(tempfile.mkdtemp(prefix="sipgw-ctl-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KamailioProcess]:
    """``registrar.cfg``: the Asterisk stand-in that keeps Paths and routes by them."""
    executable = kamailio_executable()
    if executable is None:
        pytest.fail("kamailio is not installed (Debian packages kamailio and "
                    "kamailio-websocket-modules): run ./scripts/setup")
    runner = KamailioRunner(tmp_path_factory.mktemp("kamailio"), executable)
    try:
        yield runner("registrar.cfg")
    finally:
        runner.stop_all()


def start_edge(workdir: Path, backend: KamailioProcess, control_dir: Path, users: list[str],
               imported: list[str] = (), **options) -> EdgeSipgw:
    gw = EdgeSipgw(workdir, ws_port=free_port("tcp"), backend=f"{LOOPBACK}:{backend.udp_port}",
                   control_dir=control_dir, **options)
    assert "algorithms" not in gw.config_text()  # the default digest settings
    gw.start()
    try:
        gw.add_users(users, imported)
    except BaseException:
        gw.kill()
        raise
    return gw


# The users of the first test are made with "sipgw users add --password-stdin"; those of
# the others (a fresh pair each: Kamailio keeps bindings of closed pages) in one go with
# "sipgw users import".
ADDED = ["5001", "5002"]
IMPORTED = ["5011", "5031", "5032", "5041", "5042", "5051", "5052", "5061", "5062"]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, backend: KamailioProcess) -> Iterator[Edge]:
    """One sipgw for the module: WS, digest auth, users made with ``sipgw users add``."""
    with control_directory() as control_dir:
        gw = start_edge(tmp_path_factory.mktemp("sipgw"), backend, control_dir, ADDED, IMPORTED)
        try:
            yield Edge(backend, gw)
        finally:
            gw.stop()


# --- pages --------------------------------------------------------------------------------


def registered(page: Page, ws_url: str, user: str) -> Page:
    page.register(ws_url, uri(user), password(user), display_name=f"User {user}")
    page.wait("registered", timeout=10)
    return page


def call_with_media(caller: Page, callee: Page, callee_user: str) -> None:
    caller.call(uri(callee_user))
    incoming = callee.wait("incoming")
    assert incoming.detail["from"].startswith("sip:")
    callee.answer()
    caller.wait("confirmed")
    callee.wait("confirmed")
    assert caller.wait_inbound_bytes(MEDIA_BYTES) > MEDIA_BYTES
    assert callee.wait_inbound_bytes(MEDIA_BYTES) > MEDIA_BYTES


def assert_call_with_media_and_bye(caller: Page, callee: Page, callee_user: str) -> None:
    call_with_media(caller, callee, callee_user)
    caller.hangup()
    assert caller.wait("ended").detail["originator"] == "local"
    ended = callee.wait("ended")
    assert ended.detail["originator"] == "remote"
    # A real BYE: JsSIP's cause for one (SIP.js's page reports the same word).
    assert ended.detail["cause"] == "Terminated"


def two_jssip_calls(browser: BrowserRig, pages: PageServer, ws_url: str, a_user: str, b_user: str,
                    backend: KamailioProcess) -> tuple[Page, Page]:
    """A registers, B registers, A calls B (audio both ways), A hangs up: the INVITE went to
    B by its Path, and the BYE followed the route set through the backend."""
    a = registered(browser.open("a", pages.url("/pages/jssip.html")), ws_url, a_user)
    b = registered(browser.open("b", pages.url("/pages/jssip.html")), ws_url, b_user)
    mark = len(backend.log())
    assert_call_with_media_and_bye(a, b, b_user)
    for page in (a, b):
        assert not page.events("failed") and not page.events("pageerror")
    log = backend.log()[mark:]
    assert re.search(
        r"INVITE \S+\} <script>: to \S+ at <sip:[^>]*;alias=127\.0\.0\.1~\d+~[56][^>]*> "
        r"via <sip:[0-9a-z]+-\d+@127\.0\.0\.1:\d+;lr;ob>",
        log,
    ), log
    assert re.search(r"BYE \S+\} <script>: in dialog to <sip:[^>]*;alias=", log), log
    return a, b


# --- 1. WS ---------------------------------------------------------------------------------


def test_two_jssip_pages_register_over_ws_with_digest_and_call_each_other_through_sipgw_and_kamailio(  # noqa: E501 - a test's name is its sentence
    browser: BrowserRig, pages: PageServer, edge: Edge
) -> None:
    two_jssip_calls(browser, pages, edge.gw.ws_url, "5001", "5002", edge.backend)


def test_a_wrong_password_is_refused_and_the_right_one_then_registers(
    browser: BrowserRig, pages: PageServer, edge: Edge
) -> None:
    wrong = browser.open("wrong", pages.url("/pages/jssip.html"))
    wrong.register(edge.gw.ws_url, uri("5011"), "not-the-password")
    failed = wrong.wait("registration_failed")
    assert failed.detail["status"] in (401, 403), failed.detail
    assert not wrong.events("registered")

    right = registered(
        browser.open("right", pages.url("/pages/jssip.html")), edge.gw.ws_url, "5011"
    )
    assert right.events("registered")[-1].detail["status"] == 200


# --- 2. WSS --------------------------------------------------------------------------------


@pytest.fixture
def wss_edge(tmp_path: Path, backend: KamailioProcess) -> Iterator[Edge]:
    """A sipgw of its own with a WSS listener on a certificate made now."""
    certificate = self_signed_certificate(tmp_path / "tls")
    with control_directory() as control_dir:
        gw = start_edge(tmp_path / "sipgw-wss", backend, control_dir, ["5021", "5022"],
                        wss_port=free_port("tcp"), certificate=certificate)
        try:
            yield Edge(backend, gw)
        finally:
            gw.stop()


@pytest.fixture
def trusting_browser(request: pytest.FixtureRequest, tmp_path: Path,
                     browser_setup: None) -> Iterator[BrowserRig]:
    """Like ``browser``, but Chromium accepts the test certificate (this profile only)."""
    rig = BrowserRig(tmp_path / "browser-wss", ignore_certificate_errors=True)
    try:
        rig.start()
        yield rig
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            rig.keep_evidence(ARTIFACTS / "failed" / request.node.name)
    finally:
        rig.close()


def test_two_jssip_pages_register_over_wss_and_call_each_other(
    trusting_browser: BrowserRig, pages: PageServer, wss_edge: Edge
) -> None:
    browser = trusting_browser
    wrong = browser.open("wrong", pages.url("/pages/jssip.html"))
    wrong.register(wss_edge.gw.wss_url, uri("5021"), "not-the-password")
    assert wrong.wait("registration_failed").detail["status"] in (401, 403)
    two_jssip_calls(browser, pages, wss_edge.gw.wss_url, "5021", "5022", wss_edge.backend)
    # Both phones are on WSS flows, as ws.dump shows them.
    dump = wss_edge.gw.ctl("ws.dump")["connections"]
    users = {user: conn["proto"] for conn in dump for user in conn["users"]}
    assert users == {uri("5021"): "wss", uri("5022"): "wss"}, dump


# --- 3. nginx in front (sipgw/tools/nginx.py) -------------------------------------------


def test_two_jssip_pages_register_and_call_through_nginx_in_front_of_sipgw(
    browser: BrowserRig, pages: PageServer, edge: Edge, tmp_path: Path
) -> None:
    nginx = Nginx(tmp_path / "nginx", edge.gw.ws_port)
    try:
        nginx.start()
        ws_url = f"ws://{LOOPBACK}:{nginx.port}/ws"
        for page in two_jssip_calls(browser, pages, ws_url, "5031", "5032", edge.backend):
            page.close()
        # Both WebSockets went through nginx: it logs each (101) when it closes.
        assert len(nginx.wait_access_lines(r'"GET /ws HTTP/1\.1" 101 ', 2)) == 2
    finally:
        nginx.stop()


# --- 4. SIP.js -----------------------------------------------------------------------------


def test_a_sipjs_page_registers_with_digest_and_calls_a_jssip_page_through_sipgw(
    browser: BrowserRig, pages: PageServer, edge: Edge
) -> None:
    carol = registered(
        browser.open("carol", pages.url("/pages/sipjs.html")), edge.gw.ws_url, "5041"
    )
    assert carol.library().startswith("SIP.js ")
    dave = registered(browser.open("dave", pages.url("/pages/jssip.html")), edge.gw.ws_url, "5042")
    call_with_media(carol, dave, "5042")
    carol.hangup()
    assert dave.wait("ended").detail["originator"] == "remote"
    assert not carol.events("pageerror") and not dave.events("failed")


# --- 5. the phone page sipgw serves --------------------------------------------------------


def test_the_phone_page_sipgw_serves_driven_as_a_person_calls_another_browser(
    browser: BrowserRig, pages: PageServer, edge: Edge, artifacts: Path
) -> None:
    phone_url = f"http://{edge.gw.ws_address}/"
    phone = browser.open("phone", phone_url)
    # Its WebSocket URL defaults to sipgw's own listener.
    assert phone.value("#ws-url") == f"ws://{edge.gw.ws_address}/ws"
    assert phone.text("#status") == "Not registered."
    phone.fill("#sip-uri", uri("5051"))
    phone.fill("#password", password("5051"))
    phone.fill("#display-name", "Desk 5051")
    phone.click("#register")
    phone.wait_text("#status", f"Registered as {uri('5051')}")

    other = registered(
        browser.open("other", pages.url("/pages/jssip.html")), edge.gw.ws_url, "5052"
    )
    phone.fill("#target", uri("5052"))
    phone.click("#call")
    other.wait("incoming")
    other.answer()
    phone.wait_text("#status", f"In a call with {uri('5052')}")
    assert phone.wait_inbound_bytes(MEDIA_BYTES, api="sipgwPhone") > MEDIA_BYTES
    assert other.wait_inbound_bytes(MEDIA_BYTES) > MEDIA_BYTES
    phone.wait_text("#audio-stats", "Audio received:")
    phone.screenshot(artifacts / "sipgw-phone-page-in-call.png")
    phone.click("#hangup")
    phone.wait_text("#status", "ended: you hung up")
    assert other.wait("ended").detail["originator"] == "remote"


# --- 6. a tab closed mid-call --------------------------------------------------------------


def subscribe_trace(gw: EdgeSipgw, **filters) -> Client:
    """``trace.subscribe`` on sipgw's control socket (what ``sipgw trace`` calls); the
    subscription is in place when this returns."""
    client = Client(str(gw.control_socket), timeout=10)
    client.call("trace.subscribe", {"raw": False, **filters})
    return client


def read_trace_until(client: Client, wanted, timeout: float) -> list[dict]:
    """Trace records (each read bounded) until one satisfies ``wanted``; all read so far."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            message = client.read_message(timeout=left)
        except TimeoutError:
            raise AssertionError(f"not in the trace within {timeout} s: "
                                 f"{json.dumps(seen, indent=1)}") from None
        if message.get("method") != "trace.message":
            continue
        record = message.get("params") or {}
        seen.append(record)
        if wanted(record):
            return seen


def poll(fn, done, timeout: float = 5.0):
    """``fn()`` (a ``sipgw ctl`` run: it paces the loop) until ``done(value)`` or
    ``timeout`` seconds; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if done(value) or time.monotonic() > deadline:
            return value


def flows_of(gw: EdgeSipgw) -> dict[str, int]:
    """User → the id of the WebSocket connection it registered on (``ws.dump``)."""
    return {user: conn["id"] for conn in gw.ctl("ws.dump")["connections"] for user in conn["users"]}


# "At once" against the alternative, a BYE sent toward the gone flow and answered 408 by
# timer F (32 s): a bound with room for a busy machine running Chromium and Kamailio.
AT_ONCE = 10.0


def hang_up_toward_a_gone_tab(gw: EdgeSipgw, caller: Page,
                              backend: str) -> tuple[list[dict], float]:
    """``caller`` hangs up a call whose other end's tab is gone: the trace of BYEs until
    sipgw answers the backend's BYE 430 or 480 itself (bounded by ``AT_ONCE``), and how
    long that took."""
    trace = subscribe_trace(gw, method=["BYE"])
    try:
        started = time.monotonic()
        caller.hangup()

        def answered_from_here(record: dict) -> bool:
            return (record.get("dir") == "out" and record.get("status") in (430, 480)
                    and record.get("dst") == backend)

        records = read_trace_until(trace, answered_from_here, timeout=AT_ONCE)
        return records, time.monotonic() - started
    finally:
        trace.close()


def test_a_tab_closed_mid_call_makes_the_backends_bye_get_430_or_480_at_once(
    browser: BrowserRig, pages: PageServer, edge: Edge
) -> None:
    gw = edge.gw
    a = registered(browser.open("a", pages.url("/pages/jssip.html")), gw.ws_url, "5061")
    b = registered(browser.open("b", pages.url("/pages/jssip.html")), gw.ws_url, "5062")
    call_with_media(a, b, "5062")
    flows = flows_of(gw)
    assert uri("5061") in flows and uri("5062") in flows, flows
    during = gw.ws_stats()

    b.close()  # the tab goes, mid-call, without a word in SIP
    # sipgw notices at once: B's connection is gone from ws.dump, and the gauge drops.
    after = poll(lambda: flows_of(gw), lambda f: uri("5062") not in f)
    assert uri("5062") not in after and after.get(uri("5061")) == flows[uri("5061")], after
    stats = poll(gw.ws_stats, lambda s: s["websocket:ws_current_connections"]
                 < during["websocket:ws_current_connections"])
    assert stats["websocket:ws_current_connections"] < during["websocket:ws_current_connections"], (
        stats
    )
    assert (
        stats["websocket:ws_remote_closed_connections"]
        > during["websocket:ws_remote_closed_connections"]
    )

    backend = f"{LOOPBACK}:{edge.backend.udp_port}"
    records, elapsed = hang_up_toward_a_gone_tab(gw, a, backend)
    # The BYE came from the backend, toward B, and sipgw answered it itself, promptly.
    assert any(r.get("dir") == "in" and r.get("method") == "BYE" and r.get("src") == backend
               for r in records), records
    assert elapsed < AT_ONCE, elapsed
