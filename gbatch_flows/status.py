"""The status of a task from its committed state: requests by state, batches by state, spend, what remains and its
estimated cost, and the observed completion tokens (the figures to tune ``max_completion_tokens`` and
``completion_ratio`` with). Plain data plus a text rendering, for ``--no_run``, the run's log and summary, and the
Prefect layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gbatch_flows import costs
from gbatch_flows.engine.state import UNPROCESSED, TaskState
from gbatch_flows.models import BatchRecord

if TYPE_CHECKING:
    from gbatch_flows.engine.context import Engine

#: Histogram buckets grow by 10%: a quantile read from them is at most 10% above the exact one.
_GROWTH = math.log(1.1)
_RATIO_SCALE = 1000  # ratios are bucketed in thousandths


_ADDED: dict[tuple[int, int], tuple[float, int, int]] = {}  # (completion, prompt) -> (ratio, token and ratio buckets)
_ADDED_MAX = 65536


def _bucket(value: float) -> int:
    return 0 if value <= 0 else math.ceil(math.log1p(value) / _GROWTH)


def _upper(bucket: int) -> float:
    return math.expm1(bucket * _GROWTH)


def _quantile(hist: Mapping[int, int], count: int, q: float) -> float:
    """Upper bound of the bucket holding the ``q`` quantile (0 when empty)."""
    rank, seen = math.ceil(q * count), 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return _upper(bucket)
    return 0.0


@dataclass
class CompletionStats:
    """Completion tokens (and completion / prompt ratios) of answered requests, as small log-scale histograms that
    add up over batches (stored per batch in ``BatchRecord.completion``)."""

    count: int = 0
    total: int = 0
    max_tokens: int = 0
    max_ratio: float = 0.0
    tokens: dict[int, int] = field(default_factory=dict)
    ratios: dict[int, int] = field(default_factory=dict)

    def add(self, completion: int, prompt: int) -> None:
        key = (completion, prompt)
        known = _ADDED.get(key)
        if known is None:  # the same pairs recur: their ratio and buckets are computed once per process
            ratio = completion / prompt if prompt > 0 else 0.0
            known = (ratio, _bucket(completion), _bucket(ratio * _RATIO_SCALE))
            if len(_ADDED) >= _ADDED_MAX:
                _ADDED.clear()
            _ADDED[key] = known
        ratio, b, r = known
        self.count += 1
        self.total += completion
        if completion > self.max_tokens:
            self.max_tokens = completion
        if ratio > self.max_ratio:
            self.max_ratio = ratio
        tokens, ratios = self.tokens, self.ratios
        tokens[b] = tokens.get(b, 0) + 1
        ratios[r] = ratios.get(r, 0) + 1

    def merge(self, other: CompletionStats) -> None:
        self.count += other.count
        self.total += other.total
        self.max_tokens = max(self.max_tokens, other.max_tokens)
        self.max_ratio = max(self.max_ratio, other.max_ratio)
        for mine, theirs in ((self.tokens, other.tokens), (self.ratios, other.ratios)):
            for bucket, n in theirs.items():
                mine[bucket] = mine.get(bucket, 0) + n

    def p95_tokens(self) -> int:
        return min(self.max_tokens, math.ceil(_quantile(self.tokens, self.count, 0.95) - 1e-9))

    def p95_ratio(self) -> float:
        return min(self.max_ratio, _quantile(self.ratios, self.count, 0.95) / _RATIO_SCALE)

    def mean_tokens(self) -> float:
        return self.total / self.count if self.count else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.count, "sum": self.total, "max": self.max_tokens, "max_ratio": round(self.max_ratio, 6),
                "tokens": {str(k): v for k, v in self.tokens.items()},
                "ratios": {str(k): v for k, v in self.ratios.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompletionStats:
        return cls(int(data.get("n", 0)), int(data.get("sum", 0)), int(data.get("max", 0)),
                   float(data.get("max_ratio", 0.0)), {int(k): int(v) for k, v in (data.get("tokens") or {}).items()},
                   {int(k): int(v) for k, v in (data.get("ratios") or {}).items()})

    @classmethod
    def of_batches(cls, batches: Iterable[BatchRecord]) -> CompletionStats:
        out = cls()
        for batch in batches:
            out.merge(cls.from_dict(batch.completion))
        return out


@dataclass
class RequestCounts:
    """Every request of the task is in exactly one of these: done (answered and processed), failed for good,
    queued (not in a batch yet) or in a batch not processed yet (batches cancelled by ``--wipe_requests`` do not
    count: their samples are queued again)."""

    done: int = 0
    failed: int = 0
    queued: int = 0
    in_batches: int = 0

    @property
    def total(self) -> int:
        return self.done + self.failed + self.queued + self.in_batches


def request_counts(state: TaskState) -> RequestCounts:
    """Counted from where the requests are now, so maintenance actions (wipes, reinit) keep the counts right:
    failed requests that ``--wipe_failed`` requeued count as queued, not failed."""
    processed = state.batches_in("processed")
    return RequestCounts(
        done=sum(b.outcomes.ok for b in processed),
        failed=sum(b.outcomes.failed for b in processed if b.failed_ref is not None),
        queued=state.queued_requests(),
        in_batches=sum(b.requests for b in state.batches_in(*UNPROCESSED) if b.cancel_requested_at is None),
    )


@dataclass
class Remaining:
    """What is left to send (queued requests and unprocessed batches) and what it should cost."""

    requests: int = 0
    prompt_tokens: int = 0
    worst_cost: float = 0.0
    estimated_cost: float = 0.0


def remaining(engine: Engine, observed: CompletionStats | None = None) -> Remaining:
    """The queue's requests priced one by one (batch prices, or direct ones under ``--force_direct``) plus the
    unprocessed batches; the estimate assumes the mean observed completion (the worst case when none is known)."""
    from gbatch_flows.engine.assemble import iter_queue

    state = engine.state
    mode: costs.Mode = "direct" if engine.options.force_direct else "batch"
    mean = observed.mean_tokens() if observed is not None and observed.count else None
    out = Remaining()
    for item in iter_queue(engine, state):
        req = item.request
        prices = engine.prices(item.model)
        expected_out = req["max_out"] if mean is None else min(req["max_out"], round(mean))
        out.requests += 1
        out.prompt_tokens += req["tokens"]
        out.worst_cost += costs.worst_case_cost(req["tokens"], req["max_out"], prices, mode)
        out.estimated_cost += costs.worst_case_cost(req["tokens"], expected_out, prices, mode)
    for batch in state.batches_in(*UNPROCESSED):
        share = 1.0 if mean is None or not batch.max_out else min(1.0, mean * batch.requests / batch.max_out)
        prices = engine.prices(batch.model)
        out_price = prices.output_direct if batch.mode == "direct" else prices.output_batch
        out.requests += batch.requests
        out.prompt_tokens += batch.tokens
        out.worst_cost += batch.worst_cost
        out.estimated_cost += batch.worst_cost - (1.0 - share) * batch.max_out * out_price / 1e6
    return out


def sessions(state: TaskState) -> dict[str, float]:
    """Settled cost of every session that spent or reserved something, by session id."""
    out: dict[str, float] = {}
    for key in state.manifest.sections:
        if key.startswith("session/"):
            session_id = key.split("/", 1)[1]
            out[session_id] = state.session(session_id).settled.cost
    return out


def batch_files(engine: Engine) -> list[str]:
    """URLs of the batch input files assembled but not pushed yet (to inspect them)."""
    from gbatch_flows.store import BlobRef

    base = engine.store.url.rstrip("/")
    return [f"{base}/{BlobRef.model_validate(b.input_ref).path}" for b in engine.state.batches_in("assembled")]


def batch_states(state: TaskState) -> dict[str, int]:
    """Batches by local state and mode, e.g. ``{"processed": 3, "unpushed": 1, "direct processed": 1}``."""
    names = {"assembled": "unpushed"}
    out: dict[str, int] = {}
    for batch in state.batches.values():
        name = names.get(batch.state, batch.state)
        if batch.state in ("pushed", "done") and batch.remote_status:
            name = f"{name} ({batch.remote_status})"
        if batch.mode == "direct":
            name = f"direct {name}"
        out[name] = out.get(name, 0) + 1
    return out


def tuning_line(stats: CompletionStats, meta: Mapping[str, Any]) -> str:
    """The figures to tune ``max_completion_tokens`` and ``completion_ratio`` with, next to their settings."""
    if not stats.count:
        return "completion tokens: nothing answered yet"
    return (f"completion tokens over {stats.count} answered requests: max {stats.max_tokens}, p95 "
            f"{stats.p95_tokens()}, mean {stats.mean_tokens():.0f} (max_completion_tokens "
            f"{meta.get('max_completion_tokens')}); completion ratio (completion / prompt tokens): max "
            f"{stats.max_ratio:.3g}, p95 {stats.p95_ratio():.3g} (completion_ratio {meta.get('completion_ratio')})")


def orphan_line(state: TaskState) -> str | None:
    """Remote batches of this task that the manifest did not know when a reconcile found them (see
    ``engine/reconcile.py``): cancelled, their cost counted in the task's spend."""
    records = list(state.orphans().values())
    if not records:
        return None
    running = sum(r.settled is None for r in records)
    return (f"remote batches found outside the manifest (cancelled, cost counted): {len(records)}"
            + (f", {running} not ended yet (worst case reserved)" if running else ""))


def status_lines(engine: Engine) -> list[str]:
    """The task status as text lines (for ``--no_run`` and the end of a run)."""
    state = engine.state
    task = state.task
    if task is None:
        return [f"no task in {engine.store.url} yet: run without --no_run to create it"]
    meta = task.meta
    shown = ", ".join(f"{k} {meta[k]}" for k in ("model", "max_completion_tokens", "completion_ratio", "temperature")
                      if meta.get(k) is not None)
    counts = request_counts(state)
    stats = CompletionStats.of_batches(state.batches_in("processed"))
    left = remaining(engine, stats)
    spent = sessions(state)
    this = spent.get(engine.session_id, 0.0)
    batches = ", ".join(f"{n} {name}" for name, n in sorted(batch_states(state).items())) or "none"
    lines = [
        f"task {task.name} in {engine.store.url} ({shown}); generation "
        f"{'complete' if task.generated else 'not complete: the next run generates the rest'}",
        f"requests: {counts.total} = {counts.done} done + {counts.failed} failed + {counts.queued} queued + "
        f"{counts.in_batches} in batches",
        f"batches: {batches}",
        f"spend: task ${state.totals.settled.cost:.4f} (+ ${state.totals.reserved.cost:.4f} reserved in flight); "
        f"this session ${this:.4f}; {len(spent)} session(s) so far",
        f"remaining: {left.requests} requests, {left.prompt_tokens} prompt tokens, estimated ${left.estimated_cost:.4f}"
        f" (worst case ${left.worst_cost:.4f})",
        tuning_line(stats, meta),
    ]
    strays = orphan_line(state)
    if strays:
        lines.append(strays)
    files = batch_files(engine)
    if files:
        lines.append(f"unpushed batch files ({len(files)}): {', '.join(files[:3])}" + (" ..." if len(files) > 3 else ""))
    return lines
