"""HAL storage: containers (directories) of objects (files) under one task's root, with a byte quota.

Names are single path components: no `/`, `\\`, `..`, NUL or leading dot, so nothing a guest names can
leave the root; the resolved path is checked as well (a symlink planted in the root is not followed out).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from proplets.runtime.hal.errors import HalError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+=,-]{0,254}$")


@dataclass(frozen=True)
class ObjectMeta:
    size: int
    created_at: int
    content_type: str = "application/octet-stream"


class Storage:
    def __init__(self, root: Path, quota_bytes: int) -> None:
        self.root = root
        self.quota_bytes = quota_bytes
        self._containers: dict[int, Path] = {}
        self._objects = 0

    def _check_name(self, what: str, name: str) -> None:
        if not _NAME.match(name) or ".." in name:
            raise HalError(
                f"invalid {what} name {name!r}: use letters, digits and _.@+=,- "
                "(no path separators, no '..', no leading dot)"
            )

    def _inside(self, path: Path) -> Path:
        base = self.root.resolve()
        real = path.resolve()
        if real != base and base not in real.parents:
            raise HalError(f"{path.name!r} resolves outside the task's storage")
        return real

    def create_container(self, name: str) -> int:
        self._check_name("container", name)
        path = self._inside(self.root / name)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            raise HalError(f"container {name!r} already exists") from None
        return self._handle(path)

    def open_container(self, name: str) -> int:
        self._check_name("container", name)
        path = self._inside(self.root / name)
        if not path.is_dir():
            raise HalError(f"container {name!r} does not exist")
        return self._handle(path)

    def _handle(self, path: Path) -> int:
        handle = len(self._containers) + 1
        self._containers[handle] = path
        return handle

    def _container(self, handle: int) -> Path:
        path = self._containers.get(handle)
        if path is None or not path.is_dir():
            raise HalError(f"no open container with handle {handle}")
        return path

    def delete_container(self, handle: int) -> None:
        path = self._container(handle)
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
        del self._containers[handle]

    def _object(self, handle: int, key: str) -> Path:
        self._check_name("object key", key)
        return self._inside(self._container(handle) / key)

    def used_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
        return total

    def store_object(self, handle: int, key: str, data: bytes) -> int:
        path = self._object(handle, key)
        old = path.stat().st_size if path.exists() else 0
        after = self.used_bytes() - old + len(data)
        if after > self.quota_bytes:
            raise HalError(
                f"storage quota exceeded: storing {len(data)} bytes would use {after} of {self.quota_bytes}"
            )
        path.write_bytes(data)
        self._objects += 1
        return self._objects

    def retrieve_object(self, handle: int, key: str) -> bytes:
        path = self._object(handle, key)
        if not path.is_file():
            raise HalError(f"object {key!r} does not exist")
        return path.read_bytes()

    def delete_object(self, handle: int, key: str) -> None:
        path = self._object(handle, key)
        if not path.is_file():
            raise HalError(f"object {key!r} does not exist")
        path.unlink()

    def list_objects(self, handle: int) -> list[str]:
        return sorted(p.name for p in self._container(handle).iterdir() if p.is_file())

    def metadata(self, handle: int, key: str) -> ObjectMeta:
        path = self._object(handle, key)
        if not path.is_file():
            raise HalError(f"object {key!r} does not exist")
        st = path.stat()
        return ObjectMeta(st.st_size, int(st.st_mtime))
