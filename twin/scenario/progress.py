"""A dependency-free progress bar on stderr: redrawn in place on a terminal, a line every 10 % otherwise
(so CI logs stay short)."""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    def __init__(
        self, label: str, stream: TextIO | None = None, *, tty: bool | None = None, width: int = 30
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.width = width
        self.fraction = 0.0
        self._decile = -1
        self._closed = False

    def __call__(self, fraction: float) -> None:
        """Report progress in [0, 1]; values out of range are clamped, going backwards is ignored."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        if fraction < self.fraction or self._closed:
            return
        self.fraction = fraction
        if self.tty:
            filled = round(fraction * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {fraction:4.0%}")
            self.stream.flush()
        else:
            decile = int(fraction * 10 + 1e-9)
            if decile > self._decile:
                self._decile = decile
                self.stream.write(f"{self.label}: {decile * 10}%\n")
                self.stream.flush()

    def close(self) -> None:
        if self._closed:
            return
        self(1.0)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        self._closed = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
