"""Digest credentials, challenges and hashes: RFC 2617, RFC 7616, RFC 3261 §22.4."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipgw.sip.digest import (
    Credentials,
    format_challenge,
    ha1,
    ha1b,
    parse_challenge,
    parse_credentials,
    response,
    userhash,
)
from sipgw.sip.errors import ParseError
from tests.sip.test_address import torture_header

# RFC 2617 §3.5, the Authorization header of the example (folded lines joined).
RFC2617_AUTHORIZATION = (
    'Digest username="Mufasa", realm="testrealm@host.com", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, '
    'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
    'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
# RFC 7616 §3.9.1: the same request, once with MD5 and once with SHA-256.
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_REALM = "http-auth@example.org"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


# -- hashes -----------------------------------------------------------------------------


def test_rfc2617_example_response_is_reproduced() -> None:
    creds = parse_credentials(RFC2617_AUTHORIZATION)
    key = ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    got = response(
        key, "GET", creds.uri, creds.nonce, creds.params["nc"], creds.params["cnonce"],  # type: ignore[arg-type]
        creds.params["qop"],
    )
    assert got == creds.response == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_example_responses_are_reproduced(algorithm: str, expected: str) -> None:
    key = ha1("Mufasa", RFC7616_REALM, "Circle of Life", algorithm)
    got = response(
        key, "GET", "/dir/index.html", RFC7616_NONCE, "00000001", RFC7616_CNONCE, "auth", algorithm
    )
    assert got == expected


def test_algorithm_names_are_case_insensitive() -> None:
    assert ha1("a", "r", "p", "sha-256") == ha1("a", "r", "p", "SHA-256")


def test_response_without_qop_is_the_rfc2069_form() -> None:
    key = ha1("alice", "atlanta.example.com", "secret")
    expected = md5(f"{key}:abc:{md5('REGISTER:sip:atlanta.example.com')}")
    assert response(key, "REGISTER", "sip:atlanta.example.com", "abc") == expected


def test_sess_algorithm_folds_nonce_and_cnonce_into_ha1() -> None:
    key = ha1("alice", "atlanta.example.com", "secret")
    sess = md5(f"{key}:n1:c1")
    ha2 = md5("INVITE:sip:bob@biloxi.example.com")
    expected = md5(f"{sess}:n1:00000001:c1:auth:{ha2}")
    got = response(
        key, "INVITE", "sip:bob@biloxi.example.com", "n1", "00000001", "c1", "auth", "MD5-sess"
    )
    assert got == expected


def test_auth_int_hashes_the_body_into_ha2() -> None:
    key = ha1("alice", "atlanta.example.com", "secret")
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"
    ha2 = md5(f"INVITE:sip:bob@biloxi.example.com:{hashlib.md5(body).hexdigest()}")
    expected = md5(f"{key}:n1:00000002:c1:auth-int:{ha2}")
    got = response(
        key, "INVITE", "sip:bob@biloxi.example.com", "n1", "00000002", "c1", "auth-int", body=body
    )
    assert got == expected


def test_ha1b_is_ha1_of_user_at_domain() -> None:
    assert ha1b("alice", "atlanta.example.com", "atlanta.example.com", "secret") == ha1(
        "alice@atlanta.example.com", "atlanta.example.com", "secret"
    )


def test_userhash_is_the_hash_of_username_and_realm() -> None:
    expected = hashlib.sha256(b"Mufasa:http-auth@example.org").hexdigest()
    assert userhash("Mufasa", RFC7616_REALM, "SHA-256") == expected


def test_text_is_hashed_as_utf8_and_bytes_as_given() -> None:
    assert ha1("Jäsøn", "r", "p") == ha1("Jäsøn".encode(), b"r", b"p")
    assert ha1("J\xc3\xa4s\xc3\xb8n".encode("latin-1"), "r", "p") == ha1("Jäsøn", "r", "p")


@pytest.mark.parametrize(
    "call",
    [
        lambda: ha1("a", "r", "p", "SHA-1"),
        lambda: response("k", "GET", "/", "n", "00000001", "c", "auth-conf"),
        lambda: response("k", "GET", "/", "n", None, "c", "auth"),
        lambda: response("k", "GET", "/", "n", "00000001", None, "auth"),
        lambda: response("k", "GET", "/", "n", algorithm="MD5-sess"),
    ],
)
def test_impossible_hash_requests_raise_value_error(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        call()


# -- parsing credentials ----------------------------------------------------------------


def test_rfc2617_credentials_parse_into_lowercased_unquoted_params() -> None:
    creds = parse_credentials(RFC2617_AUTHORIZATION)
    assert creds.scheme == "Digest" and creds.is_digest
    assert creds.params == {
        "username": "Mufasa",
        "realm": "testrealm@host.com",
        "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "uri": "/dir/index.html",
        "qop": "auth",
        "nc": "00000001",
        "cnonce": "0a4f113b",
        "response": "6629fae49393a05397450978507c4ef1",
        "opaque": "5ccc069c403ebaf9f0171e9517f40e41",
    }
    assert creds.algorithm == "MD5"


def test_quoted_values_may_hold_commas_and_escapes_and_lws_is_allowed() -> None:
    value = (
        'digest  USERNAME = "bob\\"s, phone" ,realm="biloxi.example.com",nonce="a,b", '
        'uri="sip:bob@biloxi.example.com;transport=tcp",'
        'response="0123456789abcdef0123456789abcdef", '
        "algorithm=SHA-256"
    )
    creds = parse_credentials(value)
    assert creds.scheme == "Digest"
    assert creds.username == 'bob"s, phone'
    assert (creds.nonce, creds.algorithm) == ("a,b", "SHA-256")
    assert creds.uri == "sip:bob@biloxi.example.com;transport=tcp"


def test_unknown_scheme_keeps_its_raw_text_rfc4475_regaut01() -> None:
    (value,) = torture_header("regaut01", "Authorization")
    assert parse_credentials(value) == Credentials(
        scheme="NoOneKnowsThisScheme", params={}, raw="opaque-data=here"
    )


def test_basic_credentials_with_token68_are_kept_raw() -> None:
    creds = parse_credentials("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
    assert (creds.scheme, creds.raw, creds.is_digest) == (
        "Basic",
        "QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        False,
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "no scheme"),
        ("   ", "no scheme"),
        ('"Digest" username="a"', "no scheme"),
        ("Digest", "empty or malformed parameter"),
        ('Digest username="a"', "missing realm, nonce, uri, response"),
        ('Digest realm="r", nonce="n", uri="/", response="x"', "missing username"),
        (
            'Digest username="a", realm="r", nonce="n", uri="/", response="x", qop=auth',
            "missing cnonce, nc",
        ),
        ('Digest username="a",,realm="r"', "empty or malformed parameter"),
        ('Digest username="a", realm="r', "empty or malformed parameter"),
        ('Digest username="a" realm="r"', "separated by commas"),
        ('Digest username="a", username="b"', "duplicate username"),
        ("Digest username=", "empty or malformed parameter"),
        ('Digest username="a",', "empty or malformed parameter"),
        ("Digest =x", "empty or malformed parameter"),
    ],
)
def test_incomplete_or_garbled_credentials_are_bad_authorization_headers(
    value: str, reason: str
) -> None:
    with pytest.raises(ParseError, match="^Bad Authorization header: ") as info:
        parse_credentials(value)
    assert reason in info.value.reason
    assert info.value.status == 400


def test_error_names_the_proxy_authorization_header_when_told() -> None:
    with pytest.raises(ParseError, match="^Bad Proxy-Authorization header: "):
        parse_credentials("Digest", what="Proxy-Authorization header")


# -- challenges -------------------------------------------------------------------------


def test_challenge_is_formatted_in_rfc2617_order_with_quoted_values() -> None:
    assert format_challenge("atlanta.example.com", "84a4cc6f3082121f32b42a2187831a9e") == (
        'Digest realm="atlanta.example.com", nonce="84a4cc6f3082121f32b42a2187831a9e", '
        'algorithm=MD5, qop="auth"'
    )
    assert format_challenge("r\"q", "n", "SHA-256", None, True, "op") == (
        'Digest realm="r\\"q", nonce="n", opaque="op", stale=TRUE, algorithm=SHA-256'
    )


def test_formatted_challenge_parses_back() -> None:
    challenge = parse_challenge(
        format_challenge('we "quote"', "n0nce", "SHA-256", "auth,auth-int", True, "o")
    )
    assert challenge.params == {
        "realm": 'we "quote"',
        "nonce": "n0nce",
        "opaque": "o",
        "stale": "TRUE",
        "algorithm": "SHA-256",
        "qop": "auth,auth-int",
    }


def test_challenge_without_nonce_is_refused() -> None:
    with pytest.raises(ParseError, match="^Bad WWW-Authenticate header: missing nonce"):
        parse_challenge('Digest realm="r"')


# -- properties -------------------------------------------------------------------------


@given(st.text(st.characters(max_codepoint=255)))
def test_arbitrary_text_parses_or_raises_parse_error(text: str) -> None:
    for parse in (parse_credentials, parse_challenge):
        try:
            parse(text)
        except ParseError:
            pass


@given(st.integers(0, 400), st.sampled_from(list('",=\\ \t') + ["\x00", "Digest "]))
def test_damaged_credentials_parse_or_raise_parse_error(at: int, junk: str) -> None:
    at %= len(RFC2617_AUTHORIZATION) + 1
    try:
        parse_credentials(RFC2617_AUTHORIZATION[:at] + junk + RFC2617_AUTHORIZATION[at:])
    except ParseError:
        pass


@given(st.text(st.characters(max_codepoint=255)), st.text(st.characters(max_codepoint=255)))
def test_any_realm_and_nonce_survive_a_challenge_round_trip(realm: str, nonce: str) -> None:
    challenge = parse_challenge(format_challenge(realm, nonce))
    assert (challenge.params["realm"], challenge.params["nonce"]) == (realm, nonce)
