"""Fixtures for the docs tests: a working folder that looks like a checkout, the environment, services."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent)  # `python`, `prefect`, `ruff` of this environment come first on PATH


def doc_env(**extra: str) -> dict[str, str]:
    """This environment without OpenAI, Prefect or AWS settings (no key: the demos use the emulator), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PREFECT_", "AWS_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1", WANDB_MODE="disabled",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    env.update(extra)
    return env


def checkout_copy(folder: Path) -> Path:
    """A folder where the README's relative paths work (flows/ links to this checkout's) and ./tasks is new."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flows").symlink_to(REPO / "flows", target_is_directory=True)
    return folder


def run(command: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run one documented command as written, with bash; fail the test with its output if it fails."""
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"$ {command}\nexit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


class Background:
    """A documented long-running command (an emulator, a server) started with bash, stopped at the end.

    Its output is read all along (a full pipe would block it) and kept in `lines`.
    """

    def __init__(self, command: str, cwd: Path, env: dict[str, str]):
        self.command = command
        self.lines: list[str] = []
        self.proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_line(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in self.lines if text in line), None)
            if found:
                return found
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        pytest.fail(f"$ {self.command} did not print {text!r} ({self.proc.poll()=}):\n{''.join(self.lines)[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def background(command: str, cwd: Path, env: dict[str, str]) -> Iterator[Background]:
    service = Background(command, cwd, env)
    try:
        yield service
    finally:
        service.stop()
