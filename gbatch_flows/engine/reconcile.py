"""The remote is the truth for spend: reconcile the task's remote batches (found by metadata) with the manifest.

Called at the end of a run (``reconcile(engine)``). A remote batch the manifest does not know (a create that was
re-sent, a paused run that woke up and created a twin, a bug) is reported loudly; it is adopted when its local batch
is still ``pushing`` (the create took effect, its answer never came); otherwise it is cancelled, its worst case is
reserved on the task until it ends, and then its real usage is settled. Each such batch is recorded in an
``orphan/<remote id>`` section, so it is counted once however many runs see it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import openai

from gbatch_flows import api, costs, remote_errors
from gbatch_flows.engine import limits
from gbatch_flows.engine.context import Engine
from gbatch_flows.engine.poll import FINAL
from gbatch_flows.engine.push import ADOPT_LOOKBACK_S, cancel_remote, commit_pushed
from gbatch_flows.engine.state import ORPHAN_PREFIX, TOTALS, Changes
from gbatch_flows.models import BatchRecord, OrphanRecord, Spend, Usage

log = logging.getLogger("gbatch_flows.engine.reconcile")


@dataclass
class ReconcileReport:
    remote_batches: int = 0
    unknown: list[str] = field(default_factory=list)  # remote ids the manifest did not know (this time)
    adopted: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    settled_cost: float = 0.0  # real cost of orphans that ended (this time)
    open_orphans: int = 0  # orphans still running (their worst case stays reserved)


def orphans(engine: Engine) -> dict[str, OrphanRecord]:
    return engine.state.orphans()


def task_remote_batches(engine: Engine) -> list[Any]:
    """The remote batches whose metadata names this task (newest first, back to the task's creation)."""
    task = engine.state.require_task()
    since = task.created_at - ADOPT_LOOKBACK_S
    found = []
    for remote in engine.client.batches.list(limit=100):
        if remote.created_at < since:
            break
        if (remote.metadata or {}).get("gbatch_task") == task.task_id:
            found.append(remote)
    return found


def reconcile(engine: Engine) -> ReconcileReport:
    """List the task's remote batches and settle every one the manifest does not know (see the module doc)."""
    report = ReconcileReport()
    state = engine.state
    if state.task is None or not any(b.mode == "batch" for b in state.batches.values()):
        return report  # nothing was ever created remotely (or the server has no Batch API)
    remotes = task_remote_batches(engine)
    report.remote_batches = len(remotes)
    known = {b.remote_id for b in state.batches.values() if b.remote_id}
    known |= {rid for b in state.batches.values() for rid in b.past_remote_ids}
    recorded = orphans(engine)
    for remote in remotes:
        if remote.id in known or remote.id in recorded:
            continue
        report.unknown.append(remote.id)
        local = _local_batch(engine, remote)
        if local is not None and local.state == "pushing" and local.mode == "batch":
            log.warning("remote batch %s of local batch %d was created but never recorded: adopting it",
                        remote.id, local.local_id)
            commit_pushed(engine, local, remote.id, remote.input_file_id, remote.status)
            report.adopted.append(remote.id)
            continue
        _record_orphan(engine, remote, local, report)
    for orphan in orphans(engine).values():
        if orphan.settled is None:
            _settle_orphan(engine, orphan, report)
    report.open_orphans = sum(o.settled is None for o in orphans(engine).values())
    if report.unknown:
        log.error("reconcile: %d remote batch(es) of this task were not in the manifest: %s (adopted %d, cancelled "
                  "%d); their cost is counted in the task's spend", len(report.unknown), ", ".join(report.unknown),
                  len(report.adopted), len(report.cancelled))
    return report


def reconcile_at_end(engine: Engine) -> ReconcileReport | None:
    """``reconcile`` for the end of a run: an API error only logs one line (the next run reconciles again)."""
    if engine.options.force_direct and not any(b.mode == "batch" for b in engine.state.batches.values()):
        return None  # this task never used the Batch API (the server may have none): nothing to reconcile
    try:
        return reconcile(engine)
    except openai.OpenAIError as exc:
        log.warning("could not reconcile with the remote batches (the next run will): %s",
                    api.describe_exception(exc))
    except remote_errors.RemoteStop as stop:
        if stop.kind is remote_errors.Kind.AUTH:
            raise
        log.warning("could not reconcile with the remote batches (the next run will): %s", stop)
    return None


def _local_batch(engine: Engine, remote: Any) -> BatchRecord | None:
    raw = (remote.metadata or {}).get("gbatch_local_id")
    try:
        return engine.state.batches.get(int(raw))
    except (TypeError, ValueError):
        return None


def _record_orphan(engine: Engine, remote: Any, local: BatchRecord | None, report: ReconcileReport) -> None:
    """Cancel the unknown remote batch and reserve its worst case on the task until it ends."""
    why = (f"a second remote batch for local batch {local.local_id}" if local is not None
           else "a remote batch of this task that no local batch owns")
    log.error("reconcile: remote batch %s is %s (status %s)", remote.id, why, remote.status)
    status = remote.status
    if status not in FINAL and cancel_remote(engine, remote.id, why):
        report.cancelled.append(remote.id)
        status = "cancelling"
    reserved = limits.worst_spend(local) if local is not None else Spend()
    orphan = OrphanRecord(remote_id=remote.id, local_id=local.local_id if local else None, status=status,
                          seen_at=time.time(), reserved=reserved)
    changes = Changes()
    changes.set(ORPHAN_PREFIX + remote.id, orphan)
    changes.set(TOTALS, limits.reserve(engine.state.totals, reserved))
    engine.commit(changes, f"reconcile: unknown remote batch {remote.id}")


def _settle_orphan(engine: Engine, orphan: OrphanRecord, report: ReconcileReport) -> None:
    """Once the orphan has ended, count its real usage (its output file) and release its reservation."""
    try:
        remote = engine.client.batches.retrieve(orphan.remote_id)
    except openai.NotFoundError:
        remote = None
    except openai.OpenAIError as exc:
        log.warning("reconcile: could not read remote batch %s: %s", orphan.remote_id, api.describe_exception(exc))
        return
    if remote is not None and remote.status not in FINAL:
        return
    usage = _output_usage(engine, remote.output_file_id) if remote is not None and remote.output_file_id else Usage()
    model = engine.meta.get("model", "")
    cost = costs.actual_cost(usage.model_dump() | {"prompt_tokens_details": {"cached_tokens": usage.cached_tokens}},
                             engine.prices(model), "batch")
    counts = remote.request_counts.model_dump() if remote is not None and remote.request_counts else {}
    actual = Spend(requests=counts.get("completed", 0) + counts.get("failed", 0), tokens=usage.total, cost=cost)
    changes = Changes()
    changes.set(ORPHAN_PREFIX + orphan.remote_id, orphan.model_copy(update={
        "status": remote.status if remote is not None else "gone", "settled": actual, "usage": usage}))
    changes.set(TOTALS, limits.settle(engine.state.totals, orphan.reserved, actual))
    engine.commit(changes, f"reconcile: remote batch {orphan.remote_id} ended, ${cost:.6f} counted")
    report.settled_cost += cost
    log.error("reconcile: unknown remote batch %s ended (%s): $%.6f counted in the task's spend", orphan.remote_id,
              remote.status if remote is not None else "gone", cost)


def _output_usage(engine: Engine, file_id: str) -> Usage:
    total = Usage()
    try:
        data = engine.client.files.content(file_id).read()
    except openai.OpenAIError as exc:
        log.warning("reconcile: could not download %s: %s", file_id, api.describe_exception(exc))
        return total
    for raw in data.splitlines():
        line = api.parse_result_line(raw)
        usage = (line.body or {}).get("usage") if line is not None else None
        if not isinstance(usage, dict):
            continue
        details = usage.get("prompt_tokens_details") or {}
        total = total + Usage(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                              completion_tokens=int(usage.get("completion_tokens") or 0),
                              cached_tokens=int(details.get("cached_tokens") or 0))
    return total


__all__ = ["OrphanRecord", "ReconcileReport", "orphans", "reconcile", "reconcile_at_end", "task_remote_batches"]
