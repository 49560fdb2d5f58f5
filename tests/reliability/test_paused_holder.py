"""A paused lease holder (issue 14): a run frozen (SIGSTOP: a laptop lid, a VM pause, a stuck storage call) right
after it committed a push intent, past its lease; a successor takes the task over and finishes it; then the frozen
run wakes up (SIGCONT). The successor must not re-create the batch before the frozen run's create window closed
(its lease expiry plus its create timeout); the woken run must create nothing (its fence finds the lease lost).

Each round freezes the holder at a seeded moment inside the push of a batch whose upload answers slowly (so the
freeze lands before the batch create); a round whose freeze came too late (the batch already pushed: a busy
machine) is counted as missed, not played. Lease ttl 3 s, create timeout 1 s (GBATCH_LEASE_TTL_S/GBATCH_CREATE_TIMEOUT_S).
CI: 2 rounds; ``GBATCH_PAUSED_ROUNDS=20`` by hand (figures in README.md).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.engine.fencing import CREATE_TIMEOUT_ENV, LEASE_TTL_ENV

from .campaign import check_remote_consistency
from .conftest import BATCH_DURATION
from .harness import Forkserver, TaskDir, assert_complete_output, cli_args

N_REQUESTS = 300
ROUNDS = int(os.environ.get("GBATCH_PAUSED_ROUNDS", "2"))
TIMING = {LEASE_TTL_ENV: "3", CREATE_TIMEOUT_ENV: "1"}
UPLOAD_DELAY_S = 0.8  # each upload answers this late (inside the 1 s create timeout)


def _round(seed: int, tmp_path: Path, forkserver: Forkserver) -> dict:
    rng = random.Random(seed)
    target = rng.randint(1, 3)  # freeze during the push of this batch
    delay = rng.uniform(0.0, UPLOAD_DELAY_S * 0.9)
    task_dir = TaskDir("local", str(tmp_path / f"round{seed}"))
    faults = {"script": [{"op": "files.create", "fault": "slow_answer", "delay_s": UPLOAD_DELAY_S}]}
    with run_emulator(EmulatorConfig(batch_duration=BATCH_DURATION, faults=faults)) as emu:
        argv = cli_args(task_dir.task_dir, emu.base_url, N_REQUESTS)
        holder = forkserver.start(argv, tmp_path / f"holder{seed}.log", env=TIMING)
        successor = None
        try:
            wanted = f"push intent batch {target}"
            assert holder.wait_for(lambda m: m.kind == "commit" and m.text == wanted, 120), holder.log_tail()
            time.sleep(delay)
            os.kill(holder.process.pid, signal.SIGSTOP)
            frozen_at = time.time()
            pushed = task_dir.state().batches[target].state != "pushing"
            if not holder.process.is_alive() or pushed:  # this process was too slow to freeze it in time
                os.kill(holder.process.pid, signal.SIGCONT)
                holder.finish(timeout=120)
                return {"seed": seed, "missed": True}
            lease = json.loads(Path(task_dir.url, "lease.json").read_bytes())
            time.sleep(max(0.0, lease["expires_at"] - time.time()) + 0.1)
            successor = forkserver.start(argv, tmp_path / f"successor{seed}.log", env=TIMING)
            assert successor.finish(timeout=180) == 0, successor.log_tail()
            successor_log = Path(tmp_path / f"successor{seed}.log").read_text()
            os.kill(holder.process.pid, signal.SIGCONT)
            holder_code = holder.finish(timeout=60)
        finally:
            os.kill(holder.process.pid, signal.SIGCONT) if holder.process.is_alive() else None
            holder.close()
            if successor is not None:
                successor.close()
        stats = emu.stats()
    holder_log = Path(tmp_path / f"holder{seed}.log").read_text()
    context = f"round {seed}: frozen {delay:.3f} s after '{wanted}' (holder exit {holder_code}); holder log:\n"
    assert holder_code == 1, context + holder_log[-3000:]
    assert "lost the lease" in holder_log and "Traceback" not in holder_log, context + holder_log[-3000:]
    try:
        check_remote_consistency(task_dir.state(), stats["batches_by_local_id"])  # no local batch created twice
        assert_complete_output(task_dir.output(), N_REQUESTS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{context}{holder_log[-3000:]}\nsuccessor log:\n{successor_log[-3000:]}") from None
    return {"seed": seed, "missed": False, "frozen_in_batch": target, "delay_s": round(delay, 3),
            "frozen_s": round(time.time() - frozen_at, 1),
            "adopted": "adopting remote batch" in successor_log,
            "waited_window": "may still land" in successor_log,
            "twins": sum(c - 1 for c in stats["batches_by_local_id"].values())}


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_paused_holder_never_makes_a_twin(tmp_path: Path, forkserver: Forkserver, figures: dict) -> None:
    played = [_round(seed, tmp_path, forkserver) for seed in range(1, ROUNDS + 1)]
    rounds = [r for r in played if not r["missed"]]
    assert rounds, "no round froze the holder inside a push (the machine is too busy)"
    assert sum(r["twins"] for r in rounds) == 0
    figures["paused_holder"] = {"rounds": len(rounds), "missed": len(played) - len(rounds), "twins": 0,
                                "successor_waited_window": sum(r["waited_window"] for r in rounds),
                                "successor_adopted": sum(r["adopted"] for r in rounds), "per_round": rounds}
