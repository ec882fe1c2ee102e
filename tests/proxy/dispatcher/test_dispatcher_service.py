"""The dispatcher as the service builds it from sipgw.toml, and SIGHUP with its list file."""

from __future__ import annotations

import pytest

from sipgw.proxy.dispatcher.listfile import ListFileError
from tests.proxy.test_service import GOOD, start


def with_list(tmp_path, lines: str, extra: str = "") -> str:
    listfile = tmp_path / "dispatcher.list"
    listfile.write_text(lines)
    return GOOD.replace('destinations = ["sip:127.0.0.1:25080"]',
                        f'list_file = "{listfile}"\nalgorithm = 8\n{extra}')


def uris(svc) -> list[str]:
    return [t.uri for t in svc.proxy.dispatcher.targets()]


def test_the_list_file_and_settings_come_from_the_config(tmp_path):
    svc, _, _ = start(tmp_path, with_list(tmp_path, "1 sip:127.0.0.1:25081 0 5\n"
                                                    "1 sip:127.0.0.1:25082 0 9\n",
                                          "ping_timeout = 1.5\nretry_after = 3\n"))
    d = svc.proxy.dispatcher
    assert uris(svc) == ["sip:127.0.0.1:25082", "sip:127.0.0.1:25081"]
    assert (d.settings.algorithm, d.settings.ping_timeout, d.settings.retry_after) == (8, 1.5, 3)
    assert svc.stats.get("dispatcher:active_destinations") == 2
    svc.stopService()


def test_sighup_rereads_the_list_and_a_malformed_one_keeps_the_running_list(tmp_path):
    svc, _, _ = start(tmp_path, with_list(tmp_path, "1 sip:127.0.0.1:25081\n"))
    listfile = tmp_path / "dispatcher.list"
    listfile.write_text("1 sip:127.0.0.1:25081\n1 sip:127.0.0.1:25083\n")
    svc.reload()
    assert uris(svc) == ["sip:127.0.0.1:25081", "sip:127.0.0.1:25083"]
    listfile.write_text("1 sip:127.0.0.1:25084\n1 sip:127.0.0.1:25085 banana\n")
    svc.reload()
    assert uris(svc) == ["sip:127.0.0.1:25081", "sip:127.0.0.1:25083"]
    svc.stopService()


def test_a_malformed_list_refuses_the_start_naming_file_and_line(tmp_path):
    with pytest.raises(ListFileError, match=r"dispatcher.list:2: flags: expected a decimal"):
        start(tmp_path, with_list(tmp_path, "1 sip:127.0.0.1:25081\n1 sip:127.0.0.1:25082 x\n"))


def test_a_backend_over_tls_without_a_tls_listener_is_refused_before_the_start(tmp_path):
    from sipgw.config import parse_config
    from sipgw.proxy.dispatcher.build import check_destinations

    text = '[dispatcher]\ndestinations = ["sip:127.0.0.1:5061;transport=tls"]\n'
    with pytest.raises(ListFileError, match=r"^dispatcher.destinations: sip:127.0.0.1:5061;"
                                            r"transport=tls: a backend over TLS needs "
                                            r"listen.tls$"):
        check_destinations(parse_config(text).config)
    tls = ('[listen]\ntls = ["127.0.0.1:5061"]\n[tls]\ncertificate = "/c.pem"\n'
           '[dispatcher]\ndestinations = ["sip:127.0.0.1:5062;transport=tls"]\n')
    assert check_destinations(parse_config(tls).config) == []
