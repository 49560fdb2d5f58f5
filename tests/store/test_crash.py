"""A writer SIGKILLed at random moments never leaves a state that fails to load or verify."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Target

WORKERS = Path(__file__).with_name("workers.py")


def _check_state(target: Target) -> tuple[int, bool]:
    """Load with a fresh Store, verify every referenced blob; return (batches, leftover blob present)."""
    store = target.open()
    m = store.load()
    totals = m.get("totals")
    keys = m.keys("batch/")
    assert totals is not None and len(keys) == totals["batches"]
    assert keys == [f"batch/{n:06d}" for n in range(totals["batches"])]
    lines_total = 0
    for n, key in enumerate(keys):
        section = m.get(key)
        lines = list(store.iter_lines(section["ref"]))  # raises ChecksumMismatch if damaged
        assert len(lines) == section["lines"]
        assert {json.loads(line)["batch"] for line in lines} == {n}
        lines_total += len(lines)
    assert lines_total == totals["lines"]
    return totals["batches"], store.exists(f"batches/{totals['batches']:06d}.jsonl")


@pytest.mark.slow  # a kill campaign
def test_sigkill_at_random_moments(durable_target: Target) -> None:
    rng = random.Random(20240611)
    kills, max_delay = (3, 0.2) if durable_target.kind == "s3" else (8, 0.03)
    options = json.dumps(durable_target.storage_options)
    batches = 0
    leftovers = 0
    for round_no in range(kills):
        child = subprocess.Popen(
            [sys.executable, str(WORKERS), "crash", durable_target.url, options, str(round_no)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            first = child.stdout.readline()
            assert first.startswith("committed"), child.stderr.read() if child.stderr else first
            time.sleep(rng.uniform(0, max_delay))  # the kill lands anywhere in the write/commit loop
        finally:
            child.send_signal(signal.SIGKILL)
            child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        now, leftover = _check_state(durable_target)
        assert now > batches  # each round committed at least once, and nothing committed was lost
        batches = now
        leftovers += leftover
    store = durable_target.open()
    store.gc(grace_s=0)
    assert not store.exists(f"batches/{batches:06d}.jsonl")  # an unreferenced leftover is collected
    assert _check_state(durable_target)[0] == batches
    print(f"{kills} kills, {batches} batches committed, {leftovers} kills left an uncommitted blob")
