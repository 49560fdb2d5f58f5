"""Fixtures for engine tests: a small task, options, the in-process emulator and an engine factory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.engine.context import Engine
from gbatch_flows.engine.protocol import Processed, Result
from gbatch_flows.launch import open_engine, prepare
from gbatch_flows.options import Options
from gbatch_flows.task import Task

DUMMY_KEY = "sk-test-dummy-engine"


class EchoTask(Task):
    """One short chat request per item; the output record echoes the answer."""

    name = "echo"
    default_meta = {**Task.default_meta, "model": "gpt-4o-mini", "max_completion_tokens": 16}

    def __init__(self, n: int = 20, invalid_keys: frozenset[str] = frozenset()):
        super().__init__()
        self.n = n
        self.invalid_keys = invalid_keys  # keys whose answers the task rejects (asks for a retry)

    def generate_requests(self, meta: dict[str, Any]):
        for i in range(self.n):
            yield self.chat_request(f"k{i:06d}", [{"role": "user", "content": f"Say something about item {i}."}], meta)

    def process_result(self, result: Result, meta: dict[str, Any]) -> Processed:
        if result.request.key in self.invalid_keys:
            return Processed(retry="rejected by the test task")
        return Processed(records=[{"key": result.request.key, "answer": self.contents(result)[0]}])

    def process_failure(self, request, reason, meta):
        return [{"key": request.key, "failed": reason}]


def make_options(tmp_path, **overrides: Any) -> Options:
    base: dict[str, Any] = {
        "task_dir": str(tmp_path / "tasks"), "no_wandb": True, "poll_interval_min_s": 0.02, "poll_interval_max_s": 0.1,
        "max_poll_wait_s": 60, "emulator": "never", "max_session_cost": None,
    }
    base.update(overrides)
    return Options(**base)


@pytest.fixture
def emulator() -> Iterator[Any]:
    with run_emulator(EmulatorConfig(batch_duration=0.05)) as emu:
        yield emu


@contextlib.contextmanager
def engine_for(task: Task, options: Options, emu: Any, session_id: str = "s1") -> Iterator[Engine]:
    with open_engine(task, options, session_id, base_url=emu.base_url, api_key=DUMMY_KEY) as engine:
        prepare(engine, task)
        yield engine
