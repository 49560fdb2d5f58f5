"""The Batch API: create, retrieve, list, cancel; enqueued-token accounting; one runner thread per live batch."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from . import usage
from .batch_runner import BatchRunner
from .config import EmulatorConfig
from .errors import (
    ApiError,
    bad_request,
    invalid_type,
    invalid_value,
    missing_param,
    not_found,
    require_object,
)
from .executor import ENDPOINTS, RequestExecutor
from .expiry import expiry_seconds
from .faults import FaultInjector
from .ids import random_id
from .state import BatchRecord, Store
from .stats import Stats

REAL_ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/moderations",
                  "/v1/images/generations", "/v1/images/edits", "/v1/videos")
ENQUEUED_STATUSES = frozenset({"in_progress", "finalizing", "cancelling"})


def _check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise invalid_type("metadata", "an object", metadata)
    if len(metadata) > 16:
        raise invalid_value("metadata", f"at most 16 keys, got {len(metadata)}.")
    for key, value in metadata.items():
        if len(key) > 64:
            raise invalid_value("metadata", f"key {key!r} is longer than 64 characters.")
        if not isinstance(value, str):
            raise invalid_type(f"metadata.{key}", "a string", value)
        if len(value) > 512:
            raise invalid_value(f"metadata.{key}", "longer than 512 characters.")
    return dict(metadata)


class BatchService:
    """Batch endpoints over the store; runners do the work in the background."""

    def __init__(self, config: EmulatorConfig, store: Store, executor: RequestExecutor, faults: FaultInjector,
                 stats: Stats) -> None:
        self.config = config
        self.store = store
        self.executor = executor
        self.faults = faults
        self.stats = stats
        self.shutting_down = threading.Event()
        self._runners: dict[str, BatchRunner] = {}
        self._enqueued: Counter[str] = Counter()
        self._lock = threading.Lock()

    # --- for runners ---------------------------------------------------------------------------------------------

    def count_prompt(self, endpoint: str, body: dict[str, Any]) -> int:
        return usage.prompt_tokens(endpoint, body)

    def known_model(self, model: str) -> bool:
        try:
            self.executor.check_model(model)
        except ApiError:
            return False
        return True

    def reserve_tokens(self, batch: BatchRecord, model: str, tokens: int) -> int | None:
        """Count the batch's tokens as enqueued for `model`; returns the limit instead if it would be passed."""
        limit = self.config.token_limit_for(model)
        with self._lock:
            if limit is not None and self._enqueued[model] + tokens > limit:
                return limit
            self._enqueued[model] += tokens
        with self.store.lock:
            batch.enqueued_tokens = tokens
            batch.model = model
        return None

    def release_tokens(self, batch: BatchRecord) -> None:
        with self._lock, self.store.lock:
            if batch.enqueued_tokens and batch.model is not None:
                self._enqueued[batch.model] -= batch.enqueued_tokens
            batch.enqueued_tokens = 0
        self.store.save_batch(batch)

    def enqueued_tokens(self) -> dict[str, int]:
        with self._lock:
            return {model: count for model, count in self._enqueued.items() if count}

    def canonical_endpoint(self, endpoint: str) -> str:
        """The /v1 endpoint a batch endpoint or line url means (Azure mode also accepts them without /v1)."""
        if self.config.azure and not endpoint.startswith("/v1/") and f"/v1{endpoint}" in ENDPOINTS:
            return f"/v1{endpoint}"
        return endpoint

    # --- life of the service -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Resume every unfinished batch (after a restart with state_dir)."""
        for batch in self.store.list_batches():
            if batch.terminal:
                continue
            if batch.status in ENQUEUED_STATUSES and batch.model is not None:
                with self._lock:
                    self._enqueued[batch.model] += batch.enqueued_tokens
            self._launch(batch.id)

    def shutdown(self, timeout: float = 5.0) -> None:
        self.shutting_down.set()
        with self._lock:
            runners = list(self._runners.values())
        for runner in runners:
            runner.wake.set()
        deadline = time.monotonic() + timeout
        for runner in runners:
            runner.join(max(0.0, deadline - time.monotonic()))

    def _launch(self, batch_id: str) -> None:
        runner = BatchRunner(self, batch_id)
        with self._lock:
            self._runners[batch_id] = runner
        runner.start()

    # --- endpoints -----------------------------------------------------------------------------------------------

    def create(self, body: Any, call_number: int) -> dict[str, Any]:
        body = require_object(body)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if body.get(name) is None:
                raise missing_param(name)
            if not isinstance(body[name], str):
                raise invalid_type(name, "a string", body[name])
        endpoint = body["endpoint"]
        if self.canonical_endpoint(endpoint) not in ENDPOINTS:
            if endpoint in REAL_ENDPOINTS:
                raise invalid_value("endpoint", f"'{endpoint}' is not emulated; the emulator runs batches for "
                                    f"{list(ENDPOINTS)}.")
            raise invalid_value("endpoint", f"'{endpoint}'. Supported values are: {list(REAL_ENDPOINTS)}.")
        if body["completion_window"] != "24h":
            raise invalid_value("completion_window", f"'{body['completion_window']}'. Supported values are: ['24h'].")
        metadata = _check_metadata(body.get("metadata"))
        output_expiry = expiry_seconds(body.get("output_expires_after"), "output_expires_after")
        file_id = body["input_file_id"]
        record = self.store.get_file(file_id)
        if record is None:
            raise not_found("File", file_id, param="input_file_id")
        if record.purpose != "batch":
            raise bad_request(f"The input file {file_id} has purpose '{record.purpose}'; batch input files must "
                              "be uploaded with purpose 'batch'.", param="input_file_id")
        now = time.time()
        batch = BatchRecord(
            id=random_id("batch_", 32),
            seq=self.store.next_seq(),
            endpoint=endpoint,
            input_file_id=file_id,
            completion_window="24h",
            metadata=metadata,
            created_at=now,
            expires_at=now + self.config.expire_after,
            faults=self.faults.plan_batch(call_number),
            output_expires_after=output_expiry,
        )
        self.store.add_batch(batch)
        self.stats.batch_created(metadata)
        with self.store.lock:
            snapshot = batch.to_api()
        self._launch(batch.id)
        return snapshot

    def _get(self, batch_id: str) -> BatchRecord:
        batch = self.store.get_batch(batch_id)
        if batch is None:
            raise not_found("Batch", batch_id, param="batch_id")
        return batch

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        """The batch; with batch_duration 0 it first waits for the batch to finish."""
        batch = self._get(batch_id)
        if self.config.batch_duration == 0 and not batch.terminal:
            with self._lock:
                runner = self._runners.get(batch_id)
            if runner is not None:
                runner.finished.wait(self.config.immediate_wait_seconds)
        with self.store.lock:
            return batch.to_api()

    def list(self, after: str | None, limit: int) -> dict[str, Any]:
        """Newest first, `limit` per page, continuing after the batch id `after`."""
        batches = self.store.list_batches()[::-1]
        start = 0
        if after is not None:
            positions = {b.id: i for i, b in enumerate(batches)}
            if after not in positions:
                raise invalid_value("after", f"no batch with id '{after}'.")
            start = positions[after] + 1
        page = batches[start:start + limit]
        with self.store.lock:
            data = [b.to_api() for b in page]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": start + limit < len(batches),
        }

    def cancel(self, batch_id: str) -> dict[str, Any]:
        batch = self._get(batch_id)
        with self.store.lock:
            if batch.status in ("validating", "in_progress"):
                batch.status = "cancelling"
                batch.cancelling_at = time.time()
                batch.cancel_requested = True
            elif batch.status not in ("cancelling", "cancelled"):
                raise ApiError(409, f"Cannot cancel a batch with status '{batch.status}'.", param="batch_id",
                               code="batch_not_cancellable")
            snapshot = batch.to_api()
        self.store.save_batch(batch)
        with self._lock:
            runner = self._runners.get(batch_id)
        if runner is not None:
            runner.wake.set()
        return snapshot
