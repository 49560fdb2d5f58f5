"""The engine's side of the shared quota (``--quota_dir``): reserve before a push intent, settle what ended.

Order (see ``gbatch_flows/quota/ledger.py``): the ledger reservation comes before the task commits its push
intent, so a crash can leave a hold without an intent (``sync`` releases it on the next run) but never an intent
without a hold. Holds of batches that ended are settled by ``sync``, which every loop of the run calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import openai

from gbatch_flows.engine import limits
from gbatch_flows.engine.context import Engine, EngineStop
from gbatch_flows.models import BatchRecord
from gbatch_flows.quota import Hold, QuotaError
from gbatch_flows.quota.ledger import DIRECT_TTL_S

log = logging.getLogger("gbatch_flows.engine.quota")


def _task_id(engine: Engine) -> str:
    return engine.state.require_task().task_id


def _hold(engine: Engine, batch: BatchRecord) -> Hold:
    owner = engine.lease.owner if engine.lease is not None else engine.session_id
    return Hold(task_id=_task_id(engine), task=engine.store.url, local_id=batch.local_id, model=batch.model,
                tokens=batch.tokens, cost=limits.reserved_spend(batch).cost, holder=owner, reserved_at=time.time())


def reserve(engine: Engine, batch: BatchRecord) -> str | None:
    """Reserve ``batch`` in the shared ledger; None when granted (or no ledger), else why it must wait."""
    if engine.quota is None or batch.mode != "batch":
        return None
    try:
        decision = engine.quota.reserve(_hold(engine, batch))
    except QuotaError as exc:
        raise EngineStop(str(exc)) from exc
    return None if decision.granted else decision.reason


def stand_aside(engine: Engine, batch: BatchRecord) -> None:
    """The task cannot push ``batch`` now for a reason of its own (its limits, a refusal by the remote): it leaves
    the shared waiting queue, where it would keep the tasks behind it waiting for nothing."""
    if engine.quota is not None and batch.mode == "batch":
        engine.quota.withdraw(_task_id(engine), batch.model)


def pushed(engine: Engine, batch: BatchRecord, remote_id: str) -> None:
    if engine.quota is not None and batch.mode == "batch":
        engine.quota.mark_pushed(_task_id(engine), batch.local_id, remote_id)


def sync(engine: Engine) -> None:
    """Release holds of batches that were never pushed and settle those that ended (actual cost and tokens);
    leave the waiting queue when nothing is left to push."""
    if engine.quota is None or engine.state.task is None:
        return
    view = {b.local_id: (b.state, b.cost, b.usage.prompt_tokens + b.usage.completion_tokens)
            for b in engine.state.batches.values() if b.mode == "batch"}
    done = engine.quota.sync_task(_task_id(engine), view)
    if any(done.values()):
        log.debug("quota: %d hold(s) released, %d settled", done["released"], done["settled"])
    if not engine.state.batches_in("assembled"):
        for model in {b.model for b in engine.state.batches.values()} or {engine.meta.get("model", "")}:
            engine.quota.withdraw(_task_id(engine), model)


def waiting(engine: Engine) -> bool:
    """Whether batches wait for room in the shared quota (room another task frees must be taken at once)."""
    return engine.quota is not None and bool(engine.state.batches_in("assembled"))


def would_grant(engine: Engine, batch: BatchRecord) -> bool:
    """Whether ``reserve(engine, batch)`` would be granted now (one read of the ledger, nothing committed)."""
    return engine.quota is None or engine.quota.would_grant(_hold(engine, batch))


#: Each of those look-ups gives up after this long (the wait stage must keep looking at the ledger).
FREE_ENDED_TIMEOUT_S = 10.0


def free_ended(engine: Engine, batch: BatchRecord) -> bool:
    """Free the tokens of other tasks' batches that ended on the remote but are still held because their task has
    not polled them yet (``QuotaLedger.free_ended``); True when some were freed. Look-up errors free nothing.
    Called by a waiting task when it polls its own batches, so on the same back-off (at most FREE_ENDED_CHECKS
    look-ups each time)."""
    if engine.quota is None:
        return False
    client = engine.client.with_options(max_retries=0, timeout=FREE_ENDED_TIMEOUT_S)

    def status(hold: Hold) -> str | None:
        try:
            return client.batches.retrieve(hold.remote_id).status if hold.remote_id else None
        except openai.OpenAIError as exc:  # not visible with this key, or the remote is busy: leave it held
            log.debug("quota: cannot look up %s of task %s: %s", hold.remote_id, hold.task, exc)
            return None

    return bool(engine.quota.free_ended(batch.model, status, exclude_task=_task_id(engine), needed=batch.tokens))


def _remote_status(engine: Engine, hold: Hold) -> str | None:
    """What the remote knows of a hold's batch: its status, or None when no such batch exists."""
    if hold.remote_id:
        try:
            return engine.client.batches.retrieve(hold.remote_id).status
        except openai.NotFoundError:
            return None
    from gbatch_flows.engine.push import ADOPT_LOOKBACK_S, remote_by_metadata  # push imports this module

    remote = remote_by_metadata(engine, hold.task_id, hold.local_id, hold.reserved_at - ADOPT_LOOKBACK_S)
    return None if remote is None else remote.status


def start(engine: Engine) -> None:
    """At the start of a run: settle this task's own holds, and reclaim those of tasks that left theirs behind
    (their batch is over, or was never created, and nobody settled it)."""
    if engine.quota is None:
        return
    sync(engine)
    try:
        reclaimed = engine.quota.reclaim(lambda hold: _remote_status(engine, hold), exclude_task=_task_id(engine))
    except openai.OpenAIError as exc:
        log.warning("quota: could not check other tasks' holds against the remote (%s); later runs will", exc)
        return
    if reclaimed:
        log.warning("quota: reclaimed %d hold(s) left behind by other tasks", len(reclaimed))


#: How often a task sending direct requests renews its share of the shared direct limits; a task that joins waits
#: until the tasks already sending have renewed (seen it and lowered their share) before its first request.
DIRECT_REFRESH_S = 2.0
DIRECT_JOIN_MAX_S = DIRECT_TTL_S  # a task silent that long no longer counts in the ledger


class DirectShare:
    """This run's share of the direct RPM/TPM limits shared through the ledger (``quota set --max_direct_rpm``):
    the limits split evenly between the tasks sending now, renewed every DIRECT_REFRESH_S seconds."""

    def __init__(self, engine: Engine, pacer: Any, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.engine, self.pacer, self.clock, self.sleep = engine, pacer, clock, sleep
        self.renewed = -float("inf")
        self.models: set[str] = set()

    def renew(self, model: str, force: bool = False) -> None:
        quota = self.engine.quota
        if quota is None or (not force and self.clock() - self.renewed < DIRECT_REFRESH_S and model in self.models):
            return
        joining = model not in self.models
        since = quota.clock()
        rpm, tpm = quota.direct_share(_task_id(self.engine), model)
        options = self.engine.options
        self.pacer.set_ceiling(_least(rpm, options.max_direct_rpm), _least(tpm, options.max_direct_tpm))
        self.renewed = self.clock()
        self.models.add(model)
        if joining and (rpm is not None or tpm is not None):
            self._wait_until_counted(model, since)

    def _wait_until_counted(self, model: str, since: float) -> None:
        """Before a joining task sends, every task already sending renews its share (at most DIRECT_REFRESH_S
        apart, later on a busy machine) and so lowers it: until then their shares and ours add up to more than the
        limit. Bounded by DIRECT_JOIN_MAX_S (a task that stopped renewing drops out of the count by then)."""
        quota = self.engine.quota
        deadline = self.clock() + DIRECT_JOIN_MAX_S
        while not quota.direct_joined(_task_id(self.engine), model, since) and self.clock() < deadline:
            self.sleep(0.1)

    def leave(self) -> None:
        if self.engine.quota is not None:
            for model in self.models:
                self.engine.quota.direct_share(_task_id(self.engine), model, active=False)
        self.models.clear()


def _least(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)
