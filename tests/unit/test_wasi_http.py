"""The wasi:http gate's decisions (proplets/runtime/wasi_http.py): where a request goes, whether the
allow-list lets it, how long it may take. The linking itself is tested with a real guest in
tests/integration/test_wasi_http.py."""

from __future__ import annotations

import pytest
import wasmtime
from wasmtime import component as cm

from proplets.egress import EgressPolicy
from proplets.runtime.wasi_http import Target, check_target, compile_gate, request_target, timeout_cap_ns

HTTP, HTTPS = cm.Variant("HTTP"), cm.Variant("HTTPS")


@pytest.mark.parametrize(
    ("scheme", "authority", "expected"),
    [
        (HTTP, "example.com", Target("http", "example.com", 80)),
        (HTTPS, "Example.COM.", Target("https", "example.com", 443)),
        (None, "example.com", Target("https", "example.com", 443)),  # wasmtime's default scheme
        (HTTP, "10.0.0.1:8080", Target("http", "10.0.0.1", 8080)),
        (HTTP, "[::1]:81", Target("http", "::1", 81)),
        (HTTP, "[fe80::1]", Target("http", "fe80::1", 80)),
        (HTTP, "user:pw@host:9", Target("http", "host", 9)),
    ],
)
def test_the_target_of_a_request(scheme: object, authority: str, expected: Target) -> None:
    assert request_target(scheme, authority) == expected


@pytest.mark.parametrize(
    ("scheme", "authority", "error"),
    [
        (cm.Variant("other", "ftp"), "example.com", "not http or https"),
        (HTTP, None, "no authority"),
        (HTTP, "", "no authority"),
        (HTTP, ":80", "is not HOST"),
        (HTTP, "host:0", "port must be"),
        (HTTP, "host:65536", "port must be"),
        (HTTP, "host:8o", "port must be"),
        (HTTP, "[::1]x", "expected [IPv6]:PORT"),
        (HTTP, "[::1", "expected [IPv6]:PORT"),
    ],
)
def test_a_request_with_no_usable_target_is_refused_saying_why(
    scheme: object, authority: str | None, error: str
) -> None:
    with pytest.raises(ValueError, match=error.replace("[", r"\[")):
        request_target(scheme, authority)


def test_every_resolved_address_must_be_allowed() -> None:
    policy = EgressPolicy(["public"])
    target = Target("http", "api.example.com", 80)
    assert check_target(policy, target, ["93.184.216.34"]).allowed
    # a name with one private answer among public ones could connect to the private one
    mixed = check_target(policy, target, ["93.184.216.34", "10.0.0.5"])
    assert not mixed.allowed and "10.0.0.5" in mixed.rule
    assert not check_target(policy, target, []).allowed


def test_metadata_addresses_are_refused_even_for_an_allowed_name() -> None:
    policy = EgressPolicy(["metadata.internal"])
    verdict = check_target(policy, Target("http", "metadata.internal", 80), ["169.254.169.254"])
    assert not verdict.allowed and "link-local" in verdict.rule


def test_the_timeout_cap_is_the_time_left_before_the_deadline() -> None:
    assert timeout_cap_ns(None, 100.0) is None
    assert timeout_cap_ns(102.5, 100.0) == 2_500_000_000
    assert timeout_cap_ns(99.0, 100.0) == 1_000_000  # past the deadline: fail at once, not never


def test_the_gate_component_compiles_and_links_against_wasmtimes_wasi_http() -> None:
    engine = wasmtime.Engine(wasmtime.Config())
    linker = cm.Linker(engine)
    linker.add_wasi_http()
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    store.set_wasi_http()
    gate = linker.instantiate(store, compile_gate(engine))
    for name in (
        "authority",
        "scheme",
        "handle",
        "new-options",
        "get-connect-timeout",
        "set-between-bytes-timeout",
    ):
        assert gate.get_func(store, name) is not None, name
