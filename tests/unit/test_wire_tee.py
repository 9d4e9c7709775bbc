"""Discovery carries the TEE/HAL metadata extensions both ways, type-checked."""

from __future__ import annotations

import json

import pytest

from orchestrator import wire

T = wire.Topics("d", "c")


def test_tee_metadata_round_trips() -> None:
    sent = wire.Discovery(
        "p1", "ns", {"tee": True, "tee_type": "sev", "hal": "elastic:hal@0.1.0", "os": "linux"}
    )
    payload = wire.encode(sent)
    assert json.loads(payload)["metadata"]["tee"] is True
    got = wire.decode(T, T.create, payload)
    assert isinstance(got, wire.Discovery)
    assert (got.metadata["tee"], got.metadata["tee_type"], got.metadata["hal"]) == (
        True,
        "sev",
        "elastic:hal@0.1.0",
    )


def test_a_non_boolean_tee_is_refused_naming_the_field() -> None:
    with pytest.raises(wire.CodecError, match=r"metadata\.tee"):
        wire.encode(wire.Discovery("p1", "ns", {"tee": "yes"}))
    bad = json.dumps({"proplet_id": "p1", "metadata": {"tee": "yes"}}).encode()
    with pytest.raises(wire.CodecError, match="tee"):
        wire.decode(T, T.create, bad)
