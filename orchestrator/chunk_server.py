"""Manager side of the MQTT chunked registry protocol (reference §2.10), sans-I/O.

A proplet publishes ``{"app_name": …}`` on ``registry/proplet``; the service passes the app name to
``ChunkServer.handle_request`` and publishes each returned reply on ``registry/server`` (encoded with
``encode_reply``), in order. Binaries get there with ``register`` (the service pulls them from an OCI
registry, or a user uploads them).

When the server cannot serve an app (unknown, or too big for the embedded profile) it answers with ONE
refusal, our extension of the wire protocol (``wire.RegistryChunk`` with ``error`` set, sent with
``total_chunks`` 0), so our proplets fail the fetch at once, naming the reason, instead of waiting 60 s.
Upstream's proxy sends nothing in that case. An upstream Rust proplet's codec refuses the odd chunk
and times out as before; the embedded firmware ignores the counters and tries to run an empty module,
so it reports a load failure instead of waiting silently.

What it holds is the manager's business: the service registers only modules that a task it holds
refers to (``Engine.module_for``), so a request can never make the manager fetch an arbitrary URL.
"""

from __future__ import annotations

import base64
import math

from orchestrator.wire import EMBEDDED_MAX_PAYLOAD_BYTES, CodecError, Profile, RegistryChunk, encode

UPSTREAM_CHUNK_SIZE = 512_000  # PROXY_CHUNK_SIZE default, raw bytes per chunk
BROKER_MAX_MESSAGE_BYTES = 1_048_576  # FluxMQ max_message_size upstream
MAX_APP_NAME = 512
_JSON_RESERVE = 1024  # JSON keys, counters and an app name of up to MAX_APP_NAME characters


def encode_reply(reply: RegistryChunk, *, embedded: bool = False) -> bytes:
    """Wire bytes of a reply; a refusal too long for the firmware's buffer is shortened to fit."""
    if reply.is_refusal and embedded:
        for cut in (len(reply.error), 400, 120):
            try:
                return encode(RegistryChunk.refusal(reply.app_name, reply.error[:cut]), Profile.EMBEDDED)
            except CodecError:
                continue
        return encode(RegistryChunk.refusal(reply.app_name, reply.error[:120]), Profile.RUST)
    return encode(reply, Profile.EMBEDDED if embedded else Profile.RUST)


def embedded_capacity(app_name: str) -> int:
    """Raw wasm bytes one embedded message can carry for ``app_name`` (JSON at most 1023 bytes)."""
    empty = encode_reply(RegistryChunk(app_name, 0, 1, b""), embedded=False)
    return max(0, (EMBEDDED_MAX_PAYLOAD_BYTES - len(empty)) // 4 * 3)


class ChunkServer:
    """Holds registered binaries and splits them into ``registry/server`` replies.

    ``chunk_size`` is raw bytes per chunk (upstream 512000); it is checked so that every message,
    base64 and JSON included, stays under ``max_message_bytes`` (the broker's limit). In ``embedded``
    mode every answer is exactly one message of at most 1023 bytes of JSON, or a refusal.
    """

    def __init__(
        self,
        *,
        chunk_size: int = UPSTREAM_CHUNK_SIZE,
        embedded: bool = False,
        max_message_bytes: int = BROKER_MAX_MESSAGE_BYTES,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1 byte, got {chunk_size}")
        encoded = 4 * math.ceil(chunk_size / 3) + _JSON_RESERVE
        if encoded > max_message_bytes:
            largest = (max_message_bytes - _JSON_RESERVE) // 4 * 3
            raise ValueError(
                f"chunk_size {chunk_size} gives messages of up to {encoded} bytes, over the broker limit "
                f"of {max_message_bytes}; use at most {largest}"
            )
        self.chunk_size = chunk_size
        self.embedded = embedded
        self._apps: dict[str, bytes] = {}

    def register(self, app_name: str, wasm: bytes) -> None:
        if not app_name or len(app_name) > MAX_APP_NAME:
            raise ValueError(f"app_name must be 1..{MAX_APP_NAME} characters, got {len(app_name)}")
        if not wasm:
            raise ValueError(f"binary of {app_name} is empty")
        self._apps[app_name] = bytes(wasm)

    def unregister(self, app_name: str) -> bool:
        return self._apps.pop(app_name, None) is not None

    def __contains__(self, app_name: object) -> bool:
        return app_name in self._apps

    def handle_request(self, app_name: str, *, embedded: bool | None = None) -> list[RegistryChunk]:
        """Replies to publish, in order, for a request of ``app_name`` (a refusal is one reply)."""
        wasm = self._apps.get(app_name)
        if wasm is None:
            return [RegistryChunk.refusal(app_name, f"app {app_name!r} is not registered (not found)")]
        if self.embedded if embedded is None else embedded:
            return [self._embedded_reply(app_name, wasm)]
        total = math.ceil(len(wasm) / self.chunk_size)
        return [
            RegistryChunk(app_name, i, total, wasm[i * self.chunk_size : (i + 1) * self.chunk_size])
            for i in range(total)
        ]

    def _embedded_reply(self, app_name: str, wasm: bytes) -> RegistryChunk:
        reply = RegistryChunk(app_name, 0, 1, wasm)
        try:
            encode_reply(reply, embedded=True)
        except CodecError as exc:
            capacity = embedded_capacity(app_name)
            data_chars = len(base64.b64encode(wasm))
            reason = (
                f"binary of {app_name} is {len(wasm)} bytes ({data_chars} base64 characters); the embedded "
                f"profile sends one message of at most {EMBEDDED_MAX_PAYLOAD_BYTES} bytes, which holds "
                f"{capacity} bytes of wasm for this app name ({exc.reason})"
            )
            return RegistryChunk.refusal(app_name, reason)
        return reply
