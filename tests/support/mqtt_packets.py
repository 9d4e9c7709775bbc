"""MQTT packets as bytes, for tests that speak the protocol over a raw socket or feed the reader."""

from __future__ import annotations

import asyncio


def packet(command: int, body: bytes) -> bytes:
    """The fixed-header byte, the remaining length (MQTT's 1-4 byte varint), then ``body``."""
    length, size = bytearray(), len(body)
    while True:
        byte, size = size & 0x7F, size >> 7
        length.append(byte | (0x80 if size else 0))
        if not size:
            return bytes([command, *length]) + body


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(fixed-header byte, body) of the next packet on ``reader``."""
    command = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return command, await reader.readexactly(length)
