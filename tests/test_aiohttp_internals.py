"""Every aiohttp internal the gateway uses (gateway/http/aiohttp_internals.py lists them) exists
on the installed aiohttp: an upgrade that removes or renames one fails here, naming it and its
class, instead of somewhere deep in a request."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.http import aiohttp_internals
from gateway.http.aiohttp_internals import INTERNALS, Internal, parse_error_kind

GATEWAY = Path(aiohttp_internals.__file__).resolve().parents[1]

# the methods the gateway overrides or calls: their parameters, and whether they are coroutines
SIGNATURES: dict[tuple[str, str], tuple[tuple[str, ...], bool]] = {
    ("aiohttp.web_protocol.RequestHandler", "handle_error"):
        (("self", "request", "status", "exc", "message"), False),
    ("aiohttp.web_protocol.RequestHandler", "finish_response"):
        (("self", "request", "resp", "start_time"), True),
    ("aiohttp.web_protocol.RequestHandler", "set_parser"):
        (("self", "parser", "data_received_cb"), False),
    ("aiohttp.web_response.StreamResponse", "_prepare_headers"): (("self",), True),
    ("aiohttp.web_response.StreamResponse", "_write_headers"): (("self",), True),
    ("aiohttp.http_writer.StreamWriter", "write_headers"):
        (("self", "status_line", "headers"), True),
    ("aiohttp.http_writer.StreamWriter", "send_headers"): (("self",), False),
}


def _class(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        pytest.fail(f"aiohttp has no class {dotted} any more (gateway/http/aiohttp_internals.py "
                    "relies on it)")


@pytest.fixture(scope="module")
def instances() -> Iterator[dict[str, Any]]:
    """One of each class the gateway reads instance state of, made as aiohttp makes them."""
    from aiohttp.http_writer import StreamWriter
    from aiohttp.streams import StreamReader
    from aiohttp.web_protocol import RequestHandler

    loop = asyncio.new_event_loop()
    try:
        server = web.Server(lambda request: None, loop=loop)
        handler = RequestHandler(server, loop=loop)
        yield {
            "aiohttp.web_server.Server": server,
            "aiohttp.web_protocol.RequestHandler": handler,
            "aiohttp.streams.StreamReader": StreamReader(handler, 2**16, loop=loop),
            "aiohttp.http_writer.StreamWriter": StreamWriter(handler, loop),
            "aiohttp.web_response.StreamResponse": web.StreamResponse(),
        }
    finally:
        loop.close()


def _is_set(instance: Any, name: str) -> bool:
    try:
        getattr(instance, name)
    except AttributeError:
        return False
    return True


ATTRIBUTES = [i for i in INTERNALS if i.kind not in ("module", "message")]


@pytest.mark.parametrize("internal", ATTRIBUTES, ids=lambda i: f"{i.owner}.{i.name}")
def test_the_internal_exists(internal: Internal, instances: dict[str, Any]) -> None:
    cls = _class(internal.owner)
    where = f"{internal.owner}.{internal.name}"
    gone = (f"aiohttp {aiohttp_version()} has no {internal.kind} {internal.name!r} on "
            f"{internal.owner}; gateway/http/aiohttp_internals.py relies on it ({where})")
    if internal.kind == "instance attribute":
        if internal.name not in vars(instances[internal.owner]):
            pytest.fail(gone + ": not set in __init__")
        return
    try:
        found = inspect.getattr_static(cls, internal.name)
    except AttributeError:
        pytest.fail(gone)
    if internal.kind == "slot":
        slots = {n for c in cls.__mro__ for n in getattr(c, "__slots__", ())}
        assert internal.name in slots, gone + " (no longer one of its __slots__)"
        assert _is_set(instances[internal.owner], internal.name), gone + ": not set in __init__"
    elif internal.kind == "property":
        assert hasattr(found, "__get__") and not inspect.isfunction(found), \
            f"{where} is no longer a property"
    elif internal.kind == "method":
        assert inspect.isfunction(found), f"{where} is no longer a method"
        expected = SIGNATURES.get((internal.owner, internal.name))
        if expected is not None:
            params, is_coroutine = expected
            actual = tuple(inspect.signature(found).parameters)
            assert actual == params, (f"{where} now takes {actual}, the gateway's override "
                                      f"and calls expect {params}")
            assert inspect.iscoroutinefunction(found) == is_coroutine, \
                f"{where} is {'no longer' if is_coroutine else 'now'} a coroutine function"
    elif internal.kind == "attribute":
        assert not callable(found), f"{where} is no longer a plain attribute"


def aiohttp_version() -> str:
    import aiohttp

    return aiohttp.__version__


def test_the_c_parser_is_there() -> None:
    assert aiohttp_internals.has_c_parser(), \
        "aiohttp._http_parser (llhttp) is not importable: the gateway refuses to start without it"


def _parse(data: bytes, **limits: int) -> BaseException | None:
    from aiohttp import _http_parser
    from aiohttp.web_protocol import RequestHandler

    loop = asyncio.new_event_loop()
    try:
        handler = RequestHandler(web.Server(lambda request: None, loop=loop), loop=loop)
        parser = _http_parser.HttpRequestParser(handler, loop, 2**16, max_line_size=100,
                                                max_field_size=100, **limits)
        try:
            parser.feed_data(data)
        except Exception as exc:
            return exc
        return None
    finally:
        loop.close()


@pytest.mark.parametrize(("data", "limits", "kind"), [
    (b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: x\r\n" % i for i in range(10)) + b"\r\n",
     {"max_headers": 3}, "too_many_headers"),
    (b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", {}, "bad_version"),
    (b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", {}, "bad_version"),
    (b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n", {}, "line_too_long"),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 200 + b"\r\n\r\n", {}, "line_too_long"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", {}, "other"),
], ids=["too-many-headers", "http-1.2", "http-3.0", "long-request-line", "long-header-line",
        "duplicate-host"])
def test_the_parser_errors_are_told_apart(data: bytes, limits: dict[str, int],
                                          kind: str) -> None:
    exc = _parse(data, **limits)
    assert exc is not None, f"the C parser accepted {data[:40]!r}"
    assert parse_error_kind(exc) == kind, (
        f"aiohttp's C parser now says {str(exc)!r} ({type(exc).__name__}): "
        f"gateway/http/aiohttp_internals.py's parse_error_kind expects {kind!r}")


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
