"""The Files API: upload (multipart), retrieve, list, delete, content."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, BinaryIO

from .config import EmulatorConfig
from .errors import ApiError, bad_request, invalid_value, missing_param, not_found
from .state import FileRecord, FileTooLarge, Store
from .stats import Stats

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
        if purpose == "batch" and not filename.endswith(".jsonl"):
            raise bad_request(f"Invalid file format for Batch API. Must be .jsonl (got filename {filename!r}).",
                              param="file", code="invalid_file_format")
        expires_at = self._expires_at(expires_after)
        try:
            record = self.store.create_file(source, filename, purpose, self.config.max_file_bytes, expires_at)
        except FileTooLarge:
            raise bad_request(f"File is too large: the maximum size is {self.config.max_file_bytes} bytes.",
                              param="file", code="file_too_large") from None
        self.stats.file_created(record.bytes)
        return record.to_api()

    def _expires_at(self, expires_after: dict[str, Any] | None) -> int | None:
        if not expires_after:
            return None
        anchor = expires_after.get("anchor")
        if anchor != "created_at":
            raise invalid_value("expires_after.anchor", f"'{anchor}'. Supported values are: ['created_at'].")
        try:
            seconds = int(expires_after.get("seconds"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise invalid_value("expires_after.seconds", "expected an integer.") from None
        if not 3600 <= seconds <= 2_592_000:
            raise invalid_value("expires_after.seconds", "must be between 3600 and 2592000.")
        return int(time.time()) + seconds

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
