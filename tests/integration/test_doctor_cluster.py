"""``sipgw doctor``'s view of a node in a cluster, against a real ``sipgw serve`` and a SIPp
backend: the address the node writes in Path and Record-Route toward each backend (where
the backend sends answers, in-dialog requests and calls to a browser on this node) must be
one the backend can reach: an address of this host on the route to it, not loopback toward
a remote backend, and a port sipgw listens on. A failure names the destination, the
address and what to set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sipgw.tools.process import SipgwProcess, run_cli
from tests.integration.sipp import LOOPBACK, SippRunner, free_port

pytestmark = pytest.mark.integration

REMOTE = "sip:198.51.100.10:5060"  # TEST-NET-2: a backend on another host (never dialled)
NOT_OURS = "203.0.113.99"  # TEST-NET-3: an address no interface of this host has


class Advertising(SipgwProcess):
    """A test sipgw with ``listen.advertise`` set (the [listen] section is the base's)."""

    def __init__(self, workdir: Path, *, advertise: str, **options) -> None:
        super().__init__(workdir, **options)
        self.advertise = advertise

    def config_text(self, **kw) -> str:
        return super().config_text(**kw).replace(
            "ws = []\n", f'ws = []\nadvertise = "{self.advertise}"\n', 1)


def doctor(gw: SipgwProcess) -> tuple[int, dict]:
    done = run_cli("doctor", "-c", str(gw.config_path), "--json", "--timeout", "1")
    return done.returncode, {c["check"]: c for c in json.loads(done.stdout)}


def toward(uri: str) -> str:
    return f"path address toward {uri}"


@pytest.mark.parametrize("workers", [1, 2])
def test_doctor_passes_a_reachable_path_address_and_fails_loopback_toward_a_remote_backend(
    sipp: SippRunner, tmp_path: Path, workers: int,
) -> None:
    uas = sipp.uas("uas_options.xml", timeout=60, calls=1000)
    local = f"sip:{uas.address}"
    gw = SipgwProcess(tmp_path / "gw", backend=uas.address, workers=workers,
                      dispatcher=f'destinations = ["{local}", "{REMOTE}"]\nping_interval = 0\n',
                      extra_toml=f'[control]\nsocket = "{tmp_path}/c.ctl"\n')
    with gw:
        code, checks = doctor(gw)
    assert code == 1
    # Toward the backend on this host: every worker's own address, each listened on.
    near = checks[toward(local)]
    assert near["status"] == "pass", near
    written = near["detail"].split(" in Path and Record-Route")[0].split(", ")
    assert len(written) == workers and all(a.startswith(f"{LOOPBACK}:") for a in written)
    assert gw.address not in written  # a port of its own, one process or several
    # Toward a backend on another host, loopback is unreachable: said with what to set.
    far = checks[toward(REMOTE)]
    assert far["status"] == "fail", far
    assert far["detail"].startswith(f"sipgw writes {written[0]} in Path and Record-Route toward "
                                    "198.51.100.10: a loopback address"), far
    assert "listen on an address 198.51.100.10 reaches" in far["fix"], far


def test_an_advertised_port_is_the_clients_and_a_foreign_advertised_address_is_warned_of(
    sipp: SippRunner, tmp_path: Path,
) -> None:
    uas = sipp.uas("uas_options.xml", timeout=60, calls=1000)
    local = f"sip:{uas.address}"
    control = f'[control]\nsocket = "{tmp_path}/c.ctl"\n'
    # A port forwarded to the listener (a NAT in front) is what clients are told; toward
    # the backends sipgw writes its own port, which it listens on whatever is advertised.
    forwarded = free_port()
    with Advertising(tmp_path / "port", advertise=f"{LOOPBACK}:{forwarded}",
                     backend=uas.address, extra_toml=control) as gw:
        code, checks = doctor(gw)
    port = checks[toward(local)]
    assert port["status"] == "pass", port
    written = port["detail"].split(" in Path and Record-Route")[0]
    assert written.startswith(f"{LOOPBACK}:") and written not in (f"{LOOPBACK}:{forwarded}",
                                                                  gw.address), port

    with Advertising(tmp_path / "foreign", advertise=NOT_OURS, backend=uas.address,
                     extra_toml=control) as gw:
        code, checks = doctor(gw)
    foreign = checks[toward(local)]
    assert foreign["status"] == "warn", foreign
    assert foreign["detail"].startswith(f"sipgw writes {NOT_OURS}:"), foreign
    assert (f" in Path and Record-Route toward {LOOPBACK}: {NOT_OURS} is not an address of "
            "this host") in foreign["detail"], foreign
    assert f'listen.advertise = "{LOOPBACK}"' in foreign["fix"], foreign
