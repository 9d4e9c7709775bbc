"""Sans-I/O parser and formatter of the firmware's serial console (protocol: firmware/CONSOLE.md).

The parser is fed raw bytes as they arrive from a serial port, in any chunking, and returns what was
completed: `ConsoleEvent` for structured `prop` log lines and for the shell's `status` line,
`ConsoleLine` for everything else (other modules' logs, free text, prompts, command echo, OK/ERROR).
It never raises on input: a console is a noisy wire (boot ROM at another baud rate, partial lines
after a reset), and a rig must keep reading through it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

PROMPT = "uart:~$"
MAX_LINE = 1024
EVENT_MODULE = "prop"
LEVELS = ("inf", "wrn", "err", "dbg")
ALWAYS_QUOTED = frozenset({"result", "error"})

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_LOG = re.compile(
    r"^\[(\d+):(\d\d):(\d\d)\.(\d{3}),(\d{3})\]\s+<(inf|wrn|err|dbg)>\s+([A-Za-z0-9_.\-]+):\s?(.*)$"
)
_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_NOT_FOUND = re.compile(r"^(\S+): command not found$")


@dataclass(frozen=True)
class ConsoleEvent:
    """A structured line. `t` is the host time it completed; `uptime_s` the board's own stamp."""

    t: float
    level: str
    module: str
    event: str
    fields: dict[str, str]
    raw: str
    uptime_s: float | None = None

    def int(self, key: str) -> int:
        """The field as an integer; ValueError names the event and key when it is missing or not one."""
        value = self.fields.get(key)
        if value is None:
            raise ValueError(f"event {self.event!r} has no field {key!r}: {self.raw!r}")
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"event {self.event!r} field {key}={value!r} is not an integer") from None


@dataclass(frozen=True)
class ConsoleLine:
    """An unstructured line. kind: log | text | prompt | echo | ok | error | not_found."""

    t: float
    kind: str
    text: str
    level: str | None = None
    module: str | None = None
    truncated: bool = False


Item = ConsoleEvent | ConsoleLine


class FieldSyntaxError(ValueError):
    pass


def parse_fields(text: str) -> dict[str, str]:
    """Parse ` key=value key="quoted \\" value"` into a dict; FieldSyntaxError names the position."""
    fields: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        if text[i] == " ":
            i += 1
            continue
        m = _KEY.match(text, i)
        if m is None or m.end() >= n or text[m.end()] != "=":
            raise FieldSyntaxError(f"expected key=value at column {i}: {text[i:i + 20]!r}")
        key, i = m.group(), m.end() + 1
        if i < n and text[i] == '"':
            value, i = _quoted(text, i + 1)
        else:
            j = text.find(" ", i)
            j = n if j < 0 else j
            value, i = text[i:j], j
            if not value or '"' in value:
                raise FieldSyntaxError(f"bad bare value for {key!r}")
        fields[key] = value
    return fields


def _quoted(text: str, i: int) -> tuple[str, int]:
    out: list[str] = []
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            out.append(text[i + 1])
            i += 2
        elif ch == '"':
            if i + 1 < n and text[i + 1] != " ":
                raise FieldSyntaxError(f"text after closing quote at column {i + 1}")
            return "".join(out), i + 1
        else:
            out.append(ch)
            i += 1
    raise FieldSyntaxError("unterminated quoted value")


def format_value(value: object, *, quote: bool = False) -> str:
    """One value with the firmware's quoting (firmware/core/console.c: con_str / con_quoted)."""
    text = str(value)
    if not quote:
        quote = text == "" or any(c <= " " or c in '"=\x7f' for c in text)
    if not quote:
        return text
    body = "".join(
        "\\" + c if c in '"\\' else (" " if c < " " or c == "\x7f" else c) for c in text
    )
    return f'"{body}"'


def format_fields(fields: Mapping[str, object], quoted: frozenset[str] = ALWAYS_QUOTED) -> str:
    for key in fields:
        if not _KEY.fullmatch(key):
            raise ValueError(f"bad field key {key!r}: must match {_KEY.pattern}")
    return "".join(f" {k}={format_value(v, quote=k in quoted)}" for k, v in fields.items())


def format_timestamp(uptime_s: float) -> str:
    us = max(0, round(uptime_s * 1_000_000))
    s, us = divmod(us, 1_000_000)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"[{h:02d}:{m:02d}:{s:02d}.{us // 1000:03d},{us % 1000:03d}]"


def format_event(event: str, fields: Mapping[str, object] | None = None, *, uptime_s: float = 0.0,
                 level: str = "inf", module: str = EVENT_MODULE) -> str:
    """A log line as the firmware prints it, without the line terminator."""
    if not _EVENT_NAME.fullmatch(event):
        raise ValueError(f"bad event name {event!r}: must match {_EVENT_NAME.pattern}")
    if level not in LEVELS:
        raise ValueError(f"bad level {level!r}: expected one of {', '.join(LEVELS)}")
    return f"{format_timestamp(uptime_s)} <{level}> {module}: {event}{format_fields(fields or {})}"


def format_status(fields: Mapping[str, object]) -> str:
    """The shell's `prop status` reply line."""
    return "status" + format_fields(fields)


def clean(raw: str) -> str:
    """Strip ANSI sequences and control bytes (tabs kept) from one decoded line."""
    return _CONTROL.sub("", _ANSI.sub("", raw))


def _uptime(m: re.Match[str]) -> float:
    h, mi, s, ms, us = (int(m.group(k)) for k in range(1, 6))
    return h * 3600 + mi * 60 + s + ms / 1000 + us / 1_000_000


def parse_line(text: str, t: float, *, after_prompt: bool = False, truncated: bool = False) -> Item:
    """Classify one cleaned line (no terminator). Pure; never raises."""
    m = _LOG.match(text)
    if m is not None:
        level, module, body = m.group(6), m.group(7), m.group(8)
        if module == EVENT_MODULE and not truncated:
            name = _EVENT_NAME.match(body)
            if name is not None and (name.end() == len(body) or body[name.end()] == " "):
                try:
                    fields = parse_fields(body[name.end():])
                except FieldSyntaxError:
                    pass
                else:
                    return ConsoleEvent(t, level, module, name.group(), fields, text, _uptime(m))
        return ConsoleLine(t, "log", body, level, module, truncated)
    stripped = text.strip()
    if stripped.startswith(PROMPT):
        command = stripped[len(PROMPT):].strip()
        return ConsoleLine(t, "echo" if command else "prompt", command, truncated=truncated)
    if after_prompt and stripped:
        return ConsoleLine(t, "echo", stripped, truncated=truncated)
    if stripped == "OK":
        return ConsoleLine(t, "ok", stripped)
    if stripped == "ERROR" or stripped.startswith("ERROR "):
        return ConsoleLine(t, "error", stripped[6:].strip(), truncated=truncated)
    if _NOT_FOUND.match(stripped):
        return ConsoleLine(t, "not_found", stripped, truncated=truncated)
    if stripped.startswith("status ") and not truncated:
        try:
            return ConsoleEvent(t, "", "shell", "status", parse_fields(stripped[7:]), text)
        except FieldSyntaxError:
            pass
    return ConsoleLine(t, "text", text, truncated=truncated)


@dataclass
class ConsoleParser:
    """Incremental parser. `feed(data, now)` returns the items completed by `data`, in order."""

    max_line: int = MAX_LINE
    _buf: bytearray = field(default_factory=bytearray)
    _discarding: bool = False
    _after_prompt: bool = False

    def feed(self, data: bytes, now: float) -> list[Item]:
        out: list[Item] = []
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if self._discarding:
                self._discarding = False
                continue
            self._emit(line, now, out, truncated=False)
        if len(self._buf) > self.max_line and not self._discarding:
            # A line that never ends (binary garbage, wrong baud rate) must not grow memory without
            # bound: report what fits, then drop bytes up to the next newline.
            self._emit(bytes(self._buf[: self.max_line]), now, out, truncated=True)
            self._discarding = True
        if self._discarding:
            self._buf.clear()
        else:
            self._check_prompt(now, out)
        return out

    def flush(self, now: float) -> list[Item]:
        """Complete a pending partial line (end of stream)."""
        out: list[Item] = []
        if self._buf and not self._discarding:
            self._emit(bytes(self._buf), now, out, truncated=False)
        self._buf.clear()
        self._discarding = False
        return out

    @property
    def pending(self) -> str:
        """The cleaned text of the incomplete line (for timeout messages)."""
        return clean(self._buf.decode("utf-8", "replace"))

    def _check_prompt(self, now: float, out: list[Item]) -> None:
        # The prompt has no newline; report it once the board waits for input, so a caller can type.
        segments = [s for s in self.pending.split("\r") if s.strip()]
        if segments and segments[-1].strip() == PROMPT:
            self._buf.clear()
            out.append(ConsoleLine(now, "prompt", ""))
            self._after_prompt = True

    def _emit(self, line: bytes, now: float, out: list[Item], *, truncated: bool) -> None:
        text = line.decode("utf-8", "replace")
        # A lone CR returns to column 0: the shell redraws its prompt around log lines that way.
        for segment in _ANSI.sub("", text).split("\r"):
            cleaned = _CONTROL.sub("", segment)
            if not cleaned.strip():
                continue
            item = parse_line(cleaned, now, after_prompt=self._after_prompt, truncated=truncated)
            self._after_prompt = item.kind == "prompt" if isinstance(item, ConsoleLine) else False
            out.append(item)
