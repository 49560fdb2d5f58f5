"""Exactly once at the edges (issue 14): answers lost on the wire, late answers, direct calls whose outcome is
unknown. No crash here: the emulator runs every operation and then drops or delays its answer.

Checks against the emulator's own counts ("real"): every local batch exists once remotely, every request of it was
run once, the recorded spend equals the real spend (emulator usage x prices), and every cost limit holds against
the real spend.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from gbatch_flows import costs
from gbatch_flows.emulator import EmulatorConfig, run_emulator

from .campaign import check_remote_consistency
from .conftest import BATCH_DURATION, Scale
from .harness import PRICES, TaskDir, assert_complete_output, output_records
from .tasks import RelTask
from .test_faults import fault_options, run_checked

#: answers lost (the upload or batch exists, the client never hears), late (the client times out after 1 s), and
#: connections dropped before the operation (nothing exists: the run must create it after its window)
CREATE_FAULTS = {"answer_lost": 0.3, "slow_answer": 0.05, "slow_answer_s": 1.5, "drop_connection": 0.05,
                 "ops": ["files.create", "batches.create"]}


def real_spend(stats: dict[str, Any], mode: str) -> float:
    """What the emulator served, at the test prices (the prompt cache is off: no cached tokens)."""
    usage = {"prompt_tokens": stats["prompt_tokens"], "completion_tokens": stats["completion_tokens"]}
    return costs.actual_cost(usage, PRICES, mode)  # type: ignore[arg-type]


def _n(scale: Scale) -> int:
    return 3000 if scale.name == "full" else 400


def _run(tmp_path: Path, name: str, n: int, faults: dict[str, Any], **overrides: Any) -> tuple[Any, Any, dict]:
    task_dir = TaskDir("local", str(tmp_path / name))
    config = EmulatorConfig(batch_duration=BATCH_DURATION, prompt_cache=False, faults=faults)
    with run_emulator(config) as emu:
        options = fault_options(task_dir.task_dir, emu.base_url, **overrides)
        started = time.monotonic()
        summary, commits = run_checked(RelTask({"n_requests": n}), options)
        stats = emu.stats() | {"seconds": round(time.monotonic() - started, 1), "commits": commits}
    return summary, task_dir, stats


def test_lost_answers_to_creates_make_no_twin_and_no_hidden_spend(tmp_path: Path, scale: Scale,
                                                                  figures: dict) -> None:
    n = _n(scale)
    summary, task_dir, stats = _run(tmp_path, "full", n, {"seed": 5, "rates": CREATE_FAULTS})
    assert summary.status == "finished", summary
    state = task_dir.state()
    assert_complete_output(task_dir.output(), n)
    check_remote_consistency(state, stats["batches_by_local_id"])  # every local batch exists once remotely
    batches = [b for b in state.batches.values() if b.mode == "batch"]
    assert len(stats["batches_by_local_id"]) == len(batches)
    assert stats["batch_requests_processed"] == sum(b.requests for b in batches)  # every request run once
    assert stats["files_created"] == len(batches)  # an upload whose answer was lost is found, not sent again
    real = real_spend(stats, "batch")
    assert math.isclose(state.totals.settled.cost, real, rel_tol=1e-9), (state.totals.settled.cost, real)
    assert state.totals.reserved.requests == 0
    injected = stats["faults_injected"]
    assert injected.get("answer_lost", 0) >= 3 and injected.get("slow_answer", 0) >= 1, injected

    limit = round(real * 0.55, 6)  # a cost limit well inside the task's need: it must hold against real spend
    limited, limited_dir, limited_stats = _run(tmp_path, "limited", n, {"seed": 9, "rates": CREATE_FAULTS},
                                               max_task_cost=limit, max_batch_cost=limit / 4)
    assert limited.status == "stopped" and "max_task_cost" in limited.reason, limited
    limited_real = real_spend(limited_stats, "batch")
    assert limited_stats["faults_injected"].get("answer_lost", 0) >= 2, limited_stats["faults_injected"]
    assert limited_real <= limit + 1e-12, (limited_real, limit)
    check_remote_consistency(limited_dir.state(), limited_stats["batches_by_local_id"])
    figures["lost_create_answers"] = {
        "requests": n, "local_batches": len(batches), "remote_batches": sum(stats["batches_by_local_id"].values()),
        "requests_run": stats["batch_requests_processed"], "files_uploaded": stats["files_created"],
        "faults_injected": injected, "recorded_cost": round(state.totals.settled.cost, 6), "real_cost": round(real, 6),
        "limited": {"max_task_cost": limit, "real_cost": round(limited_real, 6),
                    "faults_injected": limited_stats["faults_injected"]},
        "seconds": stats["seconds"] + limited_stats["seconds"],
    }


def test_direct_calls_with_lost_answers_stay_within_every_limit(tmp_path: Path, scale: Scale,
                                                                figures: dict) -> None:
    n = _n(scale) // 2
    faults = {"seed": 8, "rates": {"answer_lost": 0.15, "ops": ["chat.completions"]}}
    summary, task_dir, stats = _run(tmp_path, "full", n, faults, force_direct=True)
    assert summary.status == "finished", summary
    assert_complete_output(task_dir.output(), n)
    failures = [r for r in output_records(task_dir.output()) if "failed" in r]
    assert all("retries exhausted" in r["failed"] for r in failures), failures[:3]
    state = task_dir.state()
    real = real_spend(stats, "direct")
    assert real <= state.totals.settled.cost + 1e-12  # a lost answer is charged at its worst case: never less
    assert stats["faults_injected"]["answer_lost"] >= 5

    limit = round(real * 0.5, 6)
    limited, _, limited_stats = _run(tmp_path, "limited", n, faults, force_direct=True, max_task_cost=limit,
                                     max_session_cost=round(limit * 1.5, 6), max_batch_cost=limit / 4)
    assert limited.status == "stopped" and "max_task_cost" in limited.reason, limited
    limited_real = real_spend(limited_stats, "direct")
    assert limited_real <= limit + 1e-12, (limited_real, limit)
    figures["direct_lost_answers"] = {
        "requests": n, "lost_answers": stats["faults_injected"]["answer_lost"], "failed_for_good": len(failures),
        "recorded_cost": round(state.totals.settled.cost, 6), "real_cost": round(real, 6),
        "limited": {"max_task_cost": limit, "real_cost": round(limited_real, 6),
                    "lost_answers": limited_stats["faults_injected"].get("answer_lost", 0)},
    }


def test_status_view_reports_a_remote_batch_the_manifest_missed(tmp_path: Path, capsys: Any) -> None:
    """`--no_run` (the status view) reconciles too: a twin created behind the task's back is cancelled, counted and
    shown, and the manifest records it once."""
    import openai

    from gbatch_flows import cli
    from gbatch_flows.engine.push import metadata_for

    from .harness import DUMMY_KEY, cli_args

    task_dir = TaskDir("local", str(tmp_path / "tasks"))
    with run_emulator(EmulatorConfig(batch_duration=30.0)) as emu:
        argv = cli_args(task_dir.task_dir, emu.base_url, 20, openai_api_key=DUMMY_KEY, max_batch_requests=10)
        assert cli.main(RelTask, argv + ["--max_remote_batches", "0"]) == 0  # assembled only: nothing remote yet
        state = task_dir.state()
        client = openai.OpenAI(api_key=DUMMY_KEY, base_url=emu.base_url)
        uploaded = client.files.create(file=("twin.jsonl", b'{"custom_id": "x", "method": "POST", "url": '
                                             b'"/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": '
                                             b'[{"role": "user", "content": "hi"}]}}\n'), purpose="batch")
        twin = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h", metadata=metadata_for(state.task.task_id, 1))
        capsys.readouterr()
        assert cli.main(RelTask, argv + ["--no_run"]) == 0
        out = capsys.readouterr().out
        assert "remote batches found outside the manifest (cancelled, cost counted): 1" in out, out
        assert client.batches.retrieve(twin.id).status in ("cancelling", "cancelled")
        assert [k for k in task_dir.state().manifest.sections if k.startswith("orphan/")] == [f"orphan/{twin.id}"]
        assert cli.main(RelTask, argv + ["--no_run"]) == 0  # seen again: still one record
        assert len([k for k in task_dir.state().manifest.sections if k.startswith("orphan/")]) == 1
