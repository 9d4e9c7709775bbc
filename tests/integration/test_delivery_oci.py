"""OCI pulls over the distribution API against the local test registry (tests/support/oci_registry.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import wasmtime

from proplets.delivery import DeliveryError, FetchLimits, MqttChunkFetcher, WasmSource, fetch_wasm
from tests.support.oci_registry import OCI_INDEX, OCI_MANIFEST, OciRegistry, digest_of

WASM = bytes(wasmtime.wat2wasm('(module (func (export "main") (result i32) i32.const 7))'))
LIMITS = FetchLimits(timeout_s=5)


@pytest.fixture
def registry() -> Iterator[OciRegistry]:
    with OciRegistry() as reg:
        yield reg


async def pull(ref: str, limits: FetchLimits = LIMITS, sha256: str = "") -> bytes:
    return await fetch_wasm(WasmSource(image_url=ref, sha256=sha256), limits=limits)


async def test_pull_by_tag_returns_a_module_that_compiles(registry: OciRegistry) -> None:
    registry.push_wasm("demo/add", WASM, tag="v1")
    data = await pull(f"{registry.host}/demo/add:v1")
    assert data == WASM
    wasmtime.Module(wasmtime.Engine(), data)


async def test_default_tag_is_latest(registry: OciRegistry) -> None:
    registry.push_wasm("app", WASM)
    assert await pull(f"{registry.host}/app") == WASM
    assert ("GET", "/v2/app/manifests/latest", "") in registry.requests()


async def test_pull_by_digest_and_task_pin(registry: OciRegistry) -> None:
    manifest_digest = registry.push_wasm("app", WASM, tag="v2")
    pin = hashlib.sha256(WASM).hexdigest()
    assert await pull(f"{registry.host}/app@{manifest_digest}", sha256=pin) == WASM


async def test_task_pin_mismatch_is_refused(registry: OciRegistry) -> None:
    registry.push_wasm("app", WASM)
    ref = f"{registry.host}/app"
    with pytest.raises(DeliveryError, match=f"sha256 mismatch for {ref}: expected {'ee' * 32}"):
        await pull(ref, sha256="ee" * 32)


async def test_wasm_layer_is_chosen_over_a_larger_other_layer(registry: OciRegistry) -> None:
    registry.push_wasm("app", WASM, extra_layers=[("application/vnd.oci.image.layer.v1.tar", b"t" * 5000)])
    assert await pull(f"{registry.host}/app") == WASM


async def test_without_a_wasm_media_type_the_largest_layer_wins(registry: OciRegistry) -> None:
    registry.push_wasm(
        "app", WASM, layer_media_type="application/x-custom", extra_layers=[("text/plain", b"small")]
    )
    assert await pull(f"{registry.host}/app") == WASM


async def test_image_index_resolves_to_the_wasm_platform(registry: OciRegistry) -> None:
    inner = registry.push_wasm("app", WASM, tag="inner")
    linux = registry.push_wasm("app", b"not wasm", tag="linux")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": linux,
                "size": 1,
                "platform": {"os": "linux", "architecture": "amd64"},
            },
            {
                "mediaType": OCI_MANIFEST,
                "digest": inner,
                "size": 1,
                "platform": {"os": "wasip1", "architecture": "wasm"},
            },
        ],
    }
    registry.put_manifest("app", "multi", index)
    assert await pull(f"{registry.host}/app:multi") == WASM


async def test_missing_manifest_is_named(registry: OciRegistry) -> None:
    registry.push_wasm("app", WASM)
    with pytest.raises(
        DeliveryError, match=rf"manifest nope not found in {registry.host}/app \(HTTP 404\)"
    ) as info:
        await pull(f"{registry.host}/app:nope")
    assert info.value.source == "oci"


async def test_corrupt_layer_is_refused(registry: OciRegistry) -> None:
    good = digest_of(WASM)
    registry.push_wasm("app", b"\0asm tampered", layer_digest=good)
    with pytest.raises(DeliveryError, match=f"sha256 mismatch for layer of .*: expected {good}, got sha256:"):
        await pull(f"{registry.host}/app")


async def test_layer_over_the_size_cap_is_refused_before_download(registry: OciRegistry) -> None:
    registry.push_wasm("app", WASM)
    with pytest.raises(DeliveryError, match=f"is {len(WASM)} bytes, exceeds size limit of 10 bytes"):
        await pull(f"{registry.host}/app", limits=FetchLimits(max_bytes=10))
    assert not any("/blobs/" in path for _, path, _ in registry.requests())


async def test_anonymous_bearer_token_challenge_is_answered() -> None:
    with OciRegistry(auth="token") as reg:
        reg.push_wasm("org/app", WASM)
        assert await pull(f"{reg.host}/org/app") == WASM
        seen = reg.requests()
    token_calls = [path for _, path, _ in seen if path == "/token"]
    assert token_calls == ["/token"]  # one token serves the manifest and the blob
    assert all(auth.startswith("Bearer ") for _, path, auth in seen[-2:])


async def test_token_endpoint_with_credentials_and_blob_redirect() -> None:
    with OciRegistry(auth="token", token_credentials=("bob", "s3cret"), redirect_blobs=True) as reg:
        reg.push_wasm("app", WASM)
        limits = FetchLimits(timeout_s=5, registry_credentials={reg.host: ("bob", "s3cret")})
        assert await pull(f"{reg.host}/app", limits=limits) == WASM
        with pytest.raises(DeliveryError, match=r"token request to .*/token failed with HTTP 401"):
            await pull(f"{reg.host}/app")


async def test_basic_auth_registry() -> None:
    with OciRegistry(auth="basic", basic_credentials=("amy", "pw")) as reg:
        reg.push_wasm("app", WASM)
        limits = FetchLimits(timeout_s=5, registry_credentials={reg.host: ("amy", "pw")})
        assert await pull(f"{reg.host}/app", limits=limits) == WASM
        with pytest.raises(
            DeliveryError, match=rf"registry {reg.host} requires credentials \(Basic challenge\)"
        ):
            await pull(f"{reg.host}/app")
        wrong = FetchLimits(timeout_s=5, registry_credentials={reg.host: ("amy", "no")})
        with pytest.raises(DeliveryError, match="refused our credentials"):
            await pull(f"{reg.host}/app", limits=wrong)


async def test_remote_registries_use_https() -> None:
    # registry.invalid never resolves; the error shows the scheme the puller chose.
    with pytest.raises(DeliveryError, match=r"https://registry\.invalid") as info:
        await pull("registry.invalid/app:1", limits=FetchLimits(timeout_s=5))
    assert info.value.source == "oci"


async def test_bad_reference_is_named() -> None:
    with pytest.raises(DeliveryError, match="OCI reference 'justaname' has no registry host"):
        await pull("justaname")


async def test_with_a_chunk_fetcher_refs_go_over_mqtt_instead(registry: OciRegistry) -> None:
    asked: list[str] = []

    async def publish(app_name: str) -> None:
        asked.append(app_name)

    fetcher = MqttChunkFetcher(publish, timeout_s=0.2)
    with pytest.raises(DeliveryError, match="waiting for chunks") as info:
        await fetch_wasm(WasmSource(image_url=f"{registry.host}/app"), limits=LIMITS, chunk_fetcher=fetcher)
    assert info.value.source == "mqtt"
    assert asked == [f"{registry.host}/app"]
    assert registry.requests() == []
