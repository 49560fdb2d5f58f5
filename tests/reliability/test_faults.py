"""Faults at realistic rates (429s, 500s, dropped connections, failed/expired/cancelled batches, partial and malformed
output, upload errors) and an API server restart mid-run: the task completes or stops with a clear reason, nothing
is lost, no batch is created twice, every committed state stays within the limits."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.engine.runner import is_finished
from gbatch_flows.options import Options
from gbatch_flows.runs import run_plain

from .campaign import check_limits, check_remote_consistency
from .conftest import BATCH_DURATION, Scale, reference_run
from .harness import (
    DUMMY_KEY,
    PRICE_FLAGS,
    Forkserver,
    TaskDir,
    assert_complete_output,
    cli_args,
    output_records,
    recomputed_cost,
    recorded_cost,
)
from .tasks import RelTask

RATES = {
    "http_500": 0.02, "http_503": 0.01, "http_429": 0.02, "drop_connection": 0.02, "upload_error": 0.1,
    "batch_failed": 0.04, "batch_expired": 0.05, "batch_cancelled": 0.05,
    "lines_missing": 0.01, "lines_malformed": 0.01, "request_errors": 0.01,
}

#: each kind at least once, whatever the rates draw
SCRIPT = [
    {"op": "files.create", "nth": 1, "fault": "upload_error"},
    {"op": "batches.create", "nth": 2, "fault": "batch_failed"},
    {"op": "batches.create", "nth": 3, "fault": "batch_expired", "at": 0.4},
    {"op": "batches.create", "nth": 4, "fault": "batch_cancelled", "at": 0.7},
    {"op": "batches.create", "nth": 5, "fault": "lines_missing", "fraction": 0.2},
    {"op": "batches.create", "nth": 6, "fault": "lines_malformed", "fraction": 0.2},
    {"op": "batches.create", "nth": 7, "fault": "request_errors", "fraction": 0.3},
    {"op": "batches.create", "nth": 8, "fault": "http_500"},
    {"op": "batches.retrieve", "nth": 5, "fault": "drop_connection"},
    {"op": "batches.retrieve", "nth": 9, "fault": "http_429"},
    {"op": "files.content", "nth": 2, "fault": "http_503"},
    {"op": "chat.completions", "nth": 2, "fault": "http_429"},
]


def fault_options(task_dir: str, base_url: str, **overrides: Any) -> Options:
    values: dict[str, Any] = dict(
        task_dir=task_dir, client_base_url=base_url, openai_api_key=SecretStr(DUMMY_KEY), emulator="never",
        no_wandb=True, no_prefect=True, max_batch_requests=40, max_remote_batches=4, max_unpushed_batches=2,
        poll_interval_min_s=0.05, poll_interval_max_s=0.2, max_session_cost=None, max_retries=6,
        **PRICE_FLAGS,
    )
    values.update(overrides)
    return Options(**values)


def run_checked(task: RelTask, options: Options) -> tuple[Any, int]:
    """run_plain with the limits checked on every commit; returns (summary, commits)."""
    commits = 0

    def on_commit(state: Any) -> None:
        nonlocal commits
        commits += 1
        check_limits(options, state)

    return run_plain(task, options, on_commit=on_commit), commits


def test_realistic_fault_rates_lose_nothing(tmp_path: Path, scale: Scale, figures: dict) -> None:
    n = scale.fault_requests
    task_dir = TaskDir("local", str(tmp_path / "tasks"))
    faults = {"seed": 11, "rates": RATES, "script": SCRIPT}
    with run_emulator(EmulatorConfig(batch_duration=BATCH_DURATION, faults=faults)) as emu:
        options = fault_options(task_dir.task_dir, emu.base_url, process_failed_batches=-1, min_pass_ratio=0.0,
                                direct_finish_requests=10)
        task = RelTask({"n_requests": n})
        started = time.monotonic()
        summary, commits = run_checked(task, options)
        seconds = time.monotonic() - started
        stats = emu.stats()
    assert summary.status == "finished", summary
    output = task_dir.output()
    assert_complete_output(output, n)  # every item has its answer, or a failure record saying why
    state = task_dir.state()
    assert is_finished(state)
    check_remote_consistency(state, stats["batches_by_local_id"])
    recomputed, _ = recomputed_cost(task_dir.store(), state)
    assert math.isclose(recorded_cost(state), recomputed, rel_tol=1e-9)
    assert state.totals.reserved.requests == 0
    injected = stats["faults_injected"]
    kinds_hit = {k for k, v in injected.items() if v}
    assert {"http_500", "http_503", "http_429", "drop_connection", "upload_error", "batch_failed", "batch_expired",
            "batch_cancelled", "lines_missing", "lines_malformed", "request_errors"} <= kinds_hit, injected
    records = output_records(output)
    failures = [r for r in records if "failed" in r]
    assert all(("400" in r["failed"]) or ("retries exhausted" in r["failed"]) for r in failures), failures[:3]
    batches = state.batches.values()
    figures["faults"] = {
        "requests": n, "faults_injected": dict(sorted(injected.items())), "commits_checked": commits,
        "batches": len(state.batches), "direct_batches": sum(b.mode == "direct" for b in batches),
        "failed_for_good": len(failures), "seconds": round(seconds, 1),
        "remote_ends": dict(sorted(_count(b.remote_status for b in batches if b.mode == "batch").items())),
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[str(value)] = out.get(str(value), 0) + 1
    return out


def test_failed_batch_stops_with_a_clear_reason_then_resumes(tmp_path: Path) -> None:
    """With the default --process_failed_batches 0 a failed batch stops the run, naming the flag that goes on."""
    task_dir = TaskDir("local", str(tmp_path / "tasks"))
    faults = {"script": [{"op": "batches.create", "nth": 2, "fault": "batch_failed"}]}
    task = RelTask({"n_requests": 120})
    with run_emulator(EmulatorConfig(batch_duration=0.05, faults=faults)) as emu:
        options = fault_options(task_dir.task_dir, emu.base_url)
        summary, _ = run_checked(task, options)
        assert summary.status == "error", summary
        assert "batch 2" in summary.reason and "--process_failed_batches 1" in summary.reason, summary.reason
        state = task_dir.state()
        assert state.totals.reserved.requests == sum(
            b.requests for b in state.batches.values() if b.state in ("pushing", "pushed", "done"))
        summary, _ = run_checked(task, options.model_copy(update={"process_failed_batches": 1}))
        assert summary.status == "finished", summary
        check_remote_consistency(task_dir.state(), emu.stats()["batches_by_local_id"])
    assert_complete_output(task_dir.output(), 120)


def test_api_server_restart_mid_run(tmp_path: Path, forkserver: Forkserver, figures: dict) -> None:
    """The API server goes away for a moment while batches are in flight and comes back with its state: the run
    rides it out (client retries, the poll and push stages retry) and ends like an uninterrupted run."""
    n = 600
    reference = reference_run(forkserver, TaskDir("local", str(tmp_path / "reference")), n, tmp_path / "ref.log")
    task_dir = TaskDir("local", str(tmp_path / "tasks"))
    config = EmulatorConfig(batch_duration=0.5, state_dir=tmp_path / "emulator")
    created: dict[str, int] = {}
    with run_emulator(config) as first:
        argv = cli_args(task_dir.task_dir, first.base_url, n)
        run = forkserver.start(argv, tmp_path / "run.log")
        try:
            assert run.wait_for(lambda m: m.kind == "commit" and m.text.startswith("pushed batch 3"), 120)
            port = first.port
        except BaseException:
            run.close()
            raise
    down_at = time.monotonic()
    before = first.stats()["batches_by_local_id"]  # read after the shutdown: nothing can be created any more
    for key, count in before.items():
        created[key] = created.get(key, 0) + count
    time.sleep(0.5)  # the server is down: in-flight calls fail and are retried
    with run_emulator(config.model_copy(update={"port": port})) as second:
        downtime = time.monotonic() - down_at
        try:
            code = run.finish(timeout=300)
        finally:
            run.close()
        for key, count in second.stats()["batches_by_local_id"].items():
            created[key] = created.get(key, 0) + count
    assert code == 0, run.log_tail()
    state = task_dir.state()
    check_remote_consistency(state, created)
    assert task_dir.output() == reference.output
    figures["server_restart"] = {"requests": n, "downtime_s": round(downtime, 2), "batches": len(state.batches),
                                 "batches_created_before_restart": len(before)}
