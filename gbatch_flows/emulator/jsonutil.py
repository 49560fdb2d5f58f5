"""Fast JSON (orjson when installed, else the standard library) with the same results either way."""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson comes with prefect, but the emulator does not need it
    orjson = None  # type: ignore[assignment]


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises ValueError when it is not JSON."""
    if orjson is not None:
        return orjson.loads(data)
    return json.loads(data)


def dumps(value: Any, sort_keys: bool = False) -> bytes:
    """Compact UTF-8 JSON (no spaces)."""
    if orjson is not None:
        try:
            return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
        except TypeError:  # e.g. integers beyond 64 bits: the standard library handles them
            pass
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys, default=str).encode()


def dumps_line(value: Any) -> bytes:
    """One JSONL line."""
    return dumps(value) + b"\n"
