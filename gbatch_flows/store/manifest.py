"""The in-memory view of one committed generation: an immutable, flat map of sections."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gbatch_flows.store.models import SCHEMA_VERSION


@dataclass(frozen=True)
class ChainInfo:
    """How a generation's state is stored: its checkpoint and the deltas written since (drives checkpointing)."""

    checkpoint: int = 0
    checkpoint_bytes: int = 0
    delta_bytes: int = 0
    delta_count: int = 0


class _SectionsView(Mapping[str, Any]):
    """Read-only mapping that decodes each value on access, so callers always get their own copy."""

    __slots__ = ("_raw",)

    def __init__(self, raw: Mapping[str, bytes]):
        self._raw = raw

    def __getitem__(self, key: str) -> Any:
        return json.loads(self._raw[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def __repr__(self) -> str:
        return f"<sections: {len(self._raw)} keys>"


class Manifest:
    """One committed generation of a task's state. Generation 0 is the empty state of a new task.

    ``sections`` values are decoded on every access: mutating what you got never changes the manifest.
    """

    __slots__ = (
        "_chain",
        "_origin",
        "_raw",
        "_refs",
        "generation",
        "message",
        "schema_version",
        "sha256",
        "time",
        "writer",
    )

    def __init__(
        self,
        generation: int,
        raw: dict[str, bytes],
        *,
        sha256: str = "",
        writer: str = "",
        time: str = "",
        message: str = "",
        refs: dict[str, int] | None = None,
        chain: ChainInfo | None = None,
        schema_version: int = SCHEMA_VERSION,
        origin: str = "",
    ):
        self.generation = generation
        self.schema_version = schema_version
        self.sha256 = sha256
        self.writer = writer
        self.time = time
        self.message = message
        self._raw = raw
        self._refs = refs if refs is not None else {}
        self._chain = chain or ChainInfo()
        self._origin = origin  # URL of the store it was loaded from (commit checks it)

    @property
    def sections(self) -> Mapping[str, Any]:
        """Read-only view of all sections (key -> JSON value)."""
        return _SectionsView(self._raw)

    def get(self, key: str, default: Any = None) -> Any:
        """Decoded value of one section (a fresh copy), or ``default``."""
        raw = self._raw.get(key)
        return default if raw is None else json.loads(raw)

    def keys(self, prefix: str = "") -> list[str]:
        """Sorted section keys starting with ``prefix`` (e.g. ``"batch/"``)."""
        return sorted(k for k in self._raw if k.startswith(prefix))

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def __len__(self) -> int:
        return len(self._raw)

    def referenced_paths(self) -> frozenset[str]:
        """Paths of all blobs referenced by this generation's sections."""
        return frozenset(self._refs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return self.generation == other.generation and self._raw == other._raw

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Manifest(generation={self.generation}, sections={len(self._raw)})"
