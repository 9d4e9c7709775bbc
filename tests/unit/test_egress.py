"""The fetch allow-list decision (proplets/egress.py): every verdict names the rule that decided."""

from __future__ import annotations

import pytest

from proplets.egress import EgressPolicy


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("169.254.169.254", "link-local (cloud metadata services live here)"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "the AWS metadata service"),
        ("100.100.100.200", "the Alibaba Cloud metadata service"),
        ("::ffff:169.254.169.254", "link-local (cloud metadata services live here)"),
        ("0.0.0.0", "unspecified"),
        ("239.1.2.3", "multicast"),
    ],
)
def test_metadata_link_local_and_odd_addresses_are_never_allowed(address: str, why: str) -> None:
    policy = EgressPolicy(["public", "169.254.0.0/16", "fe80::/10", "metadata.internal", "0.0.0.0/0"])
    verdict = policy.check("metadata.internal", 80, address)
    assert not verdict.allowed and why in verdict.rule and "never fetched from" in verdict.rule


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.1.2.3", "172.20.0.1", "192.168.1.1", "100.64.0.1", "::1", "fd12::1"]
)
def test_the_default_refuses_private_and_loopback_addresses(address: str) -> None:
    verdict = EgressPolicy().check("registry.lan", 5000, address)
    assert not verdict.allowed
    assert "not in this proplet's fetch allow-list (public); allow it with --fetch-allow" in verdict.rule


def test_the_default_allows_public_addresses_by_address_not_by_name() -> None:
    policy = EgressPolicy()
    assert policy.check("example.com", 443, "93.184.216.34").allowed
    # DNS rebinding: a public-looking name that resolves to loopback is refused as that address.
    rebound = policy.check("rebind.attacker.example", 80, "127.0.0.1")
    assert not rebound.allowed and "rebind.attacker.example:80 (127.0.0.1)" in rebound.rule


def test_host_entries_allow_a_name_on_a_port_or_any_port_and_wildcard_subdomains() -> None:
    policy = EgressPolicy.parse("registry.lan:5000,files.lan,*.corp.example")
    assert policy.check("registry.lan", 5000, "10.0.0.5").allowed
    assert not policy.check("registry.lan", 5001, "10.0.0.5").allowed
    assert policy.check("FILES.lan.", 8080, "10.0.0.6").allowed
    assert policy.check("a.b.corp.example", 443, "10.0.0.7").allowed
    assert not policy.check("corp.example", 443, "10.0.0.7").allowed
    assert not policy.check("other.lan", 443, "8.8.8.8").allowed  # no 'public' entry: only what is listed


def test_ip_and_cidr_entries_allow_addresses_on_any_port() -> None:
    policy = EgressPolicy.parse("10.0.0.0/8,192.168.1.10,[fd00::1]")
    verdict = policy.check("anything", 1234, "10.9.8.7")
    assert verdict.allowed and verdict.rule == "allowed by fetch allow-list entry '10.0.0.0/8'"
    assert policy.check("x", 80, "192.168.1.10").allowed
    assert policy.check("x", 80, "fd00::1").allowed
    assert not policy.check("x", 80, "192.168.1.11").allowed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "the fetch allow-list is empty"),
        ("host with space", "'host with space' is not HOST[:PORT], an IP or a CIDR"),
        ("h:99999", "'h:99999': port must be 1..65535"),
        ("http://h/x", "is not HOST[:PORT]"),
        ("[::1", "expected [IPv6]:PORT"),
    ],
)
def test_bad_entries_are_refused_naming_the_entry(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        EgressPolicy.parse(spec)
