"""Maintenance operations, each a single atomic commit: wipe the task, its unsent requests, or its failures."""

from __future__ import annotations

import logging
import time
from typing import Any

import openai
import orjson

from gbatch_flows import api
from gbatch_flows.engine import limits
from gbatch_flows.engine.context import Engine
from gbatch_flows.engine.generate import write_segment
from gbatch_flows.engine.state import TASK, TOTALS, Changes, batch_key, segment_key, session_key
from gbatch_flows.models import BatchRecord, Spend
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


def unassemble(engine: Engine, batches: list[BatchRecord], changes: Changes, keep_first: bool = True) -> dict[str, Any]:
    """Put the requests of unpushed batches back in the queue (the batches are deleted in ``changes``).

    First attempts go to a ``generated`` segment (``keep_first``; else they are dropped, to be generated again);
    retries and follow-ups, which cannot be generated again, to a ``retry`` segment. Returns the task update."""
    task = engine.state.require_task()
    lines: dict[str, list[bytes]] = {"generated": [], "retry": []}
    tokens: dict[str, int] = {"generated": 0, "retry": 0}
    for batch in batches:
        inputs = engine.store.iter_lines(BlobRef.model_validate(batch.input_ref))
        for side_raw, input_raw in zip(engine.store.iter_lines(BlobRef.model_validate(batch.sidecar_ref)), inputs):
            side = orjson.loads(side_raw)
            origin = "retry" if side["retry"] or side["part"] else "generated"
            if origin == "generated" and not keep_first:
                continue
            side["payload"] = orjson.loads(input_raw)["body"]
            lines[origin].append(orjson.dumps(side))
            tokens[origin] += side["tokens"]
        changes.delete(batch_key(batch.local_id))
    index = task.next_segment
    for origin in ("generated", "retry"):
        if lines[origin]:
            changes.set(segment_key(index), write_segment(engine, index, lines[origin], tokens[origin], origin))
            index += 1
    return {"next_segment": index} if index != task.next_segment else {}


def never_created(engine: Engine, batches: list[BatchRecord], why: str) -> int:
    """Batches left ``pushing`` that cannot exist remotely (the server has no Batch API): their reservations are
    released and their requests go back to the queue (``--force_direct`` then sends them directly). Returns how
    many requests went back."""
    state = engine.state
    changes = Changes()
    update = unassemble(engine, batches, changes)
    totals = state.totals
    sessions: dict[str, Any] = {}
    for batch in batches:
        reserved = limits.reserved_spend(batch)
        totals = limits.settle(totals, reserved, Spend())
        if batch.session:
            sessions[batch.session] = limits.settle(sessions.get(batch.session) or state.session(batch.session),
                                                    reserved, Spend())
    changes.set(TOTALS, totals)
    for session, budget in sessions.items():
        changes.set(session_key(session), budget)
    changes.set(TASK, state.require_task().model_copy(update=update))
    requests = sum(b.requests for b in batches)
    engine.commit(changes, f"{len(batches)} batches never created remotely ({why}): {requests} requests back to the "
                           "queue")
    log.warning("%d batch(es) left pushing by an earlier run were never created (%s): their %d requests go back to "
                "the queue", len(batches), why, requests)
    return requests


def to_direct(engine: Engine) -> int:
    """``--force_direct``: batches assembled for the Batch API but never pushed go back to the queue, to be sent
    through the direct API (under the direct limits). Returns how many requests went back."""
    batches = [b for b in engine.state.batches_in("assembled") if b.mode == "batch"]
    if not batches:
        return 0
    changes = Changes()
    update = unassemble(engine, batches, changes)
    changes.set(TASK, engine.state.require_task().model_copy(update=update))
    requests = sum(b.requests for b in batches)
    engine.commit(changes, f"force_direct: {len(batches)} unpushed batches ({requests} requests) back to the queue")
    log.info("force_direct: %d unpushed batch(es) (%d requests) will go through the direct API instead",
             len(batches), requests)
    return requests


def cancel_into(engine: Engine, changes: Changes) -> list[int]:
    """Cancel the task's batches running on the remote (best effort) and record it in ``changes``: each cancelled
    one becomes ``remote_status="cancelling"`` (still ``pushed``: the next poll sees it ``cancelled`` and the
    process stage keeps what it finished and requeues the rest, not as a pass failure). Returns their ids."""
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
        changes.batch(batch.model_copy(update={"cancel_requested_at": time.time(), "remote_status": "cancelling"}))
        cancelled.append(batch.local_id)
    return cancelled


def wipe_requests(engine: Engine) -> None:
    """Drop the generated requests not yet answered (queue, unpushed batches and, as the original does, the remote
    batches still running, which are cancelled) so that they are generated again.

    Samples already answered keep their results, and regeneration skips their keys. Retries and follow-ups (which
    cannot be regenerated) stay queued. A cancelled batch's answers that arrive anyway are paid for (and counted)
    but not used: its samples are generated again.
    """
    state = engine.state
    task = state.require_task()
    changes = Changes()
    cancelled = cancel_into(engine, changes)
    assembled = state.batches_in("assembled")
    update: dict[str, Any] = unassemble(engine, assembled, changes, keep_first=False)
    dropped = 0
    for index, segment in state.segments.items():
        if segment.origin == "generated":
            changes.delete(segment_key(index))
            dropped += 1
    update.update(generated=False, generated_count=0, generated_requests=0, skip_sent_keys=True)
    changes.set(TASK, task.model_copy(update=update))
    engine.commit(changes, f"wipe unsent requests (remote batches cancelled: {cancelled or 'none'})")
    log.info("wiped %d generated segments and %d unpushed batches; cancelled %d remote batches", dropped,
             len(assembled), len(cancelled))


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
    """Cancel the task's batches running remotely and commit it (see ``cancel_into``). Batches still ``pushing``
    are left to the next run, which adopts them."""
    changes = Changes()
    cancelled = cancel_into(engine, changes)
    if changes:
        engine.commit(changes, f"cancel remote batches {cancelled}")
    return cancelled
