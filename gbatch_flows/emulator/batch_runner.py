"""Drives one batch through its life cycle in a background thread.

validating → in_progress → finalizing → completed, or failed (validation, token limit, fault), expired (completion
window or fault), cancelling → cancelled. With `batch_duration` D > 0 the phases follow the clock: validating until
5% of D, requests done evenly over the next 90%, finalizing until D. Requests never run faster than the clock allows,
so a cancel or an expiry leaves partial output. With D = 0 everything runs as fast as possible. After a restart
(state_dir) the runner re-runs the batch deterministically from its input and keeps its original clock.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .batch_input import InputSummary, batch_error, parse_line, validate_batch_input
from .errors import error_body
from .executor import ID_LENGTHS, ID_PREFIXES, usage_counts
from .ids import DerivedIds, derived_id
from .jsonutil import dumps_line
from .state import BatchRecord, FileWriter

if TYPE_CHECKING:
    from .batches import BatchService

log = logging.getLogger(__name__)

VALIDATING_SHARE = 0.05
IN_PROGRESS_SHARE = 0.90
SAVE_INTERVAL = 1.0
#: Unclocked batches (batch_duration 0) publish their request counts every this many lines (and at every save).
COUNTS_EVERY = 256

_FAULT_STATUS_MESSAGES = {
    400: ("invalid_request_error", "The request was rejected (error injected by the emulator)."),
    429: ("requests", "Rate limit reached for requests (error injected by the emulator)."),
    500: ("server_error", "The server had an error processing your request (error injected by the emulator)."),
}


class _Stopped(Exception):
    """The emulator is shutting down: leave the batch as persisted."""


@dataclass(frozen=True)
class _LineIds:
    """The deterministic ids of a batch's result lines, from the batch id and the line index."""

    endpoint: str
    digests: DerivedIds

    @classmethod
    def of(cls, batch_id: str, endpoint: str) -> _LineIds:
        return cls(endpoint, DerivedIds(batch_id))

    def line(self, index: int) -> tuple[str, str, str]:
        """(result line id, the answer's completion id, request id) of line `index`."""
        digest = self.digests.hex_digest(index)  # derived_id(prefix, batch_id, index) of both the first two
        completion_id = ID_PREFIXES[self.endpoint] + digest[:ID_LENGTHS[self.endpoint]]
        return "batch_req_" + digest[:32], completion_id, self.digests.hex_digest(index, "request")[:32]


class BatchRunner(threading.Thread):
    """One thread per unfinished batch."""

    def __init__(self, service: BatchService, batch_id: str) -> None:
        super().__init__(name=f"emulator-{batch_id}", daemon=True)
        self.service = service
        self.batch_id = batch_id
        self.wake = threading.Event()
        self.finished = threading.Event()

    # --- helpers -------------------------------------------------------------------------------------------------

    @property
    def _batch(self) -> BatchRecord:
        batch = self.service.store.get_batch(self.batch_id)
        assert batch is not None
        return batch

    def _stopping(self) -> bool:
        return self.service.shutting_down.is_set()

    def _sleep_until(self, moment: float) -> None:
        """Wait for `moment`; returns early on cancel; raises _Stopped on shutdown."""
        while True:
            if self._stopping():
                raise _Stopped
            left = moment - time.time()
            if left <= 0 or self._batch.cancel_requested:
                return
            self.wake.wait(min(left, 1.0))

    def _update(self, save: bool = True, **fields: Any) -> None:
        batch = self._batch
        with self.service.store.lock:
            for name, value in fields.items():
                setattr(batch, name, value)
        if save:
            self.service.store.save_batch(batch)

    def _lines(self) -> Iterator[bytes]:
        """The request lines (blank lines skipped)."""
        return (raw for raw in self.service.store.iter_lines(self._batch.input_file_id) if raw.strip())

    # --- life cycle ----------------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except _Stopped:
            pass
        except Exception as exc:  # an emulator bug must not leave a batch stuck
            log.exception("batch %s crashed", self.batch_id)
            self._finish("failed", errors=[batch_error("server_error", f"The emulator failed: {exc!r}")])
        finally:
            self.finished.set()

    def _run(self) -> None:
        batch = self._batch
        if batch.terminal:
            return
        summary = self._validate()
        if batch.status == "validating":
            if not self._start(summary):
                return
        elif batch.in_progress_at is None:  # cancelled while validating, before a restart
            self._finish("cancelled", total=summary.total)
            return
        self._process(summary)

    def _validate(self) -> InputSummary:
        service = self.service
        config = service.config
        batch = self._batch
        record = service.store.get_file(batch.input_file_id)
        if record is None:
            return InputSummary(errors=[batch_error(
                "invalid_file", f"The input file {batch.input_file_id} no longer exists.", "input_file_id")])
        if record.bytes > config.max_batch_input_bytes:
            return InputSummary(errors=[batch_error(
                "file_too_large", f"The batch input file is larger than the {config.max_batch_input_bytes} bytes "
                "maximum. Split it into smaller batches.", "input_file_id")])
        summary = validate_batch_input(
            self._all_lines(),
            service.canonical_endpoint(batch.endpoint),
            max_requests=config.max_requests_per_batch,
            max_embedding_inputs=config.max_embedding_inputs_per_batch,
            count_prompt=service.count_prompt,
            known_model=service.known_model,
            should_stop=self._stopping,
            canonical_url=service.canonical_endpoint,
        )
        if self._stopping():
            raise _Stopped
        return summary

    def _all_lines(self) -> Iterator[bytes]:
        return self.service.store.iter_lines(self._batch.input_file_id)

    def _start(self, summary: InputSummary) -> bool:
        """validating → in_progress, or a terminal state; False when the batch ended here."""
        batch = self._batch
        stats = self.service.stats
        if summary.errors:
            self._finish("failed", errors=summary.errors, total=summary.total)
            return False
        plan = batch.faults
        if plan is not None and plan.end == "failed":
            stats.fault("batch_failed")
            self._finish("failed", total=summary.total, errors=[batch_error(
                "server_error", "The batch failed because of an internal error (injected by the emulator).")])
            return False
        if batch.cancel_requested:
            self._finish("cancelled", total=summary.total)
            return False
        model = summary.model or ""
        limit = self.service.reserve_tokens(batch, model, summary.tokens)
        if limit is not None:
            self._finish("failed", model=model, errors=[batch_error(
                "token_limit_exceeded",
                f"Enqueued token limit reached for {model} in organization org-emulator. Limit: {limit:,} enqueued "
                "tokens. Please try again once some in_progress batches have been completed.")])
            return False
        duration = self.service.config.batch_duration
        self._sleep_until(batch.created_at + VALIDATING_SHARE * duration)
        with self.service.store.lock:
            cancelled = batch.cancel_requested
            if not cancelled:
                batch.status, batch.in_progress_at, batch.total = "in_progress", time.time(), summary.total
        if cancelled:
            self._finish("cancelled", total=summary.total)
            return False
        self.service.store.save_batch(batch)
        return True

    def _process(self, summary: InputSummary) -> None:
        service = self.service
        batch = self._batch
        duration = service.config.batch_duration
        span = IN_PROGRESS_SHARE * duration
        total = summary.total
        started = batch.in_progress_at or time.time()
        plan = batch.faults
        end_index = math.floor(plan.end_at * total) if plan and plan.end in ("expired", "cancelled") else None
        resumed = batch.completed + batch.failed
        stop_at = resumed if batch.status == "cancelling" else total
        out, err = FileWriter(service.store), FileWriter(service.store)
        line_ids = _LineIds.of(batch.id, service.canonical_endpoint(batch.endpoint))
        counts = {"completed": 0, "failed": 0, "input_tokens": 0, "cached_tokens": 0, "output_tokens": 0}
        reason: str | None = None
        lines = self._lines()
        pending: bytes | None = None
        last_save = time.time()
        index = 0
        try:
            for raw in lines:
                if index >= stop_at or batch.cancel_requested:
                    reason = "cancelled"
                elif time.time() >= batch.expires_at:
                    reason = "expired"
                elif index == end_index and plan is not None:
                    reason = plan.end
                if reason is not None:
                    pending = raw
                    break
                if span > 0 and index >= resumed:
                    self._sleep_until(started + span * (index + 1) / total)
                    if batch.cancel_requested:
                        reason, pending = "cancelled", raw
                        break
                elif self._stopping():
                    raise _Stopped
                self._run_line(batch, raw, index, summary, line_ids, out, err, counts)
                index += 1
                if index > resumed:
                    now = time.time()
                    save = now - last_save >= SAVE_INTERVAL
                    if save or span > 0 or index % COUNTS_EVERY == 0:
                        last_save = now if save else last_save
                        self._update(save=save, **counts)
            else:
                if end_index is not None and plan is not None and end_index >= total:
                    reason = plan.end
            if reason == "expired":
                self._expire_rest(pending, lines, index, err)
            service.stats.batch_requests(index)
            self._update(save=False, **counts)
            self._finalize(reason, out, err)
        except BaseException:
            out.discard()
            err.discard()
            raise

    def _run_line(self, batch: BatchRecord, raw: bytes, index: int, summary: InputSummary, line_ids: _LineIds,
                  out: FileWriter, err: FileWriter, counts: dict[str, int]) -> None:
        service = self.service
        item = parse_line(raw)
        custom_id = item["custom_id"]
        fault = batch.faults.line_fault(index, custom_id) if batch.faults else None
        line_id, completion_id, request_id = line_ids.line(index)
        if fault is not None and fault[0] == "request_errors":
            status = fault[1] or 500
            kind, message = _FAULT_STATUS_MESSAGES.get(status, ("server_error", "Injected error."))
            body: dict[str, Any] = error_body(message, kind)
            service.stats.fault("request_errors")
        else:
            status, body = service.executor.execute(
                line_ids.endpoint, item["body"], prompt_tokens=summary.prompt_tokens[index],
                completion_id=completion_id, created=int(time.time()))
        line = dumps_line({
            "id": line_id,
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        })
        if status == 200:
            counts["completed"] += 1
            input_tokens, output_tokens, cached_tokens = usage_counts(body)
            counts["input_tokens"] += input_tokens
            counts["output_tokens"] += output_tokens
            counts["cached_tokens"] += cached_tokens
        else:
            counts["failed"] += 1
        target = out if status == 200 else err
        if fault is not None and fault[0] == "lines_missing":
            service.stats.fault("lines_missing")
            return
        if fault is not None and fault[0] == "lines_malformed":
            service.stats.fault("lines_malformed")
            line = line[: len(line) // 2] + b"\n"
        target.write(line)

    def _expire_rest(self, pending: bytes | None, lines: Iterator[bytes], index: int, err: FileWriter) -> None:
        """Write a batch_expired error line for each request that did not run."""
        rest = itertools.chain([pending] if pending is not None else [], lines)
        for offset, raw in enumerate(rest):
            custom_id = parse_line(raw).get("custom_id")
            err.write(dumps_line({
                "id": derived_id("batch_req_", self.batch_id, index + offset, length=32),
                "custom_id": custom_id,
                "response": None,
                "error": {"code": "batch_expired",
                          "message": "This request could not be executed before the completion window expired."},
            }))

    def _finalize(self, reason: str | None, out: FileWriter, err: FileWriter) -> None:
        batch = self._batch
        stats = self.service.stats
        if reason is None:
            self._update(status="finalizing", finalizing_at=time.time())
        elif reason == "cancelled" and batch.status != "cancelling":
            if not batch.cancel_requested:
                stats.fault("batch_cancelled")
            self._update(status="cancelling", cancelling_at=batch.cancelling_at or time.time(),
                         cancel_requested=True)
        elif reason == "expired" and batch.faults is not None and batch.faults.end == "expired":
            stats.fault("batch_expired")
        output_id = error_id = None
        expires_after = batch.output_expires_after
        if batch.completed > 0:
            output_id = out.commit(f"batch_{batch.id}_output.jsonl", "batch_output", expires_after).id
        else:
            out.discard()
        if err.size > 0 or batch.failed > 0:
            error_id = err.commit(f"batch_{batch.id}_error.jsonl", "batch_output", expires_after).id
        else:
            err.discard()
        if reason is None:
            self._sleep_until(batch.created_at + self.service.config.batch_duration)
        final = reason or "completed"
        self._finish(final, output_file_id=output_id, error_file_id=error_id)

    def _finish(self, status: str, **fields: Any) -> None:
        now = time.time()
        stamp = {"completed": "completed_at", "failed": "failed_at", "expired": "expired_at",
                 "cancelled": "cancelled_at"}[status]
        fields[stamp] = now
        self._update(status=status, **fields)
        self.service.release_tokens(self._batch)
