"""Every private aiohttp name the gateway still relies on, in one place.

The public listener (http/protocol.py) and the upstream client (proxy/upstream_client.py)
parse with httptools' llhttp, so what is left is the parser the admin listener (admin.py,
aiohttp's public API otherwise) runs on:

    name                  aiohttp class (kind)           what the gateway needs it for -> used via
    --------------------- ------------------------------ -------------------------------------------
    aiohttp._http_parser  aiohttp (module)               llhttp, the C parser, for the admin
                                                         listener: the pure-Python one accepts what
                                                         llhttp refuses -> has_c_parser,
                                                         require_c_parser

`INTERNALS` below is the same list, read by tests/test_aiohttp_internals.py, which checks each
one on the installed aiohttp.

Why pyproject pins aiohttp to 3.14.* (`>=3.14,<3.15`): the module above is not aiohttp's
public API. Moving to a new aiohttp minor means: raise the pin, run
tests/test_aiohttp_internals.py, fix this module (only this one), then run the whole suite.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Internal:
    """One private part of aiohttp the gateway depends on (the table above says what for)."""

    name: str
    owner: str  # the aiohttp class (module.Class), or the package for a module
    kind: Literal["module"]


INTERNALS: tuple[Internal, ...] = (
    Internal("aiohttp._http_parser", "aiohttp", "module"),
)


def has_c_parser() -> bool:
    """Whether aiohttp's C parser (llhttp) is importable."""
    try:
        from aiohttp import _http_parser  # noqa: F401
    except ImportError:
        return False
    return True


def require_c_parser() -> None:
    """The pure-Python parser accepts answers llhttp refuses: never serve with it (exits
    with a message saying why). Checked by every serving process and by the supervisor."""
    if not has_c_parser():
        raise SystemExit("gateway: aiohttp's C HTTP parser is not available "
                         "(unset AIOHTTP_NO_EXTENSIONS or reinstall aiohttp)")
    if os.environ.get("AIOHTTP_NO_EXTENSIONS"):
        raise SystemExit("gateway: AIOHTTP_NO_EXTENSIONS is set; the gateway needs the C parser")
