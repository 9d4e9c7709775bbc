"""parse_broker_url: the spellings users paste, and clear errors for the ones we refuse."""

from __future__ import annotations

import pytest

from orchestrator.adapters.broker_url import BrokerUrl, parse_broker_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("embedded://127.0.0.1:7070", BrokerUrl("embedded", "127.0.0.1", 7070)),
        ("embedded://0.0.0.0", BrokerUrl("embedded", "0.0.0.0", 1883)),
        ("mqtt://broker.local", BrokerUrl("mqtt", "broker.local", 1883)),
        ("mqtt://h:1884", BrokerUrl("mqtt", "h", 1884)),
        ("tcp://h:1884", BrokerUrl("mqtt", "h", 1884)),
        ("MQTT://H:1884/", BrokerUrl("mqtt", "h", 1884)),
        ("mqtts://h", BrokerUrl("mqtts", "h", 8883)),
        ("ssl://h:9999", BrokerUrl("mqtts", "h", 9999)),
        ("tls://h", BrokerUrl("mqtts", "h", 8883)),
        ("mqtt://[::1]:1883", BrokerUrl("mqtt", "::1", 1883)),
        ("mqtts://[fe80::1]", BrokerUrl("mqtts", "fe80::1", 8883)),
        ("mqtt://alice:s3cret@h:1883", BrokerUrl("mqtt", "h", 1883, "alice", "s3cret")),
        ("mqtt://alice@h", BrokerUrl("mqtt", "h", 1883, "alice", None)),
        ("mqtt://al%40ice:p%3Aw%2F@h", BrokerUrl("mqtt", "h", 1883, "al@ice", "p:w/")),
    ],
)
def test_accepted_spellings(url: str, expected: BrokerUrl) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("foo://x", "broker URL 'foo://x': unknown scheme 'foo' (use embedded://, mqtt:// or mqtts://)"),
        ("localhost:1883", "missing scheme"),
        ("mqtt://", "missing host"),
        ("mqtt://:1883", "missing host"),
        ("mqtt://h:notaport", "port must be a number from 1 to 65535"),
        ("mqtt://h:70000", "port must be a number from 1 to 65535"),
        ("mqtt://h:0", "port must be a number from 1 to 65535"),
        ("mqtt://h:", "empty port"),
        ("mqtt://h:1883/some/path", "unexpected path"),
        ("mqtt://h:1883?x=1", "unexpected path, query or fragment"),
        ("mqtt://[nothex]:1883", "not appear to be an IPv4 or IPv6 address"),
        ("mqtt://[10.0.0.1]:1883", "An IPv4 address cannot be in brackets"),
        ("mqtt://[::1:1883", "broker URL 'mqtt://[::1:1883'"),
        ("mqtt://:pw@h", "a password needs a user name"),
        ("embedded://u:p@127.0.0.1:1", "embedded:// takes no credentials"),
    ],
)
def test_bad_urls_name_the_problem(url: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_broker_url(url)
    assert message in str(info.value)
    assert repr(url) in str(info.value)


def test_non_string_is_refused() -> None:
    with pytest.raises(ValueError, match="must be a string, not int"):
        parse_broker_url(1883)  # type: ignore[arg-type]


def test_password_never_shows_in_logs() -> None:
    parsed = parse_broker_url("mqtts://alice:s3cret@[::1]:8884")
    assert parsed.url == "mqtts://alice@[::1]:8884"
    assert "s3cret" not in str(parsed) and "s3cret" not in repr(parsed)
    assert parsed.tls and parsed.hostport == "[::1]:8884"
