"""WebSocket frames from a client must be masked (RFC 6455 5.1): a check over the byte stream.

aiohttp's reader accepts unmasked client frames. `MaskCheck` walks the frame headers as bytes
arrive (split anywhere), skipping payloads without copying them, and says when a frame lacks
the mask bit; the connection then closes with 1002.
"""

from __future__ import annotations


class MaskCheck:
    __slots__ = ("_head", "_skip")

    def __init__(self) -> None:
        self._head = b""  # a frame header split across reads
        self._skip = 0  # payload bytes of the current frame still to pass

    def feed(self, data: bytes) -> bool:
        """False as soon as a frame in `data` (or begun before it) has no mask bit."""
        i, end = 0, len(data)
        while i < end:
            if self._skip:
                step = min(self._skip, end - i)
                self._skip -= step
                i += step
                continue
            head = self._head + data[i:i + 14]
            if len(head) >= 2 and not head[1] & 0x80:
                return False
            size = head[1] & 0x7F if len(head) >= 2 else 0
            need = 2 + (2 if size == 126 else 8 if size == 127 else 0) + 4
            if len(head) < need:  # the rest of `data` is the start of a header
                self._head = head
                return True
            i += need - len(self._head)
            self._head = b""
            if size == 126:
                size = int.from_bytes(head[2:4], "big")
            elif size == 127:
                size = int.from_bytes(head[2:10], "big")
            self._skip = size
        return True
