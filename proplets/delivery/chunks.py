"""Reassembly of the MQTT chunked registry protocol (reference §2.10), sans-I/O.

Chunks arrive on ``registry/server`` as ``{"app_name", "chunk_idx", "total_chunks", "data"}`` and are
broadcast to every proplet on the channel; they are decoded by the wire codec (``wire.RegistryChunk``).
Our manager's ChunkServer answers an app it cannot serve with one refusal (``error`` set) that says
why; upstream has no such answer, so an upstream proxy simply stays silent and the requester times out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from orchestrator import wire
from orchestrator.wire.topics import REGISTRY_SERVER
from proplets.delivery.errors import DeliveryError
from proplets.delivery.source import DEFAULT_MAX_BYTES

DEFAULT_TTL_S = 300.0  # upstream: incomplete assemblies expire after 300 s
DEFAULT_MAX_CHUNKS = 10_000


class ChunkFetcher(Protocol):
    """Asks the channel's registry for ``app_name`` and returns the assembled binary.

    Implementations give up after their own timeout (upstream: 60 s) with a DeliveryError (source mqtt).
    """

    async def request(self, app_name: str) -> bytes: ...


ChunkMessage = wire.RegistryChunk  # one decoded ``registry/server`` message: a chunk or a refusal


def decode_chunk(payload: bytes) -> wire.RegistryChunk:
    """Decode a ``registry/server`` payload; raises DeliveryError (source mqtt) naming the bad field."""
    try:
        message = wire.decode_payload(REGISTRY_SERVER, payload, REGISTRY_SERVER)
    except wire.CodecError as err:
        raise DeliveryError("mqtt", f"registry chunk: {err}") from None
    assert isinstance(message, wire.RegistryChunk)
    return message


@dataclass
class _Assembly:
    total: int
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class ChunkAssembler:
    """Collects chunks per app and hands back the binary once every index is present.

    Duplicated indices are ignored (chunks are broadcast and QoS 1/2 may redeliver). A chunk whose
    ``total_chunks`` disagrees with the assembly's, or that pushes the assembly over ``max_bytes``,
    drops the assembly and raises DeliveryError. Incomplete assemblies older than ``ttl_s`` are
    dropped by ``expire(now)``.
    """

    def __init__(
        self,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_chunks: int = DEFAULT_MAX_CHUNKS,
    ) -> None:
        if ttl_s <= 0 or max_bytes <= 0 or max_chunks <= 0:
            raise ValueError("ChunkAssembler: ttl_s, max_bytes and max_chunks must be positive")
        self._ttl_s = ttl_s
        self._max_bytes = max_bytes
        self._max_chunks = max_chunks
        self._assemblies: dict[str, _Assembly] = {}

    def add(self, app_name: str, chunk_idx: int, total_chunks: int, data: bytes, now: float) -> bytes | None:
        if total_chunks < 1 or total_chunks > self._max_chunks:
            self._assemblies.pop(app_name, None)
            raise DeliveryError(
                "mqtt",
                f"chunk of {app_name}: total_chunks {total_chunks} outside 1..{self._max_chunks}",
            )
        if not 0 <= chunk_idx < total_chunks:
            raise DeliveryError(
                "mqtt", f"chunk of {app_name}: chunk_idx {chunk_idx} outside 0..{total_chunks - 1}"
            )
        asm = self._assemblies.get(app_name)
        if asm is None:
            asm = self._assemblies[app_name] = _Assembly(total=total_chunks, started=now)
        elif asm.total != total_chunks:
            del self._assemblies[app_name]
            raise DeliveryError(
                "mqtt",
                f"chunk of {app_name}: total_chunks {total_chunks} does not match {asm.total} "
                "of earlier chunks; assembly dropped",
            )
        if chunk_idx in asm.parts:
            return None
        if asm.size + len(data) > self._max_bytes:
            del self._assemblies[app_name]
            raise DeliveryError(
                "mqtt", f"chunks of {app_name} exceed size limit of {self._max_bytes} bytes; assembly dropped"
            )
        asm.parts[chunk_idx] = data
        asm.size += len(data)
        if len(asm.parts) < asm.total:
            return None
        del self._assemblies[app_name]
        return b"".join(asm.parts[i] for i in range(asm.total))

    def progress(self, app_name: str) -> tuple[int, int] | None:
        """(chunks received, total) of an incomplete assembly, or None."""
        asm = self._assemblies.get(app_name)
        return None if asm is None else (len(asm.parts), asm.total)

    def discard(self, app_name: str) -> None:
        self._assemblies.pop(app_name, None)

    def expire(self, now: float) -> list[str]:
        """Drop incomplete assemblies older than the TTL; returns their app names."""
        old = [name for name, asm in self._assemblies.items() if now - asm.started >= self._ttl_s]
        for name in old:
            del self._assemblies[name]
        return old

    def next_deadline(self) -> float | None:
        if not self._assemblies:
            return None
        return min(asm.started for asm in self._assemblies.values()) + self._ttl_s
