"""Read facts from Wasm binaries without wasmtime (sans-I/O): kind, declared linear memory.

The manager uses `memory_requirements` for memory-aware placement, the device models for the WAMR
budget; both must work on any host, so this parses the binary format directly.
"""

from __future__ import annotations

from dataclasses import dataclass

WASM_MAGIC = b"\0asm"
PAGE_BYTES = 65536


class WasmFormatError(ValueError):
    """The bytes are not a well-formed Wasm binary; the message says where it broke."""


def is_wasm(data: bytes) -> bool:
    return data[:4] == WASM_MAGIC


def is_component(data: bytes) -> bool:
    """Upstream's test (§8.3): `\\0asm` followed by byte 4 == 0x0d (component layer)."""
    return len(data) >= 8 and data[:4] == WASM_MAGIC and data[4] == 0x0D


@dataclass(frozen=True)
class MemoryDecl:
    min_pages: int
    max_pages: int | None
    imported: bool = False
    shared: bool = False
    memory64: bool = False

    @property
    def min_bytes(self) -> int:
        return self.min_pages * PAGE_BYTES

    @property
    def max_bytes(self) -> int | None:
        return None if self.max_pages is None else self.max_pages * PAGE_BYTES


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise WasmFormatError(f"unexpected end of data at offset {self.pos}")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uleb(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise WasmFormatError(f"LEB128 too long at offset {self.pos}")

    def skip(self, n: int) -> None:
        if self.pos + n > self.end:
            raise WasmFormatError(f"unexpected end of data at offset {self.pos} (wanted {n} bytes)")
        self.pos += n

    def name(self) -> None:
        self.skip(self.uleb())

    def limits(self, imported: bool) -> MemoryDecl:
        flags = self.byte()
        if flags & ~0x07:
            raise WasmFormatError(f"unsupported memory limits flags 0x{flags:02x} at offset {self.pos - 1}")
        minimum = self.uleb()
        maximum = self.uleb() if flags & 0x01 else None
        return MemoryDecl(minimum, maximum, imported, bool(flags & 0x02), bool(flags & 0x04))


def memory_declarations(data: bytes) -> list[MemoryDecl]:
    """Every memory a core module declares or imports, in index order."""
    if not is_wasm(data):
        raise WasmFormatError("not a Wasm binary (missing \\0asm magic)")
    if is_component(data):
        raise WasmFormatError("a component, not a core module: memory is declared by its inner modules")
    if len(data) < 8:
        raise WasmFormatError("truncated header")
    r = _Reader(data, 8)
    found: list[MemoryDecl] = []
    while r.pos < r.end:
        section = r.byte()
        size = r.uleb()
        body_end = r.pos + size
        if body_end > r.end:
            raise WasmFormatError(f"section {section} at offset {r.pos} runs past the end of the data")
        if section == 2:
            found.extend(_imported_memories(_Reader(data, r.pos, body_end)))
        elif section == 5:
            s = _Reader(data, r.pos, body_end)
            found.extend(s.limits(imported=False) for _ in range(s.uleb()))
        r.pos = body_end
    return found


def _imported_memories(r: _Reader) -> list[MemoryDecl]:
    out = []
    for _ in range(r.uleb()):
        r.name()
        r.name()
        kind = r.byte()
        if kind == 0x00:  # function: type index
            r.uleb()
        elif kind == 0x01:  # table: reftype + limits
            reftype = r.byte()
            if reftype in (0x63, 0x64):  # (ref null? ht) from the GC proposal
                r.uleb()
            r.limits(imported=True)
        elif kind == 0x02:
            out.append(r.limits(imported=True))
        elif kind == 0x03:  # global: valtype + mutability
            if r.byte() in (0x63, 0x64):
                r.uleb()
            r.byte()
        elif kind == 0x04:  # tag: attribute + type index
            r.byte()
            r.uleb()
        else:
            raise WasmFormatError(f"unknown import kind 0x{kind:02x} at offset {r.pos - 1}")
    return out


def memory_requirements(data: bytes) -> tuple[int, int | None]:
    """(minimum, maximum) linear-memory pages of a core module's first memory; (0, 0) if it has none."""
    memories = memory_declarations(data)
    if not memories:
        return (0, 0)
    return (memories[0].min_pages, memories[0].max_pages)


def custom_section_names(data: bytes) -> list[str]:
    """Names of a core module's custom sections (``go:buildid`` marks the Go toolchain), in order."""
    if not is_wasm(data) or is_component(data) or len(data) < 8:
        return []
    r = _Reader(data, 8)
    names: list[str] = []
    while r.pos < r.end:
        section = r.byte()
        size = r.uleb()
        body_end = r.pos + size
        if body_end > r.end:
            raise WasmFormatError(f"section {section} at offset {r.pos} runs past the end of the data")
        if section == 0:
            s = _Reader(data, r.pos, body_end)
            length = s.uleb()
            start = s.pos
            s.skip(length)
            names.append(data[start : start + length].decode("utf-8", "replace"))
        r.pos = body_end
    return names
