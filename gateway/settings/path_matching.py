"""`server.path_matching`: how the upstream reads paths (see gateway/http/path_matching.py)."""

from __future__ import annotations

from dataclasses import dataclass

CHOICES = ("refuse", "strip", "literal")


@dataclass(frozen=True, slots=True)
class PathMatching:
    case_sensitive: bool = True  # false: /API/Login meets the route for /api/login
    trailing_slash: str = "strict"  # ignore: an exact route also matches with '/' added/removed
    path_parameters: str = "refuse"  # ';' in a segment: refuse | strip | literal
    trailing_dots: str = "refuse"  # a segment ending in '.' or '%20': refuse|strip|literal

    @property
    def folds_case(self) -> bool:
        return not self.case_sensitive


DEFAULT = PathMatching()
