"""Assertions on a committed state: no per-batch, remote, session or task limit is exceeded."""

from __future__ import annotations

from gbatch_flows.engine.state import TaskState

EPS = 1e-9


def check_limits(options, state: TaskState) -> None:
    in_flight = [b for b in state.batches.values() if b.state in ("pushing", "pushed") and b.mode == "batch"]
    for b in state.batches.values():
        assert b.requests <= min(options.max_batch_requests, 50_000), b
        assert b.tokens <= options.max_batch_ktokens * 1000 + EPS, b
        assert b.worst_cost <= options.max_batch_cost + EPS, b
        assert b.mb <= options.max_batch_mb + EPS, b
    assert len(in_flight) <= options.max_remote_batches
    assert sum(b.requests for b in in_flight) <= options.max_remote_requests
    assert sum(b.tokens for b in in_flight) <= options.max_remote_ktokens * 1000 + EPS
    assert sum(b.worst_cost for b in in_flight) <= options.max_remote_cost + EPS
    assert sum(b.mb for b in in_flight) <= options.max_remote_mb + EPS
    assert len(state.batches_in("assembled")) <= max(options.max_unpushed_batches, 1)
    budgets = [(state.totals, options.max_task_requests, options.max_task_ktokens, options.max_task_cost)]
    for key in state.manifest.sections:
        if key.startswith("session/"):
            budgets.append((state.session(key.split("/", 1)[1]), options.max_session_requests,
                            options.max_session_ktokens, options.max_session_cost))
    for budget, max_requests, max_ktokens, max_cost in budgets:
        for spend in (budget.committed, budget.settled):
            if max_requests is not None:
                assert spend.requests <= max_requests, budget
            if max_ktokens is not None:
                assert spend.tokens <= max_ktokens * 1000 + EPS, budget
            if max_cost is not None:
                assert spend.cost <= max_cost + EPS, budget
        assert budget.reserved.requests >= 0 and budget.reserved.cost >= -EPS, budget
