"""Processes for the end-to-end deployment test: a Prefect server, workers, the emulator and moto S3.

Each is started by a fixture in its own session and stopped, with every process it spawned, when the fixture ends,
also when a test fails. Nothing here imports Prefect: the test talks to the server through its REST API and CLI,
exactly as a user would, so it does not depend on the Prefect settings of the test process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gbatch_flows.testing.docs import documented_commands, normalized
from gbatch_flows.testing.moto import MotoS3, moto_s3_server
from gbatch_flows.testing.ports import free_port, port_is_free

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENTS_README = REPO / "deployments" / "README.md"
PREFECT = [sys.executable, "-m", "prefect"]  # the CLI of the Prefect installed with these tests
DOC_PORT = 4200  # the server port deployments/README.md shows
DUMMY_KEY = "sk-test-dummy-deploy-e2e-7f3a"
START_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 120.0
RETRY_STATUSES = (429, 502, 503)
RETRY_ATTEMPTS = 6
RANGE = "0x41-0x5A"  # char_codes runs: the capital letters
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}  # flow-run state types


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
    """The test's environment without Prefect, AWS or OpenAI settings, plus ``extra`` (``prefect`` and ``python`` on
    PATH are this environment's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "OPENAI_"))}
    env.update(PYTHONUNBUFFERED="1", WANDB_MODE="disabled", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    env.update(extra)
    return env


@dataclass
class DocCommands:
    """The commands of deployments/README.md, as the test runs them: the server port is the README's (4200) when it
    is free here, else a free one put in its place; placeholders (`/path/to/...`, `sk-...`) get the test's values."""

    port: int
    commands: list[str]
    used: set[str] = field(default_factory=set)  # the commands the tests ran (normalized, as the README shows them)
    shown: dict[str, str] = field(default_factory=dict)  # command as run -> as the README shows it

    @classmethod
    def load(cls, port: int) -> DocCommands:
        return cls(port, documented_commands(DEPLOYMENTS_README))

    def get(self, start: str) -> list[str]:
        """The documented commands that start with ``start``, ready to run."""
        found = [c for c in self.commands if normalized(c).startswith(start)]
        assert found, f"deployments/README.md shows no command starting with {start!r}"
        ready = []
        for command in found:
            run = command.replace(f":{DOC_PORT}", f":{self.port}").replace(f"--port {DOC_PORT}", f"--port {self.port}")
            self.shown[run] = command
            ready.append(run)
        return ready

    def one(self, start: str) -> str:
        """The documented command that is ``start``, or else the only one that starts with it."""
        found = self.get(start)
        exact = [c for c in found if normalized(c) == start]
        (command,) = set(exact or found)
        self.used.add(normalized(self.shown[command]))
        return command

    def exports(self, **placeholders: str) -> dict[str, str]:
        """The README's `export NAME=value` lines; ``placeholders`` give the values of NAME=<placeholder>."""
        env: dict[str, str] = {}
        for command in self.get("export "):
            self.used.add(normalized(self.shown[command]))
            name, _, value = command.removeprefix("export ").partition("=")
            env[name] = placeholders.get(name, value)
        return env


def bash(command: str, env: dict[str, str], timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """A documented command, run as written with bash from the repository root."""
    done = subprocess.run(["bash", "-c", command], env=env, cwd=REPO, text=True, capture_output=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"$ {command}\nexit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


# --------------------------------------------------------------------------------------------------- fixtures


@dataclass
class PrefectApi:
    """A running Prefect server: its REST API, and the environment for CLI calls and workers against it."""

    url: str
    home: Path
    logs: Path
    docs: DocCommands

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(PREFECT_API_URL=self.url, PREFECT_HOME=str(self.home), **extra)

    def doc(self, start: str, timeout: float = 300.0, **extra: str) -> subprocess.CompletedProcess[str]:
        """Run the one deployments/README.md command that starts with ``start`` in the environment of the README's
        second shell (its PREFECT_* exports; GBATCH_REPO and the key belong to the worker's shell) + extra."""
        exports = {k: v for k, v in self.docs.exports().items() if k.startswith("PREFECT_")}
        return bash(self.docs.one(start), {**self.env(), **exports, **extra}, timeout)

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
    """deployments/README.md's ``prefect server start`` (on a free port if its port is taken here) with a new
    PREFECT_HOME; the scheduler service is off: the schedules of prefect.yaml are registered, but create no runs
    during the test."""
    with documented_port() as port:
        yield from _prefect_api(e2e_dir, port)


@contextlib.contextmanager
def documented_port() -> Iterator[int]:
    """The documented port for one test module at a time on this machine (pytest-xdist workers run modules side by
    side: a lock file decides which one gets it, the others take a free port), while the module runs."""
    lock_path = Path(tempfile.gettempdir()) / f"gbatch-tests-port-{DOC_PORT}.lock"
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield free_port()
            return
        try:
            yield DOC_PORT if port_is_free(DOC_PORT) else free_port()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _prefect_api(e2e_dir: Path, port: int) -> Iterator[PrefectApi]:
    docs = DocCommands.load(port)
    api = PrefectApi(url=docs.exports()["PREFECT_API_URL"], home=e2e_dir / "prefect-home", logs=e2e_dir, docs=docs)
    assert api.url == f"http://127.0.0.1:{docs.port}/api"
    env = clean_env(PREFECT_HOME=str(api.home), PREFECT_UI_ENABLED="false",
                    PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false", **docs.exports())
    command = docs.one("prefect server start")
    server = Service("prefect-server", ["bash", "-c", f"exec {command}"], env, e2e_dir)
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


@contextlib.contextmanager
def emulator_process(log_dir: Path, *flags: str) -> Iterator[EmulatorProcess]:
    """``python -m gbatch_flows.emulator`` with ``flags`` on a free port, answering like the demos (its default)
    while its gate file exists (tests/deploy/gated_responder.py); the gate is open at the start and at the end."""
    port = free_port()
    gate = log_dir / f"emulator-{port}-gate"
    env = clean_env(PYTHONPATH=f"{Path(__file__).parent}{os.pathsep}{REPO}", GBATCH_TEST_GATE=str(gate))
    command = [sys.executable, "-m", "gbatch_flows.emulator", "--port", str(port), "--responder",
               "*=gated_responder:answer", "--log-level", "warning", *flags]
    service = Service("emulator", command, env, log_dir)
    emu = EmulatorProcess(base_url=f"http://127.0.0.1:{port}/v1", gate=gate)
    emu.open_gate()
    try:
        wait_http(f"http://127.0.0.1:{port}/_emulator/stats", service)
        yield emu
    finally:
        emu.open_gate()
        service.stop()


@pytest.fixture(scope="module")
def emulator(e2e_dir: Path) -> Iterator[EmulatorProcess]:
    """The emulator of the deployment tests: batches done 0.2 s after creation (while the gate is open)."""
    with emulator_process(e2e_dir, "--batch-duration", "0.2") as emu:
        yield emu


@dataclass
class Workers:
    """Starts ``prefect worker start --pool local`` processes; every one is stopped at the end."""

    api: PrefectApi
    env: dict[str, str]
    log_dir: Path
    started: list[Service]

    def start(self, *args: str) -> Service:
        """deployments/README.md's ``prefect worker start --pool local`` (+ ``args``, e.g. ``--limit 1``)."""
        name = f"worker-{len(self.started) + 1}"
        command = " ".join([self.api.docs.one("prefect worker start"), *args])
        worker = Service(name, ["bash", "-c", f"exec {command}"], self.env, self.log_dir)
        self.started.append(worker)
        return worker


@pytest.fixture(scope="module")
def checkout(e2e_dir: Path) -> Path:
    """The worker's checkout (``GBATCH_REPO``): flows/ is this repository's, ``tasks/`` (the shipped task_dir) is
    new, so the runs with prefect.yaml's parameters write there and not into the repository."""
    folder = e2e_dir / "checkout"
    folder.mkdir()
    (folder / "flows").symlink_to(REPO / "flows", target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def workers(prefect_api: PrefectApi, s3: tuple[MotoS3, str], e2e_dir: Path, checkout: Path,
            emulator: EmulatorProcess) -> Iterator[Workers]:
    """Workers set up as deployments/README.md says (its `export` lines), their environment holding every secret:
    the (dummy) OpenAI key and the S3 credentials + endpoint.

    ``GBATCH_REPO`` tells prefect.yaml's pull step where the checkout is; ``OPENAI_BASE_URL`` points the runs that
    keep prefect.yaml's parameters (no ``client_base_url``) at the emulator instead of OpenAI.
    """
    moto, _ = s3
    env = {
        **prefect_api.env(),
        **prefect_api.docs.exports(GBATCH_REPO=str(checkout), OPENAI_API_KEY=DUMMY_KEY),
        "OPENAI_BASE_URL": emulator.base_url,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": moto.endpoint_url,
    }
    pool = Workers(prefect_api, env, e2e_dir, [])
    try:
        yield pool
    finally:
        for worker in pool.started:
            worker.stop(grace_s=5)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


# ------------------------------------------------------------------------------------ deployments and flow runs


@pytest.fixture(scope="module")
def deployments(prefect_api: PrefectApi) -> dict[str, dict[str, Any]]:
    """deployments/README.md's steps: create the `local` process pool, deploy everything in prefect.yaml."""
    prefect_api.doc("prefect work-pool create local --type process")
    prefect_api.doc("prefect --no-prompt deploy --all")
    return {d["name"]: d for d in prefect_api.post("/deployments/filter", {})}


def run_parameters(emulator: EmulatorProcess, task_dir: str, char_ranges: str = RANGE,
                   **options: Any) -> dict[str, Any]:
    """Parameters of one char_codes run: no secret in them (the key and the S3 credentials are in the worker's env)."""
    return {
        "options": {"task_dir": task_dir, "client_base_url": emulator.base_url, "no_wandb": True,
                    "poll_interval_min_s": 0.05, "poll_interval_max_s": 0.2, "max_session_cost": None, **options},
        "params": {"char_ranges": char_ranges},
    }


def trigger(api: PrefectApi, deployment: dict[str, Any], parameters: dict[str, Any]) -> str:
    run = api.post(f"/deployments/{deployment['id']}/create_flow_run", {"parameters": parameters})
    return str(run["id"])


def wait_state(api: PrefectApi, run_id: str, expected: str, workers: Workers,
               timeout: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = api.get(f"/flow_runs/{run_id}")
        state = run["state"]["type"] if run.get("state") else None
        if state == expected:
            return run
        if state in TERMINAL or time.monotonic() > deadline:
            logs = "\n".join(f"--- {w.name}\n{w.log_tail(3000)}" for w in workers.started)
            pytest.fail(f"flow run {run_id} is {state} ({run['state'].get('message')}), expected {expected}\n{logs}")
        time.sleep(0.25)
