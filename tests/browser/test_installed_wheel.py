"""What pip installs is complete: the README's production install serves a working phone page.

The source is what a clean clone holds (the files git tracks, and the new ones it does not
ignore, as they are in the working tree), copied outside the checkout. From it: the sdist
(setuptools' PEP 517 backend, the one pyproject.toml names), then the wheel pip builds from
that sdist, then a fresh venv with that wheel installed by pip, its dependencies pinned to
the versions of .venv. That installed ``sipgw`` makes the subscriber (``sipgw users add``)
and serves (``sipgw serve -c``), relaying to a real registrar; Chromium opens the phone page
the installed package serves at ``/`` and registers JsSIP through it, as a person would.

Nothing of the checkout is importable by the installed sipgw: it runs from the venv's
console script, in a directory outside the checkout, without ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser.kamailio_process import KamailioRunner
from tests.browser.rig import ROOT, BrowserRig
from tests.browser.test_sipgw_browsers import EdgeSipgw, control_directory, password, uri
from tests.integration.sipp import LOOPBACK, free_port

pytestmark = pytest.mark.integration

BUILD_TIMEOUT = 120  # each step; the whole test takes about 20 s with pip's cache warm


def run(*command: str | Path, cwd: Path, stdin: str | None = None) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, input=stdin, text=True,
                          capture_output=True, timeout=BUILD_TIMEOUT, env=clean_env())
    assert done.returncode == 0, f"{' '.join(map(str, command))}: exit {done.returncode}\n" \
                                 f"{done.stdout}{done.stderr}"
    return done.stdout


def clean_env() -> dict[str, str]:
    """No path into the checkout, no configuration of another sipgw."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "SIPGW_CONFIG", "JOURNAL_STREAM")
    return {k: v for k, v in os.environ.items() if k not in drop}


def clean_clone(destination: Path) -> Path:
    """The files a clean clone of this checkout would hold, with their working-tree content."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True, timeout=30).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not there
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def build_wheel(source: Path, dist: Path) -> Path:
    """sdist from ``source``, then the wheel pip builds from that sdist (so both carry it)."""
    sdist = (
        run(
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta; "
            "print(build_meta.build_sdist(sys.argv[1]))",
            dist,
            cwd=source,
        )
        .strip()
        .splitlines()[-1]
    )
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", dist,
        dist / sdist, cwd=dist)
    wheels = list(dist.glob("sipgw-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def install(wheel: Path, venv: Path, work: Path) -> Path:
    """A fresh venv with ``wheel`` and its dependencies, at .venv's versions; its ``sipgw``."""
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=work)
    constraints = work / "constraints.txt"
    constraints.write_text(
        run(sys.executable, "-m", "pip", "freeze", "--exclude-editable", cwd=work)
    )
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet",
        "--constraint", constraints, wheel, cwd=work)
    return venv / "bin" / "sipgw"


class InstalledSipgw(EdgeSipgw):
    """:class:`EdgeSipgw` run from an installed ``sipgw`` console script."""

    def __init__(self, sipgw: Path, workdir: Path, **options) -> None:
        super().__init__(workdir, **options)
        self.sipgw = sipgw

    def command(self) -> list[str]:
        return [str(self.sipgw), "serve", "-c", str(self.config_path)]

    def add_user(self, user: str) -> None:
        self.write_config(self.config_text())
        run(self.sipgw, "users", "add", user, "--password-stdin", "-c", self.config_path,
            cwd=self.workdir, stdin=password(user) + "\n")


def test_the_wheel_installed_in_a_fresh_venv_serves_a_phone_page_that_registers(
    tmp_path: Path, browser: BrowserRig, kamailio: KamailioRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        monkeypatch.delenv(name, raising=False)  # the sipgw process inherits os.environ
    wheel = build_wheel(clean_clone(tmp_path / "src"), tmp_path / "dist")
    sipgw = install(wheel, tmp_path / "venv", tmp_path)
    # The page comes from the venv, not from the checkout.
    where = run(
        tmp_path / "venv" / "bin" / "python",
        "-c",
        "from sipgw.proxy.transport.ws.phone import phone_root; print(phone_root())",
        cwd=tmp_path,
    )
    assert Path(where.strip()).is_relative_to(tmp_path / "venv"), where

    backend = kamailio("registrar.cfg")
    with control_directory() as control_dir:
        gw = InstalledSipgw(sipgw, tmp_path / "sipgw", ws_port=free_port("tcp"),
                            backend=f"{LOOPBACK}:{backend.udp_port}", control_dir=control_dir)
        gw.add_user("5001")
        gw.start()
        try:
            phone = browser.open("phone", f"http://{gw.ws_address}/")
            assert phone.value("#ws-url") == gw.ws_url
            assert phone.text("#status") == "Not registered."
            phone.fill("#sip-uri", uri("5001"))
            phone.fill("#password", password("5001"))
            phone.click("#register")
            phone.wait_text("#status", f"Registered as {uri('5001')}")
        finally:
            gw.stop()
