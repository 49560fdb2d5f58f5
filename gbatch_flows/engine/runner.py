"""The run loop over the stages: generate, then process / assemble / push (or direct) / poll until done or stopped.

The stages are one table (``STAGES``) run through one loop (``Runner``) by a ``Stages`` object; the plain run
calls them directly, the Prefect flow (``gbatch_flows/flow.py``) overrides ``Stages.call`` to run each stage as a
Prefect task. Nothing else differs between the two.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gbatch_flows.engine import limits, quota_gate
from gbatch_flows.engine.assemble import assemble
from gbatch_flows.engine.assemble import has_work as assemble_has_work
from gbatch_flows.engine.context import Engine, EngineStop
from gbatch_flows.engine.direct import DirectStats, run_direct
from gbatch_flows.engine.generate import generate
from gbatch_flows.engine.pacer import Pacer
from gbatch_flows.engine.poll import poll
from gbatch_flows.engine.process import process
from gbatch_flows.engine.push import adopt_pushing, look_for_room, push
from gbatch_flows.engine.state import TaskState
from gbatch_flows.quota.ledger import WAITER_TTL_S

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
    mode = engine.config.mode
    if mode.force_direct:
        return "direct"
    queued = engine.state.queued_requests()
    if mode.direct_finish_requests and engine.state.task and engine.state.task.generated:
        if 0 < queued <= mode.direct_finish_requests:
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
        if engine.budget_refusal:
            return f"{engine.budget_refusal} (what is left of it cannot take the next request)"
        return "budget (the next request does not fit in what is left of the session or task limits)"
    return None


#: Longest a task waiting for room in the shared quota stays in the wait stage: the push stage then renews its place
#: in the ledger's queue (a waiter not seen for quota.ledger.WAITER_TTL_S loses it).
QUOTA_LOOK_S = WAITER_TTL_S / 4


@dataclass
class WaitResult:
    finished: list[int] = field(default_factory=list)
    waited_s: float = 0.0
    timed_out: bool = False
    progress: dict[int, tuple[int, int]] = field(default_factory=dict)


def wait_for_batches(engine: Engine, sleep: Callable[[float], None], max_wait_s: float | None,
                     clock: Callable[[], float] = time.monotonic) -> WaitResult:
    """Poll with back-off until a remote batch finishes (or ``max_wait_s`` of wall-clock time passes, the polls
    included: a poll that fails slowly counts too); sleeps, never spins.

    Logs one line per poll cycle (batches in flight, requests done, next poll). With nothing remote to wait for
    (e.g. a push that failed and will be retried) it sleeps once and returns. A task whose next batch waits for room
    in the shared quota (``--quota_dir``) also looks at the ledger every ``poll_interval_min_s`` between polls (and,
    at each poll, asks the remote about other tasks' held batches: one may have ended before its task polled it) and
    returns as soon as there is room (the push stage takes it), or after QUOTA_LOOK_S (the push stage renews its
    place in the ledger's queue): room another task frees is taken within a second, not after a poll back-off or a
    round of stages.
    """
    pacing = engine.config.pacing
    wait, started = pacing.poll_interval_min_s, clock()
    next_poll = started
    report = None
    while True:
        polled = report is None or clock() >= next_poll
        if polled:
            report = poll(engine)
            if report.finished:
                quota_gate.sync(engine)  # their tokens leave the shared queue now, before they are processed
                return WaitResult(report.finished, clock() - started, False, report.progress)
        # "room" / "wait" when the next batch waits on the shared quota only; on a poll, other tasks' batches the
        # ledger still holds are looked up too (one may have ended before its task polled it)
        look = look_for_room(engine, ask_remote=polled)
        if look == "room":  # the push stage takes it now (no sleep first, even with nothing in flight)
            return WaitResult([], clock() - started, False, report.progress)
        if polled:
            if not engine.state.batches_in("pushed") and look != "wait":
                log.info("nothing in flight to wait for; next look in %s", _seconds(wait))  # look again soon
                sleep(wait)
                return WaitResult([], clock() - started, False, report.progress)
            done = sum(d for d, _ in report.progress.values())
            total = sum(t for _, t in report.progress.values())
            log.info("waiting: %d batch(es) in flight, %d/%d of their requests done%s; next poll in %s (waited %s)",
                     report.in_flight, done, total, ", the next batch waits for room in the shared quota"
                     if look == "wait" else "", _seconds(wait), _seconds(clock() - started))
            next_poll = clock() + wait
            wait = min(pacing.poll_interval_max_s, wait * 1.5)
        waited = clock() - started
        if max_wait_s is not None and waited >= max_wait_s:  # (waiting for room alone is not a batch running late)
            return WaitResult([], waited, bool(engine.state.batches_in("pushed")), report.progress)
        if look == "wait" and waited >= QUOTA_LOOK_S:
            return WaitResult([], waited, False, report.progress)
        until = next_poll if look is None else min(next_poll, clock() + pacing.poll_interval_min_s)
        if max_wait_s is not None:
            until = min(until, started + max_wait_s)
        sleep(max(0.0, until - clock()))


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 else f"{value:.2g}s"


# --------------------------------------------------------------------------------------------- the stage table


@dataclass(frozen=True, eq=False)
class Stage:
    """One stage of a run: how to run it on a ``Stages`` (engine, pacer, sleep), and how the flow shows it.

    ``cached``: the flow may skip it through Prefect's cache when the manifest it starts from is unchanged (only
    stages that depend on nothing but the manifest and the options). ``label`` names the batches it will touch
    (for task-run names).
    """

    name: str
    run: Callable[..., Any]
    cached: bool
    label: Callable[[TaskState], str]


def _ids(batches: list[Any]) -> str:
    ids = [b.local_id for b in batches]
    if not ids:
        return ""
    if ids == list(range(ids[0], ids[-1] + 1)) and len(ids) > 2:
        return f"batches {ids[0]}-{ids[-1]}"
    return ("batch " if len(ids) == 1 else "batches ") + ",".join(map(str, ids))


def _generate(stages: Stages) -> int:
    generate(stages.engine)
    return stages.engine.state.require_task().generated_requests


def _process(stages: Stages) -> list[int]:
    return process(stages.engine)


def _assemble(stages: Stages, mode: str) -> list[int]:
    return assemble(stages.engine, mode)


def _direct(stages: Stages) -> list[int]:
    return run_direct(stages.engine, stages.pacer, stages.direct_stats)


def _push(stages: Stages) -> str | None:
    return push(stages.engine)


def _adopt(stages: Stages) -> None:
    adopt_pushing(stages.engine)


def _wait(stages: Stages, max_wait_s: float | None) -> WaitResult:
    return wait_for_batches(stages.engine, stages.sleep, max_wait_s, stages.clock)


GENERATE = Stage("generate-requests", _generate, True, lambda s: "")
PROCESS = Stage("process-results", _process, True, lambda s: _ids(s.batches_in("done")))
ASSEMBLE = Stage("assemble-batches", _assemble, True, lambda s: f"from batch {max(s.batches, default=0) + 1}")
DIRECT = Stage("direct-requests", _direct, False,
               lambda s: _ids([b for b in s.batches_in("assembled", "pushing") if b.mode == "direct"]))
PUSH = Stage("push-batches", _push, False,
             lambda s: _ids([b for b in s.batches_in("assembled", "pushing") if b.mode == "batch"]))
ADOPT = Stage("adopt-batches", _adopt, False, lambda s: _ids(s.batches_in("pushing")))
WAIT = Stage("wait-for-batches", _wait, False, lambda s: _ids(s.batches_in("pushed")))

#: Every stage, in run order (the plain run and the Prefect flow share this table and ``Runner``).
STAGES = (GENERATE, PROCESS, ASSEMBLE, DIRECT, PUSH, ADOPT, WAIT)


class Stages:
    """Runs the stages of one run: here as plain calls; the Prefect flow overrides ``call`` only (each stage as
    a Prefect task). One ``Stages`` per run, so the direct pacer (its RPM/TPM window) lives across loops."""

    def __init__(self, engine: Engine, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.sleep = sleep
        self.clock = clock
        pacing = engine.config.pacing
        self.pacer = Pacer(pacing.direct_rpm, pacing.direct_tpm)
        self.direct_stats = DirectStats()

    def call(self, stage: Stage, *args: Any) -> Any:
        return stage.run(self, *args)

    def generate(self) -> None:
        self.call(GENERATE)

    def process(self) -> list[int]:
        return self.call(PROCESS)

    def assemble(self, mode: str) -> list[int]:
        return self.call(ASSEMBLE, mode)

    def direct(self) -> list[int]:
        return self.call(DIRECT)

    def push(self) -> str | None:
        """Push what the limits allow; the limit that held the rest back, or None."""
        return self.call(PUSH)

    def adopt(self) -> None:
        self.call(ADOPT)

    def wait(self, max_wait_s: float | None) -> WaitResult:
        return self.call(WAIT, max_wait_s)


def verdict(engine: Engine, progressed: bool) -> RunSummary | None:
    """How the run ends now (finished, or stopped by only_process or a spend limit), or None to go on."""
    state = engine.state
    if is_finished(state):
        return RunSummary("finished", "all requests processed", state.generation, counts(state))
    if engine.config.mode.only_process and not state.batches_in("pushed", "done"):
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
        self.futile_push: int | None = None  # the generation a push left with batches held back

    def run(self) -> RunSummary:
        engine, stages = self.engine, self.stages
        only_process = engine.config.mode.only_process
        self.futile_push = None
        if not only_process:
            stages.generate()
            if any(b.mode == "batch" for b in engine.state.batches_in("assembled", "pushing")):
                # a restart pushes what the last run assembled before assembling more (up to max_unpushed_batches
                # of 50,000 requests: seconds each), so its first push comes right after start-up
                self._push()
        while True:  # a stage with nothing to do is skipped (no Prefect task run for nothing in a flow)
            progressed = False
            if not only_process and engine.state.batches_in("done"):
                # batches that just ended left room (in the remote queue, the shared quota): the next ones are
                # pushed before these are processed (downloading and processing a big batch takes minutes)
                progressed |= self._push()
            progressed |= bool(engine.state.batches_in("done")) and bool(stages.process())
            if not only_process:
                mode = choose_mode(engine)
                if assemble_has_work(engine, mode):
                    progressed |= bool(stages.assemble(mode))
                if has_direct_work(engine.state):  # also direct batches a crashed run left behind
                    progressed |= bool(stages.direct())
                progressed |= self._push()
            elif engine.state.batches_in("pushing"):
                stages.adopt()
            engine.refresh()
            if (summary := verdict(engine, progressed)) is not None:
                quota_gate.sync(engine)
                return summary
            waited = WaitResult()
            if not progressed and not engine.state.batches_in("done"):
                waited = stages.wait(engine.config.pacing.max_poll_wait_s)
                self.futile_push = None
            if self.on_tick:
                self.on_tick(engine, {"progress": waited.progress})
            if waited.timed_out:
                state = engine.refresh()
                return RunSummary("waiting", f"batches still running after {waited.waited_s:.0f}s; run again to "
                                  "resume", state.generation, counts(state))

    def _push(self) -> bool:
        """The push stage, when there is something to push and the last push did not stop at a batch held back
        with nothing committed since (it is tried again after a commit or a wait: the wait's look at the shared
        ledger returns as soon as there is room). True when it progressed: requests of batches that never
        reached the remote went back to the queue."""
        engine = self.engine
        if not engine.state.batches_in("assembled", "pushing") or engine.state.generation == self.futile_push:
            return False
        queued = engine.state.queued_requests()
        held_back = self.stages.push()
        progressed = engine.refresh().queued_requests() > queued
        self.futile_push = engine.state.generation if held_back else None
        return progressed


def run_engine(engine: Engine, **kwargs) -> RunSummary:
    try:
        return Runner(engine, **kwargs).run()
    except EngineStop as stop:
        state = engine.refresh()
        log.error("stopped: %s", stop)
        return RunSummary("error", str(stop), state.generation, counts(state))
