"""Every aiohttp internal the gateway uses (gateway/http/aiohttp_internals.py lists them) exists
on the installed aiohttp, and no other module touches aiohttp's private names.

The public listener's parser is httptools' llhttp now (http/protocol.py); what the parser
refuses and how each refusal is answered is pinned by tests/test_framing.py."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from gateway.http import aiohttp_internals
from gateway.http.aiohttp_internals import INTERNALS, Internal

GATEWAY = Path(aiohttp_internals.__file__).resolve().parents[1]


@pytest.mark.parametrize("internal", INTERNALS, ids=lambda i: f"{i.owner}.{i.name}")
def test_the_internal_exists(internal: Internal) -> None:
    try:
        importlib.import_module(internal.name)
    except ImportError:
        pytest.fail(f"aiohttp has no module {internal.name} any more "
                    "(gateway/http/aiohttp_internals.py relies on it)")


def test_the_c_parser_is_there() -> None:
    assert aiohttp_internals.has_c_parser(), \
        "aiohttp._http_parser (llhttp) is not importable: the gateway refuses to start without it"


def test_the_docstring_table_lists_every_internal() -> None:
    doc = aiohttp_internals.__doc__ or ""
    table = doc[:doc.index("`INTERNALS` below")]
    missing = [i.name for i in INTERNALS if not re.search(rf"^    {re.escape(i.name)}\b", table,
                                                          re.M)]
    assert not missing, f"not in aiohttp_internals.py's table: {missing}"


# names distinctive enough that only aiohttp objects have them (generic ones such as `_loop`
# or `_buffer` are the gateway's own attributes elsewhere too)
DISTINCTIVE = ("_messages", "_message_tail", "_request_in_progress", "_upgraded",
               "_payload_writer", "_prepare_headers", "_write_headers", "output_size",
               "_http_parser", "_payload_parser")


def test_no_other_module_touches_them() -> None:
    pattern = re.compile(r"[.\s](" + "|".join(DISTINCTIVE) + r")\b")
    adapter = Path(aiohttp_internals.__file__).resolve()
    found = []
    for path in sorted(GATEWAY.rglob("*.py")):
        if path.resolve() == adapter:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and not code.lstrip().startswith(('"', "'")):
                found.append(f"{path.relative_to(GATEWAY.parent)}:{number}: {line.strip()}")
    assert not found, ("aiohttp internals used outside gateway/http/aiohttp_internals.py:\n"
                       + "\n".join(found))
