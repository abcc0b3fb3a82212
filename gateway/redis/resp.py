"""RESP2, the Redis wire format, as far as the gateway writes it: commands as arrays of bulk
strings. Replies are parsed by hiredis (C); see connection.py.

    encode("GET", "k")  ->  b"*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n"
"""

from __future__ import annotations


def bulk(value: str | bytes | int) -> bytes:
    """One bulk string: `$<length>\\r\\n<bytes>\\r\\n`."""
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode(*args: str | bytes | int) -> bytes:
    """One command, ready to write."""
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)
