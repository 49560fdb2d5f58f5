"""A kill campaign: run the task again and again, stop each run at a random moment (SIGKILL or SIGINT), check the
committed state after every stop, and finally let it finish."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gbatch_flows.engine.runner import is_finished
from gbatch_flows.engine.state import TaskState
from gbatch_flows.options import Options

from .harness import ChildRun, Forkserver, Marker, TaskDir, stage_of

try:  # the engine tests' invariants (limits on every committed state)
    from engine.invariants import check_limits  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - run from another root
    from tests.engine.invariants import check_limits  # type: ignore[import-not-found,no-redef]

#: commit message prefixes a stop may be aimed at (what the run is doing right after that commit)
TARGETS = (None, None, "assemble", "push intent", "pushed", "poll", "processed")
SIGINT_EXIT_S = 10.0  # a Ctrl+C must end the run within this many seconds


@dataclass
class CampaignResult:
    stops: int = 0
    runs: int = 0
    completed_runs: int = 0  # runs that ended by themselves before the stop landed
    stages: Counter = field(default_factory=Counter)
    lease_refusals: int = 0
    max_exit_s: float = 0.0  # SIGINT: longest time from the signal to the exit
    seconds: float = 0.0
    run_seconds: list[float] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {"stops": self.stops, "runs": self.runs, "completed_runs": self.completed_runs,
                "stops_by_stage": dict(sorted(self.stages.items())), "lease_refusals_checked": self.lease_refusals,
                "max_sigint_exit_s": round(self.max_exit_s, 3), "seconds": round(self.seconds, 1),
                "longest_run_s": max(self.run_seconds, default=0.0), "DEBUG": self.run_seconds}


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


def _wanted(target: str | None, skip: int) -> Any:
    seen = {"n": 0}

    def match(marker: Marker) -> bool:
        if marker.kind != "commit":
            return False
        seen["n"] += 1
        return seen["n"] > skip and (target is None or marker.text.startswith(target))

    return match


@dataclass
class Campaign:
    forkserver: Forkserver
    task_dir: TaskDir
    argv: list[str]
    options: Options
    emulator: Any
    log: Path
    rng: random.Random
    sig: int = signal.SIGKILL
    ref_commits: int = 100
    ref_generate_s: float = 0.5
    ref_finished_run_s: float = 0.2
    result: CampaignResult = field(default_factory=CampaignResult)

    def check(self, state: TaskState) -> None:
        check_limits(self.options, state)
        check_remote_consistency(state, self.emulator.stats()["batches_by_local_id"])

    def _aim(self, state: TaskState, commits_allowed: int, in_generate: bool) -> tuple[Any, float]:
        """(marker predicate, or None for a pure delay; the delay after it) for the next stop."""
        if state.task is None or not state.task.generated:
            if in_generate:
                return None, self.rng.uniform(0.0, 0.9 * self.ref_generate_s)
            return _wanted(None, 0), 0.0  # let it generate: stop it right after its first commit after that
        if is_finished(state):
            return None, self.rng.uniform(0.0, 1.2 * self.ref_finished_run_s)
        target = self.rng.choice(TARGETS)
        skip = self.rng.randint(0, max(0, commits_allowed))
        return _wanted(target, skip), self.rng.uniform(0.0, 0.05 if commits_allowed > 1 else 0.02)

    def run(self, stops: int) -> CampaignResult:
        """Stop ``stops`` runs; the stops are spread over the task's life by letting each run make about its share
        of the commits an uninterrupted run makes (and a few are kept for runs on the finished task)."""
        started = time.monotonic()
        res = self.result
        commits_done = 0
        generate_stops = max(2, stops // 12)
        main_stops = max(1, stops - max(2, stops // 10))
        while res.stops < stops:
            state = self.task_dir.state()
            share = self.ref_commits * min(1.0, (res.stops + 1) / main_stops)
            wanted, delay = self._aim(state, int(share - commits_done), res.stops < generate_stops)
            run = self.forkserver.start(self.argv, self.log)
            res.runs += 1
            try:
                if wanted is not None and run.wait_for(wanted, timeout=300) is None:
                    self._completed(run)
                    continue
                time.sleep(delay)
                if not run.process.is_alive() or any(m.kind == "exit" for m in run.markers):
                    self._completed(run)
                    continue
                run.signal(self.sig)
                signalled = time.monotonic()
                code = run.join(SIGINT_EXIT_S + 20)
            finally:
                run.close()
                commits_done += len(run.commits())
                res.run_seconds.append(round(time.monotonic() - run.started, 3))
            if code == 0 or any(m.kind == "exit" and m.number == 0 for m in run.markers):
                res.completed_runs += 1  # it finished before the signal was delivered
                continue
            self._stopped(run, code, signalled)
        res.seconds = time.monotonic() - started
        return res

    def _completed(self, run: ChildRun) -> None:
        code = run.join(60)
        assert code == 0, f"a run that was not stopped failed with {code}:\n{run.log_tail()}"
        self.result.completed_runs += 1

    def _stopped(self, run: ChildRun, code: int | None, signalled: float) -> None:
        res = self.result
        commits = run.commits()
        state = self.task_dir.state()  # a fresh Store: the committed state must always load
        res.stages[stage_of(state, commits[-1].text if commits else None)] += 1
        self.check(state)
        res.stops += 1
        if self.sig == signal.SIGKILL:
            assert code == -signal.SIGKILL, f"exit code {code}:\n{run.log_tail()}"
            lease = self.task_dir.lease()
            if lease is not None and not lease.get("released"):
                if res.lease_refusals == 0:
                    self._check_refused()
                self.task_dir.delete_lease()
        else:
            exit_s = time.monotonic() - signalled
            res.max_exit_s = max(res.max_exit_s, exit_s)
            assert code == 130, f"Ctrl+C gave exit code {code}, expected 130:\n{run.log_tail()}"
            assert exit_s < SIGINT_EXIT_S, f"the run took {exit_s:.1f}s to stop after Ctrl+C"
            lease = self.task_dir.lease()
            assert lease is None or lease.get("released"), f"Ctrl+C left the lease held: {lease}"

    def _check_refused(self) -> None:
        """The run after a SIGKILL is refused (the dead run's lease is live) with a message saying what to do."""
        run = self.forkserver.start(self.argv, self.log)
        try:
            code = run.join(60)
        finally:
            run.close()
        tail = run.log_tail()
        assert code == 1, f"a second run started while the killed run's lease was live (exit {code}):\n{tail}"
        assert "lease.json" in tail and "is being run by" in tail, tail
        self.result.lease_refusals += 1

    def finish(self) -> ChildRun:
        run = self.forkserver.start(self.argv, self.log)
        try:
            code = run.finish(timeout=600)
        finally:
            run.close()
        assert code == 0, run.log_tail()
        return run
