"""Racing committers: exactly one winner per generation, no lost update, across threads and processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gbatch_flows.store import ConcurrentModification, Manifest

from .conftest import Target

WORKERS = Path(__file__).with_name("workers.py")


def _race(stores: list, base: Manifest) -> tuple[list[Manifest], list[ConcurrentModification]]:
    barrier = threading.Barrier(len(stores))
    wins: list[Manifest] = []
    losses: list[ConcurrentModification] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            result = stores[i].commit(base, {"winner": i, f"round/{base.generation + 1}": i}, f"thread {i}")
        except ConcurrentModification as exc:
            with lock:
                losses.append(exc)
        else:
            with lock:
                wins.append(result)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return wins, losses


@pytest.mark.parametrize("shared", [False, True], ids=["own-store", "shared-store"])
def test_threads_one_winner_per_generation(target: Target, shared: bool) -> None:
    n, rounds = (4, 2) if target.kind == "s3" else (8, 4)
    stores = [target.open()] * n if shared else [target.open() for _ in range(n)]
    base = stores[0].load()
    for round_no in range(rounds):
        wins, losses = _race(stores, base)
        assert len(wins) == 1 and len(losses) == n - 1
        assert all(loss.generation == base.generation + 1 for loss in losses)
        loaded = target.open().load()
        assert loaded.generation == round_no + 1
        assert loaded == wins[0]  # the stored state is exactly the winner's, nothing of the losers
        assert len(loaded.keys("round/")) == round_no + 1
        assert loaded.get(f"round/{round_no + 1}") == loaded.get("winner")
        base = loaded


def test_processes_lose_no_update(durable_target: Target) -> None:
    processes, increments = (2, 5) if durable_target.kind == "s3" else (3, 40)
    options = json.dumps(durable_target.storage_options)
    children = [
        subprocess.Popen(
            [sys.executable, str(WORKERS), "count", durable_target.url, options, str(increments)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    reports = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["done"] for r in reports] == [increments] * processes
    final = durable_target.open().load()
    assert final.get("counter") == {"n": processes * increments}
    assert final.generation == processes * increments
    print("conflicts per process:", [r["conflicts"] for r in reports])
