"""The Store: one task folder holding immutable blobs, a chain of manifest generations, and a lease."""

from __future__ import annotations

import builtins
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from gbatch_flows.store.backend import Backend, checked_chunks
from gbatch_flows.store.codec import decode_manifest, dump_value, encode_manifest
from gbatch_flows.store.errors import (
    BlobNotFound,
    ConcurrentModification,
    CorruptManifest,
    StoreError,
)
from gbatch_flows.store.manifest import ChainInfo, Manifest
from gbatch_flows.store.models import SCHEMA_VERSION, BlobRef, ManifestEnvelope, iter_blob_refs
from gbatch_flows.store.paths import (
    MANIFEST_DIR,
    manifest_path,
    parse_manifest_name,
    validate_path,
    validate_user_path,
)
from gbatch_flows.store.sections import encode_changes, raw_ref_paths
from gbatch_flows.store.verify import open_verified

if TYPE_CHECKING:
    from gbatch_flows.store.lease import Lease

log = logging.getLogger(__name__)

_LOAD_ATTEMPTS = 5


class _MissingGeneration(Exception):
    def __init__(self, generation: int, needed_by: int):
        super().__init__(generation)
        self.generation = generation
        self.needed_by = needed_by


def default_owner_id() -> str:
    """Identity of this process for manifests and leases: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _add_refs(refs: dict[str, int], paths: Iterable[str]) -> None:
    for path in paths:
        refs[path] = refs.get(path, 0) + 1


def _drop_refs(refs: dict[str, int], paths: Iterable[str]) -> None:
    for path in paths:
        left = refs.get(path, 0) - 1
        if left > 0:
            refs[path] = left
        else:
            refs.pop(path, None)


class Store:
    """Durable state of one task. Thread-safe; several Store objects (or processes) may share one folder.

    Use ``open_store(url)`` to get one.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_chain: int = 64,
        min_checkpoint_bytes: int = 16 << 10,
        auto_keep_generations: int | None = 10,
    ):
        if max_chain < 1:
            raise ValueError("max_chain must be >= 1")
        self._backend = backend
        self._max_chain = max_chain
        self._min_checkpoint_bytes = min_checkpoint_bytes
        self._auto_keep = auto_keep_generations
        self._lock = threading.RLock()
        self._cache: Manifest | None = None
        self.writer_id = default_owner_id()

    @property
    def url(self) -> str:
        """Where the task folder lives ("/abs/path", "s3://bucket/prefix", "memory://name")."""
        return self._backend.url

    @property
    def backend(self) -> Backend:
        """The storage primitives under this store (for tools and tests)."""
        return self._backend

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # ------------------------------------------------------------------ manifests

    def generations(self) -> list[int]:
        """Generation numbers present in manifests/, oldest first."""
        found = (parse_manifest_name(name) for name in self._backend.list_names(MANIFEST_DIR))
        return sorted(g for g in found if g is not None)

    def load(self) -> Manifest:
        """The newest committed state (generation 0 with no sections for a new task)."""
        for _ in range(_LOAD_ATTEMPTS):
            gens = self.generations()
            if not gens:
                return Manifest(0, {}, origin=self.url)
            newest = gens[-1]
            with self._lock:
                cached = self._cache
            if cached is not None and cached.generation == newest:
                return cached
            try:
                manifest = self._build(newest, cached)
            except _MissingGeneration as missing:
                if self.generations()[-1:] != [newest]:
                    continue  # pruned under us by a newer commit: start again from the new newest
                raise CorruptManifest(
                    manifest_path(missing.needed_by),
                    f"it needs generation {missing.generation} ({manifest_path(missing.generation)}), "
                    "which is missing",
                ) from None
            self._remember(manifest)
            return manifest
        raise StoreError(f"could not load {self.url}: the manifests kept changing while reading them; retry")

    def load_generation(self, generation: int) -> Manifest:
        """The state as of an older generation still present (for inspection and manual roll-back)."""
        try:
            return self._build(generation, None)
        except _MissingGeneration as missing:
            if missing.generation == generation:
                present = self.generations()
                span = f"{present[0]}..{present[-1]}" if present else "none"
                raise StoreError(
                    f"generation {generation} does not exist in {self.url} (present: {span})"
                ) from None
            raise CorruptManifest(
                manifest_path(missing.needed_by),
                f"it needs generation {missing.generation}, which is missing (pruned?)",
            ) from None

    def _remember(self, manifest: Manifest) -> None:
        """Cache the newest state seen (found by listing, or just committed); ``load`` lists every time anyway."""
        with self._lock:
            self._cache = manifest

    def _read_envelopes(self, generations: list[int], needed_by: int) -> list[tuple[ManifestEnvelope, int]]:
        paths = [manifest_path(g) for g in generations]
        datas = self._backend.read_many(paths)
        out = []
        for gen, path in zip(generations, paths):
            if path not in datas:
                raise _MissingGeneration(gen, needed_by)
            out.append((decode_manifest(path, datas[path], gen), len(datas[path])))
        return out

    def _build(self, target: int, start: Manifest | None) -> Manifest:
        """State of ``target``: its checkpoint plus deltas, or ``start`` plus newer deltas when possible."""
        [(last, last_size)] = self._read_envelopes([target], target)
        if start is not None and not (last.checkpoint <= start.generation < target):
            start = None
        first = last.checkpoint if start is None else start.generation + 1
        middle = self._read_envelopes(list(range(first, target)), target) if first < target else []
        chain = middle + [(last, last_size)]
        if start is not None and chain[0][0].parent_sha256 != start.sha256:
            return self._build(target, None)  # our cached state is not this chain's ancestor (roll-back)
        return self._apply_chain(start, chain)

    def _apply_chain(self, start: Manifest | None, chain: list[tuple[ManifestEnvelope, int]]) -> Manifest:
        raw: dict[str, bytes] = dict(start._raw) if start else {}
        refs: dict[str, int] = dict(start._refs) if start else {}
        info = start._chain if start else ChainInfo()
        previous = start.sha256 if start else None
        for env, size in chain:
            path = manifest_path(env.generation)
            if previous is not None and env.parent_sha256 != previous:
                raise CorruptManifest(
                    path,
                    f"it does not follow generation {env.parent} (parent_sha256 differs: files mixed up)",
                )
            if env.kind == "checkpoint":
                raw, refs = {}, {}
                for key, value in (env.sections or {}).items():
                    raw[key] = dump_value(value)
                    _add_refs(refs, self._value_refs(path, value))
                info = ChainInfo(checkpoint=env.generation, checkpoint_bytes=size)
            else:
                if previous is None or env.checkpoint != info.checkpoint:
                    raise CorruptManifest(
                        path,
                        f"it says its checkpoint is generation {env.checkpoint}, which is not in its chain",
                    )
                for key in env.deleted or []:
                    old = raw.pop(key, None)
                    if old is not None:
                        _drop_refs(refs, raw_ref_paths(old))
                for key, value in (env.changes or {}).items():
                    old = raw.get(key)
                    if old is not None:
                        _drop_refs(refs, raw_ref_paths(old))
                    raw[key] = dump_value(value)
                    _add_refs(refs, self._value_refs(path, value))
                info = ChainInfo(
                    info.checkpoint, info.checkpoint_bytes, info.delta_bytes + size, info.delta_count + 1
                )
            previous = env.sha256
        env = chain[-1][0]
        return Manifest(
            env.generation,
            raw,
            sha256=env.sha256,
            writer=env.writer,
            time=env.time,
            message=env.message,
            refs=refs,
            chain=info,
            schema_version=env.schema_version,
            origin=self.url,
        )

    @staticmethod
    def _value_refs(path: str, value: Any) -> list[str]:
        try:
            return [ref.path for ref in iter_blob_refs(value)]
        except ValueError as exc:
            raise CorruptManifest(path, f"a blob reference is invalid: {exc}") from None

    def commit(
        self,
        base: Manifest,
        changes: Mapping[str, Any | None],
        message: str = "",
        *,
        lease: Lease | None = None,
    ) -> Manifest:
        """Atomically create generation ``base.generation + 1`` = ``base`` with ``changes`` applied.

        A value of None deletes the key. Raises ConcurrentModification if another commit came after ``base``;
        if ``lease`` is given, raises LeaseHeld first when it is no longer ours.
        """
        if not isinstance(base, Manifest):
            raise TypeError("base must be a Manifest returned by store.load() or store.commit()")
        if base._origin != self.url:
            raise StoreError(
                f"base generation {base.generation} was loaded from {base._origin or 'nowhere'}, not from {self.url}; "
                "commit on a Manifest loaded from this store"
            )
        upserts, deleted, _ = encode_changes(changes)
        if lease is not None:
            lease.check()
        writer = getattr(lease, "owner", None) or self.writer_id
        generation = base.generation + 1
        raw = dict(base._raw)
        refs = dict(base._refs)
        deleted = [key for key in deleted if key in raw]
        for key in deleted:
            _drop_refs(refs, raw_ref_paths(raw.pop(key)))
        for key, value in upserts.items():
            old = raw.get(key)
            if old is not None:
                _drop_refs(refs, raw_ref_paths(old))
            raw[key] = value
            _add_refs(refs, raw_ref_paths(value))
        header: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "generation": generation,
            "kind": "delta",
            "checkpoint": base._chain.checkpoint,
            "parent": base.generation,
            "parent_sha256": base.sha256,
            "writer": writer,
            "time": _now_iso(),
            "message": str(message),
        }
        chain = base._chain
        body, sha = b"", ""
        if base.generation > 0 and chain.delta_count + 1 < self._max_chain:
            body, sha = encode_manifest(header, changes=upserts, deleted=deleted)
            threshold = max(chain.checkpoint_bytes, self._min_checkpoint_bytes)
            if chain.delta_bytes + len(body) <= threshold:
                chain = ChainInfo(
                    chain.checkpoint,
                    chain.checkpoint_bytes,
                    chain.delta_bytes + len(body),
                    chain.delta_count + 1,
                )
            else:
                body = b""
        if not body:
            header.update(kind="checkpoint", checkpoint=generation)
            body, sha = encode_manifest(header, sections=raw)
            chain = ChainInfo(checkpoint=generation, checkpoint_bytes=len(body))
        path = manifest_path(generation)
        try:
            self._backend.create_exclusive(path, body)
        except FileExistsError:
            self._check_lost_race(path, body, base)  # returns only if the file is our own (retried) write
        self._check_not_orphaned(generation, sha, base, header["kind"])
        manifest = Manifest(
            generation,
            raw,
            sha256=sha,
            writer=writer,
            time=header["time"],
            message=header["message"],
            refs=refs,
            chain=chain,
            origin=self.url,
        )
        self._remember(manifest)
        if header["kind"] == "checkpoint" and self._auto_keep:
            try:
                self.prune_manifests(self._auto_keep)
            except Exception as exc:  # noqa: BLE001 - the commit succeeded; pruning is housekeeping
                log.warning("pruning old manifests of %s failed (the commit is fine): %s", self.url, exc)
        return manifest

    def _check_lost_race(self, path: str, body: bytes, base: Manifest) -> None:
        generation = base.generation + 1
        try:
            existing = self._backend.read_bytes(path)
        except FileNotFoundError:
            existing = b""
        if existing == body:
            return  # our own write, acknowledged late (a retried request): the commit did happen
        winner, when, what = "another writer", "an unknown time", ""
        try:
            env = decode_manifest(path, existing, generation)
            winner, when, what = env.writer, env.time, f" with message {env.message!r}" if env.message else ""
        except StoreError:
            pass
        raise ConcurrentModification(
            f"cannot commit generation {generation} of {self.url}: {winner} committed generation {generation} "
            f"at {when}{what}, after the generation {base.generation} your changes were based on. "
            "Call store.load() to get the newest state and apply your changes again.",
            generation=generation,
            base_generation=base.generation,
            winner=winner,
        )

    def _check_not_orphaned(self, generation: int, sha: str, base: Manifest, kind: str) -> None:
        """After creating our file, make sure it really extends the newest state.

        Refused (our file is removed again): a newer generation already existed (our base was so old that our
        generation number had been pruned), or our base generation is gone while older ones remain (rolled back
        by hand under a running writer), or a delta whose base is gone (it could never be loaded).
        """
        gens = self.generations()
        newer = [g for g in gens if g > generation]
        if newer and newer[0] == generation + 1:
            try:
                follower_path = manifest_path(generation + 1)
                follower = decode_manifest(
                    follower_path, self._backend.read_bytes(follower_path), generation + 1
                )
                if follower.parent_sha256 == sha:
                    return  # someone already committed on top of ours: ours is part of the history
            except (FileNotFoundError, StoreError):
                pass
        if newer:
            problem = f"the task is already at generation {newer[-1]} (your base generation was pruned)"
        elif base.generation > 0 and base.generation not in gens:
            if kind == "checkpoint" and not any(g < generation for g in gens):
                return  # everything older was pruned right after we wrote: fine
            problem = f"generation {base.generation} is no longer in manifests/ (rolled back by hand?)"
        else:
            return
        self._backend.delete_many([manifest_path(generation)])
        raise ConcurrentModification(
            f"cannot commit generation {generation} of {self.url}: {problem}; your changes were based on "
            f"generation {base.generation}, which is stale. Call store.load() and apply your changes again.",
            generation=generation,
            base_generation=base.generation,
        )

    def prune_manifests(self, keep_generations: int = 5) -> list[str]:
        """Delete manifest files older than the newest ``keep_generations`` and the checkpoint they need."""
        keep = max(1, keep_generations)
        gens = self.generations()
        if len(gens) <= keep:
            return []
        oldest_kept = gens[-keep]
        path = manifest_path(oldest_kept)
        floor = decode_manifest(path, self._backend.read_bytes(path), oldest_kept).checkpoint
        victims = [manifest_path(g) for g in gens if g < floor]
        self._backend.delete_many(victims)
        return victims

    # ------------------------------------------------------------------ blobs and plain files

    def _check_not_referenced(self, path: str, action: str) -> None:
        with self._lock:
            cached = self._cache
        if cached is not None and path in cached._refs:
            raise StoreError(
                f"cannot {action} {path}: generation {cached.generation} references it and blobs are immutable; "
                "write the new content under a new path and commit a reference to that"
            )

    def put_blob(self, path: str, data: bytes | Iterable[bytes]) -> BlobRef:
        """Write an immutable file atomically, streaming the chunks; return its BlobRef (path, size, sha256)."""
        validate_user_path(path)
        self._check_not_referenced(path, "overwrite")
        size, sha = self._backend.write_stream(path, checked_chunks(data))
        return BlobRef(path=path, size=size, sha256=sha)

    def open_blob(self, ref: BlobRef | Mapping[str, Any]) -> BinaryIO:
        """Open a blob for streamed reading; a wrong size fails at once, wrong content at end of file."""
        ref = ref if isinstance(ref, BlobRef) else BlobRef.model_validate(ref)
        try:
            handle, size = self._backend.open_read(ref.path)
        except FileNotFoundError:
            raise BlobNotFound(ref.path, self.url) from None
        return open_verified(handle, size, ref)  # type: ignore[return-value]

    def read_blob(self, ref: BlobRef | Mapping[str, Any]) -> bytes:
        """Whole content of a blob, verified."""
        with self.open_blob(ref) as handle:
            return handle.read()

    def iter_lines(self, ref: BlobRef | Mapping[str, Any]) -> Iterator[bytes]:
        """Lines of a blob as bytes, each with its b"\\n" (like iterating a binary file); verified at the end."""
        with self.open_blob(ref) as handle:
            yield from handle
            handle.read()  # reach EOF so the checksum is checked even after a last line without newline

    def exists(self, path: str) -> bool:
        """True if a file exists at ``path`` (relative to the task folder)."""
        return self._backend.exists(validate_path(path))

    def list(self, prefix: str = "") -> list[str]:
        """Sorted relative paths of the files whose path starts with ``prefix`` (temp files skipped)."""
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if folder:
            validate_path(folder)
        return sorted(
            entry.path
            for entry in self._backend.list_entries(folder)
            if entry.path.startswith(prefix) and not any(p.startswith(".") for p in entry.path.split("/"))
        )

    def delete(self, path: str) -> None:
        """Delete a file (no error if missing). Refuses blobs the current state references."""
        validate_user_path(path)
        self._check_not_referenced(path, "delete")
        self._backend.delete_many([path])

    def write_text(self, path: str, text: str) -> None:
        """Atomically replace a plain mutable text file (UTF-8), e.g. a final output file."""
        validate_user_path(path)
        if not isinstance(text, str):
            raise TypeError(f"write_text takes str, got {type(text).__name__}")
        self._check_not_referenced(path, "overwrite")
        self._backend.write_bytes(path, text.encode("utf-8"))

    def read_text(self, path: str) -> str:
        """Content of a text file (UTF-8)."""
        try:
            return self._backend.read_bytes(validate_path(path)).decode("utf-8")
        except FileNotFoundError:
            raise BlobNotFound(path, self.url) from None

    # ------------------------------------------------------------------ lease and garbage collection

    def acquire_lease(self, ttl_s: float = 60, owner: str | None = None, renew: bool = True,
                      create_timeout_s: float | None = None) -> Lease:
        """Take the task's lease (see ``gbatch_flows.store.lease.Lease``); raise LeaseHeld if a live run has it."""
        from gbatch_flows.store.lease import acquire_lease

        return acquire_lease(self, ttl_s=ttl_s, owner=owner, renew=renew, create_timeout_s=create_timeout_s)

    def gc(
        self, grace_s: float = 3600, keep_generations: int = 5, prefixes: Iterable[str] | None = None
    ) -> builtins.list[str]:
        """Prune old manifests, then delete unreferenced blobs older than ``grace_s``; return deleted paths."""
        from gbatch_flows.store.gc import collect_garbage

        return collect_garbage(self, grace_s=grace_s, keep_generations=keep_generations, prefixes=prefixes)

    def manifest_refs(self) -> set[str]:
        """Blob paths referenced by any manifest file still present (a superset of every loadable state's)."""
        refs: set[str] = set()
        for gen in self.generations():
            path = manifest_path(gen)
            try:
                data = self._backend.read_bytes(path)
            except FileNotFoundError:
                continue
            env = decode_manifest(path, data, gen)
            for value in (env.sections or env.changes or {}).values():
                refs.update(self._value_refs(path, value))
        return refs
