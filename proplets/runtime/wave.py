"""WAVE (WebAssembly Value Encoding) text for component-model values, parsed against a type (sans-I/O).

Types are a small AST (`Prim`, `ListT`, `RecordT`, ...). Values parse to neutral Python:
bool, int, float, str (char and string), list, dict (record, in field order), tuple, `Case`
(option: some/none, result: ok/err, variant), str (enum), frozenset[str] (flags).
Grammar follows wasm-wave: `[1, 2]`, `(1, "a")`, `{x: 1, y: 2}`, `{a, b}` (flags), `some(x)`/`none`,
`ok(x)`/`ok`/`err(x)`/`err`, `case(payload)`/`case`, `'c'`, `"s\\u{e9}"`, `nan`, `inf`, `-inf`.
Record fields of option type may be omitted (they are `none`).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Union

INT_RANGES = {
    "s8": (-(2**7), 2**7 - 1),
    "s16": (-(2**15), 2**15 - 1),
    "s32": (-(2**31), 2**31 - 1),
    "s64": (-(2**63), 2**63 - 1),
    "u8": (0, 2**8 - 1),
    "u16": (0, 2**16 - 1),
    "u32": (0, 2**32 - 1),
    "u64": (0, 2**64 - 1),
}
PRIMS = (*INT_RANGES, "bool", "f32", "f64", "char", "string")


@dataclass(frozen=True)
class Prim:
    name: str

    def __post_init__(self) -> None:
        if self.name not in PRIMS:
            raise ValueError(f"unknown primitive type {self.name!r}")


@dataclass(frozen=True)
class ListT:
    element: WaveType


@dataclass(frozen=True)
class RecordT:
    fields: tuple[tuple[str, WaveType], ...]


@dataclass(frozen=True)
class TupleT:
    elements: tuple[WaveType, ...]


@dataclass(frozen=True)
class OptionT:
    inner: WaveType


@dataclass(frozen=True)
class ResultT:
    ok: WaveType | None
    err: WaveType | None


@dataclass(frozen=True)
class EnumT:
    names: tuple[str, ...]


@dataclass(frozen=True)
class FlagsT:
    names: tuple[str, ...]


@dataclass(frozen=True)
class VariantT:
    cases: tuple[tuple[str, WaveType | None], ...]


WaveType = Union[Prim, ListT, RecordT, TupleT, OptionT, ResultT, EnumT, FlagsT, VariantT]  # noqa: UP007


@dataclass(frozen=True)
class Case:
    """A tagged value: option (`some`/`none`), result (`ok`/`err`) or variant case."""

    tag: str
    payload: Any = None


class WaveError(ValueError):
    """Malformed or ill-typed WAVE text; the message gives the offset and what was expected."""


def parse(text: str, ty: WaveType) -> Any:
    p = _Parser(text)
    value = p.value(ty)
    p.skip_ws()
    if p.pos != len(text):
        raise p.error("unexpected trailing text")
    return value


def type_name(ty: WaveType | None) -> str:
    match ty:
        case None:
            return "_"
        case Prim(name):
            return name
        case ListT(e):
            return f"list<{type_name(e)}>"
        case TupleT(es):
            return f"tuple<{', '.join(type_name(e) for e in es)}>"
        case OptionT(i):
            return f"option<{type_name(i)}>"
        case ResultT(ok, err):
            return f"result<{type_name(ok)}, {type_name(err)}>"
        case RecordT(fs):
            return "record{" + ", ".join(f"{n}: {type_name(t)}" for n, t in fs) + "}"
        case EnumT(ns):
            return "enum{" + ", ".join(ns) + "}"
        case FlagsT(ns):
            return "flags{" + ", ".join(ns) + "}"
        case VariantT(cs):
            return "variant{" + ", ".join(n if t is None else f"{n}({type_name(t)})" for n, t in cs) + "}"
    raise AssertionError(ty)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> WaveError:
        near = self.text[self.pos : self.pos + 20]
        return WaveError(f"{what} at offset {self.pos} (near {near!r}) in WAVE text {self.text!r}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise self.error(f"expected {ch!r}")
        self.pos += 1

    def accept(self, ch: str) -> bool:
        if self.peek() == ch:
            self.pos += 1
            return True
        return False

    def label(self) -> str:
        self.skip_ws()
        start = self.pos
        if self.pos < len(self.text) and self.text[self.pos] == "%":
            self.pos += 1
            start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] == "-"):
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a label")
        return self.text[start : self.pos]

    def token(self) -> str:
        self.skip_ws()
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] in "-+._"):
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a value")
        return self.text[start : self.pos]

    def comma_list(self, close: str, item: Any) -> list[Any]:
        out: list[Any] = []
        if self.accept(close):
            return out
        while True:
            out.append(item())
            if self.accept(close):
                return out
            self.expect(",")
            if self.accept(close):  # trailing comma
                return out

    def value(self, ty: WaveType) -> Any:
        match ty:
            case Prim(name):
                return self.prim(name)
            case ListT(element):
                self.expect("[")
                return self.comma_list("]", lambda: self.value(element))
            case TupleT(elements):
                return self.tuple_(ty, elements)
            case RecordT(fields):
                return self.record(ty, dict(fields))
            case FlagsT(names):
                self.expect("{")
                flags = self.comma_list("}", self.label)
                for f in flags:
                    if f not in names:
                        raise self.error(f"unknown flag {f!r} for {type_name(ty)}")
                return frozenset(flags)
            case EnumT(names):
                name = self.label()
                if name not in names:
                    raise self.error(f"unknown enum case {name!r} for {type_name(ty)}")
                return name
            case OptionT(inner):
                return self.cases(ty, (("none", None), ("some", inner)))
            case ResultT(ok, err):
                return self.cases(ty, (("ok", ok), ("err", err)))
            case VariantT(cases):
                return self.cases(ty, cases)
        raise AssertionError(ty)

    def tuple_(self, ty: TupleT, elements: tuple[WaveType, ...]) -> tuple[Any, ...]:
        self.expect("(")
        items: list[Any] = []
        for i, element in enumerate(elements):
            if i:
                self.expect(",")
            items.append(self.value(element))
        self.accept(",")
        if self.peek() != ")":
            raise self.error(f"expected {len(elements)} tuple element(s) for {type_name(ty)}")
        self.expect(")")
        return tuple(items)

    def record(self, ty: RecordT, fields: dict[str, WaveType]) -> dict[str, Any]:
        self.expect("{")
        got: dict[str, Any] = {}
        if self.accept(":"):  # `{:}` is the empty record
            self.expect("}")
        else:

            def field() -> None:
                name = self.label()
                if name not in fields:
                    raise self.error(f"unknown field {name!r} for {type_name(ty)}")
                if name in got:
                    raise self.error(f"duplicate field {name!r}")
                self.expect(":")
                got[name] = self.value(fields[name])

            self.comma_list("}", field)
        out: dict[str, Any] = {}
        for name, fty in fields.items():
            if name in got:
                out[name] = got[name]
            elif isinstance(fty, OptionT):
                out[name] = Case("none")
            else:
                raise self.error(f"missing field {name!r} for {type_name(ty)}")
        return out

    def cases(self, ty: WaveType, cases: tuple[tuple[str, WaveType | None], ...]) -> Case:
        name = self.label()
        table = dict(cases)
        if name not in table:
            raise self.error(f"unknown case {name!r} for {type_name(ty)}")
        payload_ty = table[name]
        if payload_ty is None:
            if self.peek() == "(":
                raise self.error(f"case {name!r} takes no payload")
            return Case(name)
        self.expect("(")
        payload = self.value(payload_ty)
        self.expect(")")
        return Case(name, payload)

    def prim(self, name: str) -> Any:
        if name == "string":
            return self.quoted('"')
        if name == "char":
            s = self.quoted("'")
            if len(s) != 1:
                raise self.error("a char literal holds exactly one character")
            return s
        tok = self.token()
        if name == "bool":
            if tok not in ("true", "false"):
                raise self.error("expected true or false")
            return tok == "true"
        if name in INT_RANGES:
            try:
                n = int(tok, 10)
            except ValueError:
                raise self.error(f"expected an integer for {name}") from None
            low, high = INT_RANGES[name]
            if not low <= n <= high:
                raise self.error(f"{n} is out of range [{low}, {high}] for {name}")
            return n
        specials = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
        if tok in specials:
            return specials[tok]
        try:
            f = float(tok)
        except ValueError:
            raise self.error(f"expected a number for {name}") from None
        if tok.lower() in ("infinity", "-infinity", "+inf", "+infinity") or "_" in tok:
            raise self.error(f"expected a number for {name}")
        if name == "f32" and math.isfinite(f) and abs(f) > 3.4028234663852886e38:
            raise self.error(f"{tok} is out of range for f32")
        return f

    def quoted(self, quote: str) -> str:
        self.expect(quote)
        out: list[str] = []
        while True:
            if self.pos >= len(self.text):
                raise self.error("unterminated literal")
            ch = self.text[self.pos]
            self.pos += 1
            if ch == quote:
                return "".join(out)
            if ch != "\\":
                out.append(ch)
                continue
            esc = self.text[self.pos : self.pos + 1]
            self.pos += 1
            simple = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}
            if esc in simple:
                out.append(simple[esc])
            elif esc == "u" and self.text[self.pos : self.pos + 1] == "{":
                end = self.text.find("}", self.pos)
                if end < 0:
                    raise self.error("unterminated \\u{...} escape")
                try:
                    out.append(chr(int(self.text[self.pos + 1 : end], 16)))
                except ValueError:
                    raise self.error("bad \\u{...} escape") from None
                self.pos = end + 1
            else:
                raise self.error(f"unknown escape \\{esc}")


def format_value(value: Any, ty: WaveType) -> str:
    match ty:
        case Prim("bool"):
            return "true" if value else "false"
        case Prim("string"):
            return _quote(value, '"')
        case Prim("char"):
            return _quote(value, "'")
        case Prim("f32" | "f64" as name):
            return _float(float(value), name == "f32")
        case Prim():
            return str(int(value))
        case ListT(element):
            return "[" + ", ".join(format_value(v, element) for v in value) + "]"
        case TupleT(elements):
            return "(" + ", ".join(format_value(v, t) for v, t in zip(value, elements, strict=True)) + ")"
        case RecordT(fields):
            if not fields:
                return "{:}"
            parts = [
                f"{_label(n)}: {format_value(value[n], t)}"
                for n, t in fields
                if not (isinstance(t, OptionT) and value[n] == Case("none"))
            ]
            return "{" + ", ".join(parts) + "}" if parts else "{:}"
        case FlagsT(names):
            return "{" + ", ".join(_label(n) for n in names if n in value) + "}"
        case EnumT():
            return _label(value)
        case OptionT(inner):
            return _case(value, {"none": None, "some": inner}, builtin=True)
        case ResultT(ok, err):
            return _case(value, {"ok": ok, "err": err}, builtin=True)
        case VariantT(cases):
            return _case(value, dict(cases), builtin=False)
    raise AssertionError(ty)


_KEYWORDS = {"true", "false", "some", "none", "ok", "err", "inf", "nan"}


def _label(name: str) -> str:
    return f"%{name}" if name in _KEYWORDS else name


def _case(value: Case, cases: dict[str, WaveType | None], *, builtin: bool) -> str:
    # option/result tags are keywords; a variant case that spells one must be escaped with `%`
    head = value.tag if builtin else _label(value.tag)
    payload_ty = cases[value.tag]
    if payload_ty is None:
        return head
    return f"{head}({format_value(value.payload, payload_ty)})"


def _quote(s: str, quote: str) -> str:
    out = []
    for ch in s:
        if ch in (quote, "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return quote + "".join(out) + quote


def _float(f: float, f32: bool) -> str:
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f32:
        target = struct.unpack("<f", struct.pack("<f", f))[0]
        for digits in range(1, 10):
            cand = float(f"{target:.{digits}g}")
            if struct.unpack("<f", struct.pack("<f", cand))[0] == target:
                f = cand
                break
    if f.is_integer() and abs(f) < 1e16:
        return str(int(f)) if not (f == 0 and math.copysign(1, f) < 0) else "-0"
    return repr(f)
