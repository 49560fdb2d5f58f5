"""Task output files on fsspec storage, readable back by downstream code.

``DataclassListOutputFile`` is JSONL with one record per line (the engine writes it from committed results in
generation order); ``DataclassOutputFile`` holds one record (a task's summary). Records are pydantic models or
dataclasses; plain dicts work too.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

import fsspec
import pydantic

T = TypeVar("T")


def to_jsonable(record: Any) -> Any:
    if isinstance(record, pydantic.BaseModel):
        return record.model_dump(mode="json")
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.asdict(record)
    return record


class TaskOutputFile(Generic[T]):
    """A file of the task's output at ``url`` (any fsspec URL), typed by ``record_type`` (None = plain dicts)."""

    def __init__(self, url: str, record_type: type[T] | None = None, storage_options: dict | None = None):
        self.url = url
        self.record_type = record_type
        self.storage_options = storage_options or {}

    def _adapter(self) -> pydantic.TypeAdapter | None:
        return pydantic.TypeAdapter(self.record_type) if self.record_type is not None else None

    def exists(self) -> bool:
        fs, path = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return fs.exists(path)

    def _parse(self, adapter: pydantic.TypeAdapter | None, text: str | bytes) -> Any:
        return adapter.validate_json(text) if adapter is not None else json.loads(text)


class DataclassListOutputFile(TaskOutputFile[T]):
    """JSONL: one record per line."""

    def read(self) -> Iterator[T]:
        adapter = self._adapter()
        with fsspec.open(self.url, "rb", **self.storage_options) as fh:
            for line in fh:
                if line.strip():
                    yield self._parse(adapter, line)

    def write(self, records: Iterable[Any]) -> int:
        count = 0
        with fsspec.open(self.url, "w", encoding="utf-8", **self.storage_options) as fh:
            for record in records:
                fh.write(json.dumps(to_jsonable(record), ensure_ascii=False) + "\n")
                count += 1
        return count


class DataclassOutputFile(TaskOutputFile[T]):
    """A single JSON record."""

    def read(self) -> T:
        with fsspec.open(self.url, "rb", **self.storage_options) as fh:
            return self._parse(self._adapter(), fh.read())

    def write(self, record: Any) -> None:
        with fsspec.open(self.url, "w", encoding="utf-8", **self.storage_options) as fh:
            json.dump(to_jsonable(record), fh, ensure_ascii=False, indent=2)
