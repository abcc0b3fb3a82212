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


# ---- FrameScanner: the rules the relay enforces on frame headers ------------------------------

from gateway.http.ws_frames import FrameScanner, close_frame  # noqa: E402


def scan(data: bytes, max_message: int = 1 << 20, step: int | None = None) -> int | None:
    scanner = FrameScanner(client=True, max_message=max_message)
    step = step or len(data)
    for i in range(0, len(data), step):
        verdict = scanner.feed(data[i:i + step])
        if verdict is not None:
            return verdict
    return None


def close(payload: bytes) -> bytes:
    """A client close frame, its payload masked as the key says (the scanner reads the code)."""
    mask = os.urandom(4)
    return bytes([0x88, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[n % 4] for n, b in enumerate(payload))


def fragment(payload: bytes, opcode: int, fin: bool) -> bytes:
    whole = frame(payload, opcode=opcode)
    return whole if fin else bytes([whole[0] & 0x7F]) + whole[1:]


@pytest.mark.parametrize(("data", "code"), [
    (frame(b"bad", masked=False), 1002),
    (bytes([frame(b"x")[0] | 0x40]) + frame(b"x")[1:], 1002),  # RSV1, no extension
    (frame(b"x", opcode=0x3), 1002),  # unknown opcode
    (frame(b"x", opcode=0x0), 1002),  # continuation with no message begun
    (frame(b"p" * 126, opcode=0x9), 1002),  # a control frame over 125 bytes
    (fragment(b"p", 0x9, fin=False), 1002),  # a fragmented control frame
    (fragment(b"a", 0x1, fin=False) + frame(b"b", opcode=0x1), 1002),  # new message inside one
    (close((1005).to_bytes(2, "big")), 1002),  # a code never sent on the wire
    (close((999).to_bytes(2, "big")), 1002),
    (frame(b"x", opcode=0x8), 1002),  # a 1-byte close payload
    (frame(b"z" * 2000), 1009),
    (fragment(b"f" * 600, 0x2, fin=False) + frame(b"g" * 600, opcode=0x0), 1009),
], ids=["unmasked", "rsv1", "opcode-3", "orphan-continuation", "long-ping", "fragmented-ping",
        "message-inside-message", "close-1005", "close-999", "close-1-byte", "too-long",
        "fragments-too-long"])
@pytest.mark.parametrize("step", [1, 3, None])
def test_a_frame_breaking_a_rule_gets_its_close_code(data: bytes, code: int,
                                                     step: int | None) -> None:
    assert scan(STREAM + data, max_message=1024 if code == 1009 else 1 << 20, step=step) == code


@pytest.mark.parametrize("step", [1, 5, None])
def test_acceptable_frames_pass(step: int | None) -> None:
    data = (STREAM + fragment(b"a" * 500, 0x1, fin=False) + frame(b"p", opcode=0x9)
            + frame(b"b" * 500, opcode=0x0) + close((1000).to_bytes(2, "big") + b"bye"))
    assert scan(data, max_message=100_000, step=step) is None


def test_close_frames_the_gateway_sends() -> None:
    assert close_frame(1009) == b"\x88\x02\x03\xf1"
    masked = close_frame(1001, b"bye", mask=b"\x01\x02\x03\x04")
    assert masked[:2] == b"\x88\x85" and scan(masked) is None


def test_the_scanner_knows_when_the_stream_is_between_frames() -> None:
    scanner = FrameScanner()
    whole = frame(b"x" * 300)
    assert scanner.at_boundary
    scanner.feed(whole[:1])
    assert not scanner.at_boundary  # half a header
    scanner.feed(whole[1:10])
    assert not scanner.at_boundary  # inside the payload
    scanner.feed(whole[10:])
    assert scanner.at_boundary
