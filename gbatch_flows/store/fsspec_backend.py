"""Shared code of the fsspec-based backends (S3 and memory://): path mapping, reading, listing, deleting."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any, BinaryIO

from fsspec import AbstractFileSystem

from gbatch_flows.store.backend import Backend, Entry

READ_BLOCK = 8 << 20


def _mtime(info: dict[str, Any]) -> float:
    value = info.get("LastModified", info.get("mtime", info.get("created", 0.0)))
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value or 0.0)


class FsspecBackend(Backend):
    """Common operations over an fsspec file system rooted at ``root`` (no protocol, no trailing '/')."""

    def __init__(self, fs: AbstractFileSystem, root: str, url: str):
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url

    def _full(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def _relative(self, full: str) -> str:
        full = full.lstrip("/") if not self.root.startswith("/") else full
        prefix = self.root + "/"
        return full.removeprefix(prefix)

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(self._full(path))

    def read_many(self, paths: list[str]) -> dict[str, bytes]:
        if not paths:
            return {}
        got = self.fs.cat([self._full(p) for p in paths], on_error="omit")
        return {self._relative(k): v for k, v in got.items() if isinstance(v, bytes)}

    def open_read(self, path: str) -> tuple[BinaryIO, int]:
        handle = self.fs.open(self._full(path), "rb", block_size=READ_BLOCK)
        return handle, int(handle.size)

    def exists(self, path: str) -> bool:
        return bool(self.fs.isfile(self._full(path)))

    def list_names(self, folder: str) -> list[str]:
        try:
            found = self.fs.ls(self._full(folder), detail=True)
        except FileNotFoundError:
            return []
        return [info["name"].rsplit("/", 1)[-1] for info in found if info.get("type") == "file"]

    def list_entries(self, folder: str) -> list[Entry]:
        found = self.fs.find(self._full(folder), detail=True)
        return [
            Entry(self._relative(name), int(info.get("size") or 0), _mtime(info))
            for name, info in found.items()
            if info.get("type") == "file"
        ]

    def delete_many(self, paths: list[str]) -> None:
        if paths:
            existing = [self._full(p) for p in paths]
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(existing)
