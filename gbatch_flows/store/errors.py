"""Errors raised by the state store. Every message says what happened and what to do about it."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error raised by ``gbatch_flows.store``."""


class ConcurrentModification(StoreError):
    """Another commit happened after the manifest generation a commit was based on."""

    def __init__(self, message: str, *, generation: int, base_generation: int, winner: str | None = None):
        super().__init__(message)
        self.generation = generation
        self.base_generation = base_generation
        self.winner = winner


class LeaseHeld(StoreError):
    """Another live run holds the task's lease, or this run lost its lease."""

    def __init__(self, message: str, *, holder: str | None = None, expires_at: float | None = None):
        super().__init__(message)
        self.holder = holder
        self.expires_at = expires_at


class CorruptManifest(StoreError):
    """A manifest file cannot be trusted: unreadable, hand-edited, damaged or out of sequence."""

    def __init__(self, path: str, problem: str):
        super().__init__(
            f"manifest {path} is unusable: {problem}. The store was left unchanged. "
            "Restore the file from a backup, or roll back by moving this generation (and any newer ones) out "
            "of manifests/ (see docs/store.md)."
        )
        self.path = path
        self.problem = problem


class UnsupportedSchemaVersion(CorruptManifest):
    """A manifest was written by a newer gbatch_flows with a state format this version cannot read."""

    def __init__(self, path: str, found: int, supported: int):
        StoreError.__init__(
            self,
            f"manifest {path} has schema_version {found}, but this gbatch_flows reads up to {supported}: "
            "it was written by a newer gbatch_flows. Upgrade gbatch_flows to open this task.",
        )
        self.path = path
        self.problem = f"schema_version {found} > {supported}"
        self.found = found
        self.supported = supported


class ChecksumMismatch(StoreError):
    """A blob's bytes differ from the size/sha256 recorded in its reference."""

    def __init__(self, path: str, problem: str):
        super().__init__(
            f"blob {path} does not match its reference: {problem}. It was changed or damaged after it was "
            "committed; restore it, or roll back to a manifest generation that does not use it (docs/store.md)."
        )
        self.path = path
        self.problem = problem


class BlobNotFound(StoreError, FileNotFoundError):
    """A file the caller expected (usually a referenced blob) does not exist."""

    def __init__(self, path: str, url: str):
        StoreError.__init__(self, f"{path} does not exist in the store at {url}")
        self.path = path


class InvalidPath(StoreError, ValueError):
    """A path given to the store is not a plain relative path inside the task folder."""


class InvalidSection(StoreError, ValueError):
    """A section key or value given to ``Store.commit`` cannot be stored."""


class CasConflict(StoreError):
    """Internal: a compare-and-swap write found a different current version."""
