"""Maintenance operations, each a single atomic commit: wipe the task, its unsent requests, or its failures."""

from __future__ import annotations

import logging

import openai
import orjson

from gbatch_flows import api
from gbatch_flows.engine.context import Engine
from gbatch_flows.engine.generate import write_segment
from gbatch_flows.engine.state import TASK, Changes, batch_key, segment_key
from gbatch_flows.store import BlobRef

log = logging.getLogger("gbatch_flows.engine.operations")


def wipe_task(engine: Engine, output_path: str | None = None) -> None:
    """Forget the whole task (remote batches still running are cancelled first, best effort)."""
    state = engine.state
    for batch in state.batches_in("pushing", "pushed"):
        if batch.mode == "batch" and batch.remote_id:
            try:
                engine.client.batches.cancel(batch.remote_id)
                log.info("cancelled remote batch %s", batch.remote_id)
            except openai.OpenAIError as exc:
                log.warning("could not cancel %s: %s", batch.remote_id, api.describe_exception(exc))
    changes = Changes()
    for key in state.manifest.sections:
        changes.delete(key)
    if changes:
        engine.commit(changes, "wipe task")
    if output_path and engine.store.exists(output_path):
        engine.store.delete(output_path)
    log.info("wiped task state in %s (unreferenced files are removed by garbage collection)", engine.store.url)


def wipe_requests(engine: Engine) -> None:
    """Drop the generated requests not yet sent (queue and unpushed batches) so that they are generated again.

    Samples already sent (or done) keep their results, and regeneration skips their keys. Retries and follow-ups
    (which cannot be regenerated) stay queued: the ones in unpushed batches move to a new queue segment.
    """
    state = engine.state
    task = state.require_task()
    changes = Changes()
    kept: list[bytes] = []
    kept_tokens = 0
    for batch in state.batches_in("assembled"):
        inputs = engine.store.iter_lines(BlobRef.model_validate(batch.input_ref))
        for side_raw, input_raw in zip(engine.store.iter_lines(BlobRef.model_validate(batch.sidecar_ref)), inputs):
            side = orjson.loads(side_raw)
            if side["retry"] or side["part"]:
                side["payload"] = orjson.loads(input_raw)["body"]
                kept.append(orjson.dumps(side))
                kept_tokens += side["tokens"]
        changes.delete(batch_key(batch.local_id))
    dropped = 0
    for index, segment in state.segments.items():
        if segment.origin == "generated":
            changes.delete(segment_key(index))
            dropped += 1
    update = {"generated": False, "generated_count": 0, "generated_requests": 0, "skip_sent_keys": True}
    if kept:
        index = task.next_segment
        changes.set(segment_key(index), write_segment(engine, index, kept, kept_tokens, "retry"))
        update["next_segment"] = index + 1
    changes.set(TASK, task.model_copy(update=update))
    engine.commit(changes, "wipe unsent requests")
    log.info("wiped %d generated segments and %d unpushed batches (%d retries/follow-ups kept)", dropped,
             len(state.batches_in("assembled")), len(kept))


def wipe_failed(engine: Engine) -> int:
    """Put every request that failed for good back in the queue with its retry count reset."""
    state = engine.state
    task = state.require_task()
    lines: list[bytes] = []
    tokens = 0
    changes = Changes()
    for batch in state.batches.values():
        if batch.failed_ref is None:
            continue
        for raw in engine.store.iter_lines(BlobRef.model_validate(batch.failed_ref)):
            if raw.strip():
                request = orjson.loads(raw)["request"]
                request["retry"] = 0
                tokens += request["tokens"]
                lines.append(orjson.dumps(request))
        changes.batch(batch.model_copy(update={"failed_ref": None, "failure_output_ref": None}))
    if not lines:
        log.info("no failed requests to wipe")
        return 0
    index = task.next_segment
    changes.set(segment_key(index), write_segment(engine, index, lines, tokens, "wiped"))
    changes.set(TASK, task.model_copy(update={"next_segment": index + 1}))
    engine.commit(changes, f"wipe failed: {len(lines)} requests requeued")
    log.info("requeued %d failed requests", len(lines))
    return len(lines)


def cancel_remote(engine: Engine) -> list[int]:
    """Cancel the task's batches running remotely and commit it: each becomes ``remote_status="cancelling"``
    (still ``pushed``: the next poll sees it ``cancelled`` and the process stage keeps what it finished and
    requeues the rest). Batches still ``pushing`` are left to the next run, which adopts them."""
    changes = Changes()
    cancelled: list[int] = []
    for batch in engine.state.batches_in("pushed"):
        if batch.mode != "batch" or not batch.remote_id:
            continue
        try:
            engine.client.batches.cancel(batch.remote_id)
        except openai.OpenAIError as exc:
            log.warning("could not cancel remote batch %s (batch %d): %s", batch.remote_id, batch.local_id,
                        api.describe_exception(exc))
            continue
        log.info("cancelled remote batch %s (batch %d)", batch.remote_id, batch.local_id)
        changes.batch(batch.model_copy(update={"remote_status": "cancelling"}))
        cancelled.append(batch.local_id)
    if changes:
        engine.commit(changes, f"cancel remote batches {cancelled}")
    return cancelled
