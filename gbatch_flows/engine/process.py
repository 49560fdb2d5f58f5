"""Stage 5: download what finished batches returned, classify each request's result, hand successes to the task,
and commit the output, requeued requests, failures and actual spend of a batch in one commit."""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import orjson

from gbatch_flows import api, costs, endpoints
from gbatch_flows.engine import limits
from gbatch_flows.engine.assemble import SIDECAR_FIELDS
from gbatch_flows.engine.context import Engine, EngineStop
from gbatch_flows.engine.generate import request_dict, write_segment
from gbatch_flows.engine.parts import PartLines
from gbatch_flows.engine.protocol import Processed, ResponseInvalid, Result
from gbatch_flows.engine.state import TASK, TOTALS, Changes, segment_key, session_key
from gbatch_flows.models import BatchRecord, LazyRequest, Outcomes, Request, ResultLine, Spend, Usage
from gbatch_flows.remote_errors import transport_errors
from gbatch_flows.status import CompletionStats
from gbatch_flows.store import BlobRef

log = logging.getLogger("gbatch_flows.engine.process")

SIDECAR_KEYS = frozenset(SIDECAR_FIELDS)
TOKEN_LIMIT_CODE = "token_limit_exceeded"
TOKEN_LIMIT_MAX_WAIT_S = 600.0
#: Remote statuses of batches the server did not finish (their requests are requeued; not a pass failure).
SERVER_LOST = frozenset({"expired", "lost", "cancelled"})


def usage_of(request: Request, body: dict[str, Any] | None) -> tuple[Usage, bool]:
    """The usage a successful response reports for ``request``'s endpoint, and whether it was readable.

    A body without a readable usage (for an endpoint that reports one) is charged at the request's worst case
    (estimated prompt tokens + worst-case output, none cached): spend is never settled lower than it may be.
    """
    usage = endpoints.usage_of(request.endpoint, body)
    if usage is None:
        return Usage(prompt_tokens=request.tokens, completion_tokens=request.max_out), False
    return usage, True


def download_results(engine: Engine, batch: BatchRecord) -> BlobRef:
    """Output and error files of a remote batch, streamed into one immutable results blob."""

    def chunks() -> Iterator[bytes]:
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            with engine.client.files.with_streaming_response.content(file_id) as response:
                tail = b""
                for chunk in response.iter_bytes():
                    tail = chunk[-1:] if chunk else tail
                    yield chunk
                if tail and tail != b"\n":
                    yield b"\n"

    return engine.store.put_blob(f"results/{batch.local_id:06d}.jsonl", chunks())


def kept(line: bytes) -> bytes:
    """An exact-size copy of an ``orjson.dumps`` result that is kept until the batch is committed.

    Held by the ten thousand, the originals cost about 4 kB each whatever their length (allocator slack): 200 MB of
    output lines for a batch of 50,000 requests, 10 MB as copies.
    """
    return bytes(memoryview(line))


@dataclass
class BatchOutcome:
    outcomes: Outcomes = field(default_factory=Outcomes)
    usage: Usage = field(default_factory=Usage)
    output: PartLines = field(default_factory=PartLines)
    failure_output: PartLines = field(default_factory=PartLines)
    requeue: list[dict[str, Any]] = field(default_factory=list)
    failed: list[bytes] = field(default_factory=list)
    next_part: int = 0
    completion: CompletionStats = field(default_factory=CompletionStats)


class BatchProcessor:
    """Classifies the results of one batch and applies the task's callbacks."""

    def __init__(self, engine: Engine, batch: BatchRecord, force_retry: str | None = None):
        self.engine = engine
        self.batch = batch
        self.meta = engine.meta
        self.options = engine.options
        self.force_retry = force_retry
        self.out = BatchOutcome(next_part=engine.state.require_task().next_part)
        self.unanswered: list[Request] = []  # direct calls whose answer never came (api.UNANSWERED_CODE)
        self._inputs: list[bytes] | None = None
        self._ok = 0

    def payload(self, index: int) -> dict[str, Any]:
        """The payload of the batch's ``index``-th request, from its input file (read on the first call: only a
        retry, a follow-up or a failure record, or a task that looks at it, needs a payload)."""
        if self._inputs is None:
            inputs = self.engine.store.iter_lines(BlobRef.model_validate(self.batch.input_ref))
            self._inputs = list(inputs)
        return orjson.loads(self._inputs[index])["body"]

    def run(self, results: dict[str, ResultLine]) -> BatchOutcome:
        store = self.engine.store
        prompt = completion = cached = unreadable = 0
        payload = self.payload
        loads, lazy, handle, add_completion = orjson.loads, LazyRequest.lazy, self._handle, self.out.completion.add
        for index, side_raw in enumerate(store.iter_lines(BlobRef.model_validate(self.batch.sidecar_ref))):
            side = loads(side_raw)
            if side.keys() == SIDECAR_KEYS:  # the engine's own sidecar line: its values are valid
                request: Request = lazy(side, lambda index=index: payload(index))
                custom_id = f"{side['seq']}-{side['part']}-{side['retry']}"  # request.custom_id
            else:  # pragma: no cover - every sidecar line is written with these keys
                request = Request(payload=payload(index), **side)
                custom_id = request.custom_id
            line = results.get(custom_id)
            usage = None
            if line is not None and line.body is not None:
                status = line.status_code
                answered = status is not None and 200 <= status < 300
                if answered:
                    usage, readable = usage_of(request, line.body)
                    unreadable += not readable
                else:  # an error answer: billed only for what it reports
                    usage = endpoints.usage_of(request.endpoint, line.body) or Usage()
                prompt += usage.prompt_tokens
                completion += usage.completion_tokens
                cached += usage.cached_tokens
                if answered:
                    add_completion(usage.completion_tokens, usage.prompt_tokens)
            handle(request, line, usage)
        self.out.outcomes.ok += self._ok  # counted as an int in _apply (a model attribute costs ~1 µs to set)
        self._ok = 0
        self._requeue_unanswered()
        if unreadable:
            log.warning("batch %d: %d responses without a readable usage, charged at their worst case",
                        self.batch.local_id, unreadable)
        # summed as ints: one Usage model per request instead of three
        self.out.usage = self.out.usage + Usage(prompt_tokens=prompt, completion_tokens=completion,
                                                cached_tokens=cached)
        return self.out

    def _handle(self, request: Request, line: ResultLine | None, usage: Usage | None = None) -> None:
        if self.batch.cancel_requested_at is not None:
            return  # --wipe_requests cancelled it: its samples are generated again; answers are paid, not used
        if self.force_retry:
            self._retry(request, self.force_retry)
            return
        if line is not None and line.error and line.error.get("code") == api.UNANSWERED_CODE:
            self.unanswered.append(request)
            return
        outcome, reason = api.classify_result(line)
        if outcome is api.Outcome.OK:
            assert line is not None
            result = Result(request, True, line.body, None,
                            usage if usage is not None else usage_of(request, line.body)[0], line, self.batch.mode)
            try:
                processed = self.engine.task.process_result(result, self.meta)
            except ResponseInvalid as exc:
                processed = Processed(retry=f"invalid response: {exc}")
            self._apply(request, processed)
        elif outcome is api.Outcome.RETRYABLE or self.options.retry_fatal_requests:
            self._retry(request, reason or "error")
        else:
            self._fail(request, reason or "fatal error")

    def _requeue_unanswered(self) -> None:
        """Calls the remote never answered go back to the queue. When the remote answered other requests of the batch,
        such a call uses one of its request's retries (a request that always breaks the server ends failed);
        when it answered none (an outage, bounded by --max_outage_s), it does not."""
        for request in self.unanswered:
            self.out.outcomes.unanswered += 1
            if self.out.outcomes.ok:
                self._retry(request, "the remote did not answer")
            else:
                self.out.outcomes.retried += 1
                self.out.requeue.append(request.model_dump(mode="json"))

    def _apply(self, request: Request, processed: Processed) -> None:
        if processed.fail:
            self._fail(request, processed.fail)
            return
        if processed.retry:
            self._retry(request, processed.retry)
            return
        self._ok += 1  # added to out.outcomes.ok at the end of run()
        self._records(request, processed.records)
        for spec in processed.followups:
            record = request_dict(spec, self.meta, request.seq, part=self.out.next_part)
            self.out.next_part += 1
            self.out.requeue.append(record)
            self.out.outcomes.followups += 1

    def _records(self, request: Request, records: list[dict[str, Any]], failure: bool = False) -> None:
        target = self.out.failure_output if failure else self.out.output
        for record in records:
            line = orjson.dumps({"seq": request.seq, "key": request.key, "part": request.part, "record": record})
            target.add(request.seq, request.part, kept(line))

    def _retry(self, request: Request, reason: str) -> None:
        if request.retry < self.options.max_retries:
            self.out.outcomes.retried += 1
            self.out.requeue.append(request.model_copy(update={"retry": request.retry + 1}).model_dump(mode="json"))
        else:
            self._fail(request, f"retries exhausted ({self.options.max_retries}); last error: {reason}")

    def _fail(self, request: Request, reason: str) -> None:
        self.out.outcomes.failed += 1
        self.out.failed.append(kept(orjson.dumps({"request": request.model_dump(mode="json"), "reason": reason})))
        self._records(request, self.engine.task.process_failure(request, reason, self.meta) or [], failure=True)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch is read and classified.

    A batch's parsed results (about 20 container objects per request, all alive until the batch is committed) made
    the generational collector re-scan them over and over: reading 50,000 results took 3x longer with it on.
    Reference counting still frees everything at once; cycles made meanwhile are collected after.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_results(engine: Engine, ref: BlobRef) -> dict[str, ResultLine]:
    results: dict[str, ResultLine] = {}
    malformed = 0
    for raw in engine.store.iter_lines(ref):
        if not raw.strip():
            continue
        line = api.parse_result_line(raw)
        if line is None:
            malformed += 1
            continue
        results[line.custom_id] = line
    if malformed:
        log.warning("%d malformed result lines in %s: those requests will be retried", malformed, ref.path)
    return results


def process(engine: Engine) -> list[int]:
    """Process every finished batch in local-id order; returns the ids processed."""
    done: list[int] = []
    for batch in engine.state.batches_in("done"):
        if batch.remote_status == "failed" and batch.cancel_requested_at is None:
            if _handle_failed_batch(engine, batch):
                continue
            force_retry = f"batch failed: {_error_summary(batch)}"
        else:
            force_retry = None
        if process_batch(engine, batch, force_retry):
            done.append(batch.local_id)
    return done


def _error_summary(batch: BatchRecord) -> str:
    return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in batch.remote_errors[:3]) or "no details"


def _handle_failed_batch(engine: Engine, batch: BatchRecord) -> bool:
    """True when the failed batch was dealt with here (re-queued for a later push or the run stops)."""
    if any(e.get("code") == TOKEN_LIMIT_CODE for e in batch.remote_errors):
        log.warning("batch %d refused by the enqueued-token limit: it waits for remote batches to finish",
                    batch.local_id)
        changes = Changes()
        _release(engine, batch, changes, Spend())
        changes.batch(batch.model_copy(update={
            "state": "assembled", "remote_id": None, "remote_status": None, "remote_errors": [],
            "past_remote_ids": [*batch.past_remote_ids, batch.remote_id or ""], "finished_at": None,
            "not_before": time.time() + min(TOKEN_LIMIT_MAX_WAIT_S, 15.0 * 2 ** len(batch.past_remote_ids)),
        }))
        engine.commit(changes, f"batch {batch.local_id} back to the queue (token limit)")
        return True
    task = engine.state.require_task()
    allowed = engine.options.process_failed_batches
    if 0 <= allowed <= task.failed_batches_processed:
        raise EngineStop(
            f"batch {batch.local_id} ({batch.remote_id}) failed: {_error_summary(batch)}. Fix the cause, then run "
            f"with --process_failed_batches {task.failed_batches_processed + 1} to requeue its requests "
            "(or --wipe_task to start over)"
        )
    return False


def _release(engine: Engine, batch: BatchRecord, changes: Changes, actual: Spend) -> None:
    state = engine.state
    reserved = limits.reserved_spend(batch)
    changes.set(TOTALS, limits.settle(state.totals, reserved, actual))
    if batch.session:
        changes.set(session_key(batch.session), limits.settle(state.session(batch.session), reserved, actual))


def process_batch(engine: Engine, batch: BatchRecord, force_retry: str | None = None) -> bool:
    """Process one finished batch; False when its results could not be fetched yet (tried again later)."""
    empty = False
    if batch.results_ref is not None:
        ref = BlobRef.model_validate(batch.results_ref)
    elif batch.output_file_id or batch.error_file_id:
        retryable: tuple[type[BaseException], ...] = (openai.OpenAIError, *transport_errors())
        try:
            ref = download_results(engine, batch)
        except openai.NotFoundError as exc:
            log.warning("results of batch %d are gone from the server (%s): its requests will be retried",
                        batch.local_id, api.describe_exception(exc))
            empty = True
        except retryable as exc:  # a connection lost mid-download too
            log.warning("download of batch %d results failed, will retry: %s", batch.local_id,
                        api.describe_exception(exc))
            return False
    else:
        empty = True
    if empty:
        ref = engine.store.put_blob(f"results/{batch.local_id:06d}.jsonl", [b""])
    with gc_paused():
        out = BatchProcessor(engine, batch, force_retry).run(read_results(engine, ref))
    # lost: the server lost the batch, or said it completed and has no results for it (a failed, expired or
    # cancelled batch has no results by nature: those are judged by their own rules)
    lost = batch.remote_status == "lost" or (empty and batch.remote_status == "completed")
    _commit_processed(engine, batch, ref, out, failed_batch=force_retry is not None, lost=lost)
    if batch.mode == "batch":
        delete_remote_files(engine, batch)
    return True


def delete_remote_files(engine: Engine, batch: BatchRecord) -> None:
    """Remove the batch's files from the provider's storage once its results are committed here (best effort)."""
    for file_id in (batch.input_file_id, batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        try:
            engine.client.files.delete(file_id)
        except openai.OpenAIError as exc:
            log.debug("could not delete remote file %s: %s", file_id, api.describe_exception(exc))


def _part(store: Any, path: str, lines: PartLines) -> BlobRef | None:
    """An output part blob sorted by (seq, part), or None when there is nothing to write."""
    if not len(lines):
        return None
    return store.put_blob(path, [lines.blob()])


def _commit_processed(engine: Engine, batch: BatchRecord, ref: BlobRef, out: BatchOutcome, failed_batch: bool,
                      lost: bool = False) -> None:
    store = engine.store
    task = engine.state.require_task()
    changes = Changes()
    update: dict[str, Any] = {"next_part": out.next_part}
    name = f"{batch.local_id:06d}"
    output_ref = _part(store, f"output/parts/{name}.jsonl", out.output)
    failure_output_ref = _part(store, f"output/failures/{name}.jsonl", out.failure_output)
    failed_ref = None
    if out.failed:
        failed_ref = store.put_blob(f"failed/{name}.jsonl", [b"\n".join(out.failed) + b"\n"])
    if out.requeue:
        index = task.next_segment
        lines = [kept(orjson.dumps(r)) for r in out.requeue]
        segment = write_segment(engine, index, lines, sum(r["tokens"] for r in out.requeue), "retry")
        changes.set(segment_key(index), segment)
        update["next_segment"] = index + 1
    cost = costs.usage_cost(out.usage, engine.prices(batch.model, batch.endpoint), batch.mode)  # type: ignore[arg-type]
    answered = batch.requests - out.outcomes.unanswered  # calls the remote never answered are its fault
    ratio = out.outcomes.ok / answered if answered > 0 else 1.0
    # the server's fault (or a wipe's): not a pass failure; batches lost by the server have a streak of their own
    judged = not failed_batch and not lost and batch.remote_status not in SERVER_LOST and \
        batch.cancel_requested_at is None and answered > 0
    update["consecutive_lost_batches"] = task.consecutive_lost_batches + 1 if lost else 0
    passed = ratio >= engine.options.min_pass_ratio if judged else None
    update["consecutive_pass_failures"] = task.consecutive_pass_failures if passed is None else \
        0 if passed else task.consecutive_pass_failures + 1
    if failed_batch:
        update["failed_batches_processed"] = task.failed_batches_processed + 1
    actual = Spend(requests=batch.requests, tokens=out.usage.total, cost=cost) + batch.lost_spend
    _release(engine, batch, changes, actual)
    changes.batch(batch.model_copy(update={
        "state": "processed", "results_ref": ref.model_dump(mode="json"),
        "output_ref": output_ref.model_dump(mode="json") if output_ref else None,
        "failed_ref": failed_ref.model_dump(mode="json") if failed_ref else None,
        "failure_output_ref": failure_output_ref.model_dump(mode="json") if failure_output_ref else None,
        "outcomes": out.outcomes, "usage": out.usage, "cost": cost, "passed": passed, "processed_at": time.time(),
        "completion": out.completion.to_dict(),
    }))
    changes.set(TASK, task.model_copy(update=update))
    engine.commit(changes, f"processed batch {batch.local_id}: {out.outcomes.model_dump()}")
    log.info("processed batch %d: ok %d, retried %d, failed %d, follow-ups %d, $%.4f; completion tokens max %d, "
             "p95 %d", batch.local_id, out.outcomes.ok, out.outcomes.retried, out.outcomes.failed,
             out.outcomes.followups, cost, out.completion.max_tokens, out.completion.p95_tokens())
    if lost and update["consecutive_lost_batches"] > engine.options.max_pass_failures:  # a lost batch is requeued; more than N in a row stop
        if batch.session not in (None, engine.session_id):  # lost before the rerun that was asked for: judge anew
            log.warning("batch %d (pushed by an earlier run) came back without results: its requests are queued "
                        "again", batch.local_id)
            return
        raise EngineStop(
            f"{update['consecutive_lost_batches']} batches in a row came back without results (last: batch "
            f"{batch.local_id}, {batch.remote_id}: the server lost the batch or deleted its result files): the "
            "remote loses batches, so stopping before more is sent. Check the server (its logs, storage, batch "
            "retention), then rerun: their requests are queued again (--max_pass_failures changes the rule)"
        )
    if passed is False and update["consecutive_pass_failures"] >= engine.options.max_pass_failures:
        raise EngineStop(_pass_failure_stop(engine, batch.local_id, ratio, update["consecutive_pass_failures"]))


def _pass_failure_stop(engine: Engine, local_id: int, ratio: float, streak: int) -> str:
    """The stop message after ``streak`` failing batches in a row; it names failed files only when there are some."""
    options = engine.options
    judged = [b for b in engine.state.batches_in("processed") if b.passed is not None]
    files = [BlobRef.model_validate(b.failed_ref).path for b in judged[-streak:] if b.failed_ref is not None]
    if files:
        where = f"look at the requests that failed for good ({', '.join(files)} in {engine.store.url})"
    else:
        where = ("none failed for good yet: their requests were requeued for a retry (the reasons are in the "
                 "warnings above; --direct_verbose error shows them with the direct API)")
    return (f"{streak} batches in a row had fewer than {options.min_pass_ratio:.0%} successful requests (last: batch "
            f"{local_id}, {ratio:.0%}; --max_pass_failures {options.max_pass_failures}): stopping before more money "
            f"is spent. To go on, {where}, fix the cause, then rerun (--max_pass_failures / --min_pass_ratio change "
            "the rule)")
