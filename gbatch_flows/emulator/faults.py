"""Fault injection by rate (seeded, deterministic per call number) and by script (the nth call of an op).

Every decision is a pure function of (seed, op, call number) or (seed, batch, line), so a run is reproducible
whatever the thread interleaving.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from .config import AFTER_FAULTS, BATCH_END_FAULTS, HTTP_FAULTS, LINE_FAULTS, FaultConfig, FaultRule
from .ids import stable_int, stable_unit

REQUEST_ERROR_STATUSES = (500, 429, 400)


@dataclass(frozen=True)
class CallFault:
    """The fault of one call: its kind and, for `slow_answer`, how late the answer is."""

    kind: str
    delay_s: float = 0.0

    @property
    def after_operation(self) -> bool:
        """True when the operation runs first (it takes effect) and only its answer is spoiled."""
        return self.kind in AFTER_FAULTS


class LineRule(BaseModel):
    """One per-line fault inside a batch: a share of the lines, or the lines of given custom_ids."""

    kind: Literal["lines_missing", "lines_malformed", "request_errors"]
    fraction: float = 0.0
    custom_ids: list[str] | None = None
    status_code: int | None = None


class BatchFaultPlan(BaseModel):
    """The faults chosen for one batch when it was created (stored with the batch, so they survive restarts)."""

    seed: int = 0
    key: str = ""
    end: Literal["failed", "expired", "cancelled"] | None = None
    end_at: float = Field(default=0.5, ge=0.0, le=1.0)
    lines: list[LineRule] = Field(default_factory=list)

    def line_fault(self, index: int, custom_id: str) -> tuple[str, int | None] | None:
        """(kind, status code) for the request at `index`, or None."""
        for number, rule in enumerate(self.lines):
            if rule.custom_ids is not None:
                hit = custom_id in rule.custom_ids
            else:
                hit = stable_unit(self.seed, "line", self.key, number, index) < rule.fraction
            if hit:
                status = rule.status_code
                if rule.kind == "request_errors" and status is None:
                    status = REQUEST_ERROR_STATUSES[stable_int(self.seed, "status", self.key, index) % 3]
                return rule.kind, status
        return None


def _matches(rule: FaultRule, op: str, number: int, any_number: int) -> bool:
    if rule.op == "*":
        return rule.nth is None or rule.nth == any_number
    return rule.op == op and (rule.nth is None or rule.nth == number)


class FaultInjector:
    """Holds the current FaultConfig and the per-op call counters."""

    def __init__(self, config: FaultConfig) -> None:
        self._lock = threading.Lock()
        self.set(config)

    def set(self, config: FaultConfig) -> None:
        """Replace the faults and restart the call counters."""
        with self._lock:
            self._config = config
            self._calls: Counter[str] = Counter()

    @property
    def config(self) -> FaultConfig:
        return self._config

    def on_call(self, op: str) -> tuple[int, str | None]:
        """Count a call of `op`; return (its 1-based number, the HTTP fault to answer with or None)."""
        number, fault = self.call_fault(op)
        return number, None if fault is None else fault.kind

    def call_fault(self, op: str) -> tuple[int, CallFault | None]:
        """Count a call of `op`; return (its 1-based number, the fault of this call or None)."""
        with self._lock:
            config = self._config
            self._calls[op] += 1
            self._calls["*"] += 1
            number, any_number = self._calls[op], self._calls["*"]
        for rule in config.script:
            if rule.fault in HTTP_FAULTS and _matches(rule, op, number, any_number):
                return number, CallFault(rule.fault, rule.delay_s)
        rates = config.rates
        if rates.ops is not None and op not in rates.ops:
            choices: list[tuple[str, float]] = []
        else:
            choices = [("http_500", rates.http_500), ("http_503", rates.http_503), ("http_429", rates.http_429),
                       ("drop_connection", rates.drop_connection), ("answer_lost", rates.answer_lost),
                       ("slow_answer", rates.slow_answer)]
        if op == "files.create":
            choices.append(("upload_error", rates.upload_error))
        draw = stable_unit(config.seed, "http", op, number)
        total = 0.0
        for kind, rate in choices:
            total += rate
            if draw < total:
                return number, CallFault(kind, rates.slow_answer_s)
        return number, None

    def plan_batch(self, number: int) -> BatchFaultPlan | None:
        """The faults for the batch made by the `number`th batches.create call (None = no fault)."""
        config = self._config
        with self._lock:
            any_number = self._calls["*"]
        plan = BatchFaultPlan(seed=config.seed, key=f"batch-{number}")
        for rule in config.script:
            if not _matches(rule, "batches.create", number, any_number):
                continue
            if rule.fault in BATCH_END_FAULTS and plan.end is None:
                plan.end = rule.fault.removeprefix("batch_")  # type: ignore[assignment]
                plan.end_at = rule.at
            elif rule.fault in LINE_FAULTS:
                plan.lines.append(LineRule(kind=rule.fault, fraction=rule.fraction,  # type: ignore[arg-type]
                                           custom_ids=rule.custom_ids, status_code=rule.status_code))
        rates = config.rates
        if plan.end is None:
            draw = stable_unit(config.seed, "batch", number)
            total = 0.0
            for end, rate in (("failed", rates.batch_failed), ("expired", rates.batch_expired),
                              ("cancelled", rates.batch_cancelled)):
                total += rate
                if draw < total:
                    plan.end = end  # type: ignore[assignment]
                    plan.end_at = 0.5
                    break
        for kind in ("lines_missing", "lines_malformed", "request_errors"):
            rate = getattr(rates, kind)
            if rate > 0:
                plan.lines.append(LineRule(kind=kind, fraction=rate))  # type: ignore[arg-type]
        if plan.end is None and not plan.lines:
            return None
        return plan
