"""Broker URLs: `embedded://HOST:PORT`, `mqtt://[user:pass@]HOST:PORT`, `mqtts://...`.

Pure parsing (no I/O) so the CLI, the service and the twin agree on one spelling. Aliases follow
what users paste from other MQTT tools: `tcp://` is `mqtt://`, and `ssl://` / `tls://` are `mqtts://`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

Scheme = Literal["embedded", "mqtt", "mqtts"]

_SCHEMES: dict[str, Scheme] = {
    "embedded": "embedded",
    "mqtt": "mqtt",
    "tcp": "mqtt",
    "mqtts": "mqtts",
    "ssl": "mqtts",
    "tls": "mqtts",
}
DEFAULT_PORTS: dict[Scheme, int] = {"embedded": 1883, "mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class BrokerUrl:
    """A parsed broker address. `host` never carries IPv6 brackets; `url` puts them back."""

    scheme: Scheme
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL without the password (safe to log)."""
        user = f"{quote(self.username, safe='')}@" if self.username is not None else ""
        return f"{self.scheme}://{user}{self.hostport}"

    def __str__(self) -> str:
        return self.url


def parse_broker_url(url: str) -> BrokerUrl:
    """Parse a broker URL; raise ValueError naming the URL and what is wrong with it."""
    if not isinstance(url, str):
        raise ValueError(f"broker URL must be a string, not {type(url).__name__}")
    text = url.strip()

    def bad(reason: str) -> ValueError:
        return ValueError(f"broker URL {url!r}: {reason}")

    if "://" not in text:
        raise bad("missing scheme (use embedded://, mqtt:// or mqtts://)")
    raw_scheme = text.split("://", 1)[0].lower()
    scheme = _SCHEMES.get(raw_scheme)
    if scheme is None:
        raise bad(f"unknown scheme {raw_scheme!r} (use embedded://, mqtt:// or mqtts://)")
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # e.g. an unbalanced '[' in an IPv6 host
        raise bad(str(exc)) from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise bad("unexpected path, query or fragment after HOST:PORT")
    host = parts.hostname
    if not host:
        raise bad("missing host")
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} in brackets is not an IPv6 address") from None
    try:
        port = parts.port
    except ValueError:
        raise bad("port must be a number from 1 to 65535") from None
    if port is None:
        if parts.netloc.endswith(":"):
            raise bad("empty port after ':'")
        port = DEFAULT_PORTS[scheme]
    elif port == 0 and scheme != "embedded":  # embedded://HOST:0 asks for an ephemeral port
        raise bad("port must be a number from 1 to 65535")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and not username:
        raise bad("a password needs a user name (mqtt://USER:PASS@HOST:PORT)")
    if scheme == "embedded" and username is not None:
        raise bad("embedded:// takes no credentials; configure users on the embedded broker")
    return BrokerUrl(scheme=scheme, host=host, port=port, username=username or None, password=password)
