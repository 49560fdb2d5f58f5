"""Every budget the engine enforces, in one place: per batch, remote queue, session and task.

A limit is never exceeded: spend is reserved with the worst case before a push (or a direct call), settled from the
actual ``usage`` after, and the reservations live in the manifest so that they survive restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

from gbatch_flows.engine.state import IN_FLIGHT, TaskState
from gbatch_flows.models import BatchRecord, Budget, Spend

API_MAX_BATCH_REQUESTS = 50_000
API_MAX_BATCH_BYTES = 200 * 1_000_000
BYTES_PER_MB = 1_000_000
INF = float("inf")


@dataclass(frozen=True)
class Caps:
    """Upper bounds of one batch: requests, prompt tokens, worst-case cost, bytes."""

    requests: float = INF
    tokens: float = INF
    cost: float = INF
    bytes: float = INF

    def tighten(self, other: Caps) -> Caps:
        return Caps(
            min(self.requests, other.requests),
            min(self.tokens, other.tokens),
            min(self.cost, other.cost),
            min(self.bytes, other.bytes),
        )


def _opt(value: float | None, scale: float = 1.0) -> float:
    return INF if value is None else float(value) * scale


def batch_caps(options, mode: str) -> Caps:
    """The per-batch limits (with the API's own ceiling for real batches)."""
    caps = Caps(
        requests=min(options.max_batch_requests, API_MAX_BATCH_REQUESTS),
        tokens=options.max_batch_ktokens * 1000,
        cost=options.max_batch_cost,
        bytes=min(options.max_batch_mb * BYTES_PER_MB, API_MAX_BATCH_BYTES),
    )
    if mode == "direct":
        caps = caps.tighten(Caps(requests=max(1, options.max_direct_concurrency) * 8))
    return caps


def remaining(limit_requests, limit_ktokens, limit_cost, budget: Budget) -> Caps:
    """What is left of a requests / ktokens / cost limit after committed (reserved + settled) spend."""
    used = budget.committed
    return Caps(
        requests=_opt(limit_requests) - used.requests,
        tokens=_opt(limit_ktokens, 1000) - used.tokens,
        cost=_opt(limit_cost) - used.cost,
    )


def spend_caps(options, state: TaskState, session_id: str) -> tuple[Caps, Caps]:
    """Remaining session and task budgets (tokens here are prompt + worst-case completion)."""
    session = remaining(
        options.max_session_requests, options.max_session_ktokens, options.max_session_cost, state.session(session_id)
    )
    task = remaining(options.max_task_requests, options.max_task_ktokens, options.max_task_cost, state.totals)
    return session, task


def worst_spend(batch: BatchRecord) -> Spend:
    """The batch's own worst case (what its push reserves)."""
    return Spend(requests=batch.requests, tokens=batch.tokens + batch.max_out, cost=batch.worst_cost)


def reserved_spend(batch: BatchRecord) -> Spend:
    """Everything reserved for the batch: its worst case plus re-sends of calls lost in a crash."""
    return worst_spend(batch) + batch.extra_reserved


def budget_refusal(session: Caps, task: Caps, spend: Spend) -> str | None:
    """The option that refuses ``spend`` (``max_session_cost``, ``max_task_ktokens``...), the task's first."""
    for scope, caps in (("task", task), ("session", session)):
        dimension = fits_spend(caps, spend)
        if dimension is not None:
            return f"max_{scope}_{dimension}"
    return None


def fits_spend(caps: Caps, spend: Spend) -> str | None:
    """None when ``spend`` fits in ``caps``; else which dimension does not."""
    if spend.requests > caps.requests:
        return "requests"
    if spend.tokens > caps.tokens:
        return "ktokens"
    if spend.cost > caps.cost + 1e-12:
        return "cost"
    return None


def remote_usage(state: TaskState) -> tuple[int, int, int, float, float]:
    """Batches, requests, prompt tokens, worst-case cost and MB currently in the remote queue."""
    batches = [b for b in state.batches.values() if b.state in IN_FLIGHT and b.mode == "batch"]
    return (
        len(batches),
        sum(b.requests for b in batches),
        sum(b.tokens for b in batches),
        sum(b.worst_cost for b in batches),
        sum(b.mb for b in batches),
    )


def remote_refusal(options, state: TaskState, batch: BatchRecord) -> str | None:
    """None when ``batch`` may join the remote queue now; else the limit that holds it back."""
    n, requests, tokens, cost, mb = remote_usage(state)
    checks = [
        ("max_remote_batches", n + 1, options.max_remote_batches),
        ("max_remote_requests", requests + batch.requests, options.max_remote_requests),
        ("max_remote_ktokens", (tokens + batch.tokens) / 1000, options.max_remote_ktokens),
        ("max_remote_cost", cost + batch.worst_cost, options.max_remote_cost),
        ("max_remote_mb", mb + batch.mb, options.max_remote_mb),
    ]
    for name, value, limit in checks:
        if limit is not None and value > limit + 1e-9:
            return name
    return None


def spend_refusal(options, state: TaskState, session_id: str, batch: BatchRecord) -> str | None:
    """None when the session and task budgets can take ``batch``'s worst case; else which limit refuses."""
    session, task = spend_caps(options, state, session_id)
    spend = worst_spend(batch)
    for scope, caps in (("session", session), ("task", task)):
        dim = fits_spend(caps, spend)
        if dim is not None:
            return f"max_{scope}_{dim}"
    return None


def push_refusal(options, state: TaskState, session_id: str, batch: BatchRecord) -> str | None:
    """None when ``batch`` may be pushed now (remote queue, session and task limits); else the limit in the way."""
    return remote_refusal(options, state, batch) or spend_refusal(options, state, session_id, batch)


def reserve(budget: Budget, spend: Spend) -> Budget:
    return Budget(reserved=budget.reserved + spend, settled=budget.settled)


def settle(budget: Budget, reserved: Spend, actual: Spend) -> Budget:
    return Budget(reserved=budget.reserved - reserved, settled=budget.settled + actual)
