"""The Files API: upload (multipart), retrieve, list, delete, content."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

from .config import EmulatorConfig
from .errors import ApiError, bad_request, invalid_value, missing_param, not_found
from .expiry import BATCH_FILE_DEFAULT_SECONDS, expiry_seconds
from .state import FileRecord, FileTooLarge, Store
from .stats import Stats
from .upload_check import check_batch_upload

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


class FileService:
    def __init__(self, config: EmulatorConfig, store: Store, stats: Stats) -> None:
        self.config = config
        self.store = store
        self.stats = stats

    def create(self, source: BinaryIO | None, filename: str | None, purpose: Any,
               expires_after: dict[str, Any] | None = None) -> dict[str, Any]:
        if source is None:
            raise missing_param("file")
        if purpose is None:
            raise missing_param("purpose")
        if purpose not in UPLOAD_PURPOSES:
            raise invalid_value("purpose", f"'{purpose}'. Supported values are: {list(UPLOAD_PURPOSES)}.")
        filename = filename or "upload"
        seconds = expiry_seconds(expires_after, "expires_after")
        if seconds is None and purpose == "batch":
            seconds = BATCH_FILE_DEFAULT_SECONDS
        try:
            record = self.store.create_file(source, filename, purpose, self.config.max_file_bytes, seconds)
        except FileTooLarge:
            raise bad_request(f"File is too large: the maximum size is {self.config.max_file_bytes} bytes.",
                              param="file", code="file_too_large") from None
        if purpose == "batch":
            self._check_content(record.id)
        self.stats.file_created(record.bytes)
        return record.to_api()

    def _check_content(self, file_id: str) -> None:
        """Refuse (and forget) a batch upload whose content is not UTF-8 JSONL; see upload_check.py."""
        try:
            error = check_batch_upload(self.store.iter_lines(file_id))
        except BaseException:
            self.store.delete_file(file_id)
            raise
        if error is not None:
            self.store.delete_file(file_id)
            raise error

    def get(self, file_id: str) -> FileRecord:
        record = self.store.get_file(file_id)
        if record is None:
            raise not_found("File", file_id)
        return record

    def retrieve(self, file_id: str) -> dict[str, Any]:
        return self.get(file_id).to_api()

    def list(self, purpose: str | None, limit: int, order: str, after: str | None) -> dict[str, Any]:
        if order not in ("asc", "desc"):
            raise invalid_value("order", f"'{order}'. Supported values are: ['asc', 'desc'].")
        if not 1 <= limit <= 10_000:
            raise invalid_value("limit", f"must be between 1 and 10000, got {limit}.")
        records = [r for r in self.store.list_files() if purpose is None or r.purpose == purpose]
        if order == "desc":
            records.reverse()
        start = 0
        if after is not None:
            ids = [r.id for r in records]
            if after not in ids:
                raise invalid_value("after", f"no file with id '{after}' in this listing.")
            start = ids.index(after) + 1
        page = records[start:start + limit]
        return {
            "object": "list",
            "data": [r.to_api() for r in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": start + limit < len(records),
        }

    def delete(self, file_id: str) -> dict[str, Any]:
        if not self.store.delete_file(file_id):
            raise not_found("File", file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    def content(self, file_id: str) -> Path | bytes:
        """The file's bytes: a path on disk (state_dir) or the bytes in memory."""
        self.get(file_id)
        path = self.store.file_path(file_id)
        if path is not None:
            if not path.exists():
                raise not_found("File", file_id)
            return path
        try:
            return self.store.file_bytes(file_id)
        except KeyError:
            raise not_found("File", file_id) from None


def parse_limit(raw: str | None, default: int) -> int:
    """A query-string integer, or a 400 that says what is wrong."""
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"Invalid 'limit': expected an integer, got {raw!r}.", param="limit",
                       code="invalid_type") from None
