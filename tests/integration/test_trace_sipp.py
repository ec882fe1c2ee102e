"""``sipgw trace`` against a real sipgw during a real SIPp call: tshark (Debian) decodes the
capture, and it holds every SIP message of the call, on both legs."""

from __future__ import annotations

import collections
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.sipgw_process import SipgwRunner
from tests.integration.sipp import SippRunner

pytestmark = pytest.mark.integration


def start_trace(config: Path, *args: str) -> subprocess.Popen[str]:
    """``sipgw trace ARGS``, returned once it is subscribed (its "tracing" line)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SIPGW_CONFIG", "JOURNAL_STREAM")}
    proc = subprocess.Popen([sys.executable, "-m", "sipgw", "trace", "-c", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        if not sel.select(10):
            proc.kill()
            raise AssertionError("sipgw trace did not subscribe within 10 s")
    line = proc.stderr.readline()
    assert line.startswith("tracing"), line + proc.stderr.read()
    return proc


def tshark_rows(pcap: Path) -> list[tuple[str, str, str]]:
    tshark = shutil.which("tshark")
    assert tshark, "tshark is not installed (Debian package tshark): run ./scripts/setup"
    done = subprocess.run([tshark, "-r", str(pcap), "-Y", "sip", "-T", "fields",
                           "-e", "sip.Method", "-e", "sip.Status-Code", "-e", "sip.Call-ID",
                           "-e", "sip.CSeq"], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return []  # a capture still being written may end mid-packet
    rows = []
    for line in done.stdout.splitlines():
        method, status, call_id, cseq = (line.split("\t") + ["", "", "", ""])[:4]
        rows.append((method or status, call_id, cseq))
    return rows


def test_trace_pcap_during_a_call_holds_every_sip_message_of_it_decoded_by_tshark(
    sipp: SippRunner, sipgw: SipgwRunner, tmp_path: Path,
):
    uas = sipp.uas("uas_call.xml", timeout=30, calls=1000)
    gw = sipgw(backend=uas.address,
               extra_toml=f'[control]\nsocket = "{tmp_path}/sipgw.ctl"\n')
    pcap = tmp_path / "call.pcap"
    trace = start_trace(gw.config_path, "-m", "INVITE,ACK,BYE", "--pcap", str(pcap))
    try:
        uac = sipp.uac("uac_call.xml", remote=gw.address, timeout=10)
        assert uac.wait(20) == 0, uac.describe()
        # What SIPp saw on both legs: each message passed sipgw once in and once out.
        expected = collections.Counter(
            (m.kind, m.header("Call-ID"), m.header("CSeq"))
            for m in [*uac.messages(), *uas.messages()]
        )
        deadline = time.monotonic() + 10
        while True:
            seen = collections.Counter(tshark_rows(pcap))
            if not expected - seen or time.monotonic() > deadline:
                break
            try:  # a bounded poll of the capture file, every 100 ms
                trace.wait(0.1)
                raise AssertionError(f"sipgw trace ended early: {trace.stderr.read()}")
            except subprocess.TimeoutExpired:
                pass
        assert expected - seen == collections.Counter(), (expected, seen)
    finally:
        trace.send_signal(signal.SIGINT)
        assert trace.wait(10) == 0, trace.stderr.read()
    lines = trace.stdout.read().splitlines()
    assert len(lines) == sum(expected.values())
    assert any(" INVITE sip:" in line for line in lines)
