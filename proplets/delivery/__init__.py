"""Wasm binary delivery for proplets: inline, HTTP(S), OCI registry and MQTT chunks, sha256 pinning.

Sans-I/O parts: ``source`` (WasmSource, FetchLimits, pins), ``chunks`` (ChunkAssembler), ``ociref``.
Adapters: ``http``, ``oci`` (httpx), ``mqtt`` (asyncio ChunkFetcher), ``fetch`` (the dispatcher).
"""

from proplets.delivery.chunks import ChunkAssembler, ChunkFetcher, ChunkMessage, decode_chunk
from proplets.delivery.errors import DeliveryError, DeliverySource, FetchRefused
from proplets.delivery.fetch import delivery_path, fetch_wasm
from proplets.delivery.mqtt import MqttChunkFetcher
from proplets.delivery.ociref import OciRef, parse_oci_ref
from proplets.delivery.source import (
    DEFAULT_MAX_BYTES,
    FetchLimits,
    WasmSource,
    parse_sha256,
    sha256_hex,
    verify_sha256,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ChunkAssembler",
    "ChunkFetcher",
    "ChunkMessage",
    "DeliveryError",
    "DeliverySource",
    "FetchLimits",
    "FetchRefused",
    "MqttChunkFetcher",
    "OciRef",
    "WasmSource",
    "decode_chunk",
    "delivery_path",
    "fetch_wasm",
    "parse_oci_ref",
    "parse_sha256",
    "sha256_hex",
    "verify_sha256",
]
