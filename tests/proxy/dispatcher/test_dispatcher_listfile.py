"""Kamailio's dispatcher.list format: an operator's existing file loads unchanged."""

from __future__ import annotations

import pytest

from sipgw.proxy.dispatcher.listfile import ListFileError, from_destinations, load_list, parse_list

KAMAILIO_FILE = """\
# dispatcher.list as the gateway guide ships it
# setid destination flags priority attrs
1 sip:10.0.0.5:5060 0 10 weight=70;duid=ast1
1 sip:10.0.0.6:5060;transport=udp 0x0 10 weight=30;duid=ast2   # second Asterisk
1 sip:10.0.0.7:5060 8 0 maxload=20;socket=udp:10.0.0.1:5060
2 sip:pbx.example.com

"""


def test_an_existing_kamailio_file_loads_with_sets_priorities_flags_and_attrs():
    dlist = parse_list(KAMAILIO_FILE, "dispatcher.list")
    sets = dlist.sets()
    assert sorted(sets) == [1, 2]
    first, second, backup = sets[1]
    assert (first.uri, first.priority, first.attrs.weight, first.attrs.duid) == (
        "sip:10.0.0.5:5060", 10, 70, "ast1")
    assert second.uri == "sip:10.0.0.6:5060;transport=udp" and second.attrs.weight == 30
    assert (backup.flags, backup.priority, backup.attrs.maxload) == (8, 0, 20)
    assert backup.attrs.body == "maxload=20;socket=udp:10.0.0.1:5060"
    assert [e.uri for e in sets[2]] == ["sip:pbx.example.com"]


def test_the_socket_attribute_is_ignored_with_a_warning_naming_the_line():
    dlist = parse_list(KAMAILIO_FILE, "dispatcher.list")
    [warning] = dlist.warnings
    assert warning.startswith("dispatcher.list:5: attrs socket=udp:10.0.0.1:5060 ignored")


def test_a_set_is_ordered_by_priority_higher_first_and_file_order_among_equals():
    dlist = parse_list("1 sip:a.example 0 0\n1 sip:b.example 0 5\n1 sip:c.example 0 5\n")
    assert [e.uri for e in dlist.sets()[1]] == ["sip:b.example", "sip:c.example", "sip:a.example"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "1 sip:10.0.0.5\nfoo sip:10.0.0.6\n",
            "ds.list:2: setid: expected a decimal or 0x hex integer, got 'foo'",
        ),
        ("1\n", "ds.list:1: expected 'setid uri [flags] [priority] [attrs]'"),
        (
            "1 http://10.0.0.5\n",
            "ds.list:1: destination 'http://10.0.0.5' is not a sip: or sips: URI",
        ),
        ("1 sip:10.0.0.5 0x100\n", "ds.list:1: flags: unknown bits in 0x100 (known: 0x3f)"),
        (
            "1 sip:10.0.0.5 0 0 weight=170\n",
            "ds.list:1: attrs weight: must be between 0 and 100, got 170",
        ),
        ("1 sip:10.0.0.5 0 0 weight\n", "ds.list:1: attrs: expected name=value, got 'weight'"),
        (
            "1 sip:10.0.0.5\n1 sip:10.0.0.5\n",
            "ds.list:2: sip:10.0.0.5 is already in set 1 (line 1)",
        ),
        ("# nothing\n", "ds.list: no destinations"),
    ],
)
def test_a_bad_line_refuses_the_file_with_its_name_and_line_number(text, message):
    with pytest.raises(ListFileError) as info:
        parse_list(text, "ds.list")
    assert str(info.value) == message


def test_a_missing_file_is_refused_naming_it(tmp_path):
    with pytest.raises(ListFileError, match="nothere.list: cannot read"):
        load_list(tmp_path / "nothere.list")


def test_config_destinations_become_set_1_at_equal_priority():
    dlist = from_destinations(["sip:10.0.0.5:5060", "sip:10.0.0.6:5060"])
    assert [(e.setid, e.uri, e.priority) for e in dlist.entries] == [
        (1, "sip:10.0.0.5:5060", 0), (1, "sip:10.0.0.6:5060", 0)]
