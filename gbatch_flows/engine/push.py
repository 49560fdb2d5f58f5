"""Stage 3: upload assembled batch files and create remote batches, never pushing one local batch twice.

Protocol: (1) commit the intent (state ``pushing``, spend reserved); (2) upload and create the remote batch with
``metadata = {gbatch_task, gbatch_local_id}``; (3) commit ``pushed`` with the remote id. A run that died between (1)
and (3) finds the batch ``pushing`` and first looks for a remote batch carrying its metadata to adopt; only when
none exists is it pushed again.
"""

from __future__ import annotations

import logging
import time

import openai

from gbatch_flows import api, endpoints
from gbatch_flows.engine import limits, quota_gate
from gbatch_flows.engine.context import Engine, EngineStop
from gbatch_flows.engine.state import TOTALS, Changes, session_key
from gbatch_flows.models import BatchRecord
from gbatch_flows.store import BlobRef

log = logging.getLogger("gbatch_flows.engine.push")

ADOPT_LOOKBACK_S = 3600.0


def metadata_for(task_id: str, local_id: int) -> dict[str, str]:
    return {"gbatch_task": task_id, "gbatch_local_id": str(local_id)}


def find_remote(engine: Engine, batch: BatchRecord) -> str | None:
    """The id of a remote batch already created for ``batch`` (matched by metadata), if any."""
    task_id = engine.state.require_task().task_id
    wanted = metadata_for(task_id, batch.local_id)
    since = (batch.pushing_since or 0) - ADOPT_LOOKBACK_S
    for remote in engine.client.batches.list(limit=100):
        meta = remote.metadata or {}
        if all(meta.get(k) == v for k, v in wanted.items()) and remote.id not in batch.past_remote_ids:
            return remote.id
        if remote.created_at < since:
            break
    return None


def adopt_pushing(engine: Engine) -> int:
    """Adopt the remote twins of batches a crashed run left ``pushing``; creates nothing. Returns how many."""
    adopted = 0
    for batch in engine.state.batches_in("pushing"):
        if batch.mode == "batch" and (remote_id := find_remote(engine, batch)) is not None:
            remote = engine.client.batches.retrieve(remote_id)
            _commit_pushed(engine, batch, remote_id, remote.input_file_id, remote.status)
            adopted += 1
    return adopted


def push(engine: Engine) -> str | None:
    """Push assembled batches while the limits allow; returns the limit that stopped pushing (or None)."""
    quota_gate.sync(engine)
    for batch in engine.state.batches_in("pushing"):
        if batch.mode == "batch":
            _resume_pushing(engine, batch)
    for batch in engine.state.batches_in("assembled"):
        if batch.mode != "batch":
            continue
        state = engine.state
        if batch.not_before and time.time() < batch.not_before and state.batches_in("pushing", "pushed"):
            log.info("batch %d waits for the enqueued-token limit: remote batches must finish first", batch.local_id)
            return "enqueued token limit"
        refusal = limits.push_refusal(engine.options, state, engine.session_id, batch) or \
            quota_gate.reserve(engine, batch)
        if refusal:
            log.info("batch %d waits: %s reached", batch.local_id, refusal)
            return refusal
        batch = reserve_and_mark(engine, batch, "pushing")
        _create_remote(engine, batch)
    return None


def reserve_and_mark(engine: Engine, batch: BatchRecord, new_state: str) -> BatchRecord:
    """Commit the intent: the batch's worst case is reserved on the task and session budgets."""
    state = engine.state
    spend = limits.worst_spend(batch)
    updated = batch.model_copy(
        update={"state": new_state, "pushing_since": time.time(), "session": engine.session_id, "attempts": batch.attempts + 1}
    )
    changes = Changes()
    changes.batch(updated)
    changes.set(TOTALS, limits.reserve(state.totals, spend))
    changes.set(session_key(engine.session_id), limits.reserve(state.session(engine.session_id), spend))
    engine.commit(changes, f"push intent batch {batch.local_id}")
    return updated


def _resume_pushing(engine: Engine, batch: BatchRecord) -> None:
    remote_id = find_remote(engine, batch)
    if remote_id is not None:
        log.info("adopting remote batch %s for local batch %d (created before a restart)", remote_id, batch.local_id)
        remote = engine.client.batches.retrieve(remote_id)
        _commit_pushed(engine, batch, remote_id, remote.input_file_id, remote.status)
    else:
        log.info("local batch %d was never created remotely: pushing it now", batch.local_id)
        _create_remote(engine, batch)


def _create_remote(engine: Engine, batch: BatchRecord) -> None:
    task_id = engine.state.require_task().task_id
    try:
        with engine.store.open_blob(BlobRef.model_validate(batch.input_ref)) as fh:
            uploaded = engine.client.files.create(file=(f"gbatch_{batch.local_id:06d}.jsonl", fh), purpose="batch")
        remote = engine.client.batches.create(
            input_file_id=uploaded.id,
            endpoint=endpoints.azure_path(batch.endpoint) if engine.azure else batch.endpoint,  # type: ignore[arg-type]
            completion_window="24h",
            metadata=metadata_for(task_id, batch.local_id),
        )
    except openai.OpenAIError as exc:
        if api.classify_exception(exc) is api.Outcome.FATAL:
            raise EngineStop(f"creating batch {batch.local_id} failed: {api.describe_exception(exc)}") from exc
        log.warning("push of batch %d failed, will retry: %s", batch.local_id, api.describe_exception(exc))
        return
    _commit_pushed(engine, batch, remote.id, uploaded.id, remote.status)


def _commit_pushed(engine: Engine, batch: BatchRecord, remote_id: str, file_id: str, status: str) -> None:
    current = engine.state.batches[batch.local_id]
    changes = Changes()
    changes.batch(
        current.model_copy(
            update={"state": "pushed", "remote_id": remote_id, "input_file_id": file_id, "remote_status": status,
                    "pushed_at": time.time()}
        )
    )
    engine.commit(changes, f"pushed batch {batch.local_id} as {remote_id}")
    quota_gate.pushed(engine, current, remote_id)
    log.info("pushed batch %d as %s (%d requests)", batch.local_id, remote_id, batch.requests)
