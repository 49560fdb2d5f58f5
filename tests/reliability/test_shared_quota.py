"""One quota for several tasks: separate processes (each its own task folder) share one emulator whose
enqueued-token limit is smaller than their combined queue, through one ledger (--quota_dir).

Without the ledger each task would fill its own remote queue and the emulator would refuse batches for
token_limit_exceeded; with it no batch is refused, the shared limit stays busy while work remains, spend stays
within the daily cap, and SIGKILLed workers leave no reservation behind once their tasks are run again."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.quota import ModelLimits, QuotaLedger

from .conftest import make_task_dir
from .harness import Forkserver, TaskDir, assert_complete_output, cli_args

MODEL = "gpt-4o-mini"
N_REQUESTS = 300
TOKEN_LIMIT = 3000  # about 10 batches of 20 requests: far below 3 tasks x max_remote_batches 4
BATCH_DURATION = 6.0


def _sampler(emu, ledger: QuotaLedger, stop: threading.Event, samples: list[tuple[int, bool]]) -> None:
    """(tokens enqueued at the emulator, whether a task waits for room in the ledger), every 50 ms."""
    while not stop.is_set():
        report = ledger.report()["models"][MODEL]
        waiting = bool(report["waiting"])
        samples.append((int(emu.stats().get("enqueued_tokens", {}).get(MODEL, 0)), waiting))
        time.sleep(0.05)


def _run_tasks(forkserver: Forkserver, dirs: list[TaskDir], emu, quota: str, tmp_path: Path,
               kill_after: float | None = None) -> list[int | None]:
    runs = []
    for i, task_dir in enumerate(dirs):
        argv = cli_args(task_dir.task_dir, emu.base_url, N_REQUESTS, task_dir.storage_options, quota_dir=quota,
                        max_batch_requests=20, max_remote_batches=8, max_unpushed_batches=2,
                        poll_interval_min_s=0.05, poll_interval_max_s=0.1)
        runs.append(forkserver.start(argv, tmp_path / f"task{i}-{time.monotonic_ns()}.log"))
    try:
        if kill_after is not None:
            time.sleep(kill_after)
            for run in runs:
                os.kill(run.process.pid, signal.SIGKILL)
        return [run.finish(timeout=300) for run in runs]
    finally:
        for run in runs:
            run.close()


@pytest.mark.slow
@pytest.mark.parametrize("n_tasks", [2, 3])
def test_tasks_share_one_enqueued_token_limit(n_tasks: int, forkserver: Forkserver, tmp_path: Path,
                                              request: pytest.FixtureRequest, figures: dict) -> None:
    quota = str(tmp_path / "quota")
    ledger = QuotaLedger(quota)
    ledger.set_limits(ModelLimits(model=MODEL, max_remote_ktokens=TOKEN_LIMIT / 1000, max_daily_cost=5.0))
    dirs = [make_task_dir("local", request, tmp_path / f"t{i}") for i in range(n_tasks)]
    samples: list[tuple[int, bool]] = []
    stop = threading.Event()
    with run_emulator(EmulatorConfig(batch_duration=BATCH_DURATION, enqueued_token_limits={MODEL: TOKEN_LIMIT})) as emu:
        sampler = threading.Thread(target=_sampler, args=(emu, ledger, stop, samples), daemon=True)
        sampler.start()
        codes = _run_tasks(forkserver, dirs, emu, quota, tmp_path)
        stop.set()
        sampler.join()
    logs = "\n".join(p.read_text() for p in tmp_path.glob("task*.log"))
    assert codes == [0] * n_tasks, logs[-3000:]
    refused = [b.local_id for d in dirs for b in d.state().batches.values() if b.past_remote_ids]
    assert refused == [], f"batches refused for token_limit_exceeded: {refused}"
    for task_dir in dirs:
        assert_complete_output(task_dir.output(), N_REQUESTS)
    report = ledger.report()["models"][MODEL]
    assert report["tokens_in_flight"] == 0 and report["tasks"] == {}, report  # nothing leaked
    spent = sum(b.cost for d in dirs for b in d.state().batches.values())
    assert report["today"]["cost"] == pytest.approx(spent) and spent <= 5.0
    # while a task waits for room, the shared limit is in use (what is free is less than one batch)
    contended = [tokens for tokens, waiting in samples if waiting]
    use = sum(contended) / (len(contended) * TOKEN_LIMIT) if contended else 0.0
    peak = max(tokens for tokens, _ in samples)
    assert contended and peak <= TOKEN_LIMIT
    figures[f"shared_quota[{n_tasks} tasks]"] = {"refused": len(refused), "limit_in_use": round(use, 3),
                                                  "max_enqueued": peak, "spent": round(spent, 5),
                                                  "contended_samples": len(contended)}
    # 0.87-0.89 measured on an otherwise idle machine, 0.66 with the machine overloaded (tests/reliability/README.md);
    # the bound catches a quota that idles (a waiter that stopped asking and kept the others behind it gave 0.11)
    assert use >= 0.5, f"only {use:.0%} of the shared enqueued-token limit in use while a task waited"


@pytest.mark.slow
def test_killed_workers_leave_no_reservation_behind(forkserver: Forkserver, tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    quota = str(tmp_path / "quota")
    ledger = QuotaLedger(quota)
    ledger.set_limits(ModelLimits(model=MODEL, max_remote_ktokens=TOKEN_LIMIT / 1000))
    dirs = [make_task_dir("local", request, tmp_path / f"t{i}") for i in range(2)]
    with run_emulator(EmulatorConfig(batch_duration=BATCH_DURATION, enqueued_token_limits={MODEL: TOKEN_LIMIT})) as emu:
        codes = _run_tasks(forkserver, dirs, emu, quota, tmp_path, kill_after=3.0)
        assert all(code != 0 for code in codes)
        held = ledger.report()["models"][MODEL]["tokens_in_flight"]
        assert held > 0, "the kill came too late to leave holds behind: nothing was tested"
        for task_dir in dirs:
            for lease in (task_dir.store().backend,):
                lease.delete_many(["lease.json"])  # the killed runs are surely dead
        codes = _run_tasks(forkserver, dirs, emu, quota, tmp_path)
        assert codes == [0, 0]
    refused = [b.local_id for d in dirs for b in d.state().batches.values() if b.past_remote_ids]
    assert refused == []
    for task_dir in dirs:
        assert_complete_output(task_dir.output(), N_REQUESTS)
    report = ledger.report()["models"][MODEL]
    assert report["tokens_in_flight"] == 0 and report["tasks"] == {}, report


@pytest.mark.slow
@pytest.mark.parametrize("n_tasks", [2, 3])
def test_direct_tasks_share_one_rate_limit(n_tasks: int, forkserver: Forkserver, tmp_path: Path,
                                           request: pytest.FixtureRequest, figures: dict) -> None:
    """Tasks in direct mode against one model share its RPM through the ledger: the server never answers 429,
    and together they use most of the limit."""
    rpm = 1200
    quota = str(tmp_path / "quota")
    QuotaLedger(quota).set_limits(ModelLimits(model=MODEL, max_direct_rpm=rpm))
    dirs = [make_task_dir("local", request, tmp_path / f"t{i}") for i in range(n_tasks)]
    n = 200
    with run_emulator(EmulatorConfig(rpm=rpm)) as emu:
        runs = []
        for i, task_dir in enumerate(dirs):
            argv = cli_args(task_dir.task_dir, emu.base_url, n, task_dir.storage_options, quota_dir=quota,
                            force_direct=True, max_direct_concurrency=8)
            runs.append(forkserver.start(argv, tmp_path / f"direct{i}.log"))
        started = time.monotonic()
        try:
            codes = [run.finish(timeout=300) for run in runs]
        finally:
            for run in runs:
                run.close()
        elapsed = time.monotonic() - started
        stats = emu.stats()
    assert codes == [0] * n_tasks, "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("direct*.log"))
    assert stats["responses_429"] == 0 and stats["rate_limited"] == 0, stats
    for task_dir in dirs:
        assert_complete_output(task_dir.output(), n)
    sent = stats["requests_by_op"].get("chat.completions", 0)
    figures[f"shared_direct_rpm[{n_tasks} tasks]"] = {"requests": sent, "seconds": round(elapsed, 1),
                                                      "fraction_of_rpm": round(sent / (rpm / 60 * elapsed), 3)}
    assert QuotaLedger(quota).report()["models"][MODEL]["tasks"] == {}
