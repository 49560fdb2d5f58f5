"""Processes for the end-to-end deployment test: a Prefect server, workers, the emulator and moto S3.

Each is started by a fixture in its own session and stopped, with every process it spawned, when the fixture ends,
also when a test fails. Nothing here imports Prefect: the test talks to the server through its REST API and CLI,
exactly as a user would, so it does not depend on the Prefect settings of the test process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gbatch_flows.testing.moto import MotoS3, moto_s3_server

REPO = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]  # the CLI of the Prefect installed with these tests
DUMMY_KEY = "sk-test-dummy-deploy-e2e-7f3a"
START_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 120.0
RETRY_STATUSES = (429, 502, 503)
RETRY_ATTEMPTS = 6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def is_running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


class Service:
    """A subprocess in its own session, logging to a file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path, cwd: Path = REPO):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill(self) -> list[int]:
        """SIGKILL the process and everything it started (a machine losing power, as far as they can tell)."""
        tree = process_tree(self.proc.pid)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30  # SIGKILL is asynchronous: wait until every process is gone
        while any(is_running(pid) for pid in tree):
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of {self.name} survived SIGKILL: {tree}")
            time.sleep(0.02)
        return tree

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            tree = process_tree(self.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
            for pid in tree:
                if is_running(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        self._log.close()


def wait_http(url: str, service: Service, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if service.proc.poll() is not None:
            pytest.fail(f"{service.name} exited ({service.proc.returncode}):\n{service.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"{service.name} did not answer {url} in {timeout:.0f} s:\n{service.log_tail()}")
        time.sleep(0.1)


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without Prefect, AWS or OpenAI settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "OPENAI_"))}
    env.update(PYTHONUNBUFFERED="1", WANDB_MODE="disabled", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------------------- fixtures


@dataclass
class PrefectApi:
    """A running Prefect server: its REST API, and the environment for CLI calls and workers against it."""

    url: str
    home: Path
    logs: Path

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(PREFECT_API_URL=self.url, PREFECT_HOME=str(self.home), **extra)

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*PREFECT, "--no-prompt", *args], env=self.env(), cwd=REPO, text=True,
                              capture_output=True, timeout=timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def get(self, path: str) -> Any:
        return self._call("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        """One REST call; 429/502/503 (a busy SQLite server) are retried with back-off, as Prefect's client does."""
        for attempt in range(RETRY_ATTEMPTS):
            response = httpx.request(method, f"{self.url}{path}", json=body, timeout=30)
            if response.status_code not in RETRY_STATUSES or attempt == RETRY_ATTEMPTS - 1:
                break
            time.sleep(0.5 * 2**attempt)
        response.raise_for_status()
        return response.json() if response.content else None


@pytest.fixture(scope="module")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deploy-e2e")


@pytest.fixture(scope="module")
def prefect_api(e2e_dir: Path) -> Iterator[PrefectApi]:
    """``prefect server start`` on a free port with a new PREFECT_HOME (the scheduler service off: the schedules
    of prefect.yaml are registered, but create no runs during the test)."""
    port = free_port()
    api = PrefectApi(url=f"http://127.0.0.1:{port}/api", home=e2e_dir / "prefect-home", logs=e2e_dir)
    env = clean_env(PREFECT_HOME=str(api.home), PREFECT_UI_ENABLED="false",
                    PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false")
    server = Service("prefect-server", [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                     env, e2e_dir)
    try:
        wait_http(f"{api.url}/health", server)
        yield api
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[MotoS3, str]]:
    with moto_s3_server() as server:
        yield server, server.create_bucket()


@dataclass
class EmulatorProcess:
    base_url: str
    gate: Path

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.base_url.removesuffix("/v1") + "/_emulator/stats", timeout=10).json()

    def open_gate(self) -> None:
        self.gate.touch()

    def close_gate(self) -> None:
        self.gate.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def emulator(e2e_dir: Path) -> Iterator[EmulatorProcess]:
    """``python -m gbatch_flows.emulator`` answering like the char_codes demo, while its gate file exists."""
    port = free_port()
    gate = e2e_dir / "emulator-gate"
    env = clean_env(PYTHONPATH=str(Path(__file__).parent), GBATCH_TEST_GATE=str(gate))
    command = [sys.executable, "-m", "gbatch_flows.emulator", "--port", str(port), "--batch-duration", "0.2",
               "--responder", "*=gated_responder:answer", "--log-level", "warning"]
    service = Service("emulator", command, env, e2e_dir)
    emu = EmulatorProcess(base_url=f"http://127.0.0.1:{port}/v1", gate=gate)
    emu.open_gate()
    try:
        wait_http(f"http://127.0.0.1:{port}/_emulator/stats", service)
        yield emu
    finally:
        emu.open_gate()
        service.stop()


@dataclass
class Workers:
    """Starts ``prefect worker start --pool local`` processes; every one is stopped at the end."""

    api: PrefectApi
    env: dict[str, str]
    log_dir: Path
    started: list[Service]

    def start(self) -> Service:
        name = f"worker-{len(self.started) + 1}"
        worker = Service(name, [*PREFECT, "worker", "start", "--pool", "local", "--name", name], self.env,
                         self.log_dir)
        self.started.append(worker)
        return worker


@pytest.fixture(scope="module")
def workers(prefect_api: PrefectApi, s3: tuple[MotoS3, str], e2e_dir: Path) -> Iterator[Workers]:
    """Workers whose environment holds every secret: the (dummy) OpenAI key and the S3 credentials + endpoint.

    ``GBATCH_REPO`` tells prefect.yaml's pull step where the checkout is.
    """
    moto, _ = s3
    env = prefect_api.env(
        GBATCH_REPO=str(REPO),
        PREFECT_WORKER_QUERY_SECONDS="1",
        OPENAI_API_KEY=DUMMY_KEY,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL_S3=moto.endpoint_url,
    )
    pool = Workers(prefect_api, env, e2e_dir, [])
    try:
        yield pool
    finally:
        for worker in pool.started:
            worker.stop(grace_s=5)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
