"""nathelper's rules, pure: nat_uac_test bits, private ranges, the contact alias format."""

from __future__ import annotations

import pytest

from sipgw.sip.errors import ParseError
from sipgw.sip.nat import (
    DEFAULT_TESTS,
    NatTest,
    add_alias,
    decode_alias,
    encode_alias,
    is_private,
    nat_uac_test,
    needs_alias,
    split_alias_mac,
    take_alias,
)
from sipgw.sip.uri import parse_uri


def test_the_test_bits_are_kamailios_numbers_and_the_default_is_19_plus_websocket():
    assert [int(t) for t in NatTest] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert int(DEFAULT_TESTS) == 19 + 64
    assert NatTest(19) == NatTest.CONTACT_PRIVATE | NatTest.VIA_RECEIVED | NatTest.VIA_PORT


@pytest.mark.parametrize("host,private", [
    ("10.1.2.3", True), ("172.16.0.1", True), ("172.31.255.255", True), ("172.32.0.1", False),
    ("192.168.1.1", True), ("100.64.0.1", True), ("100.127.255.254", True),
    ("100.128.0.1", False), ("192.0.2.1", False), ("8.8.8.8", False), ("abc.invalid", False),
    ("[2001:db8::1]", False),
])
def test_private_addresses_are_rfc_1918_and_rfc_6598(host, private):
    assert is_private(host) is private


def run(tests, **kw):
    base = dict(source_host="203.0.113.5", source_port=40000, source_transport="udp")
    return nat_uac_test(NatTest(tests), **{**base, **kw})


def test_each_bit_fires_on_its_own_condition_only():
    contact = parse_uri("sip:u@192.168.0.5:5062")
    sdp = b"v=0\r\nc=IN IP4 10.0.0.9\r\n"
    assert run(1, contact=contact) == NatTest.CONTACT_PRIVATE
    assert run(1, contact=parse_uri("sip:u@203.0.113.5:40000")) == 0
    assert run(2, via_host="192.168.0.5", via_port=40000) == NatTest.VIA_RECEIVED
    assert run(2, via_host="203.0.113.5", via_port=5060) == 0
    assert run(4, via_host="10.0.0.1") == NatTest.VIA_PRIVATE
    assert run(8, body=sdp) == NatTest.SDP_PRIVATE
    assert run(16, via_host="203.0.113.5", via_port=5060) == NatTest.VIA_PORT
    assert run(16, via_host="203.0.113.5", via_port=40000) == 0
    assert run(32, source_host="100.64.1.1") == NatTest.SOURCE_PRIVATE
    assert run(64, source_transport="wss") == NatTest.WEBSOCKET
    assert run(64) == 0
    assert run(128, contact=contact) == NatTest.CONTACT_PORT
    assert run(256, body=sdp) == NatTest.SDP_SOURCE
    assert run(256, body=b"c=IN IP4 203.0.113.5\r\n") == 0
    assert run(0, contact=contact, via_host="10.0.0.1", body=sdp, source_transport="ws") == 0


ADDRESSES = [("192.0.2.7", "192.0.2.7"), ("2001:db8::7", "[2001:db8::7]"),
             ("::ffff:192.0.2.1", "[::ffff:192.0.2.1]")]
TRANSPORTS = {"udp": 1, "tcp": 2, "tls": 3, "ws": 5, "wss": 6}


@pytest.mark.parametrize("host,shown", ADDRESSES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_alias_round_trips_for_every_address_family_and_transport(host, shown, transport):
    value = encode_alias(host, 5061, transport)
    assert value == f"{shown}~5061~{TRANSPORTS[transport]}"
    assert decode_alias(value) == (host, 5061, transport)
    uri = parse_uri("sip:abc@df7jal23ls0d.invalid;transport=ws")
    aliased = add_alias(uri, host, 5061, transport)
    text = str(aliased)
    assert (
        text
        == f"sip:abc@df7jal23ls0d.invalid;alias={shown}~5061~{TRANSPORTS[transport]};transport=ws"
    )
    # What the backend sends back is what we wrote; taking the alias gives both back.
    bare, alias = take_alias(parse_uri(text))
    assert str(bare) == str(uri)
    assert alias == (host, 5061, transport)


def test_the_alias_goes_right_after_host_and_port_and_replaces_an_old_one():
    uri = parse_uri("sip:u@192.168.0.5:5062;transport=tcp;alias=10.0.0.1~1~1;ob")
    assert str(add_alias(uri, "203.0.113.5", 40000, "tcp")) == (
        "sip:u@192.168.0.5:5062;alias=203.0.113.5~40000~2;transport=tcp;ob"
    )


def test_a_signed_alias_carries_its_mac_as_a_fourth_field_that_decoding_ignores():
    uri = parse_uri("sip:u@192.168.0.5:5062;transport=tcp")
    signed = add_alias(uri, "203.0.113.5", 40000, "tcp", sign=lambda value: f"m{len(value)}")
    value = signed.param("alias")
    assert value == "203.0.113.5~40000~2~m19"
    assert split_alias_mac(value) == ("203.0.113.5~40000~2", "m19")
    assert split_alias_mac("203.0.113.5~40000~2") == ("203.0.113.5~40000~2", None)
    assert take_alias(signed) == (uri, ("203.0.113.5", 40000, "tcp"))


@pytest.mark.parametrize("value", [
    "192.0.2.7~5060", "192.0.2.7~5060~5~1~2", "host.example~5060~5", "192.0.2.7~0~5",
    "192.0.2.7~70000~5", "192.0.2.7~x~5", "192.0.2.7~5060~7", "192.0.2.7~5060~4",
    "2001:db8::1~5060~5", "[192.0.2.7]~5060~5", "", "~~",
])
def test_a_malformed_alias_is_a_400(value):
    with pytest.raises(ParseError) as caught:
        decode_alias(value)
    assert caught.value.status == 400


def test_no_alias_is_needed_when_the_contact_already_names_the_source():
    assert not needs_alias(parse_uri("sip:u@203.0.113.5:40000"), "203.0.113.5", 40000, "udp")
    assert needs_alias(parse_uri("sip:u@203.0.113.5:40000"), "203.0.113.5", 40000, "ws")
    assert needs_alias(parse_uri("sip:u@x.invalid;transport=ws"), "203.0.113.5", 40000, "ws")
