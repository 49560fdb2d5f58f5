"""Garbage collection: prune old manifest generations, then delete blobs no remaining manifest references."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gbatch_flows.store.paths import LEASE_FILE, MANIFEST_DIR, is_hidden

if TYPE_CHECKING:
    from gbatch_flows.store.base import Store

log = logging.getLogger(__name__)

DEFAULT_BLOB_FOLDERS = ("requests", "batches", "results")
"""Folders whose files are immutable blobs even when none is referenced yet (a crashed run's leftovers)."""


def collect_garbage(
    store: Store, *, grace_s: float = 3600, keep_generations: int = 5, prefixes: Iterable[str] | None = None
) -> list[str]:
    """Prune manifests beyond ``keep_generations`` (and the checkpoints they need), then delete unreferenced
    blobs older than ``grace_s`` seconds. Returns the deleted paths (manifests first).

    Candidates are the files in ``prefixes`` if given, else in DEFAULT_BLOB_FOLDERS and in every top-level
    folder holding a referenced blob; files at the top level, manifests/ and lease.json are never touched.
    Stale temp files (hidden names) older than ``grace_s`` are removed as well.
    """
    deleted = store.prune_manifests(keep_generations)
    referenced = store.manifest_refs()
    if prefixes is not None:
        candidate_prefixes = tuple(p for p in prefixes if p)
    else:
        folders = set(DEFAULT_BLOB_FOLDERS) | {path.split("/", 1)[0] for path in referenced if "/" in path}
        candidate_prefixes = tuple(f"{folder}/" for folder in sorted(folders))
    cutoff = time.time() - grace_s
    victims: list[str] = []
    for entry in store.backend.list_entries(""):
        path = entry.path
        if entry.mtime >= cutoff:
            continue
        if is_hidden(path):
            if ".tmp-" in path.rsplit("/", 1)[-1]:
                victims.append(path)  # temp file of a write that never finished
            continue
        if path == LEASE_FILE or path.startswith(MANIFEST_DIR + "/") or "/" not in path:
            continue
        if path in referenced or not path.startswith(candidate_prefixes):
            continue
        victims.append(path)
    victims.sort()
    store.backend.delete_many(victims)
    if victims:
        log.info("gc of %s deleted %d unreferenced files", store.url, len(victims))
    return deleted + victims
