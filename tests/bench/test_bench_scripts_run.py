"""The bench scripts run (tiny sizes; no timing is asserted: bench/README.md quotes their figures). A bench that no
longer runs against the engine it measures is caught here, not in the next performance session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize(("script", "args", "expect"), [
    ("pipeline.py", ["--n", "300"], "300 records"),
    ("store_commit.py", ["--n", "300", "--commits", "3"], "iter_lines verified"),
    ("tokens.py", ["--n", "300"], "baseline"),
    ("scale.py", ["--n", "300", "--session-requests", "100", "--batch-requests", "50", "--s3-n", "200",
                  "--latency-ms", "5"], "time the store adds"),
    ("scale.py", ["--n", "300", "--session-requests", "100", "--batch-requests", "50", "--restarts", "2",
                  "--base-root", str(BENCH.parent)], "restart to the first remote batch (clean stop)"),
    ("scale.py", ["--n", "300", "--session-requests", "100", "--batch-requests", "50", "--restarts", "1",
                  "--kill"], "restart to the first remote batch (SIGKILL mid-push)"),
])
def test_bench_script_runs(script: str, args: list[str], expect: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert expect in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]
    assert "Traceback" not in done.stderr
