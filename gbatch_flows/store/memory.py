"""memory:// backend for tests and dry runs: fsspec's in-process memory file system plus a lock."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable

import fsspec

from gbatch_flows.store.backend import content_token
from gbatch_flows.store.errors import CasConflict
from gbatch_flows.store.fsspec_backend import FsspecBackend

_LOCK = threading.RLock()  # one lock for the whole (process-global) memory file system


class MemoryBackend(FsspecBackend):
    """State kept in this process only; atomicity comes from one global lock."""

    def __init__(self, name: str):
        super().__init__(fsspec.filesystem("memory"), "/" + name.strip("/"), f"memory://{name.strip('/')}")

    def write_stream(self, path: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        digest = hashlib.sha256()
        parts = []
        for chunk in chunks:
            digest.update(chunk)
            parts.append(chunk)
        data = b"".join(parts)
        with _LOCK:
            self.fs.pipe_file(self._full(path), data)
        return len(data), digest.hexdigest()

    def create_exclusive(self, path: str, data: bytes) -> None:
        with _LOCK:
            if self.fs.exists(self._full(path)):
                raise FileExistsError(path)
            self.fs.pipe_file(self._full(path), data)

    def read_bytes(self, path: str) -> bytes:
        with _LOCK:
            return super().read_bytes(path)

    def cas_read(self, path: str) -> tuple[bytes | None, str | None]:
        with _LOCK:
            try:
                data = self.read_bytes(path)
            except FileNotFoundError:
                return None, None
        return data, content_token(data)

    def cas_write(self, path: str, data: bytes, expected: str | None) -> str:
        with _LOCK:
            _, token = self.cas_read(path)
            if token != expected:
                raise CasConflict(f"{path} changed since it was read")
            self.fs.pipe_file(self._full(path), data)
        return content_token(data)  # type: ignore[return-value]
