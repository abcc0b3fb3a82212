"""Reading a policy file into YAML nodes that remember where they came from.

The loader works on `yaml.compose()` nodes rather than plain Python values so that every
problem can point at FILE:LINE:COL, including keys that appear twice in one mapping (which
PyYAML would otherwise silently overwrite).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.config.errors import PolicyError, Problem


def compose_file(path: Path) -> yaml.Node | None:
    """The document's root node, or None for an empty file; syntax errors become PolicyError."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problem = Problem(name, 1, 1, f"cannot read policy file: {exc.strerror}")
        raise PolicyError([problem]) from exc
    except UnicodeDecodeError as exc:
        raise PolicyError([Problem(name, 1, 1, "policy file is not UTF-8")]) from exc
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(filter(None, [exc.context, exc.problem]))
        raise PolicyError([Problem(name, line, col, f"YAML syntax: {message}")]) from exc
    except yaml.YAMLError as exc:
        raise PolicyError([Problem(name, 1, 1, f"YAML syntax: {exc}")]) from exc
