"""Streamed reading that checks a blob against its BlobRef (size and sha256) as the bytes go by."""

from __future__ import annotations

import hashlib
import io
from typing import BinaryIO

from gbatch_flows.store.errors import ChecksumMismatch
from gbatch_flows.store.models import BlobRef

READ_BUFFER = 1 << 20


class _VerifyingRaw(io.RawIOBase):
    """Raw stream over an open file: hashes every byte, raises ChecksumMismatch once the end is reached."""

    def __init__(self, handle: BinaryIO, ref: BlobRef):
        self._handle = handle
        self._ref = ref
        self._digest = hashlib.sha256()
        self._count = 0
        self._verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._count >= self._ref.size:
            self._finish()
            if self._handle.read(1):
                self._fail(f"it is longer than the recorded {self._ref.size} bytes")
            return 0
        data = self._handle.read(min(len(buffer), self._ref.size - self._count))
        n = len(data)
        if n == 0:
            self._fail(f"it ends after {self._count} of the recorded {self._ref.size} bytes (truncated)")
        buffer[:n] = data
        self._digest.update(data)
        self._count += n
        if self._count == self._ref.size:
            self._finish()
        return n

    def _finish(self) -> None:
        if not self._verified:
            actual = self._digest.hexdigest()
            if actual != self._ref.sha256:
                self._fail(f"sha256 is {actual[:16]}..., recorded {self._ref.sha256[:16]}...")
            self._verified = True

    def _fail(self, problem: str) -> None:
        raise ChecksumMismatch(self._ref.path, problem)

    def close(self) -> None:
        try:
            self._handle.close()
        finally:
            super().close()


def open_verified(handle: BinaryIO, actual_size: int, ref: BlobRef) -> io.BufferedReader:
    """Wrap an open blob: a size mismatch is reported at once, content damage when reading reaches the end."""
    if actual_size != ref.size:
        handle.close()
        raise ChecksumMismatch(ref.path, f"it has {actual_size} bytes, recorded {ref.size}")
    return io.BufferedReader(_VerifyingRaw(handle, ref), buffer_size=READ_BUFFER)
