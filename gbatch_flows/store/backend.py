"""The few storage primitives the Store needs; one small implementation per kind of storage."""

from __future__ import annotations

import contextlib
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO


@dataclass(frozen=True)
class Entry:
    """A file found by a listing: path relative to the task folder, size in bytes, mtime in epoch seconds."""

    path: str
    size: int
    mtime: float


def content_token(data: bytes | None) -> str | None:
    """Version token for compare-and-swap on backends without ETags: the sha256 of the content."""
    return None if data is None else hashlib.sha256(data).hexdigest()


def checked_chunks(data: bytes | bytearray | memoryview | Iterable[bytes]) -> Iterator[bytes]:
    """Yield the chunks of ``data`` (bytes or an iterable of bytes), refusing str and other types."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data)
        return
    if isinstance(data, str):
        raise TypeError("put_blob takes bytes or an iterable of bytes; encode text first (text.encode())")
    for chunk in data:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"put_blob chunks must be bytes, got {type(chunk).__name__}")
        yield chunk if isinstance(chunk, bytes) else bytes(chunk)


class Backend(ABC):
    """Storage primitives over paths relative to the task folder ('/'-separated, already validated)."""

    url: str

    @abstractmethod
    def write_stream(self, path: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        """Write chunks atomically (readers never see a partial file), replacing any file; return (size, sha256)."""

    def write_bytes(self, path: str, data: bytes) -> None:
        """Atomically replace ``path`` with ``data``."""
        self.write_stream(path, [data])

    @abstractmethod
    def create_exclusive(self, path: str, data: bytes) -> None:
        """Create ``path`` with ``data`` only if it does not exist (atomically); else raise FileExistsError."""

    @abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """Whole content; FileNotFoundError if missing."""

    def read_many(self, paths: list[str]) -> dict[str, bytes]:
        """Contents of several files (missing ones are left out)."""
        out: dict[str, bytes] = {}
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                out[path] = self.read_bytes(path)
        return out

    @abstractmethod
    def open_read(self, path: str) -> tuple[BinaryIO, int]:
        """Open for streamed reading; return (file object, current size). FileNotFoundError if missing."""

    @abstractmethod
    def exists(self, path: str) -> bool:
        """True if a file exists at ``path``."""

    @abstractmethod
    def list_names(self, folder: str) -> list[str]:
        """Names of the files directly inside ``folder`` (empty if the folder does not exist)."""

    @abstractmethod
    def list_entries(self, folder: str) -> list[Entry]:
        """All files under ``folder`` ('' = the task folder), recursively, hidden temp files included."""

    @abstractmethod
    def delete_many(self, paths: list[str]) -> None:
        """Delete files; missing ones are ignored."""

    @abstractmethod
    def cas_read(self, path: str) -> tuple[bytes | None, str | None]:
        """(content, version token) of a small mutable file; (None, None) if it does not exist."""

    @abstractmethod
    def cas_write(self, path: str, data: bytes, expected: str | None) -> str:
        """Replace ``path`` only if its version token is still ``expected`` (None = must not exist).

        Returns the new token; raises CasConflict otherwise.
        """
