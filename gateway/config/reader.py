"""Typed reads from positioned YAML nodes, collecting every problem instead of stopping at one.

Each section builder asks a `Reader` for the shape it expects (a mapping with known keys, a
duration, a list of strings...). A wrong shape records a `Problem` at the node and returns
None, so one pass reports all errors in a file.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from gateway.config.errors import Problem
from gateway.units import parse_duration, parse_size

T = TypeVar("T")
_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_NULL_TAG = "tag:yaml.org,2002:null"


class Reader:
    """Reads one policy file's nodes; `problems` accumulates what was wrong."""

    def __init__(self, file: str) -> None:
        self.file = file  # used only when a problem has no node to point at
        self.problems: list[Problem] = []
        self._faulty: set[int] = set()  # scalars already reported: one error per value
        self._constructor = SafeConstructor()

    # -- reporting -------------------------------------------------------------------------
    def error(self, node: yaml.Node | None, message: str, file: str | None = None) -> None:
        self._add(node, message, warning=False, file=file)

    def warn(self, node: yaml.Node | None, message: str) -> None:
        self._add(node, message, warning=True)

    def _add(
        self, node: yaml.Node | None, message: str, *, warning: bool, file: str | None = None
    ) -> None:
        if node is None:
            self.problems.append(Problem(file or self.file, 1, 1, message, warning))
            return
        if not warning and isinstance(node, yaml.ScalarNode):
            if id(node) in self._faulty:
                return  # e.g. an unset ${VAR}: its value is not also "not a URL"
            self._faulty.add(id(node))
        mark = node.start_mark
        self.problems.append(Problem(mark.name, mark.line + 1, mark.column + 1, message, warning))

    # -- shapes ----------------------------------------------------------------------------
    def mapping(
        self, node: yaml.Node, known: Iterable[str], what: str
    ) -> dict[str, yaml.Node] | None:
        """Keys to value nodes; unknown and repeated keys are errors (with a near-miss hint)."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping")
            return None
        known = tuple(known)
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_node, f"keys in {what} must be plain strings")
                continue
            key = key_node.value
            if key in out:
                self.error(key_node, f"duplicate key {key!r} in {what}")
            elif key not in known:
                hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
                allowed = ", ".join(known)
                self.error(key_node, f"unknown key {key!r} in {what}{suffix}; allowed: {allowed}")
            else:
                out[key] = value_node
        return out

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{what} must be a list")
            return None
        return list(node.value)

    def _scalar(self, node: yaml.Node) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except ConstructorError as exc:
            self.error(node, f"cannot read value: {exc.problem}")
            return None
        except Exception:  # `!!int abc`, `!!bool maybe`, `!!int ''`...
            self.error(node, f"cannot read {node.value!r} as {node.tag.rsplit(':', 1)[-1]}")
            return None

    def string(self, node: yaml.Node, what: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR_TAG:
            self.error(node, f"{what} must be a string")
            return None
        return node.value

    def integer(
        self, node: yaml.Node, what: str, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _INT_TAG:
            self.error(node, f"{what} must be an integer")
            return None
        value = self._scalar(node)
        if value is None:
            return None
        if minimum is not None and value < minimum:
            self.error(node, f"{what} must be at least {minimum}")
            return None
        if maximum is not None and value > maximum:
            self.error(node, f"{what} must be at most {maximum}")
            return None
        return value

    def number(self, node: yaml.Node, what: str, minimum: float, maximum: float
               ) -> float | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (
                _INT_TAG, "tag:yaml.org,2002:float"):
            self.error(node, f"{what} must be a number")
            return None
        value = self._scalar(node)
        if value is None or not minimum <= value <= maximum:
            self.error(node, f"{what} must be between {minimum:g} and {maximum:g}")
            return None
        return float(value)

    def boolean(self, node: yaml.Node, what: str) -> bool | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL_TAG:
            self.error(node, f"{what} must be true or false")
            return None
        return self._scalar(node)

    def duration(self, node: yaml.Node, what: str, positive: bool = True) -> float | None:
        return self._parsed(node, what, parse_duration, "a duration such as 500ms, 1s or 15m",
                            positive)

    def size(self, node: yaml.Node, what: str) -> int | None:
        return self._parsed(node, what, parse_size, "a size such as 8KiB or 10MiB", True)

    def _parsed(
        self, node: yaml.Node, what: str, parse: Callable[[str], T], example: str, positive: bool
    ) -> T | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL_TAG:
            self.error(node, f"{what} must be {example}")
            return None
        try:
            value = parse(node.value)
        except ValueError as exc:
            self.error(node, f"{what}: {exc}")
            return None
        if positive and not value > 0:  # type: ignore[operator]
            self.error(node, f"{what} must be greater than zero")
            return None
        return value

    def string_list(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, str]] | None:
        items = self.sequence(node, what)
        if items is None:
            return None
        out = []
        for item in items:
            value = self.string(item, f"each entry of {what}")
            if value is not None:
                out.append((item, value))
        return out


def checked_names(r: Reader, items: list[tuple[yaml.Node, str]] | None, what: str,
           grammar: re.Pattern[str], kind: str) -> tuple[str, ...] | None:
    """The names of a list read by `r.string_list`, each matching `grammar`; None (each bad
    one reported) otherwise."""
    if items is None:
        return None
    bad = [(item, text) for item, text in items if not grammar.fullmatch(text)]
    for item, text in bad:
        r.error(item, f"{what}: {text!r} is not {kind}")
    return None if bad else tuple(text for _, text in items)


def named_mapping(r: Reader, node: yaml.Node, section: str, of: str) -> dict[str, yaml.Node]:
    """A section whose keys are names the policy chooses (`rate_limits`, `upstreams`, the
    named policies): name -> its node; `of` says what the names name, for the error."""
    if not isinstance(node, yaml.MappingNode):
        r.error(node, f"{section} must be a mapping of names to {of}")
        return {}
    names = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
    return r.mapping(node, names, section) or {}


def named_entries(r: Reader, node: yaml.Node, section: str) -> dict[str, yaml.Node]:
    """A section of named policies (`cors`, `headers`, `access_lists`): name -> its node;
    `none` is reserved (a route says `none` to switch the `default` one off)."""
    out = named_mapping(r, node, section, "policies")
    for name, value in list(out.items()):
        if name == "none":
            r.error(value, f"{section} policy name 'none' is reserved (it switches a default off)")
            del out[name]
    return out
