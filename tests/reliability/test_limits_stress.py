"""Limits under stress: random limit settings (hypothesis), runs cut short at random commits and restarted as new
sessions; no committed state ever shows spend, reservations or queued work over a limit."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.engine.runner import is_finished
from gbatch_flows.engine.state import TaskState
from gbatch_flows.options import Options
from gbatch_flows.runs import run_plain

from .campaign import check_limits
from .conftest import scale_from_env
from .harness import DUMMY_KEY, PRICE_FLAGS, TaskDir, assert_complete_output
from .tasks import RelTask

EXAMPLES = scale_from_env().limit_examples
MAX_RUNS = 6
#: Known engine bug (test_direct_batch_resumed_after_a_crash_settles_on_the_right_session): until it is fixed the
#: random search leaves out runs cut short while direct batches are in play; set to False once that test passes.
DIRECT_CRASH_BUG = False
STATS: dict[str, Any] = {"examples": 0, "runs": 0, "commits_checked": 0, "cut_short": 0, "finished": 0,
                         "stopped_by_limit": 0, "errors": 0}


class SimulatedCrash(BaseException):
    """Raised from an on_commit hook: the run ends abruptly right after a durable commit."""


@pytest.fixture(scope="module")
def emulator() -> Iterator[Any]:
    with run_emulator(EmulatorConfig(batch_duration=0.0)) as emu:
        yield emu


@st.composite
def limit_settings(draw: st.DrawFn) -> dict[str, Any]:
    """Consistent but tight limits (the options refuse a batch limit above the matching remote/budget limit)."""
    batch_requests = draw(st.integers(1, 40))
    batch_ktokens = draw(st.floats(0.03, 1.5))
    batch_cost = draw(st.floats(1e-5, 3e-4))

    def budget(low: float, high: float) -> Any:
        return draw(st.none() | st.floats(low, high))

    values: dict[str, Any] = {
        "max_batch_requests": batch_requests,
        "max_batch_ktokens": batch_ktokens,
        "max_batch_cost": batch_cost,
        "max_unpushed_batches": draw(st.integers(1, 3)),
        "max_remote_batches": draw(st.integers(1, 4)),
        "max_remote_requests": batch_requests + draw(st.integers(0, 60)),
        "max_remote_ktokens": batch_ktokens + draw(st.floats(0.0, 2.0)),
        "max_remote_cost": batch_cost + draw(st.floats(0.0, 5e-4)),
        "max_session_requests": draw(st.none() | st.integers(1, 80)),
        "max_session_ktokens": budget(0.05, 3.0),
        "max_session_cost": budget(batch_cost, 2e-3),
        "max_task_requests": draw(st.none() | st.integers(1, 150)),
        "max_task_ktokens": budget(0.05, 6.0),
        "max_task_cost": budget(batch_cost, 3e-3),
        "direct_finish_requests": draw(st.just(0) | st.integers(1, 10)),
        "force_direct": draw(st.integers(0, 4)) == 0,
        "max_retries": draw(st.integers(0, 2)),
    }
    return values


def _run_until_done(task_dir: TaskDir, options: Options, task: RelTask, crashes: list[int]) -> TaskState:
    """Sessions one after the other; the i-th is cut short after crashes[i] commits (if given)."""
    state = task_dir.state()
    for run_no in range(MAX_RUNS):
        commits = 0
        cut = crashes[run_no] if run_no < len(crashes) else None

        def on_commit(state: TaskState, cut: int | None = cut) -> None:
            nonlocal commits
            commits += 1
            STATS["commits_checked"] += 1
            check_limits(options, state)
            if cut is not None and commits >= cut:
                raise SimulatedCrash

        STATS["runs"] += 1
        try:
            summary = run_plain(task, options, session_id=f"session-{run_no}", on_commit=on_commit)
        except SimulatedCrash:
            STATS["cut_short"] += 1
            continue
        state = task_dir.state()
        if summary.status == "finished":
            STATS["finished"] += 1
            return state
        if summary.status == "error":
            STATS["errors"] += 1
            assert "can never fit" in summary.reason or "in a row" in summary.reason, summary.reason
            return state
        assert summary.status == "stopped" and "reached" in summary.reason, summary
        if commits == 0:
            STATS["stopped_by_limit"] += 1
            return state  # a task limit: no new session can send anything either
    return task_dir.state()


@settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(limits=limit_settings(), n=st.integers(5, 60), crashes=st.lists(st.integers(1, 25), max_size=3))
def test_no_commit_exceeds_a_limit(emulator: Any, limits: dict[str, Any], n: int, crashes: list[int],
                                   figures: dict) -> None:
    if DIRECT_CRASH_BUG and crashes and (limits["force_direct"] or limits["direct_finish_requests"]):
        limits = {**limits, "force_direct": False, "direct_finish_requests": 0}
    STATS["examples"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        task_dir = TaskDir("local", os.path.join(tmp, "tasks"))
        options = Options(task_dir=task_dir.task_dir, client_base_url=emulator.base_url, emulator="never",
                          openai_api_key=SecretStr(DUMMY_KEY), no_wandb=True, no_prefect=True,
                          poll_interval_min_s=0.01, poll_interval_max_s=0.05, **PRICE_FLAGS, **limits)
        state = _run_until_done(task_dir, options, RelTask({"n_requests": n}), crashes)
        check_limits(options, state)
        for key in state.manifest.sections:
            if key.startswith("session/"):
                budget = state.session(key.split("/", 1)[1])
                assert budget.reserved.requests >= 0 and budget.reserved.tokens >= 0
        if is_finished(state):
            assert_complete_output(task_dir.output(), n)
            assert state.totals.reserved.requests == 0
    figures["limits_stress"] = dict(STATS)


def test_direct_batch_resumed_after_a_crash_settles_on_the_right_session(emulator: Any, tmp_path) -> None:
    """A direct batch whose run dies after committing "sending 0-5": the next session re-sends the calls; every
    session budget must end with nothing reserved and its settled spend within max_session_cost."""
    task_dir = TaskDir("local", str(tmp_path / "tasks"))
    options = Options(task_dir=task_dir.task_dir, client_base_url=emulator.base_url, emulator="never",
                      openai_api_key=SecretStr(DUMMY_KEY), no_wandb=True, no_prefect=True, force_direct=True,
                      max_batch_cost=1.6e-4, max_session_cost=1.6e-4, max_retries=0, **PRICE_FLAGS)
    task = RelTask({"n_requests": 5})

    def crash_after_sending(state: TaskState) -> None:
        if "sending" in state.manifest.message:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        run_plain(task, options, session_id="first", on_commit=crash_after_sending)
    summary = run_plain(task, options, session_id="second", on_commit=lambda state: check_limits(options, state))
    assert summary.status == "finished", summary
    state = task_dir.state()
    for session in ("first", "second"):
        budget = state.session(session)
        assert budget.reserved.requests == 0 and abs(budget.reserved.cost) < 1e-12, (session, budget)
        assert budget.settled.cost <= options.max_session_cost + 1e-12, (session, budget)
