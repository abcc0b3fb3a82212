"""WebSocket frame headers checked over the byte stream, without buffering payloads.

The gateway relays a WebSocket as bytes once the upstream accepted it (proxy/websocket.py); it
never reassembles messages. `FrameScanner` walks the frame headers as bytes arrive (split
anywhere), skipping payloads without copying them, and says when a frame breaks a rule the
gateway enforces, with the close code to answer:

- 1002: an unmasked frame from a client (RFC 6455 5.1); RSV bits set (no extension is ever
  negotiated: the gateway does not forward Sec-WebSocket-Extensions); an unknown opcode; a
  control frame that is fragmented or longer than 125 bytes; a continuation with no message
  begun, or a new message inside a fragmented one; a close frame with a 1-byte payload or a
  code that may not be sent (RFC 6455 7.4);
- 1009: a message (the sum of its fragments) longer than the limit, decided by the lengths
  the headers announce, before the payload arrives.

Text payloads are not decoded here (invalid UTF-8 is the endpoints' to refuse, 1007).
`MaskCheck` says only whether a client's frames pass.
"""

from __future__ import annotations

_NO_LIMIT = 1 << 64


def close_code_allowed(code: int) -> bool:
    """A code an endpoint may send in a close frame (RFC 6455 7.4.1, 7.4.2)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011) \
        or 3000 <= code <= 4999


class FrameScanner:
    __slots__ = ("_client", "_close", "_close_mask", "_fragmented", "_head", "_max",
                 "_message", "_skip")

    def __init__(self, client: bool = True, max_message: int = _NO_LIMIT) -> None:
        self._client = client  # frames from a client: each must be masked
        self._max = max_message
        self._head = b""  # a frame header split across reads
        self._skip = 0  # payload bytes of the current frame still to pass
        self._message = 0  # payload bytes of the message so far
        self._fragmented = False  # a message's first frame came without FIN
        self._close = b""  # a close frame's first payload bytes (its code), once begun
        self._close_mask = b""

    @property
    def at_boundary(self) -> bool:
        """Whether the bytes so far end between two frames (another frame may go here)."""
        return not self._skip and not self._head

    def feed(self, data: bytes) -> int | None:
        """None while every frame in `data` (and before it) is acceptable, else the close
        code to answer with."""
        i, end = 0, len(data)
        while i < end:
            if self._skip:
                step = min(self._skip, end - i)
                if self._close_mask and len(self._close) < 2:
                    self._close += data[i:i + min(step, 2 - len(self._close))]
                    if len(self._close) == 2:
                        code = int.from_bytes(bytes(
                            b ^ m for b, m in zip(self._close, self._close_mask, strict=False)),
                            "big")
                        self._close_mask = b""
                        if not close_code_allowed(code):
                            return 1002
                self._skip -= step
                i += step
                continue
            head = self._head + data[i:i + 14]
            if len(head) < 2:
                self._head = head
                return None
            masked = head[1] & 0x80
            if self._client and not masked:
                return 1002
            size = head[1] & 0x7F
            need = 2 + (2 if size == 126 else 8 if size == 127 else 0) + (4 if masked else 0)
            if len(head) < need:  # the rest of `data` is the start of a header
                self._head = head
                return None
            i += need - len(self._head)
            self._head = b""
            if size == 126:
                size = int.from_bytes(head[2:4], "big")
            elif size == 127:
                size = int.from_bytes(head[2:10], "big")
            verdict = self._frame(head[0], size)
            if verdict is not None:
                return verdict
            if head[0] & 0x0F == 0x8 and size >= 2:
                self._close = b""
                self._close_mask = head[need - 4:need] if masked else b"\0\0\0\0"
            self._skip = size
        return None

    def _frame(self, first: int, size: int) -> int | None:
        if first & 0x70:
            return 1002
        opcode = first & 0x0F
        fin = first & 0x80
        if opcode >= 0x8:
            if opcode > 0xA or not fin or size > 125 or (opcode == 0x8 and size == 1):
                return 1002
            return None
        if opcode == 0x0:
            if not self._fragmented:
                return 1002
            self._message += size
        elif opcode in (0x1, 0x2):
            if self._fragmented:
                return 1002
            self._message = size
        else:
            return 1002
        if self._message > self._max:
            return 1009
        self._fragmented = not fin
        return None


class MaskCheck:
    """`feed` is False once a frame breaks a client rule (an unmasked frame among them)."""

    __slots__ = ("_scan",)

    def __init__(self) -> None:
        self._scan = FrameScanner()

    def feed(self, data: bytes) -> bool:
        return self._scan.feed(data) is None


def close_frame(code: int, reason: bytes = b"", mask: bytes | None = None) -> bytes:
    """A close frame with `code`: unmasked (a server's), or masked with `mask` (a client's)."""
    payload = code.to_bytes(2, "big") + reason[:123]
    if mask is None:
        return bytes([0x88, len(payload)]) + payload
    masked = bytes(b ^ mask[n % 4] for n, b in enumerate(payload))
    return bytes([0x88, 0x80 | len(payload)]) + mask + masked
