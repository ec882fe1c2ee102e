"""``sipgw trace``: one line per message, -v whole messages, --json NDJSON, --pcap a file."""

from __future__ import annotations

import json
import struct

INVITE = ("INVITE sip:5002@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK1"
          "\r\nCall-ID: c-1\r\nCSeq: 1 INVITE\r\n\r\n")
RECORDS = [
    {"time": 1795705527.123, "dir": "in", "transport": "udp", "src": "192.0.2.7:5060",
     "dst": "198.51.100.1:5060", "method": "INVITE", "status": None, "reason": None,
     "ruri": "sip:5002@example.com", "call_id": "c-1", "cseq": "1 INVITE",
     "from": "sip:5001@example.com", "to": "sip:5002@example.com", "raw": INVITE},
    {"time": 1795705527.2, "dir": "out", "transport": "udp", "src": "198.51.100.1:5060",
     "dst": "192.0.2.7:5060", "method": None, "status": 486, "reason": "Busy Here",
     "ruri": None, "call_id": "c-1", "cseq": "1 INVITE", "from": "sip:5001@example.com",
     "to": "sip:5002@example.com",
     "raw": "SIP/2.0 486 Busy Here\r\nCall-ID: c-1\r\nCSeq: 1 INVITE\r\n\r\n"},
]


def test_one_line_per_message_with_direction_flow_method_or_status_call_id_and_users(
    run, control
):
    control.answers["trace.subscribe"] = {"subscribed": True}
    control.streams["trace.subscribe"] = RECORDS
    code, out, err = run("trace", "-c", str(control.config), "-n", "2")
    assert code == 0, err
    first, second = out.splitlines()
    assert first.endswith(" in  udp 192.0.2.7:5060 -> 198.51.100.1:5060 INVITE "
                          "sip:5002@example.com  c-1  5001@example.com -> 5002@example.com")
    assert " out udp 198.51.100.1:5060 -> 192.0.2.7:5060 486 Busy Here (INVITE)  c-1" in second
    assert control.methods_called() == [("trace.subscribe", {"raw": False})]


def test_filters_are_passed_to_the_proxy(run, control):
    control.answers["trace.subscribe"] = {"subscribed": True}
    control.streams["trace.subscribe"] = RECORDS[:1]
    run("trace", "-c", str(control.config), "-n", "1", "-m", "INVITE", "-m", "BYE",
        "-u", "5001", "--call-id", "c-1", "-a", "192.0.2.7", "-s", "4xx")
    assert control.methods_called() == [("trace.subscribe", {
        "raw": False, "method": ["INVITE", "BYE"], "user": "5001", "call_id": "c-1",
        "address": "192.0.2.7", "status": "4xx"})]


def test_verbose_prints_the_whole_message_and_json_one_object_per_line(run, control):
    control.answers["trace.subscribe"] = {"subscribed": True}
    control.streams["trace.subscribe"] = RECORDS
    code, out, _ = run("trace", "-c", str(control.config), "-n", "2", "-v")
    assert "Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK1\n" in out
    assert control.methods_called()[-1][1]["raw"] is True
    code, out, _ = run("trace", "-c", str(control.config), "-n", "2", "--json")
    assert [json.loads(line) for line in out.splitlines()] == RECORDS


def test_pcap_writes_each_message_as_a_packet(run, control, tmp_path):
    control.answers["trace.subscribe"] = {"subscribed": True}
    control.streams["trace.subscribe"] = RECORDS
    pcap = tmp_path / "call.pcap"
    code, _, err = run("trace", "-c", str(control.config), "-n", "2", "--pcap", str(pcap))
    assert code == 0, err
    data = pcap.read_bytes()
    first_len = struct.unpack("<I", data[24 + 8:24 + 12])[0]
    assert data[24 + 16 + 28:24 + 16 + first_len] == INVITE.encode()


def test_the_proxy_going_away_mid_trace_is_exit_3(run, control):
    control.answers["trace.subscribe"] = {"subscribed": True}
    control.streams["trace.subscribe"] = RECORDS
    code, out, err = run("trace", "-c", str(control.config))
    assert code == 3
    assert len(out.splitlines()) == 2
    assert "the proxy went away after 2 messages" in err


def test_a_refused_filter_is_exit_1_with_the_reason(run, control):
    control.answers["trace.subscribe"] = ValueError("status filter 'x': use a class such as 4xx")
    code, _, err = run("trace", "-c", str(control.config), "-s", "x")
    assert code == 1
    assert "use a class such as 4xx" in err
