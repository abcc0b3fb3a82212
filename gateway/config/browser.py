"""The `cors` and `headers` policy sections: named policies, read through the Reader and
validated by the modules that own them (cors.py, security_headers.py), with each refusal
pointed at the YAML node at fault."""

from __future__ import annotations

from typing import Any

import yaml

from gateway.config.reader import Reader
from gateway.cors import CorsError, CorsPolicy
from gateway.security_headers import HeadersPolicy, HeaderValueError

KEYS = {
    "cors.*": ("allow_origins", "allow_methods", "allow_headers", "expose_headers",
               "allow_credentials", "max_age", "dangerously_allow_public_suffix_wildcard",
               "dangerously_allow_insecure_origins"),
    "headers.*": ("set", "set_if_missing", "remove"),
}
_LISTS = ("allow_origins", "allow_methods", "allow_headers", "expose_headers")


def _named(r: Reader, node: yaml.Node, section: str) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        r.error(node, f"{section} must be a mapping of names to policies")
        return {}
    names = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
    out = r.mapping(node, names, section) or {}
    for name, value in list(out.items()):
        if name == "none":
            r.error(value, f"{section} policy name 'none' is reserved (it switches a default off)")
            del out[name]
    return out


def read_cors(r: Reader, node: yaml.Node) -> dict[str, CorsPolicy]:
    policies = {}
    for name, value in _named(r, node, "cors").items():
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
        if any(v is None for v in args.values()):
            continue
        try:
            policies[name] = CorsPolicy.build(name, **args)
        except CorsError as exc:
            nodes = item_nodes.get(exc.field)
            at = nodes[exc.index] if nodes and exc.index is not None else m.get(exc.field, value)
            r.error(at, f"{where}.{exc.field}: {exc}")
    return policies


def _string_map(r: Reader, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, str]] | None:
    if not isinstance(node, yaml.MappingNode):
        r.error(node, f"{what} must be a mapping of header names to values")
        return None
    names = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
    m = r.mapping(node, names, what)
    if m is None:
        return None
    out = {}
    for name, value in m.items():
        if isinstance(value, yaml.ScalarNode) and value.tag in (
                "tag:yaml.org,2002:int", "tag:yaml.org,2002:str"):
            out[name] = (value, str(value.value))
        else:
            r.error(value, f"{what}.{name} must be a string")
    return out


def read_headers(r: Reader, node: yaml.Node) -> dict[str, HeadersPolicy]:
    policies = {}
    for name, value in _named(r, node, "headers").items():
        where = f"headers.{name}"
        m = r.mapping(value, KEYS["headers.*"], where)
        if m is None:
            continue
        sets = _string_map(r, m["set"], f"{where}.set") if "set" in m else {}
        missing = _string_map(r, m["set_if_missing"], f"{where}.set_if_missing") \
            if "set_if_missing" in m else {}
        removes = r.string_list(m["remove"], f"{where}.remove") if "remove" in m else []
        if sets is None or missing is None or removes is None:
            continue
        # validate header by header so the error points at its value
        ok = True
        for section, entries in (("set", sets), ("set_if_missing", missing)):
            for header, (vnode, text) in entries.items():
                try:
                    HeadersPolicy.build(name, set={header: text})
                except HeaderValueError as exc:
                    r.error(vnode, f"{where}.{section}.{header}: {exc}")
                    ok = False
        if not ok:
            continue
        try:
            policies[name] = HeadersPolicy.build(
                name, set={h: t for h, (_, t) in sets.items()},
                set_if_missing={h: t for h, (_, t) in missing.items()},
                remove=[t for _, t in removes])
        except HeaderValueError as exc:
            r.error(value, f"{where}: {exc}")
    return policies
