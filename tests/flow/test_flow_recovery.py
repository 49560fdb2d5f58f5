"""Crashes and races through the Prefect flow: a demo killed mid-run resumes without duplicates, a second run of
the same task is refused by the lease, nothing is corrupted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gbatch_flows import cli
from gbatch_flows.store import open_store

from .conftest import (
    REPO,
    PrefectServer,
    emulator_for,
    flow_options,
    flow_run,
    local_ids_pushed_twice,
    newest_generation,
    read_jsonl,
)

RANGE = "0x41-0x5A"
CODEPOINTS = list(range(0x41, 0x5B))
WAIT_S = 180.0  # a condition polled every 20 ms: generous for a loaded machine, free otherwise


def wait_for(condition: Any, what: str, timeout: float = WAIT_S, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the demo exited ({proc.returncode}) before {what}:\n{out[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def lease_record(folder: Path) -> dict[str, Any] | None:
    path = folder / "lease.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def demo_command(tmp_path: Path, base_url: str, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "flows" / "char_codes.py"), "--task_dir", str(tmp_path / "tasks"),
            "--client_base_url", base_url, "--no_wandb", "--char_ranges", RANGE, "--max_batch_requests", "3",
            "--max_remote_batches", "3", "--poll_interval_min_s", "0.05", "--poll_interval_max_s", "0.2", *extra]


def check_output(folder: Path) -> None:
    records = read_jsonl(folder / "char_codes_output.jsonl")
    assert sorted(r["codepoint"] for r in records) == CODEPOINTS  # all there, none twice


def test_demo_killed_mid_run_resumes_without_duplicates(prefect_server: PrefectServer, char_codes: ModuleType,
                                                         tmp_path: Path) -> None:
    """``python flows/char_codes.py`` SIGKILLed while batches are in flight, then run again: it finishes with every
    record once and no local batch created twice on the emulator."""
    folder = tmp_path / "tasks" / "char_codes"
    gate = threading.Event()  # batches stay in flight until the killed run is dead
    with emulator_for(char_codes.CharCodes, gate=gate) as emu:
        command = demo_command(tmp_path, emu.base_url)
        proc = subprocess.Popen(command, env=prefect_server.subprocess_env(), cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: emu.stats()["batches_created"] >= 2, "two batches were pushed", proc=proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        gate.set()
        before = newest_generation(folder)
        assert before > 0 and not (folder / "char_codes_output.jsonl").exists()

        # The killed run's lease has not expired, but its holder is dead (same host, pid gone): the next run takes
        # it over at once instead of waiting for it to expire.
        lease = lease_record(folder)
        assert lease is not None and not lease["released"] and lease["pid"] == proc.pid
        done = subprocess.run(command, env=prefect_server.subprocess_env(), cwd=tmp_path, text=True,
                              capture_output=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "char_codes: finished" in done.stdout
        check_output(folder)
        stats = emu.stats()
        state = open_store(str(folder)).load()
        assert not local_ids_pushed_twice(stats)
        batches = [k for k in state.sections if k.startswith("batch/")]
        assert stats["batches_created"] == len(stats["batches_by_local_id"]) == len(batches) == 9


def test_second_concurrent_run_is_refused_by_the_lease(prefect_server: PrefectServer, char_codes: ModuleType,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)
    folder = tmp_path / "tasks" / "char_codes"
    gate = threading.Event()  # the first run's batches complete only once the second runs were refused
    with emulator_for(char_codes.CharCodes, gate=gate) as emu:
        options = flow_options(tmp_path, emu, max_batch_requests=9)
        first: dict[str, Any] = {}

        def run_first() -> None:
            first["state"] = char_codes.char_codes_flow(options=options, params={"char_ranges": RANGE},
                                                        session_id="one", return_state=True)

        thread = threading.Thread(target=run_first, name="first-run")
        thread.start()
        try:
            wait_for(lambda: emu.stats()["batches_created"] >= 1, "the first run pushed a batch")
            # Through the flow: the run ends Completed, named Skipped, and names the lease.
            second = char_codes.char_codes_flow(options=options, params={"char_ranges": RANGE}, session_id="two",
                                                return_state=True)
            # Through the CLI: exit status 1 and the same explanation.
            argv = ["--task_dir", options["task_dir"], "--client_base_url", emu.base_url, "--no_wandb",
                    "--char_ranges", RANGE, "--max_batch_requests", "9"]
            code = cli.main(char_codes.CharCodes, argv)
        finally:
            gate.set()
            thread.join(timeout=120)
        assert second.is_completed() and second.name == "Skipped", second
        assert "lease" in (second.message or "") and "another run holds this task" in second.message
        stored = flow_run(second.state_details.flow_run_id).state
        assert (stored.type.value, stored.name) == ("COMPLETED", "Skipped")
        assert code == cli.EXIT_ERROR
        assert "another run holds this task" in capsys.readouterr().err

        assert first["state"].is_completed(), first["state"].message
        assert first["state"].result()["status"] == "finished"
        check_output(folder)
        state = open_store(str(folder)).load()  # loads and checks the whole manifest chain
        stats = emu.stats()
        assert not local_ids_pushed_twice(stats)
        assert stats["batches_created"] == len([k for k in state.sections if k.startswith("batch/")]) == 3
        assert lease_record(folder)["released"] is True
