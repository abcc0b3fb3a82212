"""The client-frame mask check, over frames split at every possible byte."""

from __future__ import annotations

import os
import struct

import pytest

from gateway.http.ws_frames import MaskCheck


def frame(payload: bytes, masked: bool = True, opcode: int = 0x2) -> bytes:
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, (0x80 if masked else 0) | size])
    elif size < 65536:
        head = bytes([0x80 | opcode, (0x80 if masked else 0) | 126]) + struct.pack(">H", size)
    else:
        head = bytes([0x80 | opcode, (0x80 if masked else 0) | 127]) + struct.pack(">Q", size)
    return head + (os.urandom(4) if masked else b"") + payload


STREAM = frame(b"hi") + frame(b"x" * 300) + frame(b"y" * 70000) + frame(b"", opcode=0x9)


@pytest.mark.parametrize("step", [1, 2, 3, 7, 13, 1000, len(STREAM)])
def test_masked_frames_pass_however_they_are_split(step: int) -> None:
    check = MaskCheck()
    assert all(check.feed(STREAM[i:i + step]) for i in range(0, len(STREAM), step))


@pytest.mark.parametrize("step", [1, 2, 5, 100, 100_000])
def test_an_unmasked_frame_is_caught_after_masked_ones(step: int) -> None:
    data = STREAM + frame(b"bad", masked=False)
    check = MaskCheck()
    verdicts = [check.feed(data[i:i + step]) for i in range(0, len(data), step)]
    # caught in the piece holding the bad frame's second byte (the mask bit), not before
    assert verdicts.index(False) == (len(STREAM) + 1) // step


def test_a_masked_payload_that_looks_like_an_unmasked_header_is_skipped() -> None:
    check = MaskCheck()
    assert check.feed(frame(bytes([0x82, 0x05]) * 100))
