"""Stage 3: upload assembled batch files and create remote batches, never pushing one local batch twice.

Protocol: (1) commit the intent (state ``pushing``, spend reserved); (2) upload and create the remote batch with
``metadata = {gbatch_task, gbatch_local_id}``; (3) commit ``pushed`` with the remote id. A run that died between (1)
and (3) finds the batch ``pushing`` and first looks for a remote batch carrying its metadata to adopt; only when
none exists is it pushed again.

Exactly once at the edges (fencing.py): the upload and the batch create are never re-sent by the client
(``engine.create_client``), each is preceded by a lease check with the create timeout left, and one whose outcome
is unknown (lost answer, timeout, 5xx) is looked up (the upload by its name, the batch by its metadata) and only
created again once its create window has closed. A batch created after the lease was lost is cancelled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import openai

from gbatch_flows import api, endpoints, remote_errors
from gbatch_flows.engine import limits, operations, quota_gate
from gbatch_flows.engine.context import Engine, EngineStop
from gbatch_flows.engine.state import TOTALS, Changes, session_key
from gbatch_flows.models import BatchRecord
from gbatch_flows.store import BlobRef

log = logging.getLogger("gbatch_flows.engine.push")

ADOPT_LOOKBACK_S = 3600.0


def metadata_for(task_id: str, local_id: int) -> dict[str, str]:
    return {"gbatch_task": task_id, "gbatch_local_id": str(local_id)}


def remote_by_metadata(engine: Engine, task_id: str, local_id: int, since: float,
                       skip: Collection[str] = ()) -> Any | None:
    """The newest remote batch whose metadata names (task_id, local_id), not in ``skip``, listed back to ``since``."""
    wanted = metadata_for(task_id, local_id)
    for remote in engine.client.batches.list(limit=100):
        meta = remote.metadata or {}
        if all(meta.get(k) == v for k, v in wanted.items()) and remote.id not in skip:
            return remote
        if remote.created_at < since:
            break
    return None


def find_remote_batch(engine: Engine, batch: BatchRecord) -> Any | None:
    """The remote batch already created for ``batch`` (matched by metadata) as listed, if any."""
    return remote_by_metadata(engine, engine.state.require_task().task_id, batch.local_id,
                              (batch.pushing_since or 0) - ADOPT_LOOKBACK_S, batch.past_remote_ids)


def find_remote(engine: Engine, batch: BatchRecord) -> str | None:
    """The id of a remote batch already created for ``batch`` (matched by metadata), if any."""
    remote = find_remote_batch(engine, batch)
    return None if remote is None else remote.id


def lookup(engine: Engine, doing: str, find: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    """(looked up, what ``find`` found): a look-up that failed (a retryable error) leaves the outcome unknown, so nothing may
    be created; an authentication error stops the run."""
    try:
        return True, find(engine, *args)
    except openai.OpenAIError as exc:
        _raise_if_fatal(exc, doing)
        log.warning("%s failed, will retry: %s", doing, api.describe_exception(exc))
        return False, None


def adopt_pushing(engine: Engine) -> int:
    """Adopt the remote twins of batches a crashed run left ``pushing``; creates nothing. Returns how many."""
    adopted = 0
    for batch in engine.state.batches_in("pushing"):
        if batch.mode != "batch":
            continue
        _, remote_id = lookup(engine, f"looking up batch {batch.local_id}", find_remote, batch)
        if remote_id is not None and _adopt(engine, batch, remote_id):
            adopted += 1
    return adopted


def push(engine: Engine) -> str | None:
    """Push assembled batches while the limits allow; returns the limit that stopped pushing (or None)."""
    quota_gate.sync(engine)
    for batch in engine.state.batches_in("pushing"):
        if batch.mode == "batch":
            try:
                _resume_pushing(engine, batch)
            except remote_errors.RemoteStop as stop:
                if stop.kind is not remote_errors.Kind.NO_ENDPOINT or not engine.options.force_direct:
                    raise
                # the server has no Batch API, so this batch cannot exist there: send its requests directly
                operations.never_created(engine, [engine.state.batches[batch.local_id]], "the server has no Batch API")
    for batch in _to_push(engine):
        refusal = _held_back(engine, batch)
        if refusal:  # by this task's own limits or the remote: it must not hold a place in the shared queue
            quota_gate.stand_aside(engine, batch)
        else:
            refusal = quota_gate.reserve(engine, batch)
        if refusal:
            if refusal == TOKEN_LIMIT_WAIT:
                log.info("batch %d waits for the enqueued-token limit: remote batches must finish first",
                         batch.local_id)
            else:
                log.info("batch %d waits: %s reached", batch.local_id, refusal)
            return refusal
        batch = reserve_and_mark(engine, batch, "pushing")
        _create_remote(engine, batch)
    return None


TOKEN_LIMIT_WAIT = "enqueued token limit"


def _to_push(engine: Engine) -> Iterator[BatchRecord]:
    return (b for b in engine.state.batches_in("assembled") if b.mode == "batch")


def _held_back(engine: Engine, batch: BatchRecord) -> str | None:
    """Why ``batch`` cannot be pushed now for a reason of this task's own (the remote refused it for the
    enqueued-token limit a moment ago, or the task's limits), or None."""
    state = engine.state
    if batch.not_before and time.time() < batch.not_before and state.batches_in("pushing", "pushed"):
        return TOKEN_LIMIT_WAIT
    return limits.push_refusal(engine.options, state, engine.session_id, batch)


def look_for_room(engine: Engine, ask_remote: bool = False) -> str | None:
    """For a task whose next batch waits on the shared quota only: "room" when ``push`` would let it through now,
    "wait" while the ledger holds it back; None when the ledger is not what it waits for (no ledger, nothing to
    push, or ``_held_back``: then it waits for its own batches). With ``ask_remote``, other tasks' batches the
    ledger holds are looked up first when there is no room (``quota_gate.free_ended``)."""
    if not quota_gate.waiting(engine):
        return None
    batch = next(_to_push(engine), None)
    if batch is None or _held_back(engine, batch):
        return None
    if quota_gate.would_grant(engine, batch):
        return "room"
    # another task's batch may have ended before its task polled it: ask the remote rather than wait for that poll
    freed = ask_remote and quota_gate.free_ended(engine, batch)
    return "room" if freed and quota_gate.would_grant(engine, batch) else "wait"


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
    looked_up, remote_id = lookup(engine, f"looking up batch {batch.local_id}", find_remote, batch)
    if not looked_up:
        return
    if remote_id is not None:
        log.info("adopting remote batch %s for local batch %d (created before a restart or a lost answer)",
                 remote_id, batch.local_id)
        _adopt(engine, batch, remote_id)
    elif engine.fence.may_create_again("batch", batch.local_id):
        log.info("local batch %d was never created remotely: pushing it now", batch.local_id)
        _create_remote(engine, batch)


def _adopt(engine: Engine, batch: BatchRecord, remote_id: str) -> bool:
    try:
        remote = engine.client.batches.retrieve(remote_id)
    except openai.OpenAIError as exc:
        _raise_if_fatal(exc, f"reading remote batch {remote_id}")
        log.warning("adopting %s for batch %d failed, will retry: %s", remote_id, batch.local_id,
                    api.describe_exception(exc))
        return False
    engine.fence.resolved("batch", batch.local_id)
    commit_pushed(engine, batch, remote_id, remote.input_file_id, remote.status)
    return True


def upload_prefix(task_id: str, local_id: int) -> str:
    """What every upload of one local batch's file is named with (the attempt follows)."""
    return f"gbatch_{task_id}_{local_id:06d}_"


def upload_name(task_id: str, batch: BatchRecord) -> str:
    """The upload's file name: findable by task, local batch and attempt when the answer to the upload is lost."""
    return f"{upload_prefix(task_id, batch.local_id)}{batch.attempts}.jsonl"


def find_upload(engine: Engine, name: str, since: float) -> str | None:
    """The id of an uploaded batch file named ``name`` (newest first, back to ``since``), if any."""
    for remote in engine.client.files.list(purpose="batch", order="desc", limit=100):
        if remote.filename == name:
            return remote.id
        if remote.created_at < since:
            break
    return None


def _upload(engine: Engine, batch: BatchRecord, task_id: str) -> str | None:
    """Upload the batch file once: an upload whose answer was lost is found by its name, not sent again until its
    window has closed. None when there is no file yet (tried again in the next push round)."""
    fence = engine.fence
    name = upload_name(task_id, batch)
    if name in fence.uploaded:  # uploaded before a batch create that failed
        return fence.uploaded[name]
    since = (batch.pushing_since or time.time()) - ADOPT_LOOKBACK_S
    if ("upload", batch.local_id) in fence.unknown_since:
        looked_up, found = lookup(engine, f"looking up the upload of batch {batch.local_id}", find_upload, name, since)
        if not looked_up:
            return None
        if found is not None:
            fence.resolved("upload", batch.local_id)
            fence.uploaded[name] = found
            return found
        if not fence.may_create_again("upload", batch.local_id):
            return None
    fence.before_create()
    try:
        with engine.store.open_blob(BlobRef.model_validate(batch.input_ref)) as fh:
            uploaded = engine.create_client.files.create(file=(name, fh), purpose="batch")
    except openai.OpenAIError as exc:
        _raise_if_fatal(exc, f"uploading batch {batch.local_id}")
        if api.outcome_unknown(exc):
            fence.mark_unknown("upload", batch.local_id)
            log.warning("upload of batch %d: outcome unknown (%s); looking it up by name before uploading again",
                        batch.local_id, api.describe_exception(exc))
            _, found = lookup(engine, f"looking up the upload of batch {batch.local_id}", find_upload, name, since)
            if found is not None:
                fence.resolved("upload", batch.local_id)
                fence.uploaded[name] = found
            return found
        log.warning("upload of batch %d failed, will retry: %s", batch.local_id, api.describe_exception(exc))
        return None
    fence.resolved("upload", batch.local_id)
    fence.uploaded[name] = uploaded.id
    return uploaded.id


def _raise_if_fatal(exc: openai.OpenAIError, doing: str) -> None:
    if api.classify_exception(exc) is api.Outcome.FATAL:
        raise EngineStop(f"{doing} failed: {api.describe_exception(exc)}") from exc


def _create_remote(engine: Engine, batch: BatchRecord) -> None:
    """Upload and create the remote batch, each create fenced by the lease and never re-sent blindly."""
    task_id = engine.state.require_task().task_id
    file_id = _upload(engine, batch, task_id)
    if file_id is None:
        return
    fence = engine.fence
    fence.before_create()
    try:
        remote = engine.create_client.batches.create(
            input_file_id=file_id,
            endpoint=endpoints.azure_path(batch.endpoint) if engine.azure else batch.endpoint,  # type: ignore[arg-type]
            completion_window="24h",
            metadata=metadata_for(task_id, batch.local_id),
        )
    except openai.OpenAIError as exc:
        _raise_if_fatal(exc, f"creating batch {batch.local_id}")
        if not api.outcome_unknown(exc):
            log.warning("push of batch %d failed, will retry: %s", batch.local_id, api.describe_exception(exc))
            return
        fence.mark_unknown("batch", batch.local_id)
        log.warning("creating batch %d: outcome unknown (%s); looking it up by metadata before creating it again",
                    batch.local_id, api.describe_exception(exc))
        _, remote_id = lookup(engine, f"looking up batch {batch.local_id}", find_remote, batch)
        if remote_id is not None:
            log.info("the create of batch %d took effect: adopting %s", batch.local_id, remote_id)
            _adopt(engine, batch, remote_id)
        return
    if (lost := fence.lost()) is not None:
        cancel_remote(engine, remote.id, f"local batch {batch.local_id} was created after this run lost its lease")
        raise lost
    fence.resolved("batch", batch.local_id)
    commit_pushed(engine, batch, remote.id, file_id, remote.status)


def cancel_remote(engine: Engine, remote_id: str, why: str, quiet: bool = False) -> bool:
    """Cancel a remote batch this run must not keep (best effort, logged loudly unless ``quiet``: a batch given up
    as gone answers 404 to its cancel too); True when the cancel went out."""
    try:  # no automatic retries: the client would re-send a 409 ("already final") five times
        engine.client.with_options(max_retries=0).batches.cancel(remote_id)
    except openai.ConflictError:
        log.info("remote batch %s is already final: nothing to cancel (%s)", remote_id, why)
        return False
    except openai.OpenAIError as exc:
        if not quiet:
            log.error("could not cancel remote batch %s (%s): %s; cancel it by hand", remote_id, why,
                      api.describe_exception(exc))
        return False
    log.error("cancelled remote batch %s: %s", remote_id, why)
    return True


def commit_pushed(engine: Engine, batch: BatchRecord, remote_id: str, file_id: str, status: str) -> None:
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
