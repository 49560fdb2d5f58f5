"""Ctrl+C (SIGINT) at random moments of push, poll, process and the rest: every run exits with code 130 within a few
seconds, leaves a committed state and a released lease, and the next run resumes; the end result equals an
uninterrupted run's. Forked runs (many interrupts) on the local disk and S3, plus fresh interpreters (real CLI)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.store import open_store

from .campaign import SIGINT_EXIT_S
from .conftest import BATCH_DURATION, Scale, reference_run
from .harness import DUMMY_KEY, Forkserver, TaskDir, cli_args
from .test_crash import assert_spread, check_final_state, stop_campaign

SEED = 20241126
CHILD = Path(__file__).with_name("child.py")


@pytest.mark.slow  # a kill (Ctrl+C) campaign
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_ctrl_c_at_random_moments(kind: str, request: pytest.FixtureRequest, tmp_path: Path, scale: Scale,
                                  forkserver: Forkserver, figures: dict) -> None:
    stops = scale.sigints if kind == "local" else max(8, scale.sigints // 2)
    result = stop_campaign(kind, request, tmp_path, forkserver, scale.n_requests, stops, signal.SIGINT, figures,
                           seed=SEED)
    assert result.stops == stops
    log = (tmp_path / "runs.log").read_text()
    assert log.count("interrupted: every completed step is committed") == result.stops
    assert "Traceback" not in log
    if kind == "local":
        # (a Ctrl+C is handled between two bytecodes: whether it beats a commit already under way is luck)
        assert_spread(result, required=("push", "poll", "process"), windows=False)


def test_ctrl_c_during_lease_release_leaves_it_released(tmp_path: Path) -> None:
    """Ctrl+C while a finished run releases its lease (it waits for the renewal thread): the next run must start."""
    store = open_store(str(tmp_path / "task"))
    lease = store.acquire_lease(ttl_s=60)
    thread = lease._thread
    assert thread is not None

    def interrupted_join(timeout: float | None = None) -> None:
        raise KeyboardInterrupt  # what a Ctrl+C does to the main thread waiting in join()

    thread.join = interrupted_join  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        lease.release()
    with open_store(str(tmp_path / "task")).acquire_lease(ttl_s=60):  # LeaseHeld today
        pass


def _read_markers(proc: subprocess.Popen, until: str, timeout: float) -> list[str]:
    """Marker lines of a script-mode child up to (and including) the first that starts with ``until``."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.strip())
        if line.startswith(until):
            return seen
    raise AssertionError(f"no marker {until!r} within {timeout}s (the run ended?): {seen[-5:]}")


@pytest.mark.slow  # Ctrl+C campaign in real interpreters
@pytest.mark.parametrize("target", ["commit", "stage push", "stage poll", "stage process-downloaded"])
def test_ctrl_c_in_a_fresh_interpreter(target: str, tmp_path: Path, forkserver: Forkserver) -> None:
    """The real command line in its own interpreter: Ctrl+C right after a commit or during a stage gives exit
    code 130 and the resume hint, no traceback, a released lease; the next run finishes the task with the output
    of an uninterrupted run."""
    n = 300
    reference = reference_run(forkserver, TaskDir("local", str(tmp_path / "reference")), n, tmp_path / "ref.log")
    task_dir = TaskDir("local", str(tmp_path / "interrupted"))
    log = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    with run_emulator(EmulatorConfig(batch_duration=BATCH_DURATION)) as emu:
        argv = cli_args(task_dir.task_dir, emu.base_url, n)
        proc = subprocess.Popen([sys.executable, str(CHILD), str(log), "--", *argv], stdout=subprocess.PIPE,
                                text=True, env={**env, "OPENAI_API_KEY": DUMMY_KEY})
        try:
            _read_markers(proc, target, 120)
            proc.send_signal(signal.SIGINT)
            signalled = time.monotonic()
            code = proc.wait(timeout=SIGINT_EXIT_S + 20)
            exit_s = time.monotonic() - signalled
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        text = log.read_text()
        assert code == 130, f"exit code {code}:\n{text[-3000:]}"
        assert exit_s < SIGINT_EXIT_S
        assert "interrupted: every completed step is committed; run the same command again to resume" in text
        assert "Traceback" not in text, text[-3000:]
        lease = task_dir.lease()
        assert lease is not None and lease["released"], lease
        again = forkserver.start(argv, log)
        assert again.finish() == 0, again.log_tail()
        check_final_state(task_dir, emu, reference.output, n)
