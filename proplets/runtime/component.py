"""Bridge between wasmtime.component values/types and the neutral WAVE model in `wave.py`."""

from __future__ import annotations

from typing import Any

from wasmtime import component as cm

from proplets.runtime import wave
from proplets.runtime.wave import Case, WaveType

_PRIMS: dict[type, str] = {
    cm.Bool: "bool",
    cm.S8: "s8",
    cm.S16: "s16",
    cm.S32: "s32",
    cm.S64: "s64",
    cm.U8: "u8",
    cm.U16: "u16",
    cm.U32: "u32",
    cm.U64: "u64",
    cm.F32: "f32",
    cm.F64: "f64",
    cm.Char: "char",
    cm.String: "string",
}


class UnsupportedComponentType(ValueError):
    pass


def to_wave_type(t: Any) -> WaveType:
    prim = _PRIMS.get(type(t))
    if prim is not None:
        return wave.Prim(prim)
    if isinstance(t, cm.ListType):
        return wave.ListT(to_wave_type(t.element))
    if isinstance(t, cm.RecordType):
        return wave.RecordT(tuple((n, to_wave_type(ft)) for n, ft in t.fields))
    if isinstance(t, cm.TupleType):
        return wave.TupleT(tuple(to_wave_type(e) for e in t.elements))
    if isinstance(t, cm.OptionType):
        return wave.OptionT(to_wave_type(t.payload))
    if isinstance(t, cm.ResultType):
        return wave.ResultT(_opt(t.ok), _opt(t.err))
    if isinstance(t, cm.EnumType):
        return wave.EnumT(tuple(t.names))
    if isinstance(t, cm.FlagsType):
        return wave.FlagsT(tuple(t.names))
    if isinstance(t, cm.VariantType):
        return wave.VariantT(tuple((n, _opt(ct)) for n, ct in t.cases))
    raise UnsupportedComponentType(
        f"component value type {type(t).__name__} (resources, streams, futures) cannot be passed as WAVE text"
    )


def _opt(t: Any | None) -> WaveType | None:
    return None if t is None else to_wave_type(t)


def _cases(t: Any) -> list[tuple[str, Any | None]]:
    if isinstance(t, cm.OptionType):
        return [("none", None), ("some", t.payload)]
    if isinstance(t, cm.ResultType):
        return [("ok", t.ok), ("err", t.err)]
    return list(t.cases)


def lower(value: Any, t: Any) -> Any:
    """Neutral WAVE value → what wasmtime-py's `Func.__call__` accepts for type `t`."""
    if isinstance(t, cm.ListType):
        if isinstance(t.element, cm.U8):
            return bytes(value)
        return [lower(v, t.element) for v in value]
    if isinstance(t, cm.RecordType):
        record = cm.Record()
        for name, ft in t.fields:
            setattr(record, name, lower(value[name], ft))
        return record
    if isinstance(t, cm.TupleType):
        return tuple(lower(v, et) for v, et in zip(value, t.elements, strict=True))
    if isinstance(t, cm.FlagsType):
        return set(value)
    if isinstance(t, cm.OptionType | cm.ResultType | cm.VariantType):
        assert isinstance(value, Case)
        payload_t = dict(_cases(t))[value.tag]
        payload = None if payload_t is None else lower(value.payload, payload_t)
        # wasmtime-py wants a Variant only when cases are ambiguous by Python type (stack-notes §3e)
        return cm.Variant(value.tag, payload) if t._tagged() else payload
    return value


def lift(value: Any, t: Any) -> Any:
    """wasmtime-py result value → neutral WAVE value."""
    if isinstance(t, cm.ListType):
        if isinstance(value, bytes | bytearray):
            return list(value)
        return [lift(v, t.element) for v in value]
    if isinstance(t, cm.RecordType):
        return {name: lift(getattr(value, name), ft) for name, ft in t.fields}
    if isinstance(t, cm.TupleType):
        return tuple(lift(v, et) for v, et in zip(value, t.elements, strict=True))
    if isinstance(t, cm.FlagsType):
        return frozenset(value)
    if isinstance(t, cm.OptionType | cm.ResultType | cm.VariantType):
        cases = _cases(t)
        if isinstance(value, cm.Variant):
            payload_t = dict(cases)[value.tag]
            return Case(value.tag, None if payload_t is None else lift(value.payload, payload_t))
        return _untagged_case(value, cases)
    return value


def _untagged_case(value: Any, cases: list[tuple[str, Any | None]]) -> Case:
    # exact type first: bool is an int subclass, and wasmtime treats {bool} and {int} as disjoint
    for exact in (True, False):
        for name, ct in cases:
            if ct is None:
                if value is None:
                    return Case(name)
                continue
            classes: set[type] = set()
            ct.add_classes(classes)
            if (type(value) in classes) if exact else isinstance(value, tuple(classes)):
                return Case(name, lift(value, ct))
    raise ValueError(f"cannot tell which case {value!r} belongs to")
