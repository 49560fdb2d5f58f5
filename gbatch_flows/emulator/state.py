"""Files and batches: records plus their bytes, in a folder (`state_dir`) that survives restarts, or in memory.

Folder layout: files/<id>.data + files/<id>.json, batches/<id>.json, tmp/ (partial writes). Every write goes to a
temporary file first and is renamed into place, so a crash never leaves a half-written record.

Without `state_dir` the records live in memory but the file bytes are still streamed to disk, into a private
temporary folder removed when the store goes away: a million-request run uploads and produces gigabytes, which the
emulator's memory should not hold (1M requests: 2.7 GB of RSS when bytes were kept in memory).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, Field

from .faults import BatchFaultPlan
from .ids import random_id

COPY_CHUNK = 1024 * 1024
#: Write buffer of a new file: a batch output is written line by line, the disk sees 256 KiB at a time.
WRITE_BUFFER = 256 * 1024
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


class FileTooLarge(ValueError):
    """An upload went past the size limit."""


class FileRecord(BaseModel):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    expires_at: int | None = None
    status: str = "processed"
    seq: int = 0

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": self.status,
            "status_details": None,
        }


class BatchRecord(BaseModel):
    id: str
    seq: int
    endpoint: str
    input_file_id: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    status: str = "validating"
    model: str | None = None
    created_at: float
    expires_at: float
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    enqueued_tokens: int = 0
    faults: BatchFaultPlan | None = None
    cancel_requested: bool = Field(default=False, description="set by the cancel endpoint or a cancel fault")
    output_expires_after: int | None = Field(default=None, description="seconds: expiry of the output/error files")

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_api(self) -> dict[str, Any]:
        def ts(value: float | None) -> int | None:
            return None if value is None else int(value)

        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": None if self.errors is None else {"object": "list", "data": list(self.errors)},
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": ts(self.created_at),
            "in_progress_at": ts(self.in_progress_at),
            "expires_at": ts(self.expires_at),
            "finalizing_at": ts(self.finalizing_at),
            "completed_at": ts(self.completed_at),
            "failed_at": ts(self.failed_at),
            "expired_at": ts(self.expired_at),
            "cancelling_at": ts(self.cancelling_at),
            "cancelled_at": ts(self.cancelled_at),
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": self.cached_tokens},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            "metadata": self.metadata,
        }


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


SPOOL_PREFIX = "gbatch-emulator-"


def _sweep_spools() -> None:
    """Remove the spool folders of emulator processes that are gone (killed: no exit handler ran)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SPOOL_PREFIX}*-*"):
        pid = folder.name[len(SPOOL_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


class FileWriter:
    """Collects the bytes of a new file (a batch output); `commit` makes it a stored file."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.size = 0
        self._path: Path = store.data_dir / "tmp" / random_id("out-", 16)
        # closed in commit/discard
        self._handle: BinaryIO = open(self._path, "wb", buffering=WRITE_BUFFER)  # noqa: SIM115

    def write(self, data: bytes) -> None:
        self._handle.write(data)
        self.size += len(data)

    def commit(self, filename: str, purpose: str, expires_after: int | None = None) -> FileRecord:
        """Store the bytes as a file; it expires `expires_after` seconds after its creation (None = never)."""
        return self._store._commit_writer(self, filename, purpose, expires_after)

    def discard(self) -> None:
        self._handle.close()
        self._path.unlink(missing_ok=True)


class Store:
    """All files and batches; thread-safe (one lock for the records, file bytes are handled outside it)."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.lock = threading.RLock()
        self._save_lock = threading.Lock()
        self.files: dict[str, FileRecord] = {}
        self.batches: dict[str, BatchRecord] = {}
        self._seq = 0
        if self.state_dir is not None:
            self.data_dir = self.state_dir
            for sub in ("files", "batches", "tmp"):
                (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
            self._load()
        else:  # file bytes in a private spool folder, gone with the store (or at exit, or swept by the next one)
            _sweep_spools()
            self.data_dir = Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-"))
            for sub in ("files", "tmp"):
                (self.data_dir / sub).mkdir()
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.data_dir), True)

    def close(self) -> None:
        """Remove the spool folder of a store without `state_dir` (also done when the store is collected)."""
        if self.state_dir is None:
            self._cleanup()

    # --- persistence ---------------------------------------------------------------------------------------------

    def _load(self) -> None:
        assert self.state_dir is not None
        shutil.rmtree(self.state_dir / "tmp", ignore_errors=True)
        (self.state_dir / "tmp").mkdir()
        folder = self.state_dir / "files"
        files = []
        for meta in folder.glob("*.json"):
            record = FileRecord.model_validate_json(meta.read_bytes())
            if (folder / f"{record.id}.data").exists():
                files.append(record)
        for data in folder.glob("*.data"):  # bytes whose record was never written (a crash in between)
            if not data.with_suffix(".json").exists():
                data.unlink()
        batches = [BatchRecord.model_validate_json(p.read_bytes())
                   for p in (self.state_dir / "batches").glob("*.json")]
        for record in sorted(files, key=lambda r: r.seq):
            self.files[record.id] = record
        for batch in sorted(batches, key=lambda r: r.seq):
            self.batches[batch.id] = batch
        self._seq = max([r.seq for r in files] + [b.seq for b in batches] + [0])

    def next_seq(self) -> int:
        with self.lock:
            self._seq += 1
            return self._seq

    def save_batch(self, batch: BatchRecord) -> None:
        """Persist a batch record (no-op in memory mode); saves are ordered so the newest always wins."""
        if self.state_dir is None:
            return
        with self._save_lock:
            with self.lock:
                data = batch.model_dump_json().encode()
            _atomic_write(self.state_dir / "batches" / f"{batch.id}.json", data)

    # --- files ---------------------------------------------------------------------------------------------------

    def create_file(self, source: BinaryIO, filename: str, purpose: str, limit: int,
                    expires_after: int | None = None) -> FileRecord:
        """Store the bytes read from `source` (expiring `expires_after` seconds after creation); FileTooLarge past
        `limit` bytes."""
        writer = FileWriter(self)
        try:
            while chunk := source.read(COPY_CHUNK):
                writer.write(chunk)
                if writer.size > limit:
                    raise FileTooLarge(f"{writer.size} > {limit}")
        except BaseException:
            writer.discard()
            raise
        return self._commit_writer(writer, filename, purpose, expires_after)

    def _commit_writer(self, writer: FileWriter, filename: str, purpose: str,
                       expires_after: int | None = None) -> FileRecord:
        created = int(time.time())
        expires_at = None if expires_after is None else created + expires_after
        record = FileRecord(id=random_id("file-", 22), bytes=writer.size, created_at=created,
                            filename=filename, purpose=purpose, expires_at=expires_at, seq=self.next_seq())
        writer._handle.flush()
        if self.state_dir is not None:  # durable: the bytes reach the disk before the record names them
            os.fsync(writer._handle.fileno())
        writer._handle.close()
        folder = self.data_dir / "files"
        os.replace(writer._path, folder / f"{record.id}.data")
        if self.state_dir is not None:
            _atomic_write(folder / f"{record.id}.json", record.model_dump_json().encode())
        with self.lock:
            self.files[record.id] = record
        return record

    def get_file(self, file_id: str) -> FileRecord | None:
        with self.lock:
            return self.files.get(file_id)

    def list_files(self) -> list[FileRecord]:
        with self.lock:
            return list(self.files.values())

    def file_path(self, file_id: str) -> Path:
        """Where the file's bytes are on disk (under `state_dir`, or the spool folder)."""
        return self.data_dir / "files" / f"{file_id}.data"

    def file_bytes(self, file_id: str) -> bytes:
        """The file's bytes, read whole (small files; use `open_file` or `file_path` to stream)."""
        with self.lock:
            if file_id not in self.files:
                raise KeyError(file_id)
        return self.file_path(file_id).read_bytes()

    def open_file(self, file_id: str) -> BinaryIO:
        """A binary reader over the file's bytes; FileNotFoundError if gone."""
        return open(self.file_path(file_id), "rb")

    def iter_lines(self, file_id: str) -> Iterator[bytes]:
        with self.open_file(file_id) as handle:
            yield from handle

    def delete_file(self, file_id: str) -> bool:
        with self.lock:
            if self.files.pop(file_id, None) is None:
                return False
        (self.data_dir / "files" / f"{file_id}.json").unlink(missing_ok=True)
        (self.data_dir / "files" / f"{file_id}.data").unlink(missing_ok=True)
        return True

    # --- batches -------------------------------------------------------------------------------------------------

    def add_batch(self, batch: BatchRecord) -> None:
        with self.lock:
            self.batches[batch.id] = batch
        self.save_batch(batch)

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        with self.lock:
            return self.batches.get(batch_id)

    def list_batches(self) -> list[BatchRecord]:
        """Oldest first."""
        with self.lock:
            return list(self.batches.values())
