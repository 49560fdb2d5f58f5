"""A Backend wrapper that waits out storage outages (S3 unreachable, 5xx, throttling) within ``--max_outage_s``,
then stops the run with one line. Errors that are answers (missing file, conflict, permission) pass through."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from gbatch_flows.store.backend import Backend, Entry
from gbatch_flows.store.errors import StoreError

if TYPE_CHECKING:
    from gbatch_flows.remote_errors import OutagePolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

SPOOL_IN_MEMORY = 8 << 20
REPLAY_BLOCK = 8 << 20

TRANSIENT_S3_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                                "ServiceUnavailable", "InternalError", "RequestTimeTooSkewed", "500", "502", "503",
                                "504"})


class StoreUnavailable(StoreError):
    """The storage of the task folder stayed unreachable longer than ``--max_outage_s``."""


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient_storage_error(exc: BaseException) -> bool:
    """An error that says the storage service could not be reached or is overloaded (worth waiting for)."""
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                        NotADirectoryError, StoreError)):
        return False
    for link in _chain(exc):
        module = type(link).__module__
        name = type(link).__name__
        if isinstance(link, (ConnectionError, TimeoutError)):
            return True
        if module.startswith("botocore") and (name.endswith(("ConnectionError", "TimeoutError"))
                                              or name in ("HTTPClientError", "ConnectionClosedError")):
            return True
        if module.startswith("aiohttp") and ("Connect" in name or "Timeout" in name or "Disconnected" in name):
            return True
        code = str(getattr(link, "response", {}).get("Error", {}).get("Code", "")) if isinstance(
            getattr(link, "response", None), dict) else ""
        if code in TRANSIENT_S3_CODES:
            return True
    return False


class RetryingBackend(Backend):
    """Delegates to ``inner``; a transient storage error is retried with back-off while the outage lasts less than
    the policy's bound (then ``StoreUnavailable``)."""

    def __init__(self, inner: Backend, policy: OutagePolicy, is_transient: Callable[[BaseException], bool] | None
                 = None):
        self.inner = inner
        self.policy = policy
        self.url = inner.url
        self.is_transient = is_transient or is_transient_storage_error
        self.down_since: float | None = None

    def _run(self, what: str, fn: Callable[[], T]) -> T:
        policy = self.policy
        attempt = 0
        while True:
            try:
                result = fn()
            except Exception as exc:
                if not self.is_transient(exc):
                    raise
                now = policy.clock()
                if self.down_since is None:
                    self.down_since = now
                down = now - self.down_since
                if down >= policy.max_outage_s:
                    raise StoreUnavailable(
                        f"the task folder {self.url} has been unreachable for {down:.0f}s ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160] if str(exc) else ''}), longer than --max_outage_s "
                        f"{policy.max_outage_s:g}: check the storage endpoint / network, then run again to resume "
                        "(raise --max_outage_s to wait longer)") from exc
                wait = policy.backoff(attempt, down)
                log.warning("storage %s failed (%s); retrying in %.1fs", what, type(exc).__name__, wait)
                policy.sleep(wait)
                attempt += 1
                continue
            self.down_since = None
            return result

    def write_stream(self, path: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        """The chunks are spooled first (memory, then a temp file) so that a failed upload can be sent again."""
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            for chunk in chunks:
                spool.write(chunk)

            def replay() -> Iterator[bytes]:
                spool.seek(0)
                while block := spool.read(REPLAY_BLOCK):
                    yield block

            return self._run(f"write {path}", lambda: self.inner.write_stream(path, replay()))

    def write_bytes(self, path: str, data: bytes) -> None:
        self._run(f"write {path}", lambda: self.inner.write_bytes(path, data))

    def create_exclusive(self, path: str, data: bytes) -> None:
        self._run(f"create {path}", lambda: self.inner.create_exclusive(path, data))

    def read_bytes(self, path: str) -> bytes:
        return self._run(f"read {path}", lambda: self.inner.read_bytes(path))

    def read_many(self, paths: list[str]) -> dict[str, bytes]:
        return self._run("read", lambda: self.inner.read_many(paths))

    def open_read(self, path: str) -> tuple[BinaryIO, int]:
        return self._run(f"open {path}", lambda: self.inner.open_read(path))

    def exists(self, path: str) -> bool:
        return self._run(f"check {path}", lambda: self.inner.exists(path))

    def list_names(self, folder: str) -> list[str]:
        return self._run(f"list {folder}", lambda: self.inner.list_names(folder))

    def list_entries(self, folder: str) -> list[Entry]:
        return self._run(f"list {folder}", lambda: self.inner.list_entries(folder))

    def delete_many(self, paths: list[str]) -> None:
        self._run("delete", lambda: self.inner.delete_many(paths))

    def cas_read(self, path: str) -> tuple[bytes | None, str | None]:
        return self._run(f"read {path}", lambda: self.inner.cas_read(path))

    def cas_write(self, path: str, data: bytes, expected: str | None) -> str:
        return self._run(f"write {path}", lambda: self.inner.cas_write(path, data, expected))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
