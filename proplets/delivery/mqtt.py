"""A ChunkFetcher over any pub/sub client: publish the request, feed the chunk messages in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from proplets.delivery.chunks import ChunkAssembler, ChunkMessage, decode_chunk
from proplets.delivery.errors import DeliveryError
from proplets.delivery.source import DEFAULT_CHUNK_TIMEOUT_S


class MqttChunkFetcher:
    """Implements ChunkFetcher; transport-agnostic so the agent can put it on its own MQTT client.

    ``publish_request(app_name)`` must publish ``{"app_name": …}`` on ``registry/proplet``; the agent
    passes every ``registry/server`` payload to ``on_payload`` (or decoded ones to ``on_chunk``).
    Concurrent requests for one app share one wait. Chunks of apps nobody asked for are ignored, since
    chunks are broadcast to the whole channel.
    """

    def __init__(
        self,
        publish_request: Callable[[str], Awaitable[None]],
        *,
        assembler: ChunkAssembler | None = None,
        timeout_s: float = DEFAULT_CHUNK_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish_request
        self._assembler = assembler or ChunkAssembler()
        self._timeout_s = timeout_s
        self._clock = clock
        self._waiters: dict[str, asyncio.Future[bytes]] = {}
        self._users: dict[str, int] = {}  # requests awaiting each app's future

    async def request(self, app_name: str) -> bytes:
        future = self._waiters.get(app_name)
        first = future is None
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiters[app_name] = future
        self._users[app_name] = self._users.get(app_name, 0) + 1
        try:
            if first:
                await self._send_request(app_name, future)
            async with asyncio.timeout(self._timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            progress = self._assembler.progress(app_name)
            got = f"{progress[0]} of {progress[1]} chunks" if progress else "no chunks"
            raise DeliveryError(
                "mqtt", f"timed out after {self._timeout_s:g} s waiting for chunks of {app_name} (got {got})"
            ) from None
        finally:
            # Also on cancellation (an outer timeout): a stale waiter would swallow the next request.
            self._release(app_name, future)

    async def _send_request(self, app_name: str, future: asyncio.Future[bytes]) -> None:
        try:
            await self._publish(app_name)
        except Exception as exc:
            error = DeliveryError("mqtt", f"cannot publish the registry request for {app_name}: {exc}")
            if not future.done():
                future.set_exception(error)
            raise error from exc

    def on_payload(self, payload: bytes) -> None:
        """Feed one raw ``registry/server`` payload; a malformed one raises DeliveryError (log, drop)."""
        self.on_chunk(decode_chunk(payload))

    def on_chunk(self, chunk: ChunkMessage) -> None:
        self._assembler.expire(self._clock())
        future = self._waiters.get(chunk.app_name)
        if future is None or future.done():
            return
        if chunk.is_refusal:
            reason = chunk.error or "no reason given"
            self._finish(
                chunk.app_name, exc=DeliveryError("mqtt", f"registry refused {chunk.app_name}: {reason}")
            )
            return
        try:
            blob = self._assembler.add(
                chunk.app_name, chunk.chunk_idx, chunk.total_chunks, chunk.data, self._clock()
            )
        except DeliveryError as exc:
            self._finish(chunk.app_name, exc=exc)
            return
        if blob is not None:
            self._finish(chunk.app_name, result=blob)

    def _finish(
        self, app_name: str, *, result: bytes | None = None, exc: DeliveryError | None = None
    ) -> None:
        future = self._waiters.pop(app_name)
        self._assembler.discard(app_name)
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result or b"")

    def _release(self, app_name: str, future: asyncio.Future[bytes]) -> None:
        users = self._users.get(app_name, 1) - 1
        if users > 0:
            self._users[app_name] = users
            return
        self._users.pop(app_name, None)
        if self._waiters.get(app_name) is future:
            del self._waiters[app_name]
            self._assembler.discard(app_name)
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()  # mark it retrieved: every user has seen it by now
