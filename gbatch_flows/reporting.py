"""Progress, token and cost figures derived from the committed state (for logs, wandb, Prefect artifacts)."""

from __future__ import annotations

import time
from typing import Any

from gbatch_flows import monitor as m
from gbatch_flows import status
from gbatch_flows.engine.state import TaskState


def metrics(state: TaskState, session_id: str) -> dict[str, Any]:
    """Done = answered or failed for good; total = done + queued + in batches (right after any wipe or reinit)."""
    processed = state.batches_in("processed")
    requests = status.request_counts(state)
    total, failed = requests.total, requests.failed
    done = requests.done + failed
    session = state.session(session_id)
    return {
        m.REQUESTS_TOTAL: total,
        m.REQUESTS_DONE: done,
        m.REQUESTS_FAILED: failed,
        m.REQUESTS_PROGRESS: round(done / total, 6) if total else 0.0,
        m.TOKENS_INPUT: sum(b.usage.prompt_tokens for b in processed),
        m.TOKENS_CACHED_INPUT: sum(b.usage.cached_tokens for b in processed),
        m.TOKENS_OUTPUT: sum(b.usage.completion_tokens for b in processed),
        m.COST_SESSION: round(session.settled.cost, 6),
        m.COST_TASK: round(state.totals.settled.cost, 6),
        m.COST_RESERVED: round(state.totals.reserved.cost, 6),
    }


def batch_states(state: TaskState) -> dict[str, int]:
    """Batches by state; remote ones by their remote status (validating, in_progress, ...)."""
    out: dict[str, int] = {}
    for batch in state.batches.values():
        if batch.state == "assembled":
            name = "unpushed"
        elif batch.state == "pushed" and batch.remote_status:
            name = batch.remote_status
        elif batch.state == "done":
            name = batch.remote_status or "completed"
        else:
            name = batch.state
        out[name] = out.get(name, 0) + 1
    return out


def batch_rows(state: TaskState) -> list[dict[str, Any]]:
    """One row per batch: status, requests, tokens and cost (a Prefect table artifact, a summary)."""
    return [
        {
            "batch": b.local_id,
            "mode": b.mode,
            "state": b.state,
            "remote": b.remote_status or "",
            "requests": b.requests,
            "ok": b.outcomes.ok,
            "retried": b.outcomes.retried,
            "failed": b.outcomes.failed,
            "est_tokens": b.tokens,
            "prompt_tokens": b.usage.prompt_tokens,
            "completion_tokens": b.usage.completion_tokens,
            "worst_cost": round(b.worst_cost, 6),
            "cost": round(b.cost, 6),
        }
        for b in state.batches.values()
    ]


def summary_line(state: TaskState, session_id: str) -> str:
    figures = metrics(state, session_id)
    return (
        f"{figures[m.REQUESTS_DONE]}/{figures[m.REQUESTS_TOTAL]} requests done ({figures[m.REQUESTS_FAILED]} failed), "
        f"{figures[m.TOKENS_INPUT]} input + {figures[m.TOKENS_OUTPUT]} output tokens, "
        f"session ${figures[m.COST_SESSION]:.4f}, task ${figures[m.COST_TASK]:.4f}; "
        + status.tuning_line(status.CompletionStats.of_batches(state.batches_in("processed")),
                             state.task.meta if state.task else {})
    )


class Throttle:
    """True at most once per ``interval_s`` (the first call is always True)."""

    def __init__(self, interval_s: float, clock=time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self.last: float | None = None

    def ready(self) -> bool:
        now = self.clock()
        if self.last is None or now - self.last >= self.interval_s:
            self.last = now
            return True
        return False
