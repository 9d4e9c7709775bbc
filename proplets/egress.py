"""Where a proplet may connect to: the fetch allow-list (``propeller proplet --fetch-allow``). Sans-I/O.

A start message can name any ``image_url``; without a rule a proplet would fetch from whatever address
that names, including the cloud metadata service and the operator's private network (SSRF through the
task owner's proplet). ``EgressPolicy.check(host, port, address)`` decides for one *resolved* address
of one connection, so a name that resolves (or re-resolves: DNS rebinding) to a private address is
refused as that address. The driver resolves, asks, and connects to the address it asked about.

Entries (comma-separated on the command line):

- ``public``: any globally routable address (the default when nothing is configured);
- ``HOST`` or ``HOST:PORT`` (``*.example.com`` for its subdomains, ``[v6]:PORT`` for IPv6): that name,
  on any or on that port, whatever it resolves to (a private registry: ``registry.lan:5000``);
- ``IP`` or ``CIDR`` (``10.0.0.0/8``, ``fd00::/8``): those addresses, on any port.

Always refused, whatever is configured: link-local addresses (169.254.0.0/16 and fe80::/10, where the
cloud metadata services live), the known metadata addresses elsewhere (``fd00:ec2::254``,
``100.100.100.200``), unspecified and multicast addresses. Loopback and private ranges (10/8,
172.16/12, 192.168/16, 100.64/10, fc00::/7, 127/8, ::1) are refused unless an entry allows them.
Every verdict names the rule that decided, so a refused fetch says why.

The HAL sockets work reuses this for Wasm network access.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PUBLIC = "public"
DEFAULT_ENTRIES = (PUBLIC,)

_ALWAYS_DENIED: tuple[tuple[str, str], ...] = (
    ("169.254.0.0/16", "link-local (cloud metadata services live here)"),
    ("fe80::/10", "link-local"),
    ("fd00:ec2::254/128", "the AWS metadata service"),
    ("100.100.100.200/32", "the Alibaba Cloud metadata service"),
    ("0.0.0.0/8", "unspecified"),
    ("::/128", "unspecified"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
    ("255.255.255.255/32", "broadcast"),
)
_DENIED = tuple((ipaddress.ip_network(net), why) for net, why in _ALWAYS_DENIED)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    rule: str  # which rule decided, in words a user can act on


@dataclass(frozen=True)
class _HostRule:
    name: str  # lower case; "*.x.y" matches subdomains of x.y
    port: int | None
    text: str

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.name.startswith("*."):
            return host.endswith(self.name[1:])
        return host == self.name


@dataclass(frozen=True)
class _NetRule:
    network: IPNetwork
    text: str


class EgressPolicy:
    """The addresses a proplet may connect to (see the module doc); immutable once built."""

    def __init__(self, entries: Iterable[str] = DEFAULT_ENTRIES) -> None:
        self.public = False
        self._hosts: list[_HostRule] = []
        self._nets: list[_NetRule] = []
        texts: list[str] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            texts.append(entry)
            self._add(entry)
        if not texts:
            raise ValueError("the fetch allow-list is empty: give at least one entry (e.g. 'public')")
        self.entries = tuple(texts)

    @classmethod
    def parse(cls, spec: str) -> EgressPolicy:
        """From ``--fetch-allow`` text: comma-separated entries; ValueError naming a bad entry."""
        return cls(spec.split(","))

    def describe(self) -> str:
        return ",".join(self.entries)

    def _add(self, entry: str) -> None:
        if entry.lower() == PUBLIC:
            self.public = True
            return
        try:
            bare = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
            network = ipaddress.ip_network(bare, strict=False)
        except ValueError:
            pass
        else:
            self._nets.append(_NetRule(network, entry))
            return
        host, port = split_host_port(entry, "fetch allow-list entry", ", an IP or a CIDR")
        self._hosts.append(_HostRule(host, port, entry))

    def check(self, host: str, port: int, address: str) -> Verdict:
        """May a connection for ``host:port`` go to ``address`` (one of its resolved addresses)?"""
        ip = _literal(address)
        if ip is None:
            return Verdict(False, f"{address!r} is not an IP address")
        return self._check_address(host.lower().rstrip("."), port, ip)

    def _check_address(self, host: str, port: int, ip: IPAddress) -> Verdict:
        where = f"{host}:{port}" if host == str(ip) else f"{host}:{port} ({ip})"
        for network, why in _DENIED:
            if ip in network:
                return Verdict(False, f"{where} is {why}, {network}: never fetched from")
        for rule in self._hosts:
            if rule.matches(host, port):
                return Verdict(True, f"allowed by fetch allow-list entry {rule.text!r}")
        for net in self._nets:
            if ip in net.network:
                return Verdict(True, f"allowed by fetch allow-list entry {net.text!r}")
        if self.public and ip.is_global:
            return Verdict(True, f"{ip} is a public address (fetch allow-list entry 'public')")
        kind = "a private or loopback address" if (ip.is_private or ip.is_loopback) else "not allowed"
        return Verdict(
            False,
            f"{where} is {kind}: not in this proplet's fetch allow-list ({self.describe()}); "
            f"allow it with --fetch-allow",
        )


def _literal(host: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    return ip


def split_host_port(text: str, what: str, hint: str = "") -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]`` or ``[IPv6]:PORT``, lower case, without a trailing dot;
    ValueError naming ``what`` (an allow-list entry, a request's authority) and the text."""
    lowered = text.lower()
    if any(c in lowered for c in "/@ ?#"):
        raise ValueError(f"{what} {text!r} is not HOST[:PORT]{hint}")
    if lowered.startswith("["):
        host, closed, rest = lowered[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"{what} {text!r}: expected [IPv6]:PORT")
    elif lowered.count(":") == 1:
        host, port_text = lowered.split(":")
    else:
        host, port_text = lowered, ""
    if not host:
        raise ValueError(f"{what} {text!r} is not HOST[:PORT]{hint}")
    if not port_text:
        return host.rstrip("."), None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{what} {text!r}: port must be 1..65535")
    return host.rstrip("."), int(port_text)
