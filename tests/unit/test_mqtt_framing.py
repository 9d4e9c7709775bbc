"""The MQTT reader's framing (_frame): a packet is taken whole from the read buffer only when all of
it is there; anything else is left to paho's own reader."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.adapters.mqtt import _frame
from tests.support.mqtt_packets import packet


def test_a_whole_packet_is_framed_with_its_body() -> None:
    data = b"junk" + packet(0x30, b"\x00\x01tpayload") + b"next"
    assert _frame(data, 4) == (0x30, 6, 6 + 10)
    assert data[6:16] == b"\x00\x01tpayload"


def test_lengths_of_one_to_four_bytes() -> None:
    for size in (0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152):
        data = packet(0x40, bytes(size))
        command, start, end = _frame(data, 0) or (0, 0, 0)
        assert (command, end - start, end) == (0x40, size, len(data))


@given(st.binary(max_size=300), st.data())
def test_a_packet_cut_anywhere_is_not_framed(body: bytes, data: st.DataObject) -> None:
    whole = packet(0x32, body)
    cut = data.draw(st.integers(0, len(whole) - 1))
    assert _frame(whole[:cut], 0) is None
    assert _frame(whole + b"\x30", 0) == (0x32, len(whole) - len(body), len(whole))


def test_a_length_longer_than_four_bytes_is_left_to_paho() -> None:
    assert _frame(b"\x30\xff\xff\xff\xff\x01" + bytes(64), 0) is None
