"""Fixtures for the Prefect flow tests: ONE Prefect test server per session, the demos, an emulator per test.

The Prefect test harness costs ~15 s to start, so every test of this folder shares it (session fixture). Its home
and result storage live in a temporary folder; analytics are off. Flows run in this process against it; demo
subprocesses get its API URL (``PrefectServer.subprocess_env``) so they do not start an ephemeral server each.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gbatch_flows.emulator import EmulatorConfig, RunningEmulator, run_emulator
from gbatch_flows.store import open_store

REPO = Path(__file__).resolve().parents[2]
DUMMY_KEY = "sk-test-dummy-flow"
GATE_TIMEOUT_S = 120.0


def load_demo(name: str) -> ModuleType:
    """Import ``flows/<name>.py`` (the demos are scripts, not a package) as module ``gbatch_demo_<name>``."""
    module_name = f"gbatch_demo_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO / "flows" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # pydantic resolves the models' annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class PrefectServer:
    """The session's Prefect test server and the folders it uses."""

    api_url: str
    home: Path
    results_dir: Path

    def subprocess_env(self, **extra: str) -> dict[str, str]:
        """Environment for a demo subprocess: this server, a dummy OpenAI key, no analytics, no wandb."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_HOME=str(self.home),
            PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(self.results_dir),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            OPENAI_API_KEY=DUMMY_KEY,
            WANDB_MODE="disabled",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    base = tmp_path_factory.mktemp("prefect")
    home, results = base / "home", base / "results"
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(results),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_HOME,
            PREFECT_RESULTS_LOCAL_STORAGE_PATH,
            PREFECT_SERVER_ANALYTICS_ENABLED,
            temporary_settings,
        )
        from prefect.testing.utilities import prefect_test_harness

        # a generous start-up timeout: four test workers on two cores start servers and flows side by side
        updates = {PREFECT_HOME: home, PREFECT_RESULTS_LOCAL_STORAGE_PATH: results,
                   PREFECT_SERVER_ANALYTICS_ENABLED: False}
        with temporary_settings(updates=updates), prefect_test_harness(server_startup_timeout=240):
            yield PrefectServer(api_url=str(PREFECT_API_URL.value()), home=home, results_dir=results)


@pytest.fixture(autouse=True)
def _dummy_openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flows read the key from the environment (never from parameters); a dummy one, never a real one."""
    monkeypatch.setenv("OPENAI_API_KEY", DUMMY_KEY)
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def char_codes() -> ModuleType:
    return load_demo("char_codes")


@pytest.fixture(scope="session")
def utterance_emotion() -> ModuleType:
    return load_demo("utterance_emotion")


@contextlib.contextmanager
def emulator_for(task_cls: type, batch_duration: float = 0.05,
                 gate: threading.Event | None = None) -> Iterator[RunningEmulator]:
    """The emulator in a thread of this process, answering like the demo's own emulator responder.

    With ``gate``, no batch request is answered (so no batch completes) until the test sets the event: a run
    stays in flight exactly as long as the test needs, without timing guesses.
    """
    responders = task_cls().emulator_responders()
    if gate is not None:
        responders = {model: _gated(answer, gate) for model, answer in responders.items()}
    with run_emulator(EmulatorConfig(batch_duration=batch_duration, responders=responders)) as emu:
        try:
            yield emu
        finally:
            if gate is not None:
                gate.set()  # let the emulator's batch threads end


def _gated(answer: Any, gate: threading.Event) -> Any:
    def gated(body: dict[str, Any], ctx: Any) -> Any:
        if not gate.wait(timeout=GATE_TIMEOUT_S):
            raise RuntimeError("test gate never opened")
        return answer(body, ctx)

    return gated


def flow_options(tmp_path: Path, emu: RunningEmulator, **overrides: Any) -> dict[str, Any]:
    """The ``options`` flow parameter for a quick run against ``emu`` (no key in it: the key is in the env)."""
    options: dict[str, Any] = {
        "task_dir": str(tmp_path / "tasks"),
        "client_base_url": emu.base_url,
        "emulator": "never",
        "no_wandb": True,
        "poll_interval_min_s": 0.05,
        "poll_interval_max_s": 0.2,
        "max_poll_wait_s": 60,
        "max_session_cost": None,
    }
    options.update(overrides)
    return options


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def newest_generation(task_folder: Path) -> int:
    return open_store(str(task_folder)).load().generation


def local_ids_pushed_twice(emu_stats: dict[str, Any]) -> dict[str, int]:
    """Local batch ids the emulator saw created more than once (must stay empty)."""
    return {k: n for k, n in emu_stats["batches_by_local_id"].items() if n != 1}


# --------------------------------------------------------------------------- reading the Prefect server


def flow_run(flow_run_id: Any) -> Any:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def task_runs(flow_run_id: Any) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(runs, key=lambda r: r.expected_start_time or r.start_time)


def artifacts(flow_run_id: Any) -> dict[str, Any]:
    """The flow run's artifacts by key (the progress artifact holds its latest value)."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found}
