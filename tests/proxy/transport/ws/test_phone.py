"""phone_asset: the phone page's files by request path, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipgw.proxy.transport.ws import phone
from sipgw.proxy.transport.ws.phone import phone_asset


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A phone directory of our own, beside a secret that must never be served."""
    (tmp_path / "secret.js").write_text("secret")
    (tmp_path / "secret.html").write_text("secret")
    page = tmp_path / "phone"
    (page / "vendor").mkdir(parents=True)
    (page / "index.html").write_text("<title>page</title>")
    (page / "phone.js").write_text("// phone")
    (page / "vendor" / "jssip.js").write_text("var JsSIP;")
    (page / ".hidden.js").write_text("hidden")
    (page / "notes.txt").write_text("notes")
    monkeypatch.setattr(phone, "phone_root", lambda: page)
    return page


@pytest.mark.parametrize("path", ["/", "", "/index.html", "/?user=5001&password=secret", "/#top"])
def test_the_root_path_is_the_page_itself(path: str) -> None:
    found = phone_asset(path)
    assert found is not None
    body, content_type = found
    assert content_type == "text/html; charset=utf-8"
    assert b"<title>sipgw test phone</title>" in body
    assert b'src="vendor/jssip.js"' in body and b'src="phone.js"' in body


def test_the_page_script_is_javascript_from_the_package() -> None:
    body, content_type = phone_asset("/phone.js")  # type: ignore[misc]
    assert content_type == "text/javascript; charset=utf-8"
    assert b"window.sipgwPhone" in body


def test_the_jssip_bundle_is_served_from_vendor_when_it_was_built(root: Path) -> None:
    assert phone_asset("/vendor/jssip.js") == (b"var JsSIP;", "text/javascript; charset=utf-8")


def test_a_missing_jssip_bundle_is_a_404_not_an_error(root: Path) -> None:
    (root / "vendor" / "jssip.js").unlink()
    assert phone_asset("/vendor/jssip.js") is None


def test_percent_escapes_are_decoded_before_looking(root: Path) -> None:
    assert phone_asset("/phone%2Ejs") == (b"// phone", "text/javascript; charset=utf-8")


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.js",
        "/..%2Fsecret.js",
        "/%2e%2e/secret.html",
        "/vendor/../../secret.js",
        "/vendor/./jssip.js",
        "//secret.js",
        "/vendor//jssip.js",
        "/vendor/",
        "/vendor",
        "/.hidden.js",
        "/vendor\\..\\..\\secret.js",
        "/phone.js%00.html",
        "/%ff.js",
        "/notes.txt",
        "/nothing.js",
        "/etc/passwd",
    ],
)
def test_anything_but_the_page_files_is_refused(root: Path, path: str) -> None:
    assert phone_asset(path) is None
