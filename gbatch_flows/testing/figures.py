"""Figures the test suite measures (kills survived, faults injected, shares of a limit in use...), printed after
the run. With pytest-xdist each worker fills its own copy; the workers send them to the controller at their end,
which merges them: numbers add up, lists are joined, mappings merge key by key."""

from __future__ import annotations

import json
from typing import Any

FIGURES: dict[str, Any] = {}
WORKER_KEY = "gbatch_figures"


def merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Add ``other``'s figures to ``into`` (in place) and return it."""
    for key, value in other.items():
        mine = into.get(key)
        if isinstance(mine, dict) and isinstance(value, dict):
            merge(mine, value)
        elif isinstance(mine, list) and isinstance(value, list):
            mine.extend(value)
        elif isinstance(mine, (int, float)) and isinstance(value, (int, float)) and not isinstance(mine, bool):
            into[key] = mine + value
        else:
            into[key] = value
    return into


def dumps() -> str:
    return json.dumps(FIGURES, default=str)


def merge_json(text: str) -> None:
    merge(FIGURES, json.loads(text))
