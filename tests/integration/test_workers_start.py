"""``sipgw serve --workers 2`` that cannot start says why once and exits 1, leaving no
process behind: a port in use, a certificate that is not there. One that starts is ready
for the tests (``SipgwProcess.start``) only once every worker is."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from sipgw.tools.loopback import free_port
from tests.integration.sipgw_process import SipgwRunner

pytestmark = pytest.mark.integration


def serve(tmp_path, listen: str) -> subprocess.CompletedProcess:
    config = tmp_path / "sipgw.toml"
    config.write_text(f"[listen]\n{listen}\n[proxy]\nworkers = 2\n"
                      f'[dispatcher]\ndestinations = ["sip:127.0.0.1:9"]\n'
                      f'[state]\ndirectory = "{tmp_path}/state"\n'
                      f'[control]\nsocket = "{tmp_path}/c.ctl"\n')
    return subprocess.run([sys.executable, "-m", "sipgw", "serve", "-c", str(config)],
                          capture_output=True, text=True, timeout=30)


def test_a_port_in_use_stops_the_service_before_any_worker_starts(tmp_path):
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        done = serve(tmp_path, f'udp = ["127.0.0.1:{free_port()}"]\ntcp = ["127.0.0.1:{port}"]\n'
                               "ws = []")
    finally:
        busy.close()
    assert done.returncode == 1
    assert f"cannot listen on tcp:127.0.0.1:{port}" in done.stderr
    assert "worker 0 started" not in done.stderr


def test_a_missing_certificate_is_said_once_by_the_supervisor(tmp_path):
    done = serve(tmp_path, f'udp = ["127.0.0.1:{free_port()}"]\ntcp = []\nws = []\n'
                           f'wss = ["127.0.0.1:{free_port()}"]\n'
                           f'[tls]\ncertificate = "{tmp_path}/missing.pem"')
    assert done.returncode == 1
    assert done.stderr.count("missing.pem") == 1
    assert "worker 0 started" not in done.stderr


@pytest.mark.parametrize("attempt", range(3))  # a worker late by a few ms is the usual case
def test_a_started_sipgw_of_workers_has_every_worker_ready(sipgw: SipgwRunner, tmp_path,
                                                            attempt: int):
    gw = sipgw(backend="127.0.0.1:9", workers=2, log_level="info",
               extra_toml=f'[control]\nsocket = "{tmp_path}/c.ctl"\n')
    assert [w["ready"] for w in gw.rpc("core.workers")] == [True, True]
