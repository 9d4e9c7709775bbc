"""The codec's single error type."""

from __future__ import annotations


class CodecError(Exception):
    """A payload or message that does not fit the wire protocol.

    ``topic`` is the MQTT topic (``""`` when unknown or when encoding), ``field`` a dotted path into the
    payload (``metadata.total_memory_bytes``, ``inputs[2]``; ``""`` means the payload as a whole) and
    ``reason`` says what is wrong in words a log reader understands.
    """

    def __init__(self, topic: str, field: str, reason: str) -> None:
        # Passing all three to Exception keeps the error picklable (it may cross a process boundary).
        super().__init__(topic, field, reason)
        self.topic = topic
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        where = self.topic or "<no topic>"
        what = self.field or "<payload>"
        return f"{where}: {what}: {self.reason}"
