"""Compiled-artifact cache: LRU in memory, serialized `.cwasm` on disk.

Keyed by sha256 of the wasm bytes + artifact kind + wasmtime version + Engine config flags, because
wasmtime refuses (safely) artifacts from another config, and a version change invalidates them.
Disk files carry a sha256 of their own payload: wasmtime's deserialize trusts its input, so a file
that does not match is treated as corrupt and recompiled, never loaded.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")
_DIGEST = 32


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    compiles: int = 0
    corrupt_files: int = 0


class ArtifactCache(Generic[T]):
    def __init__(self, namespace: str, cache_dir: Path | None, max_entries: int = 64) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.namespace = namespace
        self.cache_dir = cache_dir
        self.max_entries = max_entries
        self.stats = CacheStats()
        self._entries: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()  # where this thread's last get() found its artifact
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)

    def key(self, wasm: bytes, kind: str) -> str:
        prefix = f"{self.namespace}|{kind}|".encode()
        return hashlib.sha256(prefix + hashlib.sha256(wasm).digest()).hexdigest()

    def get(
        self,
        wasm: bytes,
        kind: str,
        compile_: Callable[[bytes], T],
        serialize: Callable[[T], bytes],
        deserialize: Callable[[bytes], T],
        key: str | None = None,
    ) -> T:
        """The artifact of ``wasm`` (``key``: its ``self.key(wasm, kind)`` when the caller has it)."""
        key = key or self.key(wasm, kind)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self.stats.memory_hits += 1
                self._local.last = "memory cache hit"
                return hit
        artifact = self._load(key, deserialize)
        self._local.last = "disk cache hit"
        if artifact is None:
            self._local.last = "compiled (cache miss)"
            artifact = compile_(wasm)  # outside the lock: compiles of different modules run in parallel
            with self._lock:
                self.stats.compiles += 1
            self._store(key, serialize(artifact))
        with self._lock:
            self._entries[key] = artifact
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return artifact

    def count_memory_hit(self) -> None:
        """A caller served this thread from its own in-memory cache keyed by ``key`` (counted as ours)."""
        with self._lock:
            self.stats.memory_hits += 1
        self._local.last = "memory cache hit"

    def last_source(self) -> str:
        """How the calling thread's last ``get`` was served: memory/disk cache hit, or compiled."""
        return str(getattr(self._local, "last", ""))

    def path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key}.cwasm"

    def _load(self, key: str, deserialize: Callable[[bytes], T]) -> T | None:
        path = self.path(key)
        if path is None:
            return None
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        digest, payload = blob[:_DIGEST], blob[_DIGEST:]
        if len(digest) == _DIGEST and hashlib.sha256(payload).digest() == digest:
            try:
                artifact = deserialize(payload)
            except Exception:  # a well-formed but incompatible artifact: recompile and overwrite
                pass
            else:
                with self._lock:
                    self.stats.disk_hits += 1
                return artifact
        with self._lock:
            self.stats.corrupt_files += 1
        return None

    def _store(self, key: str, payload: bytes) -> None:
        path = self.path(key)
        if path is None:
            return
        assert self.cache_dir is not None
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-", suffix=".cwasm")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(hashlib.sha256(payload).digest())
                f.write(payload)
            os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
        except OSError:
            Path(tmp).unlink(missing_ok=True)  # a full disk only costs us the warm start
