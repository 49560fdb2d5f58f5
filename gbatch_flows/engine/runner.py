"""The run loop over the stages: generate, then process / assemble / push (or direct) / poll until done or stopped.

The Prefect flow (``gbatch_flows/flow.py``) drives the same stage functions and uses the decisions below, so the
plain Python run and the flow behave alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gbatch_flows.engine import limits, quota_gate
from gbatch_flows.engine.assemble import assemble
from gbatch_flows.engine.context import Engine, EngineStop
from gbatch_flows.engine.direct import DirectStats, run_direct
from gbatch_flows.engine.generate import generate
from gbatch_flows.engine.pacer import Pacer
from gbatch_flows.engine.poll import poll
from gbatch_flows.engine.process import process
from gbatch_flows.engine.push import adopt_pushing, push
from gbatch_flows.engine.state import TaskState

log = logging.getLogger("gbatch_flows.engine.runner")


@dataclass
class RunSummary:
    status: str  # "finished", "stopped" (a limit stops it), "waiting" (batches still remote), "error" (a rule stops it)
    reason: str = ""
    generation: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def is_finished(state: TaskState) -> bool:
    task = state.task
    if task is None or not task.generated:
        return False
    return state.queued_requests() == 0 and not state.batches_in("assembled", "pushing", "pushed", "done")


def counts(state: TaskState) -> dict[str, int]:
    """Requests by where they are, for progress reports."""
    out = {"generated": state.task.generated_requests if state.task else 0, "queued": state.queued_requests()}
    for name in ("assembled", "pushing", "pushed", "done", "processed"):
        out[f"batches_{name}"] = len(state.batches_in(name))
    processed = state.batches_in("processed")
    out["ok"] = sum(b.outcomes.ok for b in processed)
    out["failed"] = sum(b.outcomes.failed for b in processed)
    out["retried"] = sum(b.outcomes.retried for b in processed)
    return out


def has_direct_work(state: TaskState) -> bool:
    return any(b.mode == "direct" for b in state.batches_in("assembled", "pushing"))


def choose_mode(engine: Engine) -> str:
    """``direct`` when forced, or for the last few requests (``direct_finish_requests``); else ``batch``."""
    options = engine.options
    if options.force_direct:
        return "direct"
    queued = engine.state.queued_requests()
    if options.direct_finish_requests and engine.state.task and engine.state.task.generated:
        if 0 < queued <= options.direct_finish_requests:
            return "direct"
    return "batch"


def blocked_reason(engine: Engine) -> str | None:
    """Why nothing more can be sent in this session although work remains (a spend limit), or None."""
    state = engine.state
    if state.batches_in("pushing", "pushed", "done"):
        return None
    waiting = state.batches_in("assembled")
    if waiting:  # nothing is remote: a remote-queue limit that still refuses (max_remote_batches 0) blocks too
        return limits.push_refusal(engine.options, state, engine.session_id, waiting[0])
    if state.queued_requests():
        session, task = limits.spend_caps(engine.options, state, engine.session_id)
        for scope, caps in (("session", session), ("task", task)):
            if caps.requests < 1 or caps.tokens <= 0 or caps.cost <= 0:
                return f"max_{scope}_" + ("requests" if caps.requests < 1 else "ktokens" if caps.tokens <= 0 else "cost")
        return "budget (the next request does not fit in what is left of the session or task limits)"
    return None


@dataclass
class WaitResult:
    finished: list[int] = field(default_factory=list)
    waited_s: float = 0.0
    timed_out: bool = False
    progress: dict[int, tuple[int, int]] = field(default_factory=dict)


def wait_for_batches(engine: Engine, sleep: Callable[[float], None], max_wait_s: float | None) -> WaitResult:
    """Poll with back-off until a remote batch finishes (or ``max_wait_s`` passes); sleeps, never spins.

    With nothing remote to wait for (e.g. a push that failed and will be retried) it sleeps once and returns.
    """
    options = engine.options
    wait, waited = options.poll_interval_min_s, 0.0
    while True:
        report = poll(engine)
        if report.finished:
            quota_gate.sync(engine)  # their tokens leave the shared queue now, before they are processed
            return WaitResult(report.finished, waited, False, report.progress)
        if not engine.state.batches_in("pushed") or quota_gate.waiting(engine):
            sleep(wait)  # nothing remote to wait for, or the shared quota may have room now: push again soon
            return WaitResult([], waited + wait, False, report.progress)
        if max_wait_s is not None and waited >= max_wait_s:
            return WaitResult([], waited, True, report.progress)
        sleep(wait)
        waited += wait
        wait = min(options.poll_interval_max_s, wait * 1.5)


class Stages:
    """The stage calls of a run, here as plain function calls; the Prefect flow overrides them to run each stage
    as a Prefect task, and reuses the same loop (``Runner``)."""

    def __init__(self, engine: Engine, sleep: Callable[[float], None] = time.sleep):
        self.engine = engine
        self.sleep = sleep
        self.pacer = Pacer(engine.options.max_direct_rpm, engine.options.max_direct_tpm)
        self.direct_stats = DirectStats()

    def generate(self) -> None:
        generate(self.engine)

    def process(self) -> list[int]:
        return process(self.engine)

    def assemble(self, mode: str) -> list[int]:
        return assemble(self.engine, mode)

    def direct(self) -> list[int]:
        return run_direct(self.engine, self.pacer, self.direct_stats)

    def push(self) -> None:
        push(self.engine)

    def adopt(self) -> None:
        adopt_pushing(self.engine)

    def wait(self, max_wait_s: float | None) -> WaitResult:
        return wait_for_batches(self.engine, self.sleep, max_wait_s)


def verdict(engine: Engine, progressed: bool) -> RunSummary | None:
    """How the run ends now (finished, or stopped by only_process or a spend limit), or None to go on."""
    state = engine.state
    options = engine.options
    if is_finished(state):
        return RunSummary("finished", "all requests processed", state.generation, counts(state))
    if options.only_process and not state.batches_in("pushed", "done"):
        reason = "only_process: no remote batch left to wait for"
        if state.batches_in("pushing"):
            reason += (f" ({len(state.batches_in('pushing'))} batch(es) were never created remotely: run "
                       "without --only_process to push them)")
        return RunSummary("stopped", reason, state.generation, counts(state))
    blocked = blocked_reason(engine)
    if blocked and not progressed:
        from gbatch_flows.status import batch_files

        files = batch_files(engine)
        where = f"; unpushed batch file(s) to inspect: {', '.join(files)}" if files else ""
        return RunSummary("stopped", f"{blocked} reached: nothing more can be sent in this session{where}",
                          state.generation, counts(state))
    return None


class Runner:
    """Runs stages until the task is finished, a limit stops it, or (``max_poll_wait_s``) waiting is too long."""

    def __init__(self, engine: Engine, sleep: Callable[[float], None] = time.sleep,
                 on_tick: Callable[[Engine, dict], None] | None = None, stages: Stages | None = None):
        self.engine = engine
        self.on_tick = on_tick
        self.stages = stages or Stages(engine, sleep)
        self.pacer = self.stages.pacer
        self.direct_stats = self.stages.direct_stats

    def run(self) -> RunSummary:
        engine, options, stages = self.engine, self.engine.options, self.stages
        if not options.only_process:
            stages.generate()
        while True:
            progressed = bool(stages.process())
            if not options.only_process:
                progressed |= bool(stages.assemble(choose_mode(engine)))
                if has_direct_work(engine.state):  # also direct batches a crashed run left behind
                    progressed |= bool(stages.direct())
                if engine.state.batches_in("assembled", "pushing"):
                    stages.push()
            elif engine.state.batches_in("pushing"):
                stages.adopt()
            engine.refresh()
            if (summary := verdict(engine, progressed)) is not None:
                quota_gate.sync(engine)
                return summary
            waited = WaitResult()
            if not progressed and not engine.state.batches_in("done"):
                waited = stages.wait(options.max_poll_wait_s)
            if self.on_tick:
                self.on_tick(engine, {"progress": waited.progress})
            if waited.timed_out:
                state = engine.refresh()
                return RunSummary("waiting", f"batches still running after {waited.waited_s:.0f}s; run again to "
                                  "resume", state.generation, counts(state))


def run_engine(engine: Engine, **kwargs) -> RunSummary:
    try:
        return Runner(engine, **kwargs).run()
    except EngineStop as stop:
        state = engine.refresh()
        log.error("stopped: %s", stop)
        return RunSummary("error", str(stop), state.generation, counts(state))
