"""docs/policy.md documents exactly the keys the loader accepts, and its example loads."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.config import load_policy
from gateway.config.loader import KEYS

DOC = Path(__file__).resolve().parents[1] / "docs" / "policy.md"


def documented_keys() -> set[str]:
    return set(re.findall(r"^\| `([a-z0-9_\[\].*]+)` \|", DOC.read_text(), re.MULTILINE))


def loader_keys() -> set[str]:
    return {f"{section}.{key}" if section else key for section, keys in KEYS.items()
            for key in keys}


def test_every_loader_key_is_documented_and_nothing_else() -> None:
    assert documented_keys() == loader_keys()


def test_the_reference_example_is_a_valid_policy(tmp_path: Path) -> None:
    example = DOC.read_text().split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "example.yaml"
    path.write_text(example)
    assert load_policy(path).policy.environment == "production"
