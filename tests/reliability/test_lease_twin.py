"""A lease twin (issue 14): a run in another PID namespace (a container with host networking, a second machine with
the same hostname) holds the task; a run here must not take its lease over because a pid "is not there": it waits
for expiry. Before issue 14 "same hostname + os.kill(pid, 0) fails" declared the holder dead, and with a slow upload
the same batch was created twice.

Real namespaces where ``unshare -p -f --mount-proc`` is allowed (root); otherwise a seam: this run's PID namespace is
made to look different (``host_identity``). CI: 1 round each; ``GBATCH_TWIN_ROUNDS=20`` by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.runs import run_plain
from gbatch_flows.store import LeaseHeld
from gbatch_flows.store import lease as lease_module

from .campaign import check_remote_consistency
from .conftest import BATCH_DURATION
from .harness import DUMMY_KEY, Forkserver, TaskDir, assert_complete_output, cli_args, options_of
from .tasks import RelTask

CHILD = Path(__file__).with_name("child.py")
N_REQUESTS = 200
ROUNDS = int(os.environ.get("GBATCH_TWIN_ROUNDS", "1"))
SLOW_UPLOADS = {"script": [{"op": "files.create", "fault": "slow_answer", "delay_s": 0.5}]}


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True).returncode == 0


def _wait_marker(proc: subprocess.Popen, prefix: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise AssertionError("the holder ended before the marker")
        if line.startswith(prefix):
            return
    raise TimeoutError(prefix)


def _twin_round(seed: int, tmp_path: Path, forkserver: Forkserver, real: bool,
                monkeypatch: pytest.MonkeyPatch) -> dict:
    task_dir = TaskDir("local", str(tmp_path / f"round{seed}"))
    refused = 0
    with run_emulator(EmulatorConfig(batch_duration=BATCH_DURATION, faults=SLOW_UPLOADS)) as emu:
        argv = cli_args(task_dir.task_dir, emu.base_url, N_REQUESTS)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}, "OPENAI_API_KEY": DUMMY_KEY,
               "PYTHONPATH": os.pathsep.join(sys.path)}
        prefix = ["unshare", "-p", "-f", "--mount-proc"] if real else []
        holder = subprocess.Popen([*prefix, sys.executable, str(CHILD), str(tmp_path / f"holder{seed}.log"), "--",
                                   *argv], stdout=subprocess.PIPE, text=True, env=env)
        try:
            _wait_marker(holder, f"commit push intent batch {1 + seed % 2}", 120)
            if not real:  # the seam: the holder's PID namespace differs from ours and its pid is not seen here
                boot_id, _ = lease_module.host_identity()
                monkeypatch.setattr(lease_module, "host_identity", lambda: (boot_id, "pid:[simulated-twin]"))
                monkeypatch.setattr(lease_module, "_pid_alive", lambda pid: False)
            for attempt in range(3):  # while the holder pushes (slow uploads): never taken over
                if real:
                    twin = forkserver.start(argv, tmp_path / f"twin{seed}-{attempt}.log")
                    assert twin.finish(timeout=60) == 1, twin.log_tail()
                    assert "being run by" in twin.log_tail()
                else:
                    with pytest.raises(LeaseHeld, match="being run by"):
                        run_plain(RelTask({"n_requests": N_REQUESTS}),
                                  options_of(argv).model_copy(update={"openai_api_key": SecretStr(DUMMY_KEY)}))
                refused += 1
                time.sleep(0.3)
            monkeypatch.undo()
            assert holder.wait(timeout=180) == 0, (tmp_path / f"holder{seed}.log").read_text()[-3000:]
        finally:
            if holder.poll() is None:
                holder.kill()
            holder.communicate()
        stats = emu.stats()
    check_remote_consistency(task_dir.state(), stats["batches_by_local_id"])
    assert_complete_output(task_dir.output(), N_REQUESTS)
    return {"seed": seed, "refused": refused, "twins": sum(c - 1 for c in stats["batches_by_local_id"].values())}


@pytest.mark.parametrize("real", [True, False], ids=["unshare", "seam"])
def test_a_lease_twin_in_another_pid_namespace_is_never_taken_over(real: bool, tmp_path: Path,
                                                                  forkserver: Forkserver, figures: dict,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if real and not _can_unshare():
        pytest.skip("unshare -p is not allowed here (needs root): the seam variant covers it")
    rounds = [_twin_round(seed, tmp_path, forkserver, real, monkeypatch) for seed in range(1, ROUNDS + 1)]
    assert sum(r["twins"] for r in rounds) == 0
    figures[f"lease_twin_{'unshare' if real else 'seam'}"] = {
        "rounds": len(rounds), "twins": 0, "takeovers_refused": sum(r["refused"] for r in rounds)}
