"""Concurrency: several runs started on one task at the same moment, or while another is mid-run, on the local
disk and on S3 (moto): exactly one proceeds, the others stop at once with a message naming the holder and the fix,
and the task ends as if it had run alone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator

from .campaign import check_remote_consistency
from .conftest import BATCH_DURATION, make_task_dir, reference_run
from .harness import Forkserver, cli_args

N_REQUESTS = 600


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_only_one_of_several_runs_proceeds(kind: str, request: pytest.FixtureRequest, tmp_path: Path,
                                           forkserver: Forkserver, figures: dict) -> None:
    reference = reference_run(forkserver, make_task_dir(kind, request, tmp_path / "reference"), N_REQUESTS,
                              tmp_path / "reference.log")
    task_dir = make_task_dir(kind, request, tmp_path / "shared")
    with run_emulator(EmulatorConfig(batch_duration=BATCH_DURATION)) as emu:
        argv = cli_args(task_dir.task_dir, emu.base_url, N_REQUESTS, task_dir.storage_options)
        # three runs at once: they race for the lease
        runs = [forkserver.start(argv, tmp_path / f"race{i}.log") for i in range(3)]
        try:
            # and one more while the winner is in the middle of its work
            deadline = time.monotonic() + 120
            while not any(m.kind == "commit" and m.text.startswith("pushed") for r in runs for m in r.markers):
                assert time.monotonic() < deadline, "no run got to push a batch"
                for run in runs:
                    run.next_marker(0.02)
            late = forkserver.start(argv, tmp_path / "late.log")
            runs.append(late)
            codes = [run.finish(timeout=300) for run in runs]
        finally:
            for run in runs:
                run.close()
        winners = [i for i, code in enumerate(codes) if code == 0]
        assert len(winners) == 1, f"exit codes {codes}"
        for i, run in enumerate(runs):
            if i in winners:
                continue
            assert codes[i] == 1, codes
            tail = run.log_tail()
            assert "is being run by" in tail and "lease.json" in tail, tail
            assert not run.commits(), "a refused run committed something"
        state = task_dir.state()
        check_remote_consistency(state, emu.stats()["batches_by_local_id"])
    assert task_dir.output() == reference.output
    figures[f"concurrency[{kind}]"] = {"runs": len(runs), "proceeded": len(winners), "exit_codes": codes}
