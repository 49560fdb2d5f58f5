"""Local-disk backend: temp file + fsync + rename/link in the same folder, folder fsync, flock for CAS."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from gbatch_flows.store.backend import Backend, Entry, content_token
from gbatch_flows.store.errors import CasConflict, StoreError

_WRITE_BUFFER = 1 << 20


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend(Backend):
    """A task folder on a local (POSIX) file system."""

    def __init__(self, root: Path):
        self.root = root
        self.url = str(root)
        self._known_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()
        self._ensure_dir(root)

    def _full(self, path: str) -> Path:
        return self.root / path

    def _ensure_dir(self, folder: Path) -> None:
        """Create ``folder`` (and parents) durably: each new folder's parent is fsynced."""
        if folder in self._known_dirs:
            return
        missing: list[Path] = []
        probe = folder
        while not probe.is_dir():
            missing.append(probe)
            probe = probe.parent
        for new in reversed(missing):
            with contextlib.suppress(FileExistsError):
                new.mkdir()
            _fsync_dir(new.parent)
        with self._dirs_lock:
            self._known_dirs.add(folder)

    def _temp_for(self, final: Path) -> Path:
        return final.parent / f".{final.name}.tmp-{uuid.uuid4().hex}"

    def _write_temp(self, final: Path, chunks: Iterable[bytes]) -> tuple[Path, int, str]:
        self._ensure_dir(final.parent)
        tmp = self._temp_for(final)
        digest = hashlib.sha256()
        size = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with open(fd, "wb", buffering=_WRITE_BUFFER) as handle:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, size, digest.hexdigest()

    def write_stream(self, path: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        final = self._full(path)
        tmp, size, sha = self._write_temp(final, chunks)
        try:
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        return size, sha

    def create_exclusive(self, path: str, data: bytes) -> None:
        final = self._full(path)
        tmp, _, _ = self._write_temp(final, [data])
        try:
            os.link(tmp, final)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP) and not final.exists():
                raise StoreError(
                    f"the file system of {self.root} does not support hard links, which commits need for an "
                    "atomic create-if-absent; put the task folder on a local POSIX file system"
                ) from exc
            raise
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(final.parent)

    def read_bytes(self, path: str) -> bytes:
        with open(self._full(path), "rb") as handle:
            return handle.read()

    def open_read(self, path: str) -> tuple[BinaryIO, int]:
        handle = open(self._full(path), "rb", buffering=0)  # noqa: SIM115 - the caller closes it
        return handle, os.fstat(handle.fileno()).st_size

    def exists(self, path: str) -> bool:
        return self._full(path).is_file()

    def list_names(self, folder: str) -> list[str]:
        try:
            with os.scandir(self._full(folder) if folder else self.root) as entries:
                return [e.name for e in entries if e.is_file()]
        except FileNotFoundError:
            return []

    def list_entries(self, folder: str) -> list[Entry]:
        base = self._full(folder) if folder else self.root
        found: list[Entry] = []
        stack = [base]
        while stack:
            current = stack.pop()
            try:
                with os.scandir(current) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            st = entry.stat()
                            rel = Path(entry.path).relative_to(self.root).as_posix()
                            found.append(Entry(rel, st.st_size, st.st_mtime))
            except FileNotFoundError:
                continue
        return found

    def delete_many(self, paths: list[str]) -> None:
        folders: set[Path] = set()
        for path in paths:
            full = self._full(path)
            try:
                full.unlink()
                folders.add(full.parent)
            except FileNotFoundError:
                pass
        for folder in folders:
            _fsync_dir(folder)

    def cas_read(self, path: str) -> tuple[bytes | None, str | None]:
        try:
            data = self.read_bytes(path)
        except FileNotFoundError:
            return None, None
        return data, content_token(data)

    def cas_write(self, path: str, data: bytes, expected: str | None) -> str:
        final = self._full(path)
        self._ensure_dir(final.parent)
        lock_path = final.parent / f".{final.name}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _, token = self.cas_read(path)
            if token != expected:
                raise CasConflict(f"{path} changed since it was read")
            self.write_stream(path, [data])
        finally:
            os.close(fd)  # closing releases the flock
        return content_token(data)  # type: ignore[return-value]
