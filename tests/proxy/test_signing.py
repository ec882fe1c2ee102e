"""The key that signs sipgw's Record-Routes and aliases: configured, derived, or kept in
the state directory so that a restart does not break the dialogs in progress."""

from __future__ import annotations

import os
import stat

from sipgw.proxy.signing import KEY_FILE, RouteSigner, route_key


def test_a_restart_keeps_the_key_made_on_first_start_in_a_file_only_sipgw_reads(tmp_path):
    state = tmp_path / "state"
    first = route_key("", "", str(state))
    assert route_key("", "", str(state)) == first  # the next start: same key
    mode = stat.S_IMODE(os.stat(state / KEY_FILE).st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    # A Record-Route signed before the restart still verifies after it.
    mac = RouteSigner(first).dialog("call-1", "tag-1")
    assert RouteSigner(route_key("", "", str(state))).dialog_ok(mac, "call-1", [None, "tag-1"])


def test_a_configured_secret_wins_and_nodes_sharing_it_share_the_key(tmp_path):
    a = route_key("shared", "", str(tmp_path / "a"))
    assert a == route_key("shared", "other nonce secret", str(tmp_path / "b"))
    assert not (tmp_path / "a" / KEY_FILE).exists()
    # Without a route secret, the nonce secret (which nodes share already) is used, but
    # never as the same key: what signs nonces does not sign routes.
    n = route_key("", "nonce", str(tmp_path / "c"))
    assert n == route_key("", "nonce", str(tmp_path / "d")) and n not in (a, b"nonce")


def test_a_state_directory_that_cannot_be_written_gives_a_key_of_this_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    key = route_key("", "", str(blocker / "state"))
    assert len(key) == 32 and key != route_key("", "", str(blocker / "state"))


def test_a_mac_verifies_only_for_its_own_dialog_and_alias():
    signer = RouteSigner(b"k" * 32)
    mac = signer.dialog("call-1", "a")
    assert signer.dialog_ok(mac, "call-1", ["b", "a"])  # the callee: its To tag is "a"
    assert signer.dialog_ok(mac.upper(), "call-1", ["a", None])
    assert not signer.dialog_ok(mac, "call-2", ["a", "b"])
    assert not signer.dialog_ok(mac, "call-1", ["b", "c"])
    assert not signer.dialog_ok(None, "call-1", ["a"]) and not signer.dialog_ok("", "c", [""])
    assert not RouteSigner(b"j" * 32).dialog_ok(mac, "call-1", ["a"])
    alias = signer.alias("192.0.2.1~5060~1")
    assert signer.alias_ok("192.0.2.1~5060~1", alias)
    assert not signer.alias_ok("192.0.2.1~5061~1", alias)
    assert not signer.alias_ok("192.0.2.1~5060~1", None)


def _key_in(state: str) -> bytes:
    return route_key("", "", state)


def test_processes_making_the_key_at_once_all_keep_the_one_in_the_file(tmp_path):
    """Workers start together: each must end with the key the file holds, never its own."""
    import multiprocessing

    state = str(tmp_path / "state")
    with multiprocessing.get_context("fork").Pool(6) as pool:
        keys = pool.map(_key_in, [state] * 24)
    assert set(keys) == {(tmp_path / "state" / KEY_FILE).read_bytes()}
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [KEY_FILE]
