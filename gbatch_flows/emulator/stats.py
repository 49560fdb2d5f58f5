"""Counters of what the emulator served, readable by tests (`RunningEmulator.stats()`, GET /_emulator/stats)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Stats:
    """Thread-safe counters; `snapshot()` returns plain dicts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests = 0
            self._by_op: Counter[str] = Counter()
            self._by_status: Counter[str] = Counter()
            self._rate_limited = 0
            self._faults: Counter[str] = Counter()
            self._batches_created = 0
            self._batches_by_local_id: Counter[str] = Counter()
            self._files_created = 0
            self._bytes_uploaded = 0
            self._batch_requests = 0
            self._prompt_tokens = 0
            self._completion_tokens = 0

    def request(self, op: str) -> None:
        with self._lock:
            self._requests += 1
            self._by_op[op] += 1

    def response(self, status: int) -> None:
        with self._lock:
            self._by_status[str(status)] += 1

    def rate_limited(self) -> None:
        with self._lock:
            self._rate_limited += 1

    def fault(self, kind: str, count: int = 1) -> None:
        if count:
            with self._lock:
                self._faults[kind] += count

    def batch_created(self, metadata: dict[str, str] | None) -> None:
        with self._lock:
            self._batches_created += 1
            local_id = (metadata or {}).get("gbatch_local_id")
            if local_id is not None:
                self._batches_by_local_id[local_id] += 1

    def file_created(self, size: int) -> None:
        with self._lock:
            self._files_created += 1
            self._bytes_uploaded += size

    def tokens(self, prompt: int, completion: int) -> None:
        with self._lock:
            self._prompt_tokens += prompt
            self._completion_tokens += completion

    def batch_requests(self, count: int) -> None:
        with self._lock:
            self._batch_requests += count

    def snapshot(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        with self._lock:
            data: dict[str, Any] = {
                "requests_total": self._requests,
                "requests_by_op": dict(self._by_op),
                "responses_by_status": dict(self._by_status),
                "responses_429": self._by_status.get("429", 0),
                "rate_limited": self._rate_limited,
                "faults_injected": dict(self._faults),
                "batches_created": self._batches_created,
                "batches_by_local_id": dict(self._batches_by_local_id),
                "files_created": self._files_created,
                "bytes_uploaded": self._bytes_uploaded,
                "batch_requests_processed": self._batch_requests,
                "prompt_tokens": self._prompt_tokens,
                "completion_tokens": self._completion_tokens,
            }
        data.update(extra or {})
        return data
