"""Relative paths inside a task folder: validation and the reserved names of the store's own files."""

from __future__ import annotations

import re

from gbatch_flows.store.errors import InvalidPath

MANIFEST_DIR = "manifests"
LEASE_FILE = "lease.json"
_MANIFEST_NAME = re.compile(r"^(\d{20})\.json$")
_MAX_PATH = 1024


def validate_path(path: str) -> str:
    """Return ``path`` if it is a clean relative path ("a/b.jsonl"), else raise ``InvalidPath`` saying why."""
    if not isinstance(path, str) or not path:
        raise InvalidPath(f"store paths are non-empty strings, got {path!r}")
    if len(path) > _MAX_PATH:
        raise InvalidPath(f"store path is longer than {_MAX_PATH} characters: {path[:60]!r}...")
    if path.startswith("/") or "\\" in path or "://" in path:
        raise InvalidPath(f"store paths are relative to the task folder and use '/': got {path!r}")
    if any(ord(c) < 32 for c in path):
        raise InvalidPath(f"store path contains a control character: {path!r}")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise InvalidPath(f"store path has an empty, '.' or '..' component: {path!r}")
        if part.startswith("."):
            raise InvalidPath(
                f"store path components may not start with '.' (reserved for temp files): {path!r}"
            )
    return path


def validate_user_path(path: str) -> str:
    """Like ``validate_path`` but also refuses the store's own files (manifests, lease)."""
    validate_path(path)
    if path == LEASE_FILE or path == MANIFEST_DIR or path.startswith(MANIFEST_DIR + "/"):
        raise InvalidPath(
            f"{path!r} is managed by the store itself (manifests/ and lease.json); use commit/acquire_lease"
        )
    return path


def manifest_path(generation: int) -> str:
    """Path of the manifest file of a generation: ``manifests/00000000000000000017.json``."""
    return f"{MANIFEST_DIR}/{generation:020d}.json"


def parse_manifest_name(name: str) -> int | None:
    """Generation number of a file name in manifests/, or None for anything else (temp files, backups)."""
    match = _MANIFEST_NAME.match(name)
    return int(match.group(1)) if match else None


def is_hidden(path: str) -> bool:
    """True for temp and lock files (a component starting with '.'), which listings skip."""
    return any(part.startswith(".") for part in path.split("/"))
