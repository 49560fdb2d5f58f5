"""Remote leftovers (issue 15): at the end of a run, delete the files on the provider that the task no longer
needs (best effort; never fails a run):

* the uploads of earlier creations of a batch (refused for ``token_limit_exceeded``, then pushed again);
* the input file of a batch that failed remotely (its requests are re-sent from the local state);
* an upload of this session whose batch creation failed (found by its name, made in this session, and used by no
  batch of the task and no remote batch).
"""

from __future__ import annotations

import logging
import time

import openai

from gbatch_flows.engine.context import Engine, EngineStop
from gbatch_flows.engine.push import upload_prefix
from gbatch_flows.models import BatchRecord

log = logging.getLogger("gbatch_flows.engine.cleanup")

LIST_LIMIT = 100
CLOCK_SKEW_S = 60.0


def _needed(batches: list[BatchRecord]) -> set[str]:
    """File ids a batch still needs: inputs of batches in flight, results not processed yet."""
    needed: set[str] = set()
    for batch in batches:
        if batch.state in ("pushing", "pushed"):
            needed |= {f for f in (batch.input_file_id, batch.output_file_id, batch.error_file_id) if f}
        elif batch.state == "done":
            needed |= {f for f in (batch.output_file_id, batch.error_file_id) if f}
            if batch.remote_status != "failed" and batch.input_file_id:
                needed.add(batch.input_file_id)
    return needed


def _past_files(engine: Engine, batch: BatchRecord) -> set[str]:
    found: set[str] = set()
    for remote_id in batch.past_remote_ids:
        if not remote_id:
            continue
        try:
            remote = engine.client.batches.retrieve(remote_id)
        except openai.NotFoundError:
            continue
        found |= {f for f in (remote.input_file_id, remote.output_file_id, remote.error_file_id) if f}
    return found


def _orphan_uploads(engine: Engine, batches: list[BatchRecord], since: float) -> set[str]:
    task_id = engine.state.require_task().task_id
    prefixes = {upload_prefix(task_id, b.local_id) for b in batches if b.mode == "batch"}
    known = {b.input_file_id for b in batches if b.input_file_id}
    candidates = {f.id for f in engine.client.files.list(purpose="batch")
                  if (f.filename or "").rpartition("_")[0] + "_" in prefixes
                  and f.created_at >= since - CLOCK_SKEW_S and f.id not in known}
    if candidates:
        used = {b.input_file_id for b in engine.client.batches.list(limit=LIST_LIMIT)}
        candidates -= used
    return candidates


def leftovers(engine: Engine, since: float) -> set[str]:
    """The remote files of this task that nothing needs any more."""
    batches = [b for b in engine.state.batches.values() if b.mode == "batch"]
    found: set[str] = set()
    for batch in batches:
        found |= _past_files(engine, batch)
        if batch.state == "done" and batch.remote_status == "failed" and batch.input_file_id:
            found.add(batch.input_file_id)
    found |= _orphan_uploads(engine, batches, since)
    return found - _needed(batches)


def clean_remote(engine: Engine, since: float) -> list[str]:
    """Delete the leftovers; returns the ids deleted. Skipped while the remote is failing."""
    outage = getattr(engine.outage, "tracker", None)
    if outage is not None and outage.down_for() > 0:
        log.info("remote clean-up skipped: the remote is failing")
        return []
    deleted: list[str] = []
    started = time.monotonic()
    try:
        for file_id in sorted(leftovers(engine, since)):
            try:
                engine.client.files.delete(file_id)
                deleted.append(file_id)
            except openai.NotFoundError:
                continue
    except (openai.OpenAIError, EngineStop) as exc:
        log.warning("remote clean-up stopped (the files stay on the remote until a later run): %s", exc)
    if deleted:
        log.info("removed %d remote files the task no longer needs (%.1fs)", len(deleted), time.monotonic() - started)
    return deleted
