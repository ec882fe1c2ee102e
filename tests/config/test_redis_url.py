"""The Redis URL forms of ``[subscribers] url``, as the store, the doctor and the config
kind read them (``sipgw.config.redis_url``)."""

from __future__ import annotations

import re

import pytest

from sipgw.config.redis_url import RedisUrl, is_redis_url, mask_url, parse_redis_url


def test_a_direct_url_names_one_server_its_database_and_its_acl_credentials():
    url = parse_redis_url("redis://sipgw:p%40ss:w@10.0.0.9/2")
    assert url == RedisUrl(hosts=(("10.0.0.9", 6379),), db=2, username="sipgw",
                           password="p@ss:w")
    assert not url.sentinel and not url.tls
    assert str(url) == "redis://10.0.0.9:6379/2"


def test_a_password_alone_is_requirepass_and_no_database_is_0():
    url = parse_redis_url("rediss://:hunter2@[2001:db8::1]:6380")
    assert (url.username, url.password, url.db, url.tls) == (None, "hunter2", 0, True)
    assert url.hosts == (("2001:db8::1", 6380),)
    assert str(url) == "rediss://[2001:db8::1]:6380/0"


def test_a_sentinel_url_names_the_sentinels_with_their_default_port_the_service_and_db():
    url = parse_redis_url("rediss+sentinel://u:pw@h1,h2:26380,[::1]/mymaster/3")
    assert url.hosts == (("h1", 26379), ("h2", 26380), ("::1", 26379))
    assert (url.service, url.db, url.username, url.password) == ("mymaster", 3, "u", "pw")
    assert url.sentinel and url.tls
    assert str(url) == "rediss+sentinel://h1:26379,h2:26380,[::1]:26379/mymaster/3"
    assert parse_redis_url("redis+sentinel://h1/mymaster").db == 0


@pytest.mark.parametrize("text, problem", [
    ("redis://h1,h2/0", "several hosts need redis+sentinel://"),
    ("redis+sentinel://h1:26379", "the Sentinel service name is missing"),
    ("redis+sentinel://h1/mymaster/x", "the database must be a number"),
    ("redis://h/0/1", "the database must be a number"),
    ("redis://h:0/0", "the port must be a number between 1 and 65535"),
    ("redis://:pw@/0", "the host is missing"),
    ("redis://h/0?db=1", "a query (?...) or fragment (#...) has no meaning here"),
])  # fmt: skip
def test_a_wrong_url_says_what_is_wrong(text, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_redis_url(text)


def test_every_form_is_a_redis_url_and_masked_without_its_password():
    for text in ("redis://u:s3cret@h/1", "rediss://u:s3cret@h/1",
                 "redis+sentinel://u:s3cret@h1,h2/m/1", "rediss+sentinel://u:s3cret@h1/m"):
        assert is_redis_url(text)
        masked = mask_url(text)
        assert "s3cret" not in masked and masked.startswith(text.split("u:")[0] + "u:***@")
    assert not is_redis_url("sqlite:///var/lib/sipgw/subscribers.db")
    assert mask_url("redis://h/1") == "redis://h/1"
