"""`${VAR}` and `${VAR:-default}` in policy values, resolved from the environment at load time.

Every scalar value may hold references; `$${` writes a literal `${`. `${VAR:-default}` uses the
default when VAR is unset or empty (as in a POSIX shell). `${VAR}` needs VAR set and not empty
(an empty required value is almost always a deployment mistake; write `${VAR:-}` to allow
empty); otherwise it is an error at the scalar that names it. A plain (unquoted) scalar is
typed after substitution, so `workers: ${WORKERS:-2}` is the integer 2; a quoted one stays a
string. Keys are not interpolated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import yaml
from yaml.resolver import Resolver

from gateway.config.reader import Reader

_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}|\$\{")
_RESOLVER = Resolver()
_STR = "tag:yaml.org,2002:str"


def interpolate(node: yaml.Node, environ: Mapping[str, str], reader: Reader) -> None:
    """Substitute references in every scalar value under `node`, in place."""
    if isinstance(node, yaml.MappingNode):
        for _, value in node.value:
            interpolate(value, environ, reader)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            interpolate(item, environ, reader)
    elif isinstance(node, yaml.ScalarNode) and "$" in node.value and node.tag == _STR:
        value = substitute(node, environ, reader)
        if value is not None and value != node.value:
            node.value = value
            if not node.style:  # plain (None from PyYAML, "" from libyaml): typed as YAML would
                node.tag = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))


def substitute(node: yaml.ScalarNode, environ: Mapping[str, str], reader: Reader) -> str | None:
    failed = False

    def replace(m: re.Match[str]) -> str:
        nonlocal failed
        text = m.group(0)
        if text == "$${":
            return "${"
        name = m.group(1)
        if name is None:
            reader.error(node, "malformed ${...} reference (write ${NAME} or ${NAME:-default})")
            failed = True
            return text
        value = environ.get(name)
        if m.group(2) is not None:  # ${NAME:-default}
            return value if value else m.group(3)
        if not value:
            state = "is not set" if value is None else "is empty"
            reader.error(node, f"environment variable {name} {state} "
                         f"(write ${{{name}:-default}} to give a default)")
            failed = True
            return text
        return value

    out = _REFERENCE.sub(replace, node.value)
    return None if failed else out
