"""The console parser: what a rig sees from a board's serial console, however the bytes arrive."""

from __future__ import annotations

import random

import pytest

from hil.console import (
    MAX_LINE,
    ConsoleEvent,
    ConsoleLine,
    ConsoleParser,
    format_event,
    format_status,
    parse_fields,
)

BOOT = b"[00:00:01.250,125] <inf> prop: boot version=0.1.0 reset=power_on board=esp32s3_devkitc\r\n"


def feed_all(data: bytes, chunk: int | None = None) -> list[ConsoleEvent | ConsoleLine]:
    parser = ConsoleParser()
    if chunk is None:
        return parser.feed(data, 1.0)
    out = []
    for i in range(0, len(data), chunk):
        out += parser.feed(data[i:i + chunk], 1.0)
    return out


def test_event_line_is_parsed_with_level_fields_and_board_uptime() -> None:
    [event] = feed_all(BOOT)
    assert isinstance(event, ConsoleEvent)
    assert (event.level, event.module, event.event) == ("inf", "prop", "boot")
    assert event.fields == {"version": "0.1.0", "reset": "power_on", "board": "esp32s3_devkitc"}
    assert event.uptime_s == pytest.approx(1.250125)
    assert event.t == 1.0


def test_quoted_values_and_escapes() -> None:
    line = (b'[00:00:02.000,000] <wrn> prop: task_end id=t1 ok=0 '
            b'error="trap: \\"unreachable\\" at 0x2a" duration_ms=12\n')
    [event] = feed_all(line)
    assert isinstance(event, ConsoleEvent)
    assert event.fields["error"] == 'trap: "unreachable" at 0x2a'
    assert event.int("duration_ms") == 12
    with pytest.raises(ValueError, match="no field 'result'"):
        event.int("result")


def test_byte_by_byte_equals_whole_and_lf_equals_crlf() -> None:
    stream = BOOT + b"[00:00:02.000,000] <inf> prop: heartbeat seq=1\r\nuart:~$ prop status\r\n" \
        b"status state=idle wifi=up mqtt=connected tasks=0 heap_free=1000 uptime_ms=5\r\nOK\r\n"
    def no_prompts(items: list[ConsoleEvent | ConsoleLine]) -> list[ConsoleEvent | ConsoleLine]:
        # A prompt is reported on its own only when the stream pauses right after it.
        return [i for i in items if not (isinstance(i, ConsoleLine) and i.kind == "prompt")]

    whole = feed_all(stream)
    assert no_prompts(feed_all(stream, chunk=1)) == whole
    assert no_prompts(feed_all(stream.replace(b"\r\n", b"\n"), chunk=7)) == whole
    assert [i.event if isinstance(i, ConsoleEvent) else i.kind for i in whole] == [
        "boot", "heartbeat", "echo", "status", "ok"]  # fmt: skip


def test_ansi_colours_are_stripped() -> None:
    [event] = feed_all(b"\x1b[1;33m[00:00:03.000,000] <wrn> prop: wifi_down reason=beacon_timeout\x1b[0m\r\n")
    assert isinstance(event, ConsoleEvent)
    assert (event.level, event.event, event.fields) == ("wrn", "wifi_down", {"reason": "beacon_timeout"})


def test_prompt_without_newline_then_echo_then_reply() -> None:
    parser = ConsoleParser()
    [prompt] = parser.feed(b"\x1b[1;32muart:~$ \x1b[m", 1.0)
    assert isinstance(prompt, ConsoleLine) and prompt.kind == "prompt"
    assert parser.feed(b"prop sta", 1.1) == []
    [echo, nf] = parser.feed(b"tus\r\nfoo: command not found\r\n", 1.2)
    assert isinstance(echo, ConsoleLine) and (echo.kind, echo.text) == ("echo", "prop status")
    assert isinstance(nf, ConsoleLine) and nf.kind == "not_found"


def test_log_line_redrawn_over_prompt_is_still_an_event() -> None:
    # Zephyr's shell erases the prompt (CR + erase-line), logs, then redraws prompt and input.
    items = feed_all(b"uart:~$ prop\r\x1b[K[00:00:04.000,000] <inf> prop: heartbeat seq=7\r\nuart:~$ prop")
    kinds = [i.event if isinstance(i, ConsoleEvent) else i.kind for i in items]
    assert kinds == ["echo", "heartbeat"]


def test_shell_replies_status_ok_error() -> None:
    items = feed_all(b"ERROR missing key: broker\r\nOK\r\n"
                     b"status state=running wifi=up mqtt=connected tasks=2 heap_free=9000 uptime_ms=77\r\n")
    error, ok, status = items
    assert isinstance(error, ConsoleLine) and (error.kind, error.text) == ("error", "missing key: broker")
    assert isinstance(ok, ConsoleLine) and ok.kind == "ok"
    assert isinstance(status, ConsoleEvent) and status.module == "shell"
    assert status.fields["state"] == "running" and status.int("tasks") == 2


def test_other_modules_and_malformed_prop_lines_are_kept_not_parsed() -> None:
    items = feed_all(b"[00:00:00.100,000] <err> wifi_esp32: scan failed\r\n"
                     b"[00:00:00.200,000] <wrn> prop: not provisioned: use prop provision\r\n"
                     b'[00:00:00.300,000] <inf> prop: task_end id=x error="unterminated\r\n'
                     b"ESP-ROM:esp32s3-20210327\r\n")
    lines = [i for i in items if isinstance(i, ConsoleLine)]
    assert len(lines) == len(items)
    assert [i.kind for i in lines] == ["log", "log", "log", "text"]
    assert lines[0].module == "wifi_esp32" and lines[0].level == "err"


def test_overlong_line_is_capped_and_reported_truncated() -> None:
    parser = ConsoleParser()
    items = parser.feed(b"A" * (MAX_LINE * 3), 1.0)
    assert len(items) == 1 and isinstance(items[0], ConsoleLine) and items[0].truncated
    assert len(items[0].text) == MAX_LINE
    assert parser.feed(b"B" * 5000, 1.1) == []  # still inside the same line: dropped
    after = parser.feed(b"tail\r\n" + BOOT, 1.2)
    assert [getattr(i, "event", None) for i in after] == ["boot"]


@pytest.mark.parametrize("value", ["", "plain", "two words", 'q"uote', "back\\slash", "k=v", "tab\there",
                                   "new\nline", "ünï"])
def test_formatter_and_parser_agree(value: str) -> None:
    line = format_event("task_end", {"id": "t", "ok": 1, "result": value, "v": value}, uptime_s=3725.5,
                        level="wrn")
    assert line.startswith("[01:02:05.500,000] <wrn> prop: task_end ")
    [event] = feed_all(line.encode() + b"\r\n")
    assert isinstance(event, ConsoleEvent)
    expected = value.replace("\n", " ").replace("\t", " ")
    assert event.fields["result"] == expected and event.fields["v"] == expected
    assert event.fields["result"] == parse_fields(format_status({"result": value})[7:])["result"]


def test_formatter_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="bad event name 'Boot!'"):
        format_event("Boot!", {})
    with pytest.raises(ValueError, match="bad field key 'a b'"):
        format_event("boot", {"a b": 1})
    with pytest.raises(ValueError, match="bad level 'info'"):
        format_event("boot", {}, level="info")


def test_fuzz_random_bytes_never_raise_and_memory_stays_bounded() -> None:
    rng = random.Random(20261124)
    alphabet = list(range(256)) + [ord(c) for c in "\r\n\x1b[m=\" "] * 20
    parser = ConsoleParser()
    for round_ in range(300):
        junk = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))
        if round_ % 10 == 0:
            junk += BOOT  # real lines keep coming through the noise
        for item in parser.feed(junk, float(round_)):
            assert isinstance(item, ConsoleEvent | ConsoleLine)
        assert len(parser._buf) <= MAX_LINE
    parser.flush(301.0)
    # After noise, a clean line still parses.
    assert [i.event for i in parser.feed(b"\n" + BOOT, 302.0) if isinstance(i, ConsoleEvent)] == ["boot"]
