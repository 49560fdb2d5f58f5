"""Secrets: a run with a distinctive dummy API key (given in the environment, or on the command line) leaves it in
no file of the task folder, no log line, no W&B offline file and nothing Prefect stores (database: parameters,
artifacts, logs; result storage). The emulator requires that key, so the runs really used it.

Both runs are real command lines in fresh interpreters; the Prefect one runs the flow in ephemeral mode (its
temporary server keeps everything in PREFECT_HOME, which is searched byte by byte)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator

from .harness import TaskDir, assert_complete_output, cli_args

CHILD = Path(__file__).with_name("child.py")
N_REQUESTS = 20


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


FLOW_ARGV_LEAK = ("engine bug: through the Prefect flow the options are rebuilt from public_dict() (no key), so "
                  "WandbMonitor._secret_on_command_line() cannot see the key given by --openai_api_key and W&B "
                  "records sys.argv, key included, in its run metadata; see tests/reliability/README.md")


@pytest.mark.parametrize("mode", [
    "key in the environment, no Prefect, W&B",
    "key on the command line, no Prefect, W&B",
    pytest.param("key on the command line, Prefect flow", marks=pytest.mark.slow),  # a temporary Prefect server
])
def test_api_key_is_never_written_anywhere(mode: str, tmp_path: Path, figures: dict) -> None:
    secret = uuid.uuid4().hex + uuid.uuid4().hex
    key = f"sk-gbatch-canary-{secret}"
    needle = secret[8:40].encode()  # a distinctive inner part: also catches a key cut or re-prefixed
    home = tmp_path / "home"
    task_dir = TaskDir("local", str(tmp_path / "tasks"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PREFECT_", "WANDB_"))}
    env.update(
        HOME=str(home), PREFECT_HOME=str(home / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300",  # its temporary server, on a loaded machine
        WANDB_MODE="offline", WANDB_DIR=str(home / "wandb"), WANDB_CACHE_DIR=str(home / "wandb-cache"),
        WANDB_CONFIG_DIR=str(home / "wandb-config"), WANDB_DATA_DIR=str(home / "wandb-data"), WANDB_SILENT="true",
    )
    (home / "wandb").mkdir(parents=True)
    prefect = "Prefect" in mode and "no Prefect" not in mode
    wandb = "W&B" in mode
    with run_emulator(EmulatorConfig(batch_duration=0.05, api_key=key)) as emu:
        argv = [a for a in cli_args(task_dir.task_dir, emu.base_url, N_REQUESTS, log_level="DEBUG")
                if (wandb is False or a != "--no_wandb") and (prefect is False or a != "--no_prefect")]
        if "command line" in mode:
            argv += ["--openai_api_key", key]
        else:
            env["OPENAI_API_KEY"] = key
        log = tmp_path / "run.log"
        proc = subprocess.run([sys.executable, str(CHILD), str(log), "--", *argv], env=env, capture_output=True,
                              timeout=300)
        served = emu.stats()["responses_by_status"]
    console = proc.stdout + proc.stderr + log.read_bytes()
    assert proc.returncode == 0, console[-3000:].decode(errors="replace")
    assert served.get("200", 0) > 0 and "401" not in served, served  # the key reached the API, and only it
    assert_complete_output(task_dir.output(), N_REQUESTS)
    # what was searched really holds the run's data (so a leaked key would have been found there)
    if wandb:
        wandb_runs = list((home / "wandb").rglob("*.wandb"))
        assert wandb_runs and any(b"max_batch_requests" in p.read_bytes() for p in wandb_runs), "no W&B run"
    if prefect:
        stored = b"".join(p.read_bytes() for p in (home / "prefect").glob("prefect.db*"))
        assert b"rel-progress" in stored and b"max_batch_requests" in stored, "no flow run stored by Prefect"
    leaks = _files_containing(tmp_path, needle)
    assert needle not in console, "the key appears in the console output or the log"
    assert not leaks, f"the key appears in {leaks}"
    searched = sum(1 for p in tmp_path.rglob("*") if p.is_file())
    figures.setdefault("secrets", {})[mode] = {"files_searched": searched, "log_lines": console.count(b"\n")}



def test_wandb_metadata_is_off_when_the_flow_got_the_key_on_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python flows/char_codes.py --openai_api_key sk-...` (Prefect is the default): run_flow() moves the key to
    OPENAI_API_KEY and the flow gets Options rebuilt from public_dict(), without it. W&B records sys.argv in its
    metadata unless the monitor sees the key there, so it must look at the key the run actually uses.
    (End to end, with W&B offline, the key was found in the run's .wandb file.)"""
    from pydantic import SecretStr

    from gbatch_flows.monitor import WandbMonitor
    from gbatch_flows.options import Options

    key = "sk-gbatch-canary-" + uuid.uuid4().hex
    given = Options(openai_api_key=SecretStr(key))
    in_flow = Options.model_validate(given.public_dict())  # what gbatch_flows.flow passes to the flow
    monkeypatch.setattr(sys, "argv", ["flows/char_codes.py", "--openai_api_key", key])
    monkeypatch.setenv("OPENAI_API_KEY", key)  # where run_flow() puts it
    assert WandbMonitor(in_flow)._secret_on_command_line()
