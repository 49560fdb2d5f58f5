"""A stop campaign: run the task again and again, stop each run at a random moment (SIGKILL or SIGINT) aimed at a
stage, check the committed state after every stop, and finally let the task finish."""

from __future__ import annotations

import random
import signal
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gbatch_flows.engine.runner import is_finished
from gbatch_flows.engine.state import TaskState
from gbatch_flows.options import Options

from .child import StopPlan
from .harness import ChildRun, Forkserver, Marker, TaskDir

try:  # the engine tests' invariants (limits on every committed state)
    from engine.invariants import check_limits  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - collected from another root
    from tests.engine.invariants import check_limits  # type: ignore[import-not-found,no-redef]

LOOP_AIMS = ("assemble", "push", "push-window", "push-created", "poll", "process", "process-window",
             "process-downloaded")
#: longest delay after entering a stage (short stages get short delays, so the stop lands inside them)
AIM_DELAY_S = {"assemble": 0.004, "push": 0.01, "poll": 0.05, "process": 0.01}
SIGINT_EXIT_S = 10.0  # a Ctrl+C must end the run within this many seconds


@dataclass
class StageTimes:
    """From an uninterrupted run: how often the run loop enters each stage, and how long the one-off stages take."""

    entries: dict[str, int]
    generate_s: float  # from entering generate to its last commit
    output_s: float  # from entering output to the exit (on a finished task)
    requests_sent: int  # requests in all batches of the finished task
    push_s: float  # median time from a push intent commit to its "pushed" commit
    process_s: float  # median time from a poll commit (a batch finished) to the next "processed" commit


@dataclass
class CampaignResult:
    stops: int = 0
    runs: int = 0
    completed_runs: int = 0  # runs that ended by themselves before the stop landed
    stages: Counter = field(default_factory=Counter)
    windows: Counter = field(default_factory=Counter)  # what the committed state held at the stops
    dead_leases: int = 0  # SIGKILL stops that left a live-looking lease (its holder is dead)
    max_exit_s: float = 0.0  # SIGINT: longest time from the signal to the exit
    leases_left_held: int = 0  # SIGINT during the final lease release (known bug)
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stops": self.stops, "runs": self.runs, "completed_runs": self.completed_runs,
                               "stops_by_stage": dict(sorted(self.stages.items())),
                               "state_at_stops": dict(sorted(self.windows.items())), "seconds": round(self.seconds, 1)}
        if self.dead_leases:
            out["dead_leases_taken_over"] = self.dead_leases
        if self.max_exit_s:
            out["max_ctrl_c_exit_s"] = round(self.max_exit_s, 3)
            out["leases_left_held"] = self.leases_left_held
        return out


def check_remote_consistency(state: TaskState, created: dict[str, int]) -> None:
    """Intent before creation, never two creations: compare the manifest with the emulator's own count."""
    for key, count in created.items():
        assert count == 1, f"local batch {key} was created {count} times on the remote"
        assert int(key) in state.batches, f"remote batch for local batch {key}, which the manifest does not know"
    for batch in state.batches.values():
        if batch.mode != "batch":
            continue
        count = created.get(str(batch.local_id), 0)
        if batch.state == "assembled":
            assert count == 0, f"batch {batch.local_id} is only assembled but exists remotely"
        elif batch.state in ("pushed", "done", "processed"):
            assert count == 1, f"batch {batch.local_id} is {batch.state} but was created {count} times"


def last_stage(run: ChildRun) -> str:
    stages = [m.text for m in run.markers if m.kind == "stage"]
    return stages[-1] if stages else "startup"


def processed_requests(state: TaskState) -> int:
    return sum(b.requests for b in state.batches.values() if b.state == "processed")


@dataclass
class Campaign:
    forkserver: Forkserver
    task_dir: TaskDir
    argv: list[str]
    options: Options
    emulator: Any
    log: Path
    rng: random.Random
    times: StageTimes
    sig: int = signal.SIGKILL
    result: CampaignResult = field(default_factory=CampaignResult)
    _aims: list[str] = field(default_factory=list)

    def check(self, state: TaskState) -> None:
        check_limits(self.options, state)
        check_remote_consistency(state, self.emulator.stats()["batches_by_local_id"])

    def _plan(self, state: TaskState, goal: float, in_generate: bool) -> StopPlan:
        """When and how the next run stops itself.

        Stops are spread over the task's life: a run may get ahead by about the share of work one stop stands for
        (``goal``: the fraction of the task that should be done at this stop), then it stops in a random stage.
        """
        sig, uniform = self.sig, self.rng.uniform
        if state.task is None or not state.task.generated:
            if in_generate:  # generation is short: the first such stop lands right as it starts
                delay = uniform(0.0, 0.5 * self.times.generate_s) if self.result.stages["generate"] else 0.0
                return StopPlan("stage", "generate", 0, delay, sig)
            return StopPlan("stage", "process", 0, 0.0, sig)  # let this one generate, stop it right after
        if is_finished(state):
            return StopPlan("stage", "output", 0, uniform(0.0, 1.2 * self.times.output_s), sig)
        if not self._aims:  # every aim once per round, in random order
            self._aims = self.rng.sample(LOOP_AIMS, len(LOOP_AIMS))
        aim = self._aims.pop()
        if aim == "push-window":  # between the push intent commit and the "pushed" commit
            return StopPlan("commit", "push intent", 0, uniform(0.0, 1.2 * self.times.push_s), sig)
        if aim == "process-window":  # a batch finished: its results are being downloaded and processed
            return StopPlan("commit", "poll:", 0, uniform(0.0, 1.2 * self.times.process_s), sig)
        if aim in ("push-created", "process-downloaded"):  # about to commit: stop within a few milliseconds
            return StopPlan("stage", aim, 0, uniform(0.0, 0.003), sig)
        behind = goal - processed_requests(state) / max(1, self.times.requests_sent)
        skip = self.rng.randint(0, int(max(0.0, behind) * self.times.entries.get(aim, 1)))
        return StopPlan("stage", aim, skip, uniform(0.0, AIM_DELAY_S[aim]), sig)

    def run(self, stops: int) -> CampaignResult:
        """Stop ``stops`` runs (a few in generate, most in the run loop, a few on the finished task)."""
        started = time.monotonic()
        res = self.result
        generate_stops = max(2, stops // 12)
        loop_stops = max(1, stops - generate_stops - max(2, stops // 10))
        while res.stops < stops:
            state = self.task_dir.state()
            if res.stops >= generate_stops + loop_stops and not is_finished(state):
                self.finish()  # the last stops are for runs on the finished task
                res.completed_runs += 1
                continue
            goal = min(1.0, (res.stops - generate_stops + 1) / loop_stops)
            plan = self._plan(state, goal, res.stops < generate_stops)
            run = self.forkserver.start(self.argv, self.log, plan=plan)
            res.runs += 1
            try:
                code = run.finish(timeout=300)
            finally:
                run.close()
            fired = run.marker("signal")
            if fired is None:
                assert code == 0, f"a run that was not stopped failed with {code}:\n{run.log_tail()}"
                res.completed_runs += 1
                continue
            if code == 0:
                res.completed_runs += 1  # it finished just before the signal
                continue
            self._stopped(run, code, fired)
        res.seconds = time.monotonic() - started
        return res

    def _stopped(self, run: ChildRun, code: int | None, fired: Marker) -> None:
        res = self.result
        state = self.task_dir.state()  # a fresh Store: the committed state must always load
        self.check(state)
        generating = state.task is None or not state.task.generated
        res.stages["generate" if generating and last_stage(run) == "generate" else last_stage(run)] += 1
        created = self.emulator.stats()["batches_by_local_id"]
        for batch in state.batches_in("pushing"):
            res.windows["pushing, remote created" if str(batch.local_id) in created else "pushing, not created"] += 1
        res.windows["done, not processed"] += len(state.batches_in("done"))
        res.stops += 1
        if self.sig == signal.SIGKILL:
            assert code == -signal.SIGKILL, f"exit code {code}:\n{run.log_tail()}"
            lease = self.task_dir.lease()
            if lease is not None and not lease.get("released"):
                res.dead_leases += 1  # the next run must see its holder is gone and take it over
        else:
            exit_s = (run.ended or time.monotonic()) - fired.t
            res.max_exit_s = max(res.max_exit_s, exit_s)
            assert code == 130, f"Ctrl+C gave exit code {code}, expected 130:\n{run.log_tail()}"
            assert exit_s < SIGINT_EXIT_S, f"the run took {exit_s:.1f}s to stop after Ctrl+C"
            lease = self.task_dir.lease()
            if lease is not None and not lease.get("released") and last_stage(run) == "output":
                # Known engine bug (test_ctrl_c_during_lease_release_leaves_it_released): a Ctrl+C while the
                # finished run releases its lease leaves lease.json live for its ttl. Counted, then cleared.
                res.leases_left_held += 1
                self.task_dir.delete_lease()
                return
            assert lease is None or lease.get("released"), (
                f"Ctrl+C in stage {last_stage(run)} left the lease held: {lease}\n{run.log_tail(8)}")

    def finish(self) -> ChildRun:
        run = self.forkserver.start(self.argv, self.log)
        try:
            code = run.finish(timeout=600)
        finally:
            run.close()
        assert code == 0, run.log_tail()
        return run


def stage_times(first: ChildRun, again: ChildRun, state: TaskState) -> StageTimes:
    """StageTimes from an uninterrupted run (``first``) and a run on the finished task (``again``)."""
    entries = Counter(m.text for m in first.markers if m.kind == "stage")
    gen_start = next(m.t for m in first.markers if m.kind == "stage" and m.text == "generate")
    gen_end = next(m.t for m in first.markers if m.kind == "commit" and "(done)" in m.text)
    out_start = next(m.t for m in again.markers if m.kind == "stage" and m.text == "output")
    commits = [m for m in first.markers if m.kind == "commit"]
    return StageTimes(entries=dict(entries), generate_s=gen_end - gen_start, output_s=again.markers[-1].t - out_start,
                      requests_sent=sum(b.requests for b in state.batches.values()),
                      push_s=_median_gap(commits, "push intent", "pushed"),
                      process_s=_median_gap(commits, "poll:", "processed"))


def _median_gap(commits: list[Marker], start: str, end: str) -> float:
    gaps = []
    for i, m in enumerate(commits):
        if m.text.startswith(start) and not m.text.startswith("poll: 0 "):
            following = next((c for c in commits[i + 1:] if c.text.startswith(end)), None)
            if following is not None:
                gaps.append(following.t - m.t)
    return statistics.median(gaps) if gaps else 0.05
