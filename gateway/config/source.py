"""From policy files to one YAML node tree: read, check keys, interpolate, follow `extends`.

The loader works on `yaml.compose()` nodes rather than plain values so that every problem can
point at FILE:LINE:COL, also for a value that came from an extended file (each node's mark
names the file it was written in) or from `${VAR}` interpolation (the mark of the scalar that
held the reference).

`extends: other.yaml` (relative to the file that says it) deep-merges this file over the other:
mappings merge key by key, anything else (lists included) replaces. Chains are allowed; a cycle
is an error at the `extends` that closes it.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.config.errors import PolicyError, Problem
from gateway.config.interpolate import interpolate
from gateway.config.reader import Reader


@dataclass(frozen=True, slots=True)
class Document:
    root: yaml.MappingNode
    files: tuple[str, ...]  # every file read, the base of the chain first
    digest: str  # sha256 over the files' contents, in that order


def compose_file(path: Path) -> tuple[yaml.Node | None, bytes]:
    """A file's root node (None when empty) and its bytes; syntax errors become PolicyError.

    libyaml (C) composes the tree, 16x faster than PyYAML's own parser (a policy load, each
    gateway start and reload, `check` and `explain`). A document libyaml refuses is parsed
    again by PyYAML, whose error messages are the ones the loader reports."""
    name = str(path)
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except OSError as exc:
        problem = Problem(name, 1, 1, f"cannot read policy file: {exc.strerror}")
        raise PolicyError([problem]) from exc
    except UnicodeDecodeError as exc:
        raise PolicyError([Problem(name, 1, 1, "policy file is not UTF-8")]) from exc
    _check_characters(name, text)
    if _C_LOADER is not None:
        stream = _NamedText(text)
        stream.name = name  # libyaml names each mark after its stream: every problem, the file
        loader = _C_LOADER(stream)
        try:
            return loader.get_single_node(), data
        except (yaml.YAMLError, RecursionError):
            pass  # PyYAML below says what is wrong, in its words
        finally:
            loader.dispose()
    return _compose_with_pyyaml(name, text), data


class _NamedText(io.StringIO):
    name = ""


_C_LOADER = getattr(yaml, "CSafeLoader", None)  # PyYAML built without libyaml: PyYAML alone


def _check_characters(name: str, text: str) -> None:
    """YAML's printable-character rule (PyYAML's reader checks it the same way)."""
    found = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if found is not None:
        position = found.start()
        line = text.count("\n", 0, position) + 1
        col = position - (text.rfind("\n", 0, position) + 1) + 1
        problem = Problem(name, line, col, f"YAML syntax: character U+{ord(found.group()):04X} "
                          "is not allowed in YAML")
        raise PolicyError([problem])


def _compose_with_pyyaml(name: str, text: str) -> yaml.Node | None:
    loader = yaml.SafeLoader(text)
    loader.name = name  # marks, and so every problem, carry the file name
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(filter(None, [exc.context, exc.problem]))
        raise PolicyError([Problem(name, line, col, f"YAML syntax: {message}")]) from exc
    except yaml.YAMLError as exc:
        raise PolicyError([Problem(name, 1, 1, f"YAML syntax: {exc}")]) from exc
    except RecursionError as exc:  # PyYAML's parser recurses once per nesting level
        raise PolicyError([Problem(name, 1, 1, "YAML nested too deeply")]) from exc
    finally:
        loader.dispose()


def read_document(path: Path, environ: Mapping[str, str], reader: Reader) -> Document | None:
    """The merged, interpolated tree of `path` and what it extends; None when unusable."""
    files: list[str] = []
    contents: list[bytes] = []
    root = _read_chain(path, environ, reader, files, contents, ())
    if root is None:
        return None
    digest = hashlib.sha256(b"\0".join(contents)).hexdigest()
    return Document(root, tuple(files), digest)


def _read_chain(
    path: Path,
    environ: Mapping[str, str],
    reader: Reader,
    files: list[str],
    contents: list[bytes],
    chain: tuple[Path, ...],
) -> yaml.MappingNode | None:
    node, data = compose_file(path)
    if node is None:
        reader.error(None, "policy file is empty", file=str(path))
        return None
    if not isinstance(node, yaml.MappingNode):
        reader.error(node, "a policy file must be a mapping of keys")
        return None
    try:
        recursive = _check_duplicate_keys(node, reader, set())
    except RecursionError:
        reader.error(node, "YAML nested too deeply")
        recursive = True
    if recursive:
        raise PolicyError(reader.problems)  # a recursive alias: nothing below can be walked
    interpolate(node, environ, reader)
    extends_node = None
    pairs = []
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "extends":
            extends_node = value
        else:
            pairs.append((key, value))
    own = yaml.MappingNode(node.tag, pairs, node.start_mark, node.end_mark)
    if extends_node is None:
        files.append(str(path))
        contents.append(data)
        return own
    target = reader.string(extends_node, "extends")
    if target is None:
        return None
    # named as given (relative to the file that names it), so that problems, `/config` and
    # the reload watcher speak of the paths the operator wrote; compared resolved for cycles
    base_path = path.parent / target
    here = (*chain, path.resolve())
    if base_path.resolve() in here:
        cycle = " -> ".join(str(p) for p in (*here, base_path.resolve()))
        reader.error(extends_node, f"extends cycle: {cycle}")
        return None
    if not base_path.is_file():
        reader.error(extends_node, f"extends: no such policy file {str(base_path)!r}")
        return None
    try:
        base = _read_chain(base_path, environ, reader, files, contents, here)
    except PolicyError as exc:  # a syntax error in the base file: report it, keep going
        reader.problems.extend(exc.problems)
        return None
    files.append(str(path))
    contents.append(data)
    return merge(base, own, reader) if base is not None else None


ROUTE_CHANGES = ("set", "remove", "insert_before")


def merge(base: yaml.Node, over: yaml.Node, reader: Reader | None = None,
          top: bool = True) -> yaml.Node:
    """`over` deep-merged onto `base`: mappings merge, everything else is replaced; except
    that at the top, `routes` written as a mapping changes the extended file's routes by name
    (`change_routes`)."""
    if not (isinstance(base, yaml.MappingNode) and isinstance(over, yaml.MappingNode)):
        return over
    merged: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key, value in base.value:
        merged[key.value] = (key, value)
    for key, value in over.value:
        if key.value not in merged:
            merged[key.value] = (key, value)
        elif top and key.value == "routes" and isinstance(value, yaml.MappingNode) \
                and isinstance(merged["routes"][1], yaml.SequenceNode) and reader is not None:
            merged["routes"] = (key, change_routes(merged["routes"][1], value, reader))
        else:
            merged[key.value] = (key, merge(merged[key.value][1], value, reader, False))
    return yaml.MappingNode(over.tag, list(merged.values()), over.start_mark, over.end_mark)


def _route_name(node: yaml.Node) -> str | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == "name" and isinstance(value, yaml.ScalarNode):
                return value.value
    return None


def change_routes(base: yaml.SequenceNode, changes: yaml.MappingNode,
                  reader: Reader) -> yaml.SequenceNode:
    """The extended file's routes changed by name, keeping first-match order:

        routes:
          set: [{name: reports, match: ...}]   # a known name is replaced where it stands;
                                               # a new one is inserted before `insert_before`
          insert_before: everything-else       # default: after the last route
          remove: [legacy]
    """
    routes = list(base.value)
    names = [_route_name(r) for r in routes]
    m = reader.mapping(changes, ROUTE_CHANGES, "routes (changes to the extended file's routes)")
    if m is None:
        return base
    for item, name in (reader.string_list(m["remove"], "routes.remove") or ()) \
            if "remove" in m else ():
        if name not in names:
            reader.error(item, f"routes.remove: the extended file has no route {name!r}")
            continue
        index = names.index(name)
        del routes[index], names[index]
    at = len(routes)
    if "insert_before" in m:
        anchor = reader.string(m["insert_before"], "routes.insert_before")
        if anchor is not None and anchor not in names:
            reader.error(m["insert_before"], f"routes.insert_before: the extended file has no "
                         f"route {anchor!r}")
        elif anchor is not None:
            at = names.index(anchor)
    for node in (reader.sequence(m["set"], "routes.set") or ()) if "set" in m else ():
        name = _route_name(node)
        if name is not None and name in names:
            routes[names.index(name)] = node
        else:  # a new route (or one without a name, which the route reader reports)
            routes.insert(at, node)
            names.insert(at, name)
            at += 1
    return yaml.SequenceNode(base.tag, routes, changes.start_mark, changes.end_mark)


def _check_duplicate_keys(node: yaml.Node, reader: Reader, path: set[int]) -> bool:
    """Repeated keys are errors (PyYAML would keep the last silently) and are dropped.

    Returns True when an alias refers to a node that contains it (`&a [*a]`): such a document
    has no finite value, and it is refused before anything else walks it.
    """
    if id(node) in path:
        reader.error(node, "recursive YAML alias: a value cannot contain itself")
        return True
    if isinstance(node, yaml.MappingNode):
        path.add(id(node))
        seen: set[str] = set()
        kept = []
        recursive = False
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                reader.error(key, "mapping keys must be plain strings")
                continue
            if key.value in seen:
                reader.error(key, f"duplicate key {key.value!r}")
                continue
            seen.add(key.value)
            kept.append((key, value))
            recursive = _check_duplicate_keys(value, reader, path) or recursive
        node.value = kept
        path.discard(id(node))
        return recursive
    if isinstance(node, yaml.SequenceNode):
        path.add(id(node))
        recursive = any([_check_duplicate_keys(item, reader, path) for item in node.value])
        path.discard(id(node))
        return recursive
    return False
