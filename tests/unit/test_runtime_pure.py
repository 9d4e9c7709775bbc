"""Pure parts of the runtime: input conversion, WAVE text, binary inspection, device budget, cache."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from proplets.runtime import wave
from proplets.runtime.budget import ESP32S3_ZEPHYR_BENCH, Admission, BudgetConfig, DeviceBudget, Refusal
from proplets.runtime.cache import ArtifactCache
from proplets.runtime.inputs import InputError, convert_inputs, format_value
from proplets.runtime.wasmbin import WasmFormatError, is_component, memory_declarations, memory_requirements
from proplets.runtime.wave import (
    Case,
    EnumT,
    FlagsT,
    ListT,
    OptionT,
    Prim,
    RecordT,
    ResultT,
    TupleT,
    VariantT,
)

# -- core inputs ------------------------------------------------------------------------------------


def test_inputs_convert_strings_and_numbers_per_type() -> None:
    assert convert_inputs("f", ["i32", "i64", "f32", "f64"], ["-7", 2**40, "1.5", 3]) == [-7, 2**40, 1.5, 3.0]


@pytest.mark.parametrize(
    ("value", "ty"), [("2147483648", "i32"), (-(2**31) - 1, "i32"), (2**63, "i64"), ("1e39", "f32")]
)
def test_inputs_out_of_range_are_refused_not_wrapped(value: object, ty: str) -> None:
    with pytest.raises(InputError, match="out of range"):
        convert_inputs("f", [ty], [value])  # type: ignore[list-item]


def test_inputs_bad_text_count_and_types_are_named() -> None:
    with pytest.raises(InputError, match=r"input 0 \('x'\).*i32.*not a decimal integer"):
        convert_inputs("f", ["i32"], ["x"])
    with pytest.raises(InputError, match="not an integer"):
        convert_inputs("f", ["i32"], [1.5])
    with pytest.raises(InputError, match=r"'f' expects 2 argument\(s\) \(i32, i32\), got 3"):
        convert_inputs("f", ["i32", "i32"], [1, 2, 3])
    with pytest.raises(InputError, match="unsupported parameter type v128"):
        convert_inputs("f", ["v128"], [1])
    with pytest.raises(InputError, match="expected a number"):
        convert_inputs("f", ["i32"], [True])


def test_results_formatted_like_rust_display() -> None:
    assert format_value(42) == "42"
    assert format_value(2.0, "f64") == "2"
    assert format_value(0.1, "f32") == "0.1"
    assert format_value(math.nan, "f64") == "NaN"
    assert format_value(-math.inf, "f64") == "-inf"


# -- WAVE -------------------------------------------------------------------------------------------

POINT = RecordT((("x", Prim("s32")), ("label", OptionT(Prim("string")))))


@pytest.mark.parametrize(
    ("text", "ty", "value"),
    [
        ("-5", Prim("s8"), -5),
        ("true", Prim("bool"), True),
        ("nan", Prim("f64"), None),
        ("'\\u{1F600}'", Prim("char"), "\U0001f600"),
        ('"a\\"b\\n"', Prim("string"), 'a"b\n'),
        ("[1, 2, 3,]", ListT(Prim("u16")), [1, 2, 3]),
        ('(1, "x")', TupleT((Prim("u8"), Prim("string"))), (1, "x")),
        ("{x: 3}", POINT, {"x": 3, "label": Case("none")}),
        ('{ label: some("p"), x: -1 }', POINT, {"x": -1, "label": Case("some", "p")}),
        ("ok(3)", ResultT(Prim("u32"), Prim("string")), Case("ok", 3)),
        ("err", ResultT(Prim("u32"), None), Case("err")),
        ("green", EnumT(("red", "green")), "green"),
        ("{}", FlagsT(("a", "b")), frozenset()),
        ("{b, a}", FlagsT(("a", "b")), frozenset({"a", "b"})),
        ("circle(2.5)", VariantT((("circle", Prim("f32")), ("none-shape", None))), Case("circle", 2.5)),
        ("some(none)", OptionT(OptionT(Prim("u8"))), Case("some", Case("none"))),
    ],
)
def test_wave_parses_against_type(text: str, ty: wave.WaveType, value: object) -> None:
    parsed = wave.parse(text, ty)
    if value is None:
        assert math.isnan(parsed)
    else:
        assert parsed == value


@pytest.mark.parametrize(
    ("text", "ty"),
    [
        ('{x: 1, y: some("é\\n")}', RecordT((("x", Prim("u64")), ("y", OptionT(Prim("string")))))),
        ('[ok(1), err("no")]', ListT(ResultT(Prim("s32"), Prim("string")))),
        ("(-inf, 0.1, 'q')", TupleT((Prim("f64"), Prim("f32"), Prim("char")))),
        ("{read, exec}", FlagsT(("read", "write", "exec"))),
        ("%none", VariantT((("none", None), ("some-x", Prim("bool"))))),
        ("{:}", RecordT(())),
    ],
)
def test_wave_round_trips(text: str, ty: wave.WaveType) -> None:
    assert wave.format_value(wave.parse(text, ty), ty) == text


@pytest.mark.parametrize(
    ("text", "ty", "message"),
    [
        ("256", Prim("u8"), "out of range"),
        ("1.5", Prim("s32"), "expected an integer"),
        ("{y: 1}", POINT, "unknown field 'y'"),
        ("{label: none}", POINT, "missing field 'x'"),
        ("purple", EnumT(("red",)), "unknown enum case 'purple'"),
        ("some", OptionT(Prim("u8")), "expected '\\('"),
        ("(1, 2)", TupleT((Prim("u8"),)), "expected 1 tuple element"),
        ('"open', Prim("string"), "unterminated"),
        ("1 2", Prim("u8"), "trailing"),
        ("'ab'", Prim("char"), "exactly one character"),
    ],
)
def test_wave_errors_say_what_and_where(text: str, ty: wave.WaveType, message: str) -> None:
    with pytest.raises(wave.WaveError, match=message):
        wave.parse(text, ty)


# -- binary inspection ------------------------------------------------------------------------------


def _module(sections: bytes) -> bytes:
    return b"\0asm\x01\0\0\0" + sections


def test_memory_section_min_max_and_imported_memory() -> None:
    mem = _module(bytes([5, 4, 1, 0x01, 2, 16]))  # memory section: 1 memory, min 2 max 16
    assert memory_requirements(mem) == (2, 16)
    # import "e" "m" (memory 3): section 2
    imp = bytes([1, 1]) + b"e" + bytes([1]) + b"m" + bytes([0x02, 0x00, 3])
    decls = memory_declarations(_module(bytes([2, len(imp)]) + imp))
    assert decls[0].imported and decls[0].min_pages == 3 and decls[0].max_pages is None
    assert memory_requirements(_module(b"")) == (0, 0)


def test_memory_parser_rejects_garbage_with_offsets() -> None:
    with pytest.raises(WasmFormatError, match="magic"):
        memory_declarations(b"ELF")
    with pytest.raises(WasmFormatError, match="runs past the end"):
        memory_declarations(_module(bytes([5, 40, 1])))
    with pytest.raises(WasmFormatError, match="component"):
        memory_declarations(b"\0asm\x0d\0\x01\0")
    assert is_component(b"\0asm\x0d\0\x01\0") and not is_component(_module(b""))


# -- device budget ----------------------------------------------------------------------------------


def test_budget_admits_until_heap_is_full_and_release_frees() -> None:
    budget = DeviceBudget(ESP32S3_ZEPHYR_BENCH)  # 182 KiB, 6 KiB per instance + memory (+ module once)
    first = budget.admit(module_bytes=300, memory_pages=1)
    second = budget.admit(module_bytes=300, memory_pages=1)
    third = budget.admit(module_bytes=300, memory_pages=1)
    assert isinstance(first, Admission) and isinstance(second, Admission)
    assert isinstance(third, Refusal) and "out of device memory" in third.reason  # §10: ~2 instances
    budget.release(first)
    assert isinstance(budget.admit(300, 1), Admission)
    with pytest.raises(KeyError):
        budget.release(first)


def test_budget_instance_limit_and_cost_breakdown() -> None:
    cfg = BudgetConfig(heap_bytes=10**9, max_instances=2)
    budget = DeviceBudget(cfg)
    a = budget.admit(1000, 0)
    assert isinstance(a, Admission) and a.cost_bytes == 1000 + 3 * 16 * 1024
    budget.admit(1000, 0)
    refusal = budget.admit(1000, 0)
    assert isinstance(refusal, Refusal) and "instance limit reached (2" in refusal.reason
    with pytest.raises(ValueError, match="heap_bytes"):
        BudgetConfig(heap_bytes=-1)


# -- cache (fake compile: the cache logic is independent of wasmtime) -------------------------------


def test_cache_memory_lru_disk_and_corrupt_file(tmp_path: Path) -> None:
    compiled: list[bytes] = []

    def compile_(b: bytes) -> str:
        compiled.append(b)
        return "art:" + b.decode()

    def ser(a: str) -> bytes:
        return a.encode()

    def de(b: bytes) -> str:
        return b.decode()

    c1: ArtifactCache[str] = ArtifactCache("ns", tmp_path, max_entries=1)
    assert c1.get(b"a", "module", compile_, ser, de) == "art:a"
    assert c1.get(b"a", "module", compile_, ser, de) == "art:a"
    assert c1.stats.memory_hits == 1 and compiled == [b"a"]
    c2: ArtifactCache[str] = ArtifactCache("ns", tmp_path)
    assert c2.get(b"a", "module", compile_, ser, de) == "art:a"
    assert c2.stats.disk_hits == 1 and compiled == [b"a"]
    path = c2.path(c2.key(b"a", "module"))
    assert path is not None
    path.write_bytes(path.read_bytes()[:-1] + b"!")  # flip the last byte
    c3: ArtifactCache[str] = ArtifactCache("ns", tmp_path)
    assert c3.get(b"a", "module", compile_, ser, de) == "art:a"
    assert c3.stats.corrupt_files == 1 and compiled == [b"a", b"a"]
    assert ArtifactCache("other-version", tmp_path).key(b"a", "module") != c3.key(b"a", "module")
