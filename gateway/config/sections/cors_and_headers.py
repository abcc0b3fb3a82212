"""The `cors` and `headers` policy sections: named policies, read through the Reader and
validated by the modules that own them (cors.py, security_headers.py), with each refusal
pointed at the YAML node at fault."""

from __future__ import annotations

from typing import Any

import yaml

from gateway.config.reader import Reader, named_entries
from gateway.settings.cors import CorsPolicy
from gateway.settings.headers import HeadersPolicy, HeaderValueError, check_header
from gateway.tokens import TOKEN

KEYS = {
    "cors.*": ("allow_origins", "allow_methods", "allow_headers", "expose_headers",
               "allow_credentials", "max_age", "dangerously_allow_public_suffix_wildcard",
               "dangerously_allow_insecure_origins"),
    "headers.*": ("set", "set_if_missing", "remove"),
}
_LISTS = ("allow_origins", "allow_methods", "allow_headers", "expose_headers")


def read_cors(r: Reader, node: yaml.Node) -> dict[str, CorsPolicy]:
    policies = {}
    for name, value in named_entries(r, node, "cors").items():
        where = f"cors.{name}"
        m = r.mapping(value, KEYS["cors.*"], where)
        if m is None:
            continue
        args: dict[str, Any] = {}
        item_nodes: dict[str, list[yaml.Node]] = {}
        for key in _LISTS:
            if key in m:
                items = r.string_list(m[key], f"{where}.{key}")
                if items is None:
                    continue
                item_nodes[key] = [n for n, _ in items]
                args[key] = [text for _, text in items]
        for key in ("allow_credentials", "dangerously_allow_public_suffix_wildcard",
                    "dangerously_allow_insecure_origins"):
            if key in m:
                args[key] = r.boolean(m[key], f"{where}.{key}")
        if "max_age" in m:
            args["max_age"] = r.duration(m["max_age"], f"{where}.max_age", positive=False)
        if "allow_origins" not in m:
            r.error(value, f"{where} needs allow_origins")
            continue
        if "allow_origins" not in args:  # present but not a list of strings: reported
            continue
        if any(v is None for v in args.values()):
            continue
        policy, problems = CorsPolicy.check(name, **args)
        for exc in problems:  # every one, not just the first
            nodes = item_nodes.get(exc.field)
            at = nodes[exc.index] if nodes and exc.index is not None else m.get(exc.field, value)
            r.error(at, f"{where}.{exc.field}: {exc}")
        if policy is not None:
            policies[name] = policy
    return policies


def _header_map(r: Reader, node: yaml.Node, what: str
                ) -> dict[str, tuple[yaml.Node, yaml.Node, str]] | None:
    """Header name -> (key node, value node, value text); malformed entries are reported."""
    if not isinstance(node, yaml.MappingNode):
        r.error(node, f"{what} must be a mapping of header names to values")
        return None
    out = {}
    for key, value in node.value:
        name = key.value
        if not TOKEN.fullmatch(name):
            r.error(key, f"{what}: {name!r} is not a header name")
        elif isinstance(value, yaml.ScalarNode) and value.tag in (
                "tag:yaml.org,2002:int", "tag:yaml.org,2002:str"):
            out[name] = (key, value, str(value.value))
        else:
            r.error(value, f"{what}.{name} must be a string")
    return out


def read_headers(r: Reader, node: yaml.Node) -> dict[str, HeadersPolicy]:
    policies = {}
    for name, value in named_entries(r, node, "headers").items():
        where = f"headers.{name}"
        m = r.mapping(value, KEYS["headers.*"], where)
        if m is None:
            continue
        sets = _header_map(r, m["set"], f"{where}.set") if "set" in m else {}
        missing = _header_map(r, m["set_if_missing"], f"{where}.set_if_missing") \
            if "set_if_missing" in m else {}
        removes = r.string_list(m["remove"], f"{where}.remove") if "remove" in m else []
        if sets is None or missing is None or removes is None:
            continue
        before = len(r.problems)
        seen: dict[str, str] = {}  # lower-case name -> the list it first appeared in
        entries = [("set", k, v, t, h) for h, (k, v, t) in sets.items()]
        entries += [("set_if_missing", k, v, t, h) for h, (k, v, t) in missing.items()]
        entries += [("remove", n, None, None, h) for n, h in removes]
        for section, key_node, value_node, text, header in entries:
            low = header.lower()
            if low in seen:
                first = seen[low]
                r.error(key_node, f"{where}.{section}: {header} is already in {first}"
                        if first != section else f"{where}.{section}: {header} is listed twice")
                continue
            seen[low] = section
            if section == "remove":
                if not TOKEN.fullmatch(header):
                    r.error(key_node, f"{where}.remove: {header!r} is not a header name")
                continue
            if section == "set_if_missing" and low == "strict-transport-security":
                r.error(key_node, f"{where}.set_if_missing: Strict-Transport-Security belongs "
                        "in set (the gateway decides it, per request scheme)")
                continue
            try:
                check_header(header, text)
            except HeaderValueError as exc:
                r.error(value_node, f"{where}.{section}.{header}: {exc}")
        if len(r.problems) > before:
            continue
        policies[name] = HeadersPolicy.build(
            name, set={h: t for h, (_, _, t) in sets.items()},
            set_if_missing={h: t for h, (_, _, t) in missing.items()},
            remove=[t for _, t in removes])
    return policies
