"""Pure parts of delivery: sha256 pins, WasmSource, OCI references, layer choice, the inline path."""

from __future__ import annotations

import base64
import hashlib

import pytest

from proplets.delivery import (
    DeliveryError,
    FetchLimits,
    OciRef,
    WasmSource,
    delivery_path,
    fetch_wasm,
    parse_oci_ref,
    parse_sha256,
)
from proplets.delivery.ociref import choose_platform_manifest, choose_wasm_layer

WASM = b"\0asm\x01\0\0\0"
DIGEST = hashlib.sha256(WASM).hexdigest()


def test_sha256_pins_are_normalised() -> None:
    assert parse_sha256("") == ""
    assert parse_sha256(DIGEST.upper()) == DIGEST
    assert parse_sha256(f"sha256:{DIGEST}") == DIGEST
    assert parse_sha256(f"SHA256:{DIGEST}") == DIGEST


@pytest.mark.parametrize("pin", ["abc", "sha512:" + "0" * 64, "z" * 64, DIGEST + "0", "md5:" + DIGEST])
def test_malformed_sha256_pins_are_refused_by_name(pin: str) -> None:
    with pytest.raises(ValueError, match="invalid sha256 pin"):
        parse_sha256(pin)


async def test_inline_file_is_returned_when_its_pin_matches() -> None:
    assert await fetch_wasm(WasmSource(file=WASM, sha256=f"sha256:{DIGEST}")) == WASM
    assert await fetch_wasm(WasmSource(file=WASM)) == WASM


async def test_inline_file_with_a_wrong_pin_is_refused() -> None:
    wrong = "ab" * 32
    with pytest.raises(DeliveryError) as info:
        await fetch_wasm(WasmSource(file=WASM, sha256=wrong))
    assert info.value.source == "inline"
    assert str(info.value) == f"sha256 mismatch for inline wasm file: expected {wrong}, got {DIGEST}"


async def test_malformed_pin_is_refused_before_any_fetch() -> None:
    # The URL points nowhere: a fetch would fail differently, so this proves validation comes first.
    with pytest.raises(DeliveryError, match=r"invalid sha256 pin 'nope'.*for http://127.0.0.1:9/x.wasm"):
        await fetch_wasm(WasmSource(image_url="http://127.0.0.1:9/x.wasm", sha256="nope"))


async def test_inline_file_wins_over_image_url() -> None:
    source = WasmSource(file=WASM, image_url="http://127.0.0.1:9/never")
    assert delivery_path(source, has_chunk_fetcher=False) == "inline"
    assert await fetch_wasm(source) == WASM


async def test_nothing_to_fetch_is_the_upstream_error() -> None:
    with pytest.raises(DeliveryError, match="no wasm binary or image URL provided"):
        await fetch_wasm(WasmSource())


async def test_inline_file_over_the_size_cap_is_refused() -> None:
    with pytest.raises(DeliveryError, match="exceeds size limit of 4 bytes"):
        await fetch_wasm(WasmSource(file=WASM), limits=FetchLimits(max_bytes=4))


def test_paths_follow_upstream_order() -> None:
    assert delivery_path(WasmSource(image_url="https://h/x.wasm"), has_chunk_fetcher=True) == "http"
    assert delivery_path(WasmSource(image_url="reg.io/a/b:1"), has_chunk_fetcher=True) == "mqtt"
    assert delivery_path(WasmSource(image_url="reg.io/a/b:1"), has_chunk_fetcher=False) == "oci"


def test_from_wire_decodes_base64_and_names_bad_input() -> None:
    assert WasmSource.from_wire(base64.b64encode(WASM).decode()).file == WASM
    with pytest.raises(DeliveryError, match="inline wasm file is not valid base64") as info:
        WasmSource.from_wire("not base64!")
    assert info.value.source == "inline"


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        FetchLimits(max_bytes=0)
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        FetchLimits(timeout_s=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:5000/app", OciRef("localhost:5000", "app")),
        ("ghcr.io/org/app:v1.2", OciRef("ghcr.io", "org/app", "v1.2")),
        ("oci://reg.io/a/b/c:tag_1", OciRef("reg.io", "a/b/c", "tag_1")),
        (
            f"127.0.0.1:5000/app@sha256:{DIGEST}",
            OciRef("127.0.0.1:5000", "app", "latest", f"sha256:{DIGEST}"),
        ),
        (f"reg.io/app:1@sha256:{DIGEST}", OciRef("reg.io", "app", "1", f"sha256:{DIGEST}")),
    ],
)
def test_oci_refs_parse(text: str, expected: OciRef) -> None:
    ref = parse_oci_ref(text)
    assert ref == expected
    assert ref.reference == (expected.digest or expected.tag)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("app", "has no registry host"),
        ("library/app:1", "does not start with a registry host"),
        ("reg.io/App", "bad repository"),
        ("reg.io/app:", "bad tag"),
        ("reg.io/app@sha256:abc", "bad digest"),
    ],
)
def test_bad_oci_refs_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_oci_ref(text)


def test_wasm_layer_is_preferred_else_the_largest() -> None:
    small_wasm = {"mediaType": "application/vnd.wasm.content.layer.v1+wasm", "digest": "sha256:a", "size": 1}
    big_tar = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:b", "size": 9}
    other = {"mediaType": "application/x-thing", "digest": "sha256:c", "size": 5}
    assert choose_wasm_layer([big_tar, small_wasm]) is small_wasm
    assert choose_wasm_layer([other, big_tar]) is big_tar
    with pytest.raises(ValueError, match="no layers"):
        choose_wasm_layer([{"mediaType": "x"}])


def test_index_entry_for_wasm_platform_is_chosen() -> None:
    linux = {"digest": "sha256:l", "platform": {"os": "linux", "architecture": "amd64"}}
    wasi = {"digest": "sha256:w", "platform": {"os": "wasip1", "architecture": "wasm"}}
    assert choose_platform_manifest({"manifests": [linux, wasi]}) is wasi
    assert choose_platform_manifest({"manifests": [linux]}) is linux
