"""The default digest settings against the phones people try first: SIPp, sipsak and baresip
(Debian packages) each register with digest and place a call through a sipgw whose
``[auth]`` sets no ``algorithms``, to a backend, each reading the challenges as it does
(SIPp and sipsak the first, baresip every one). MD5 alone, the default, is what all of them
can answer. The browsers (JsSIP and SIP.js, which read the last challenge) do the same in
``tests/browser/test_sipgw_browsers.py``.

SHA-256 stays one line away: offered first on request, a phone that answers the first
challenge with its algorithm registers with SHA-256, while sipsak cannot: why it is not the
default.
"""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

from sipgw.tools.digest_client import challenges
from sipgw.tools.process import SipgwProcess
from tests.integration.baresip import Baresip
from tests.integration.sipgw_process import UdpPeer, build_response
from tests.integration.sipp import SippMessage, SippProcess, SippRunner
from tests.integration.test_auth_sipp import REALM, Phone, add_user, credentials_file, start_gw

pytestmark = pytest.mark.integration

PASSWORD = "s3cret"
CLIENT_TIMEOUT = 15.0


def default_gw(sipgw, backend: str, tmp_path: Path, **auth: str) -> SipgwProcess:
    """A sipgw with digest authentication on SQLite, users 5001 and 5002 added with
    ``sipgw users add``; ``[auth]`` has no ``algorithms`` unless given."""
    gw = start_gw(sipgw, backend, f"sqlite://{tmp_path}/subscribers.db", **auth)
    assert ("algorithms" in gw.config_path.read_text()) is ("algorithms" in auth)
    for user in ("5001", "5002"):
        add_user(gw, user, PASSWORD)
    return gw


def offered(reply: SippMessage, name: str = "WWW-Authenticate") -> list[str]:
    return [c.params["algorithm"] for c in challenges(reply, name)]


def relayed(backend: SippProcess) -> list[SippMessage]:
    """The requests the backend received, in order, each once (retransmissions left out)."""
    requests = [m for m in backend.messages() if m.direction == "received" and not m.is_response]
    return [next(copies) for _, copies in itertools.groupby(requests, key=lambda m: m.text)]


def assert_without_our_credentials(requests: list[SippMessage]) -> None:
    """The REGISTERs and INVITEs that reached the backend were authorized by sipgw, which
    kept the credentials (in-dialog requests are not challenged, and pass as they are)."""
    for request in requests:
        if request.method not in ("REGISTER", "INVITE"):
            continue
        assert request.header("Authorization") is None, request.text
        assert request.header("Proxy-Authorization") is None, request.text


# --- SIPp --------------------------------------------------------------------------------


def test_sipp_registers_and_calls_through_the_default_configuration(
    sipgw, sipp: SippRunner, tmp_path: Path
):
    backend = sipp.uas("uas_register_or_call", calls=2)
    gw = default_gw(sipgw, backend.address, tmp_path)
    inf = credentials_file(tmp_path / "5001.csv", "5001", PASSWORD)

    phone = sipp.uac("uac_register_auth", remote=gw.address, inf=inf)
    assert phone.wait() == 0, phone.describe()
    caller = sipp.uac("uac_call_auth", remote=gw.address, service="5002", inf=inf)
    assert caller.wait() == 0, caller.describe()
    assert backend.wait() == 0, backend.describe()

    [challenge] = [m for m in phone.messages() if m.direction == "received" and m.status == 401]
    assert offered(challenge) == ["MD5"]
    [challenge] = [m for m in caller.messages() if m.direction == "received" and m.status == 407]
    assert offered(challenge, "Proxy-Authenticate") == ["MD5"]
    requests = relayed(backend)
    assert [m.method for m in requests] == ["REGISTER", "INVITE", "ACK", "BYE"]
    assert_without_our_credentials(requests)


# --- sipsak ------------------------------------------------------------------------------


def sipsak(executable: str, gw: SipgwProcess, *args: str) -> subprocess.Popen[str]:
    """sipsak as user 5001 (``-u``, ``-a``) toward sipgw, printing what it sends and
    receives (``-vvv``). In usrloc mode (``-U``) sipsak 0.9.8 writes the REGISTER's
    Request-URI and From without the port's last digit: sipgw knows its host all the same."""
    return subprocess.Popen(
        [executable, *args, "-s", f"sip:5001@{gw.address}", "-u", "5001", "-a", PASSWORD,
         "-H", "127.0.0.1", "-vvv"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = process.communicate(timeout=CLIENT_TIMEOUT)
    return process.returncode, out


def sipsak_answered(executable: str, gw: SipgwProcess, backend: UdpPeer, method: str,
                    *args: str, contact: str | None = None) -> tuple[SippMessage, str]:
    """Run sipsak with ``args``; the backend answers the ``method`` request sipgw relays
    with a 200 whose Contact is ``contact`` (default: the request's, as a registrar lists
    the binding). That request, and sipsak's output once it exited 0."""
    running = sipsak(executable, gw, *args)
    request = backend.expect(method, timeout=CLIENT_TIMEOUT)
    contact = contact or request.header("Contact")
    backend.send(build_response(request, 200, "OK", to_tag="backend",
                                headers=[f"Contact: {contact}"]), gw.address)
    code, out = finish(running)
    assert code == 0, out
    return request, out


def invite_file(path: Path, gw: SipgwProcess) -> Path:
    """The INVITE sipsak sends (shoot mode, ``-f``): 5001 calls 5002, with an offer; sipsak
    adds its Via, and answers the 407 itself."""
    sdp = ("v=0\r\no=5001 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    path.write_bytes((
        f"INVITE sip:5002@{gw.address} SIP/2.0\r\n"
        f"From: <sip:5001@{REALM}>;tag=sipsak-5001\r\n"
        f"To: <sip:5002@{REALM}>\r\n"
        "Call-ID: sipsak-call@127.0.0.1\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:5001@127.0.0.1>\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode())
    return path


def test_sipsak_registers_and_calls_through_the_default_configuration(
    sipgw, sipsak_executable: str, tmp_path: Path
):
    with UdpPeer() as backend:
        gw = default_gw(sipgw, backend.address, tmp_path)

        register, out = sipsak_answered(sipsak_executable, gw, backend, "REGISTER", "-U")
        assert "401 Unauthorized" in out and "algorithm=MD5" in out, out

        invite, out = sipsak_answered(sipsak_executable, gw, backend, "INVITE",
                                      "-f", str(invite_file(tmp_path / "invite", gw)),
                                      contact=f"<sip:5002@{backend.address}>")
        assert "407 Proxy Authentication Required" in out, out

    assert_without_our_credentials([register, invite])
    assert invite.header("From").startswith(f"<sip:5001@{REALM}>")


# --- baresip -----------------------------------------------------------------------------


def test_baresip_registers_and_calls_through_the_default_configuration(
    sipgw, sipp: SippRunner, baresip_executable: str, tmp_path: Path
):
    # baresip unregisters as it quits, with its REGISTER's Call-ID: -deadcall_wait 0 makes
    # that a new call of the backend's, answered.
    backend = sipp.uas("uas_register_or_call", calls=3, timeout=30,
                       extra_args=["-deadcall_wait", "0"])
    gw = default_gw(sipgw, backend.address, tmp_path)
    phone = Baresip(tmp_path / "baresip", aor=f"sip:5001@{REALM}", password=PASSWORD,
                    outbound=f"sip:{gw.address}", executable=baresip_executable)
    with phone:
        assert phone.registration() == "OK", phone.describe()
        phone.command("dial", f"sip:5002@{REALM}")
        answered = phone.wait_event("CALL_ESTABLISHED", "CALL_CLOSED")
        assert answered["type"] == "CALL_ESTABLISHED", (answered, phone.describe())
        phone.command("hangup")
        phone.wait_event("CALL_CLOSED")
        assert phone.quit() == 0, phone.describe()
    assert backend.wait() == 0, backend.describe()

    requests = relayed(backend)
    assert [m.method for m in requests] == ["REGISTER", "INVITE", "ACK", "BYE", "REGISTER"]
    assert_without_our_credentials(requests)


# --- SHA-256 on request --------------------------------------------------------------------


def test_sha256_offered_first_is_answered_by_a_phone_that_can_and_locks_sipsak_out(
    sipgw, sipsak_executable: str, tmp_path: Path
):
    with UdpPeer() as backend:
        gw = default_gw(sipgw, backend.address, tmp_path, algorithms='["SHA-256", "MD5"]')
        add_user(gw, "raw", "pw")
        phone = Phone(gw)
        try:
            challenge = phone.challenge()
            assert offered(challenge) == ["SHA-256", "MD5"]
            credentials = phone.credentials(challenge)
            assert "algorithm=SHA-256" in credentials
            phone.register(credentials)
            register = backend.expect("REGISTER")
            assert_without_our_credentials([register])
            backend.send(build_response(register, 200, "OK", to_tag="registrar"), gw.address)
            phone.peer.expect("200")
        finally:
            phone.close()

        code, out = finish(sipsak(sipsak_executable, gw, "-U"))
        assert code != 0
        assert "unsupported authentication algorithm" in out, out
        assert [m for m in backend.collect(0.2) if "5001@" in (m.header("From") or "")] == []
