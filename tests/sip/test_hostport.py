"""host:port, one spelling everywhere: an IPv6 address in brackets, once."""

from __future__ import annotations

import pytest

from sipgw.sip.hostport import join_hostport, split_address, split_hostport


@pytest.mark.parametrize(("host", "port", "text"), [
    ("192.0.2.1", 5060, "192.0.2.1:5060"),
    ("::1", 5060, "[::1]:5060"),
    ("[::1]", 5060, "[::1]:5060"),  # already bracketed: not twice
    ("sip.example.com", None, "sip.example.com"),
    ("2001:db8::1", None, "[2001:db8::1]"),
])
def test_join_brackets_ipv6_once(host, port, text):
    assert join_hostport(host, port) == text


@pytest.mark.parametrize(("text", "parts"), [
    ("192.0.2.1:5060", ("192.0.2.1", 5060)),
    ("[2001:db8::1]:5061", ("2001:db8::1", 5061)),
    ("[2001:db8::1]", ("2001:db8::1", None)),
    ("2001:db8::1", ("2001:db8::1", None)),  # bare IPv6: all of it is the host
    ("host.example", ("host.example", None)),
    ("host.example:x", ("host.example", None)),
    ("host.example:٥", ("host.example", None)),  # a digit, but not an ASCII one
])
def test_split_gives_the_host_without_brackets_and_the_port(text, parts):
    assert split_hostport(text) == parts
    if parts[1] is not None:
        assert split_hostport(join_hostport(*parts)) == parts


def test_an_address_needs_its_port():
    assert split_address("[::1]:5060") == ("::1", 5060)
    with pytest.raises(ValueError, match="expected host:port"):
        split_address("[::1]")
