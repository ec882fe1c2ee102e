"""TLS settings: contexts from PEM files, errors that name the file, reload that keeps the
running certificate when the new one is bad."""

from __future__ import annotations

import pytest
from OpenSSL import SSL

from sipgw.config import TlsConfig
from sipgw.proxy.transport.tls import ServerTls, TlsError, build_context
from tests.helpers.certs import CertAuthority


@pytest.fixture
def ca(tmp_path) -> CertAuthority:
    return CertAuthority(tmp_path / "ca")


def handshake(server_ctx: SSL.Context, ca: CertAuthority) -> SSL.Connection:
    """A TLS handshake in memory between a server on ``server_ctx`` and a client that
    trusts only ``ca``'s root (and so needs the whole chain); the client's end."""
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.load_verify_locations(str(ca.root_path))
    client_ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
    server, client = SSL.Connection(server_ctx, None), SSL.Connection(client_ctx, None)
    server.set_accept_state()
    client.set_connect_state()
    done = {server: False, client: False}
    for _ in range(10):  # a handshake is a few flights each way
        for end, other in ((client, server), (server, client)):
            try:
                end.do_handshake()
                done[end] = True
            except SSL.WantReadError:
                pass
            while True:
                try:
                    other.bio_write(end.bio_read(65536))
                except SSL.WantReadError:
                    break
        if all(done.values()):
            return client
    raise AssertionError("the handshake did not complete")


def test_a_chain_and_its_key_make_a_tls_1_2_context(ca):
    chain, key, serial = ca.issue()
    ctx = build_context(TlsConfig(certificate=str(chain), private_key=str(key)))
    client = handshake(ctx, ca)
    assert client.get_peer_certificate().get_serial_number() == serial
    assert client.get_protocol_version_name() in ("TLSv1.2", "TLSv1.3")


def test_the_key_may_be_in_the_certificate_file(ca, tmp_path):
    chain, key, serial = ca.issue()
    both = tmp_path / "both.pem"
    both.write_bytes(chain.read_bytes() + key.read_bytes())
    client = handshake(build_context(TlsConfig(certificate=str(both))), ca)
    # A client that verifies gets the issued certificate from it, proved by its key.
    assert client.get_peer_certificate().get_serial_number() == serial


def test_a_missing_certificate_is_an_error_naming_the_file_and_key(tmp_path):
    with pytest.raises(TlsError) as caught:
        build_context(TlsConfig(certificate=str(tmp_path / "nope.pem")))
    assert "tls.certificate" in str(caught.value) and "nope.pem" in str(caught.value)


def test_a_key_that_is_not_the_certificates_is_refused(ca):
    chain, _, _ = ca.issue("a")
    _, other_key, _ = ca.issue("b")
    with pytest.raises(TlsError) as caught:
        build_context(TlsConfig(certificate=str(chain), private_key=str(other_key)))
    assert "is not the key of" in str(caught.value)


def test_garbage_instead_of_pem_and_a_bad_cipher_string_are_refused(ca, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(TlsError, match="no PEM certificate"):
        build_context(TlsConfig(certificate=str(junk)))
    chain, key, _ = ca.issue()
    with pytest.raises(TlsError, match="tls.ciphers"):
        build_context(TlsConfig(certificate=str(chain), private_key=str(key),
                                ciphers="NOTACIPHER"))


def test_reload_swaps_the_context_and_keeps_the_old_one_when_the_new_files_are_bad(ca, tmp_path):
    chain, key, _ = ca.issue("one")
    tls = ServerTls(TlsConfig(certificate=str(chain), private_key=str(key)))
    first = tls.getContext()
    assert not tls.reload(TlsConfig(certificate=str(tmp_path / "gone.pem")))
    assert tls.getContext() is first
    chain2, key2, _ = ca.issue("two")
    assert tls.reload(TlsConfig(certificate=str(chain2), private_key=str(key2)))
    assert tls.getContext() is not first


def test_tls_info_names_the_certificate_in_use_and_follows_a_reload(ca):
    from sipgw.rpc.registry import methods_of

    chain, key, serial = ca.issue("one", cn="phone.example.com")
    tls = ServerTls(TlsConfig(certificate=str(chain), private_key=str(key)))
    info = methods_of(tls)["tls.info"].handler()
    assert info["SUBJECT"] == "CN=phone.example.com"
    assert info["ISSUER"] == "CN=sipgw test intermediate"
    assert info["NAMES"] == ["localhost", "127.0.0.1"]
    assert info["SERIAL"] == format(serial, "x")
    assert 0 <= info["DAYS_LEFT"] <= 1  # the test CA issues for one day
    chain2, key2, serial2 = ca.issue("two", cn="other.example.com")
    assert tls.reload(TlsConfig(certificate=str(chain2), private_key=str(key2)))
    info = methods_of(tls)["tls.info"].handler()
    assert (info["SUBJECT"], info["SERIAL"]) == ("CN=other.example.com", format(serial2, "x"))
