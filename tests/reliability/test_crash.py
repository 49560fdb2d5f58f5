"""Crash anywhere: SIGKILL a run of the task at random moments (seeded), restart it each time, and end with exactly
the output of an uninterrupted run, no batch created twice on the remote, and a recorded cost that matches the
usage in the downloaded results. On the local disk and on S3 (moto)."""

from __future__ import annotations

import math
import random
import signal
from pathlib import Path

import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.engine.runner import is_finished

from .campaign import Campaign, check_remote_consistency
from .conftest import BATCH_DURATION, Scale, make_task_dir, reference_run
from .harness import Forkserver, TaskDir, assert_complete_output, cli_args, options_of, recomputed_cost, \
    recorded_cost

SEED = 20241125


def check_final_state(task_dir: TaskDir, emu, reference_output: bytes, n_requests: int) -> dict:
    """The end state of an interrupted task equals an uninterrupted one, and its books add up."""
    output = task_dir.output()
    assert_complete_output(output, n_requests)
    assert output == reference_output, "the output differs from the output of an uninterrupted run"
    store = task_dir.store()
    state = task_dir.state()
    assert is_finished(state)
    stats = emu.stats()
    created = stats["batches_by_local_id"]
    check_remote_consistency(state, created)
    assert sorted(int(k) for k in created) == sorted(b.local_id for b in state.batches.values() if b.mode == "batch")
    recorded = recorded_cost(state)
    recomputed, tokens = recomputed_cost(store, state)
    assert recorded > 0
    assert math.isclose(recorded, recomputed, rel_tol=1e-9), (recorded, recomputed)
    assert math.isclose(state.totals.settled.cost, recorded, rel_tol=1e-9)
    assert state.totals.reserved.requests == 0 and abs(state.totals.reserved.cost) < 1e-9
    # every request the emulator answered was downloaded and counted exactly once
    assert tokens["prompt_tokens"] == stats["prompt_tokens"]
    assert tokens["completion_tokens"] == stats["completion_tokens"]
    return {"batches": len(state.batches), "cost": round(recorded, 6), "records": output.count(b"\n")}


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_sigkill_at_random_moments(kind: str, request: pytest.FixtureRequest, tmp_path: Path, scale: Scale,
                                   forkserver: Forkserver, figures: dict) -> None:
    n = scale.n_requests
    kills = scale.kills_local if kind == "local" else scale.kills_s3
    reference = reference_run(forkserver, make_task_dir(kind, request, tmp_path / "reference"), n,
                              tmp_path / "reference.log")
    task_dir = make_task_dir(kind, request, tmp_path / "crashed")
    with run_emulator(EmulatorConfig(batch_duration=BATCH_DURATION)) as emu:
        argv = cli_args(task_dir.task_dir, emu.base_url, n, task_dir.storage_options)
        campaign = Campaign(forkserver, task_dir, argv, options_of(argv), emu, tmp_path / "runs.log",
                            random.Random(f"{SEED}-{kind}"), signal.SIGKILL, ref_commits=reference.commits,
                            ref_generate_s=reference.generate_s, ref_finished_run_s=reference.finished_run_s)
        result = campaign.run(kills)
        campaign.finish()
        final = check_final_state(task_dir, emu, reference.output, n)
    figures[f"sigkill[{kind}]"] = {"requests": n, **result.figures(), **final}
    assert result.stops == kills
    assert result.lease_refusals == 1
    stages = result.stages
    assert stages["generate"] + stages["startup"] > 0 and stages["output"] > 0
    assert stages["push"] > 0 and stages["process"] > 0, stages
