"""sipgw.toml loading: defaults, strict types, errors naming file:line: key, documents."""

from __future__ import annotations

import ast
import dataclasses
import ipaddress
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from sipgw.config import (
    MASK,
    SCHEMA,
    SECTIONS,
    Address,
    Advertise,
    ConfigError,
    config_path_from_env,
    config_to_dict,
    default_config,
    load_config,
    locate,
    parse_config,
    parse_log_level,
)
from sipgw.config import load as loader

ROOT = Path(__file__).resolve().parents[2]
MAN_PAGE = ROOT / "man" / "sipgw.toml.5"
EXAMPLE = ROOT / "etc" / "sipgw.toml.example"

IN_EFFECT_NOW = {
    "listen.udp", "listen.tcp", "listen.advertise",
    "proxy.max_forwards", "proxy.record_route", "proxy.server_header", "proxy.aliases",
    "timers.t1", "timers.t2", "timers.t4", "timers.timer_b", "timers.timer_f", "timers.timer_c",
    "limits.max_message_size", "limits.max_headers", "limits.max_transactions",
    "limits.tcp_idle_timeout",
    "log.level", "dispatcher.destinations", "state.directory", "proxy.drain_timeout",
    "websocket.allowed_hosts",
    "subscribers.url", "subscribers.key_template", "subscribers.connect_timeout",
    "subscribers.command_timeout", "subscribers.tls_ca_file", "subscribers.sentinel_password",
    "auth.realm", "auth.nonce_secret", "auth.nonce_expire",
    "auth.trusted", "auth.max_failures_user", "auth.max_failures_source",
    "auth.failure_window", "auth.ban_time", "auth.algorithms",
    "dispatcher.list_file", "dispatcher.setid", "dispatcher.algorithm",
    "dispatcher.ping_interval", "dispatcher.ping_timeout", "dispatcher.probing_mode",
    "dispatcher.probing_threshold", "dispatcher.inactive_threshold", "dispatcher.ping_from",
    "dispatcher.ping_reply_codes", "dispatcher.failover_codes", "dispatcher.max_failover",
    "dispatcher.retry_after",
    "listen.ws", "websocket.trusted_proxies", "websocket.allowed_origins", "websocket.public_urls",
    "websocket.keepalive_interval", "websocket.handshake_timeout", "proxy.nat_uac_test",
    "proxy.route_secret", "proxy.workers", "proxy.worker_ports",
    "listen.tls", "listen.wss", "tls.certificate", "tls.private_key", "tls.min_version",
    "tls.ciphers", "tls.backend_ca_file", "limits.ws_max_connections",
    "limits.ws_max_connections_per_address",
    "limits.ws_register_timeout", "websocket.phone_page",
    "limits.tcp_max_connections", "limits.tcp_max_connections_per_address",
    "limits.tcp_first_message_timeout", "limits.max_write_queue", "limits.max_nonces",
    "limits.max_auth_failures", "limits.max_trace_subscribers", "limits.max_dialogs",
    "control.socket", "control.mode", "control.group", "metrics.listen",
    "trace.hep", "trace.hep_agent_id", "trace.hep_password",
    "pike.enabled", "pike.sampling_time_unit", "pike.reqs_density_per_unit",
    "pike.remove_latency", "pike.max_sources", "limits.max_ruri_length",
    "acl.allow", "acl.deny", "acl.udp_allow", "acl.udp_deny", "acl.tcp_allow", "acl.tcp_deny",
    "acl.tls_allow", "acl.tls_deny", "acl.ws_allow", "acl.ws_deny", "acl.wss_allow",
    "acl.wss_deny", "acl.user_agent_deny",
    "overload.enabled", "overload.shed_delay", "overload.stream_shed_delay",
    "overload.drop_delay", "overload.retry_after", "overload.retry_after_max",
}  # fmt: skip


def load(text: str):
    return parse_config(textwrap.dedent(text), "sipgw.toml")


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(text)
    return str(caught.value)


def toml_literal(value: object) -> str:
    """A schema default as the documents write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    assert isinstance(value, list)
    return "[" + ", ".join(toml_literal(item) for item in value) + "]"


# --- defaults ---------------------------------------------------------------------------------


def test_the_embedded_default_listens_on_5060_and_relays_to_one_local_backend():
    config = default_config()
    assert config.listen.udp == (Address("0.0.0.0", 5060),)
    assert config.listen.tcp == (Address("0.0.0.0", 5060),)
    assert config.listen.ws == (Address("0.0.0.0", 8080),)
    assert config.listen.tls == () and config.listen.wss == ()
    assert config.listen.advertise is None
    assert config.dispatcher.destinations == ("sip:127.0.0.1:5080",)
    assert config.subscribers.url == "sqlite:///var/lib/sipgw/subscribers.db"
    assert config.state.directory == "/var/lib/sipgw"


def test_the_embedded_default_has_the_documented_values_of_every_section():
    config = default_config()
    assert config.proxy.max_forwards == 70
    assert config.proxy.record_route is True
    assert config.proxy.server_header == "sipgw"
    assert config.proxy.aliases == ()
    assert (config.timers.t1, config.timers.t2, config.timers.t4) == (0.5, 4.0, 5.0)
    assert (config.timers.timer_b, config.timers.timer_f, config.timers.timer_c) == (
        32.0, 32.0, 180.0,
    )  # fmt: skip
    assert config.limits.max_message_size == 65535
    assert config.limits.max_headers == 256
    assert config.limits.max_transactions == 100000
    assert config.limits.tcp_idle_timeout == 300.0
    assert config.tls.min_version == "1.2"
    assert config.websocket.phone_page is True
    assert config.websocket.keepalive_interval == 25.0
    assert config.auth.nonce_expire == 300.0
    assert config.auth.algorithms == ("MD5",)  # what every common phone can answer
    assert config.dispatcher.algorithm == 4
    assert config.pike.reqs_density_per_unit == 30
    assert config.control.socket == "/run/sipgw/sipgw.ctl"
    assert config.control.mode == 0o660
    assert config.control.group == ""
    assert config.metrics.listen is None
    assert config.log.level == 2 and config.log.level_name == "info"


def test_sha256_is_one_line_away_and_an_unknown_algorithm_is_refused():
    config = load('[auth]\nalgorithms = ["sha-256", "MD5"]\n').config
    assert config.auth.algorithms == ("SHA-256", "MD5")
    assert error_of('[auth]\nalgorithms = ["SHA-512-256"]\n') == (
        'sipgw.toml:2: auth.algorithms: "SHA-512-256": expected "MD5" or "SHA-256" (RFC 8760)')


def test_durations_are_floats_even_when_the_file_writes_integers():
    config = load("[timers]\nt2 = 8\n[pike]\nremove_latency = 60\n").config
    assert config.timers.t2 == 8.0 and isinstance(config.timers.t2, float)
    assert isinstance(config.pike.remove_latency, float)
    assert all(isinstance(v, float) for v in dataclasses.astuple(default_config().timers))


def test_load_config_without_a_path_is_the_embedded_default_with_nothing_to_warn_about():
    loaded = load_config(None)
    assert loaded.config == default_config()
    assert loaded.path is None
    assert loaded.not_in_effect == []


def test_an_empty_file_gives_the_embedded_default():
    assert load("").config == default_config()


def test_config_to_dict_of_the_default_shows_every_declared_default():
    shown = config_to_dict(default_config())
    for key in SCHEMA:
        expected = key.default
        if key.dotted == "subscribers.url":
            expected = "sqlite:///var/lib/sipgw/subscribers.db"  # derived from state.directory
        assert shown[key.section][key.name] == expected, key.dotted


def test_the_subscriber_store_follows_the_state_directory_unless_set():
    config = load('[state]\ndirectory = "/home/op/sipgw"\n').config
    assert config.subscribers.url == "sqlite:///home/op/sipgw/subscribers.db"
    config = load('[subscribers]\nurl = "redis://127.0.0.1:6379/2"\n').config
    assert config.subscribers.url == "redis://127.0.0.1:6379/2"


def test_the_config_tree_is_frozen_and_slotted():
    config = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.proxy.max_forwards = 10  # type: ignore[misc]
    for section in SECTIONS:
        assert not hasattr(getattr(config, section.name), "__dict__"), section.name
    assert not hasattr(config, "__dict__")


def test_a_section_built_in_code_holds_the_defaults_of_the_file():
    # What a component's tests build (PikeConfig(), LimitsConfig(max_dialogs=100)) is what
    # an empty file gives, but for the one default the loader derives from another key.
    config = default_config()
    for section in SECTIONS:
        built = section.cls()
        if section.name == "subscribers":
            assert built.url == ""  # "" = in state.directory, once a file is loaded
            built = dataclasses.replace(built, url=config.subscribers.url)
        assert built == getattr(config, section.name), section.name


def test_every_section_dataclass_field_is_a_schema_key():
    for section in SECTIONS:
        names = [f.name for f in dataclasses.fields(section.cls)]
        assert names == [key.name for key in section.keys]
        assert section.help and all(key.help for key in section.keys)


# --- errors: file, line and key ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("# sipgw\n\n[listen]\nudp = 5060\n",
         'sipgw.toml:4: listen.udp: expected a list of "host:port" strings, got 5060'),
        ('[listen]\nudp = [\n  "0.0.0.0:5060",\n  5061,\n]\n',
         'sipgw.toml:4: listen.udp: expected a list of "host:port" strings,'
         ' got ["0.0.0.0:5060", 5061]'),
        ('[listen]\ntcp = [\n  "0.0.0.0:5060",\n  "10.0.0.1:99999",\n]\n',
         'sipgw.toml:4: listen.tcp: "10.0.0.1:99999": the port must be a number between 1'
         " and 65535"),
        ('[listen]\nudp = ["0.0.0.0"]\n',
         'sipgw.toml:2: listen.udp: "0.0.0.0": the ":port" is missing'),
        ('[listen]\nudp = ["0.0.0.0:0"]\n',
         'sipgw.toml:2: listen.udp: "0.0.0.0:0": the port must be a number between 1 and 65535'),
        ('[listen]\nudp = ["::1:5060"]\n',
         'sipgw.toml:2: listen.udp: "::1:5060": an IPv6 address needs brackets,'
         ' e.g. "[::1]:5060"'),
        ('[listen]\nudp = ["[::g]:5060"]\n',
         "sipgw.toml:2: listen.udp: \"[::g]:5060\": '::g' is not an IPv6 address"),
        ('[listen]\nudp = ["300.1.1.1:5060"]\n',
         'sipgw.toml:2: listen.udp: "300.1.1.1:5060": 300.1.1.1 is not an IPv4 address'),
        ('[listen]\nudp = ["0.0.0.0:5060", "0.0.0.0:5060"]\n',
         'sipgw.toml:2: listen.udp: "0.0.0.0:5060" is listed twice'),
        ('[listen]\nadvertise = ["sip.example.com"]\n',
         'sipgw.toml:2: listen.advertise: expected a "host[:port]" string or "",'
         ' got ["sip.example.com"]'),
        ('[proxy]\nrecord_route = "yes"\n',
         'sipgw.toml:2: proxy.record_route: expected true or false, got "yes"'),
        ("[proxy]\nmax_forwards = true\n",
         "sipgw.toml:2: proxy.max_forwards: expected an integer, got true"),
        ("[proxy]\nmax_forwards = 70.0\n",
         "sipgw.toml:2: proxy.max_forwards: expected an integer, got 70.0"),
        ("[proxy]\nmax_forwards = 300\n",
         "sipgw.toml:2: proxy.max_forwards: must be between 1 and 255, got 300"),
        ("[proxy]\nserver_header = 5\n",
         "sipgw.toml:2: proxy.server_header: expected a string, got 5"),
        ('[proxy]\nserver_header = "sipgw\\r\\nX-Evil: 1"\n',
         'sipgw.toml:2: proxy.server_header: "sipgw\\r\\nX-Evil: 1": must not contain control'
         " characters (it is written into a header)"),
        ('[proxy]\naliases = ["sip example.com"]\n',
         "sipgw.toml:2: proxy.aliases: \"sip example.com\": 'sip example.com' is not a host"
         " name or address"),
        ('[timers]\nt1 = "0.5"\n',
         'sipgw.toml:2: timers.t1: expected a number of seconds, got "0.5"'),
        ("[timers]\nt1 = true\n",
         "sipgw.toml:2: timers.t1: expected a number of seconds, got true"),
        ("[timers]\nt1 = 0\n",
         "sipgw.toml:2: timers.t1: must be more than 0 seconds, got 0"),
        ("[timers]\ntimer_b = inf\n",
         "sipgw.toml:2: timers.timer_b: expected a finite number of seconds, got inf"),
        ("[timers]\ntimer_c = 60\n",
         "sipgw.toml:2: timers.timer_c: must be at least 180 seconds, got 60"),
        ("[limits]\nmax_message_size = 100\n",
         "sipgw.toml:2: limits.max_message_size: must be between 1024 and 16777216, got 100"),
        ('[tls]\nmin_version = "1.1"\n',
         'sipgw.toml:2: tls.min_version: "1.1": expected "1.2" or "1.3"'),
        ('[websocket]\ntrusted_proxies = "10.0.0.0/8"\n',
         'sipgw.toml:2: websocket.trusted_proxies: expected a list of CIDR strings'
         ' (e.g. "10.0.0.0/8"), got "10.0.0.0/8"'),
        ('[websocket]\nallowed_origins = ["phone.example.com"]\n',
         'sipgw.toml:2: websocket.allowed_origins: "phone.example.com": expected an origin'
         ' such as "https://phone.example.com"'),
        ("[websocket]\nkeepalive_interval = -1\n",
         "sipgw.toml:2: websocket.keepalive_interval: must be at least 0 seconds, got -1"),
        ('[auth]\ntrusted = ["10.0.0.0/33"]\n',
         'sipgw.toml:2: auth.trusted: "10.0.0.0/33": not an address or CIDR (e.g. "10.0.0.0/8"'
         ' or "192.0.2.7")'),
        ("[auth]\nnonce_secret = 123456\n",
         "sipgw.toml:2: auth.nonce_secret: expected a string (value not shown: it is a secret)"),
        ('[subscribers]\nurl = "mysql://db/sipgw"\n',
         'sipgw.toml:2: subscribers.url: expected "sqlite:///PATH",'
         ' "redis[s]://[user:pass@]host:port/db" or'
         ' "redis[s]+sentinel://[user:pass@]host:port,.../SERVICE/db", got "mysql://db/sipgw"'),
        ('[subscribers]\nurl = "redis+sentinel://u:hunter2@10.0.0.1:26379,10.0.0.2:26379"\n',
         'sipgw.toml:2: subscribers.url: "redis+sentinel://u:***@10.0.0.1:26379,10.0.0.2:26379":'
         ' the Sentinel service name is missing, as in'
         ' redis+sentinel://127.0.0.1:26379/mymaster/0'),
        ('[subscribers]\nurl = "rediss+sentinel://10.0.0.1,10.0.0.2:x/mymaster/2"\n',
         'sipgw.toml:2: subscribers.url: "rediss+sentinel://10.0.0.1,10.0.0.2:x/mymaster/2":'
         ' the port must be a number between 1 and 65535'),
        ('[subscribers]\nurl = "redis+sentinel://10.0.0.1/mymaster/two"\n',
         'sipgw.toml:2: subscribers.url: "redis+sentinel://10.0.0.1/mymaster/two": the database'
         ' must be a number, as in redis+sentinel://127.0.0.1:26379/mymaster/2'),
        ('[subscribers]\nurl = "rediss://10.0.0.1,10.0.0.2/2"\n',
         'sipgw.toml:2: subscribers.url: "rediss://10.0.0.1,10.0.0.2/2": several hosts need'
         ' rediss+sentinel://'),
        ('[subscribers]\nurl = "redis://:hunter2@/2"\n',
         'sipgw.toml:2: subscribers.url: "redis://:***@/2": the host is missing'),
        ('[subscribers]\nurl = "redis://127.0.0.1:6379/sipgw"\n',
         'sipgw.toml:2: subscribers.url: "redis://127.0.0.1:6379/sipgw": the database must be'
         " a number, as in redis://127.0.0.1:6379/2"),
        ('[dispatcher]\ndestinations = ["sip:10.0.0.5", "10.0.0.6:5060"]\n',
         'sipgw.toml:2: dispatcher.destinations: "10.0.0.6:5060": expected a SIP URI with a'
         ' host, e.g. "sip:10.0.0.5:5060"'),
        ('[dispatcher]\ndestinations = ["sip:alice@"]\n',
         'sipgw.toml:2: dispatcher.destinations: "sip:alice@": expected a SIP URI with a host,'
         ' e.g. "sip:10.0.0.5:5060"'),
        ("[dispatcher]\nalgorithm = 99\n",
         "sipgw.toml:2: dispatcher.algorithm: must be between 0 and 13, got 99"),
        ("[control]\nmode = 660\n",
         'sipgw.toml:2: control.mode: expected an octal string such as "0660", got 660'
         " (write it quoted)"),
        ('[control]\nmode = "rw-rw----"\n',
         'sipgw.toml:2: control.mode: expected an octal string such as "0660", got "rw-rw----"'),
        ('[control]\nsocket = ""\n',
         'sipgw.toml:2: control.socket: "": must not be empty'),
        ('[metrics]\nlisten = "127.0.0.1"\n',
         'sipgw.toml:2: metrics.listen: "127.0.0.1": the ":port" is missing'),
        ("[log]\nlevel = true\n",
         "sipgw.toml:2: log.level: expected a level name (error, warning, notice, info, debug)"
         " or a Kamailio number -5..3, got true"),
        ('[state]\ndirectory = "var/lib/sipgw"\n',
         'sipgw.toml:2: state.directory: "var/lib/sipgw": must be an absolute path'),
        ("listen = 5\n",
         "sipgw.toml:1: listen: expected a table ([listen]), got 5"),
    ],
)  # fmt: skip
def test_a_wrong_value_is_refused_naming_file_line_and_key(text, expected):
    assert error_of(text) == expected


@pytest.mark.parametrize(
    "text, line",
    [
        ("listen.udp = 5060\n", 1),  # dotted key at the top
        ("[proxy]\nmax_forwards = 70\n\n[listen]\n  udp   =   5060  # ports\n", 5),
        ('[listen]\n"udp" = 5060\n', 2),  # quoted key
        ("listen = { tcp = [], udp = 5060 }\n", 1),  # inline table
        ("[listen]\ntcp = []\n[ listen . udp_not ]\n", 3),  # unknown key as a table header
        ('[auth]\nrealm = """\n[listen]\nudp = 1\n"""\n[listen]\nudp = 5060\n', 7),  # text in
        ("[auth]\nrealm = '''\nudp = 1'''\n# udp = 2\n[listen]\nudp = 5060\n", 6),  # strings
        ('[auth]\nrealm = "a \\" udp = 1"\n[listen]\n\nudp = 5060\n', 5),  # escaped quote
        ('[dispatcher]\ndestinations = [ # backends\n  "sip:a",\n  [1],\n]\n', 4),
        ('[proxy]\naliases = [["a"], "b c"]\n', 2),
    ],
)  # fmt: skip
def test_the_line_of_a_bad_key_is_found_through_toml_syntax(text, line):
    assert error_of(text).startswith(f"sipgw.toml:{line}: ")


TRICKY = [
    "# [log] in a comment",
    "\"listen\" . 'udp' = [\"[::1]:5060\"]  # dotted, quoted",
    "timers . t1 = 0.5",
    'metrics = { listen = "127.0.0.1:9090" }',
    "[auth]",
    'realm = """[log]',
    'levle = 1 \\""" still the realm"""""',
    "nonce_secret = '''x" + "'''''",
    "[proxy]",
    "aliases = [ # one per line",
    "  \"edge.example.com\", 'edge-2.example.com',",
    '  "[2001:db8::1]:5060",',
    "]",
    'server_header = "a \\" levle = 1"',
    '[ "log" ]',
    'level = "info"',
    "",
    "levle = 1",
]


def test_a_key_after_every_kind_of_toml_value_is_still_found():
    for newline in ("\n", "\r\n"):
        assert error_of(newline.join(TRICKY)) == (
            "sipgw.toml:18: log.levle: unknown key (did you mean log.level?)"
        )
    valid = load("\n".join(TRICKY[:-1])).config
    assert valid.auth.realm == '[log]\nlevle = 1 """ still the realm""'
    assert valid.auth.nonce_secret == "x''"
    assert valid.proxy.aliases[2] == "[2001:db8::1]:5060"


def test_when_the_line_cannot_be_found_the_error_still_names_the_file_and_the_key(monkeypatch):
    class Baffled:
        def __init__(self, text: str) -> None:
            raise IndexError("a TOML corner the skimmer does not know")

    monkeypatch.setattr(loader, "_Locator", Baffled)
    assert error_of("[listen]\nudp = 5060\n") == (
        'sipgw.toml: listen.udp: expected a list of "host:port" strings, got 5060'
    )


def test_an_error_without_a_known_line_names_the_file_and_the_key():
    error = ConfigError("expected a string, got 5", path="/etc/sipgw/sipgw.toml", key="tls.ciphers")
    assert str(error) == "/etc/sipgw/sipgw.toml: tls.ciphers: expected a string, got 5"
    assert (error.path, error.line, error.key) == ("/etc/sipgw/sipgw.toml", None, "tls.ciphers")


def test_a_syntax_error_is_reported_with_the_file_and_the_line_tomllib_found():
    message = error_of('[listen]\nudp = ["0.0.0.0:5060"]\ntcp = \n')
    assert message == "sipgw.toml:3: Invalid value (column 7)"


def test_a_syntax_error_at_the_end_of_the_file_names_the_last_line():
    assert error_of('[log]\nlevel = "info\n') == (
        "sipgw.toml:2: Illegal character '\\n' (column 14)"
    )
    assert error_of('[log]\nlevel = """info\n\n') == (
        "sipgw.toml:3: Unterminated string (at the end of the file)"
    )


def test_a_key_declared_twice_is_a_syntax_error_at_the_second_one():
    assert error_of("[proxy]\nmax_forwards = 1\nmax_forwards = 2\n").startswith("sipgw.toml:3: ")


def test_an_unknown_key_is_refused_with_a_hint_for_the_close_name():
    assert error_of("# x\n[listen]\nupd = []\n") == (
        "sipgw.toml:3: listen.upd: unknown key (did you mean listen.udp?)"
    )


def test_an_unknown_section_is_refused_with_a_hint_for_the_close_name():
    assert error_of('[lisen]\nudp = []\n') == (
        "sipgw.toml:1: lisen: unknown section (did you mean listen?)"
    )


def test_a_key_in_the_wrong_section_is_pointed_to_its_section():
    assert error_of('[proxy]\nlevel = "debug"\n') == (
        "sipgw.toml:2: proxy.level: unknown key (did you mean log.level?)"
    )
    assert error_of('level = "debug"\n') == (
        "sipgw.toml:1: level: unknown key outside any [section] (did you mean log.level?)"
    )


def test_an_unknown_key_with_nothing_close_gets_no_hint():
    assert error_of("[pike]\nzzz = 1\n") == "sipgw.toml:2: pike.zzz: unknown key"


def test_timer_t2_below_t1_is_refused_at_the_key_the_file_sets():
    assert error_of("[timers]\nt2 = 0.25\n") == (
        "sipgw.toml:2: timers.t2: must not be less than timers.t1 (0.5), got 0.25"
    )
    assert error_of("[timers]\n\nt1 = 5\n") == (
        "sipgw.toml:3: timers.t1: must not be more than timers.t2 (4), got 5"
    )


def test_overload_thresholds_out_of_order_are_refused_at_the_key_the_file_sets():
    assert error_of("[overload]\ndrop_delay = 0.05\n") == (
        "sipgw.toml:2: overload.drop_delay: must be more than overload.shed_delay (0.05), "
        "got 0.05"
    )
    assert error_of("[overload]\nshed_delay = 1\n") == (
        "sipgw.toml:2: overload.shed_delay: must be less than overload.drop_delay (0.15), got 1"
    )
    assert error_of("[overload]\nretry_after = 90\n") == (
        "sipgw.toml:2: overload.retry_after: must not be more than overload.retry_after_max "
        "(60), got 90"
    )
    config = load("[overload]\nshed_delay = 0.02\ndrop_delay = 0.05\nretry_after = 0\n"
                  "retry_after_max = 0\n").config
    assert (config.overload.shed_delay, config.overload.drop_delay) == (0.02, 0.05)


def test_a_tls_listener_without_a_certificate_is_refused():
    assert error_of('[listen]\nwss = ["0.0.0.0:8443"]\n') == (
        "sipgw.toml:2: listen.wss: needs tls.certificate, which is not set"
    )
    text = '[listen]\ntls = ["0.0.0.0:5061"]\n[tls]\ncertificate = "/etc/sipgw/cert.pem"\n'
    assert load(text).config.listen.tls == (Address("0.0.0.0", 5061),)


def test_a_file_that_turns_every_listener_off_is_refused():
    text = "[listen]\nudp = []\ntcp = []\nws = []\n"
    assert error_of(text) == (
        "sipgw.toml:1: listen: every listener is off: sipgw would accept nothing"
    )


def test_load_config_reads_the_file_and_names_it_in_errors(tmp_path):
    path = tmp_path / "sipgw.toml"
    path.write_text('[proxy]\nserver_header = "edge-1"\n')
    loaded = load_config(path)
    assert loaded.path == str(path)
    assert loaded.config.proxy.server_header == "edge-1"
    path.write_text("[proxy]\n\nmax_forwards = false\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == f"{path}:3: proxy.max_forwards: expected an integer, got false"


def test_a_missing_or_binary_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml")
    assert str(caught.value) == (
        f"{tmp_path / 'absent.toml'}: cannot read the file: No such file or directory"
    )
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"[log]\nlevel = \"\xff\"\n")
    with pytest.raises(ConfigError) as caught:
        load_config(binary)
    assert str(caught.value) == f"{binary}:2: not UTF-8 text (byte 15)"


# --- values -----------------------------------------------------------------------------------


def test_ipv6_listeners_are_written_in_brackets_and_parsed_without_them():
    config = load(
        """
        [listen]
        udp = ["[::1]:5060", "[2001:db8::7]:5070", "127.0.0.1:5060"]
        tcp = ["[::]:5060"]
        advertise = "[2001:db8::7]"
        """
    ).config
    assert config.listen.udp == (
        Address("::1", 5060), Address("2001:db8::7", 5070), Address("127.0.0.1", 5060),
    )  # fmt: skip
    assert config.listen.tcp == (Address("::", 5060),)
    assert config.listen.advertise == Advertise("2001:db8::7", None)
    assert [str(a) for a in config.listen.udp] == [
        "[::1]:5060", "[2001:db8::7]:5070", "127.0.0.1:5060",
    ]  # fmt: skip
    assert config_to_dict(config)["listen"]["advertise"] == "[2001:db8::7]"


def test_advertise_and_metrics_take_a_host_name_and_an_optional_port():
    config = load('[listen]\nadvertise = "sip.example.com:5062"\n'
                  '[metrics]\nlisten = "localhost:9090"\n').config  # fmt: skip
    assert config.listen.advertise == Advertise("sip.example.com", 5062)
    assert config.metrics.listen == Address("localhost", 9090)


def test_cidr_lists_become_network_objects():
    config = load(
        """
        [websocket]
        trusted_proxies = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
        [auth]
        trusted = ["172.16.0.0/12"]
        """
    ).config
    networks = config.websocket.trusted_proxies
    assert networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert ipaddress.ip_address("10.20.30.40") in networks[0]
    assert ipaddress.ip_address("172.31.0.1") in config.auth.trusted[0]
    assert config_to_dict(config)["websocket"]["trusted_proxies"] == [
        "10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32",
    ]  # fmt: skip


def test_a_cidr_with_host_bits_set_is_refused_with_the_network_it_probably_means():
    assert error_of('[auth]\ntrusted = ["10.1.2.3/8"]\n') == (
        'sipgw.toml:2: auth.trusted: "10.1.2.3/8": host bits are set'
        ' (did you mean "10.0.0.0/8"?)'
    )


def test_the_control_socket_mode_is_an_octal_string():
    config = load('[control]\nmode = "660"\ngroup = "sipgw"\n').config
    assert config.control.mode == 0o660
    assert config_to_dict(config)["control"]["mode"] == "0660"


@pytest.mark.parametrize(
    "written, number, name, python_level",
    [
        ('"error"', -1, "error", 40), ('"err"', -1, "error", 40),
        ('"warning"', 0, "warning", 30), ('"WARN"', 0, "warning", 30),
        ('"notice"', 1, "notice", 25), ('"info"', 2, "info", 20), ('"debug"', 3, "debug", 10),
        ("-5", -5, "alert", 50), ("-4", -4, "bug", 50), ("-3", -3, "crit2", 50),
        ("-2", -2, "crit", 50), ("-1", -1, "error", 40), ("0", 0, "warning", 30),
        ("1", 1, "notice", 25), ("2", 2, "info", 20), ("3", 3, "debug", 10),
        ('"3"', 3, "debug", 10),
    ],
)  # fmt: skip
def test_log_level_takes_names_and_kamailio_numbers(written, number, name, python_level):
    log = load(f"[log]\nlevel = {written}\n").config.log
    assert (log.level, log.level_name, log.python_level) == (number, name, python_level)
    assert config_to_dict(load(f"[log]\nlevel = {written}\n").config)["log"]["level"] == name


@pytest.mark.parametrize("written", ["4", "-6", '"verbose"', "2.0"])
def test_a_log_level_outside_the_kamailio_range_is_refused(written):
    assert error_of(f"[log]\n\nlevel = {written}\n").startswith(
        "sipgw.toml:3: log.level: expected a level name (error, warning, notice, info, debug)"
    )


def test_parse_log_level_is_the_rule_the_rpc_can_reuse():
    assert parse_log_level("notice") == 1
    assert parse_log_level(-5) == -5
    with pytest.raises(ValueError):
        parse_log_level("loud")


def test_sip_and_sips_destinations_pass_the_light_check():
    config = load(
        '[dispatcher]\ndestinations = ["sip:10.0.0.5:5060", "SIPS:pbx.example.com;transport=tls",'
        ' "sip:[2001:db8::5]:5080", "sip:gw@10.0.0.6"]\n'
    ).config
    assert config.dispatcher.destinations[1] == "SIPS:pbx.example.com;transport=tls"
    assert len(config.dispatcher.destinations) == 4


# --- not in effect yet ------------------------------------------------------------------------


def test_the_keys_in_effect_are_exactly_those_the_foundation_uses():
    assert {key.dotted for key in SCHEMA if key.in_effect} == IN_EFFECT_NOW


def test_keys_the_file_sets_that_are_not_in_effect_are_listed_even_at_their_default(monkeypatch):
    # Every key is in effect today; pretend one is not, as the next new key will be.
    monkeypatch.setattr(loader, "SCHEMA", tuple(
        dataclasses.replace(key, in_effect=False) if key.dotted == "pike.enabled" else key
        for key in SCHEMA))
    loaded = load(
        """
        [pike]
        enabled = true
        [listen]
        ws = ["0.0.0.0:8080"]
        udp = ["0.0.0.0:5060"]
        [proxy]
        max_forwards = 20
        [dispatcher]
        destinations = ["sip:10.0.0.5"]
        algorithm = 4
        """
    )
    assert loaded.not_in_effect == ["pike.enabled"]
    assert loaded.config.proxy.max_forwards == 20


# --- which file -------------------------------------------------------------------------------


def test_the_command_line_path_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("SIPGW_CONFIG", "/from/env.toml")
    assert config_path_from_env("/from/cli.toml") == "/from/cli.toml"
    assert config_path_from_env(Path("/from/cli.toml")) == "/from/cli.toml"


def test_the_environment_wins_over_the_system_file(monkeypatch, tmp_path):
    system = tmp_path / "sipgw.toml"
    system.write_text("")
    monkeypatch.setattr(locate, "DEFAULT_CONFIG_PATH", str(system))
    monkeypatch.setenv("SIPGW_CONFIG", "/from/env.toml")
    assert config_path_from_env(None) == "/from/env.toml"


def test_the_system_file_is_used_only_when_it_exists(monkeypatch, tmp_path):
    monkeypatch.delenv("SIPGW_CONFIG", raising=False)
    system = tmp_path / "sipgw.toml"
    monkeypatch.setattr(locate, "DEFAULT_CONFIG_PATH", str(system))
    assert config_path_from_env(None) is None  # the embedded default
    system.write_text("")
    assert config_path_from_env(None) == str(system)


def test_an_empty_environment_variable_counts_as_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("SIPGW_CONFIG", "")
    monkeypatch.setattr(locate, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    assert config_path_from_env(None) is None
    assert config_path_from_env(None, environ={"SIPGW_CONFIG": "/x.toml"}) == "/x.toml"


# --- config_to_dict ---------------------------------------------------------------------------


def test_config_to_dict_masks_secrets_and_redis_passwords():
    config = load(
        """
        [subscribers]
        url = "redis://sipgw:hunter2@10.0.0.9:6379/2"
        [auth]
        nonce_secret = "s3cret-shared-by-all-nodes"
        """
    ).config
    shown = config_to_dict(config)
    assert shown["subscribers"]["url"] == f"redis://sipgw:{MASK}@10.0.0.9:6379/2"
    assert shown["auth"]["nonce_secret"] == MASK
    dumped = json.dumps(shown)
    assert "hunter2" not in dumped and "s3cret" not in dumped
    assert config.subscribers.url == "redis://sipgw:hunter2@10.0.0.9:6379/2"  # kept for use


def test_config_to_dict_masks_a_password_only_redis_url_and_shows_an_unset_secret_as_empty():
    config = load('[subscribers]\nurl = "redis://:hunter2@127.0.0.1/0"\n').config
    shown = config_to_dict(config)
    assert shown["subscribers"]["url"] == f"redis://:{MASK}@127.0.0.1/0"
    assert shown["auth"]["nonce_secret"] == ""


def test_config_to_dict_masks_the_sentinel_forms_and_the_sentinel_password():
    url = "rediss+sentinel://sipgw:hunter2@10.0.0.1:26379,[2001:db8::2]:26379/mymaster/2"
    config = load(f'[subscribers]\nurl = "{url}"\nsentinel_password = "s3ntinel"\n').config
    shown = config_to_dict(config)
    assert shown["subscribers"]["url"] == (
        f"rediss+sentinel://sipgw:{MASK}@10.0.0.1:26379,[2001:db8::2]:26379/mymaster/2")
    assert shown["subscribers"]["sentinel_password"] == MASK
    dumped = json.dumps(shown)
    assert "hunter2" not in dumped and "s3ntinel" not in dumped
    assert config.subscribers.url == url and config.subscribers.sentinel_password == "s3ntinel"


def test_config_to_dict_is_json_and_loads_back_to_the_same_config():
    config = load(
        """
        [listen]
        udp = ["[::1]:5060"]
        advertise = "sip.example.com"
        [websocket]
        trusted_proxies = ["127.0.0.1"]
        [control]
        mode = "0640"
        [metrics]
        listen = "127.0.0.1:9090"
        [log]
        level = -1
        """
    ).config
    shown = json.loads(json.dumps(config_to_dict(config)))
    lines = []
    for section, values in shown.items():
        lines.append(f"[{section}]")
        lines += [f"{name} = {json.dumps(value)}" for name, value in values.items()]
    assert load("\n".join(lines)).config == config


# --- documents and purity ---------------------------------------------------------------------


def _unroff(text: str) -> str:
    return (
        text.replace("\\-", "-").replace("\\(dq", '"').replace("\\e", "\\")
        .replace("\\&", "").replace("\\fB", "").replace("\\fR", "").replace("\\fI", "")
    )  # fmt: skip


def _man_entries() -> dict[str, str]:
    """Key -> its .TP entry in sipgw.toml(5), found under the section's .SS heading."""
    entries: dict[str, str] = {}
    section = None
    for block in re.split(r"^(?=\.SS |\.SH |\.TP$)", MAN_PAGE.read_text(), flags=re.M):
        heading = re.match(r'\.SS "\[(\w+)\]', block)
        if heading:
            section = heading.group(1)
        elif block.startswith(".SH "):
            section = None
        elif block.startswith(".TP") and section:
            name = re.match(r"\.TP\n\.B (\w+)\n", block)
            assert name, block
            entries[f"{section}.{name.group(1)}"] = _unroff(block)
    return entries


def test_the_man_page_documents_every_key_with_its_default_and_whether_it_is_in_effect():
    entries = _man_entries()
    assert sorted(entries) == sorted(key.dotted for key in SCHEMA)
    for key in SCHEMA:
        entry = entries[key.dotted]
        assert f"default {toml_literal(key.default)})" in entry, key.dotted
        assert ("Not in effect yet" in entry) is (not key.in_effect), key.dotted


def test_the_example_file_shows_every_key_at_its_default_under_its_section():
    found: dict[str, str] = {}
    section = None
    for line in EXAMPLE.read_text().splitlines():
        if re.fullmatch(r"\[(\w+)\]", line):
            section = line[1:-1]
        elif match := re.fullmatch(r"#(\w+) = (.*)", line):
            found[f"{section}.{match.group(1)}"] = match.group(2)
    assert found == {key.dotted: toml_literal(key.default) for key in SCHEMA}


def test_the_example_file_marks_the_keys_not_in_effect():
    text = EXAMPLE.read_text()
    for key in SCHEMA:
        comment = re.search(rf"((?:^# .*\n)+)#{key.name} = ", text.split(f"[{key.section}]\n")[1],
                            re.M)  # fmt: skip
        assert comment, key.dotted
        assert ("Not in effect yet" in comment.group(1)) is (not key.in_effect), key.dotted


def test_the_example_file_uncommented_loads_to_the_default_config(tmp_path):
    path = tmp_path / "sipgw.toml"
    path.write_text(re.sub(r"^#(\w+ = )", r"\1", EXAMPLE.read_text(), flags=re.M))
    loaded = load_config(path)
    assert loaded.config == default_config()
    assert loaded.not_in_effect == [key.dotted for key in SCHEMA if not key.in_effect]
    assert load_config(EXAMPLE).not_in_effect == []  # as shipped, all commented out


def test_the_man_page_example_is_a_valid_config():
    page = MAN_PAGE.read_text()
    example = page.split(".SH EXAMPLE")[1].split(".EX\n")[1].split(".EE")[0]
    config = parse_config(_unroff(example), "example").config
    assert config.dispatcher.destinations == ("sip:10.0.0.5:5060", "sip:10.0.0.6:5060")


def test_the_config_package_imports_only_the_standard_library_and_the_sip_core():
    imported = set()
    for module in Path(loader.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module or "")
    # sipgw.sip, pure as well, spells host:port for every layer.
    outside = {name for name in imported if not name.startswith(("sipgw.config", "sipgw.sip"))}
    assert {name.split(".")[0] for name in outside} <= set(sys.stdlib_module_names) | {
        "__future__"}, outside
