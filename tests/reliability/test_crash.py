"""Crash anywhere: SIGKILL a run of the task at random moments (seeded), restart it each time, and end with exactly
the output of an uninterrupted run, no batch created twice on the remote, and a recorded cost that matches the
usage in the downloaded results. On the local disk and on S3 (moto)."""

from __future__ import annotations

import math
import random
import signal
from collections import Counter
from pathlib import Path

import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.engine.runner import is_finished

from .campaign import Campaign, CampaignResult, check_remote_consistency
from .conftest import BATCH_DURATION, Scale, make_task_dir, reference_run
from .harness import Forkserver, TaskDir, assert_complete_output, cli_args, options_of, recomputed_cost, recorded_cost

SEED = 20241125


def assert_spread(result: CampaignResult, required: tuple[str, ...] = ("generate", "push", "poll", "process",
                                                                      "output"), windows: bool = True) -> None:
    """Stops landed in the stages that matter and (``windows``) in the two windows that need recovery logic."""
    stages = Counter(result.stages)
    stages["push"] += stages["push-created"]
    stages["process"] += stages["process-downloaded"]
    missing = [name for name in required if stages[name] == 0]
    assert not missing, f"no stop in {missing}: {dict(result.stages)}"
    if not windows:
        return
    assert result.windows["pushing, remote created"] > 0, "no stop between a remote creation and its commit"
    assert result.windows["done, not processed"] > 0, "no stop between a finished batch and its processing"


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


def stop_campaign(kind: str, request: pytest.FixtureRequest, tmp_path: Path, forkserver: Forkserver, n: int,
                  stops: int, sig: signal.Signals, figures: dict, seed: int = SEED) -> CampaignResult:
    """An uninterrupted reference run, then ``stops`` runs of the same task stopped by ``sig`` at seeded random
    moments (restarted each time) until it finishes; checks the final state against the reference."""
    label = "sigkill" if sig == signal.SIGKILL else "sigint"
    reference = reference_run(forkserver, make_task_dir(kind, request, tmp_path / "reference"), n,
                              tmp_path / "reference.log")
    task_dir = make_task_dir(kind, request, tmp_path / ("crashed" if label == "sigkill" else "interrupted"))
    with run_emulator(EmulatorConfig(batch_duration=BATCH_DURATION)) as emu:
        argv = cli_args(task_dir.task_dir, emu.base_url, n, task_dir.storage_options)
        campaign = Campaign(forkserver, task_dir, argv, options_of(argv), emu, tmp_path / "runs.log",
                            random.Random(f"{seed}-{kind}"), reference.times, sig)
        result = campaign.run(stops)
        campaign.finish()
        final = check_final_state(task_dir, emu, reference.output, n)
    figures[f"{label}[{kind}]"] = {"requests": n, **result.figures(), **final}
    return result


@pytest.mark.slow  # a kill campaign
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_sigkill_at_random_moments(kind: str, request: pytest.FixtureRequest, tmp_path: Path, scale: Scale,
                                   forkserver: Forkserver, figures: dict) -> None:
    kills = scale.kills_local if kind == "local" else scale.kills_s3
    result = stop_campaign(kind, request, tmp_path, forkserver, scale.n_requests, kills, signal.SIGKILL, figures)
    assert result.stops == kills
    # a killed run's lease is taken over by the next run on this host (its pid is gone), never deleted by hand
    log = (tmp_path / "runs.log").read_text()
    assert "Traceback" not in log, "a run that was not killed crashed"
    takeovers = log.count("is gone: taking its lease over")
    assert result.dead_leases > 0 and takeovers == result.dead_leases, (takeovers, result.dead_leases)
    assert_spread(result)
