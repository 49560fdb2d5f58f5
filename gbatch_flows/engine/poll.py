"""Stage 4: retrieve the task's remote batches and record the ones that reached a final status."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import openai

from gbatch_flows import api
from gbatch_flows.engine.context import Engine
from gbatch_flows.engine.push import cancel_remote, find_remote_batch, lookup
from gbatch_flows.engine.state import Changes
from gbatch_flows.models import FINAL_BATCH_STATUSES, BatchRecord

log = logging.getLogger("gbatch_flows.engine.poll")

FINAL = FINAL_BATCH_STATUSES


@dataclass
class PollReport:
    finished: list[int] = field(default_factory=list)
    in_flight: int = 0
    progress: dict[int, tuple[int, int]] = field(default_factory=dict)  # local id -> (done, total)


def poll(engine: Engine) -> PollReport:
    """One round over the pushed batches; final ones become ``done`` in a single commit."""
    report = PollReport()
    changes = Changes()
    for batch in engine.state.batches_in("pushed"):
        if batch.mode != "batch" or batch.remote_id is None:
            continue
        try:
            remote = engine.client.batches.retrieve(batch.remote_id)
        except openai.NotFoundError:
            listed = _after_404(engine, batch, changes)
            if listed is GONE:
                report.finished.append(batch.local_id)
                continue
            if listed is None:
                report.in_flight += 1
                continue
            remote = listed  # the listing's copy carries the status and file ids retrieve would have given
        except openai.OpenAIError as exc:
            log.warning("polling batch %d failed, will retry: %s", batch.local_id, api.describe_exception(exc))
            report.in_flight += 1
            continue
        engine.fence.gone_since.pop(batch.local_id, None)
        counts = remote.request_counts.model_dump() if remote.request_counts else {}
        report.progress[batch.local_id] = (counts.get("completed", 0) + counts.get("failed", 0), batch.requests)
        if remote.status in FINAL:
            errors = [e.model_dump(exclude_none=True) for e in (remote.errors.data or [])] if remote.errors else []
            changes.batch(
                batch.model_copy(
                    update={
                        "state": "done",
                        "remote_status": remote.status,
                        "remote_errors": errors,
                        "output_file_id": remote.output_file_id,
                        "error_file_id": remote.error_file_id,
                        "request_counts": counts,
                        "finished_at": time.time(),
                    }
                )
            )
            report.finished.append(batch.local_id)
            log.info("batch %d %s (%s)", batch.local_id, remote.status, counts)
        else:
            report.in_flight += 1
            if remote.status != batch.remote_status:
                changes.batch(batch.model_copy(update={"remote_status": remote.status, "request_counts": counts}))
    if changes:
        engine.commit(changes, f"poll: {len(report.finished)} batches finished")
    return report


GONE = object()  # _after_404: the batch is confirmed gone


def _after_404(engine: Engine, batch: BatchRecord, changes: Changes) -> Any:
    """A 404 on retrieve: look the batch up by metadata. Found: the listed batch (a gateway without the retrieve
    route still shows its status there), adopted when it carries another id. Not found now and again
    ``gone_confirm_s`` later: GONE, its requests requeued. Otherwise None (still in flight)."""
    fence = engine.fence
    looked_up, found = lookup(engine, f"looking up batch {batch.local_id}", find_remote_batch, batch)
    if not looked_up:
        return None
    if found is not None:
        fence.gone_since.pop(batch.local_id, None)
        if found.id != batch.remote_id:
            log.warning("remote batch %s of local batch %d answers 404 but %s carries its metadata: adopting it",
                        batch.remote_id, batch.local_id, found.id)
            changes.batch(batch.model_copy(update={"remote_id": found.id}))
            return None
        if batch.local_id not in fence.listed_only:
            fence.listed_only.add(batch.local_id)
            log.warning("remote batch %s of local batch %d answers 404 but is listed: polling it through the "
                        "listing", batch.remote_id, batch.local_id)
        return found
    now = time.time()
    first = fence.gone_since.setdefault(batch.local_id, now)
    if now - first < engine.timing.gone_confirm_s:
        if first == now:
            log.warning("remote batch %s of local batch %d answers 404 and is not listed: confirming in %.0f s",
                        batch.remote_id, batch.local_id, engine.timing.gone_confirm_s)
        return None
    fence.gone_since.pop(batch.local_id, None)
    log.warning("remote batch %s of local batch %d is gone (404, not listed %.0f s apart): its requests will be "
                "retried", batch.remote_id, batch.local_id, now - first)
    if batch.remote_id is not None:
        cancel_remote(engine, batch.remote_id, f"local batch {batch.local_id} was given up as gone", quiet=True)
    changes.batch(batch.model_copy(update={"state": "done", "remote_status": "lost", "finished_at": now}))
    return GONE
