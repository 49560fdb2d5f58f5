"""Fixtures of the reliability suite: scale (ci/full), forked CLI runs, moto S3, reference runs, figures."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.engine.fencing import CREATE_TIMEOUT_ENV, GONE_CONFIRM_ENV
from gbatch_flows.testing.moto import MotoS3

from .campaign import StageTimes, stage_times
from .harness import Forkserver, TaskDir, cli_args

SCALE_ENV = "GBATCH_RELIABILITY_SCALE"
BATCH_DURATION = 0.2  # emulator seconds from batch creation to completion


@dataclass(frozen=True)
class Scale:
    """How hard the suite pushes: ``ci`` (default, a few minutes) or ``full`` (by hand)."""

    name: str
    n_requests: int  # requests of the crash / SIGINT task
    kills_local: int
    kills_s3: int
    sigints: int
    fault_requests: int
    limit_examples: int


SCALES = {
    "ci": Scale("ci", n_requests=2000, kills_local=50, kills_s3=30, sigints=16, fault_requests=400,
                limit_examples=12),
    "full": Scale("full", n_requests=10_000, kills_local=200, kills_s3=200, sigints=60, fault_requests=3000,
                  limit_examples=120),
}


def scale_from_env() -> Scale:
    name = os.environ.get(SCALE_ENV, "ci").strip().lower() or "ci"
    if name not in SCALES:
        raise pytest.UsageError(f"{SCALE_ENV}={name!r}: use one of {', '.join(SCALES)}")
    return SCALES[name]


@pytest.fixture(scope="session")
def scale() -> Scale:
    return scale_from_env()


# ---------------------------------------------------------------- processes and servers


@pytest.fixture(autouse=True)
def short_create_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote create times out after 1 s and a 404 is confirmed 1 s later (defaults: 30 s, 60 s), so a create
    with an unknown outcome is retried after a second, not half a minute (forked runs get these too)."""
    monkeypatch.setenv(CREATE_TIMEOUT_ENV, "1")
    monkeypatch.setenv(GONE_CONFIRM_ENV, "1")



@pytest.fixture(scope="session")
def forkserver() -> Forkserver:
    return Forkserver()




def make_task_dir(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> TaskDir:
    if kind == "local":
        return TaskDir("local", str(tmp_path / "tasks"))
    server: MotoS3 = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return TaskDir("s3", server.url(bucket, f"tasks-{uuid.uuid4().hex[:10]}"), server.storage_options)


# ---------------------------------------------------------------- uninterrupted reference runs


@dataclass
class Reference:
    """What an uninterrupted run of the task gives, and how long its stages take (to aim the stops)."""

    output: bytes
    times: StageTimes


_REFERENCES: dict[tuple[str, int], Reference] = {}


def reference_run(forkserver: Forkserver, task_dir: TaskDir, n_requests: int, log: Path) -> Reference:
    """Run the task once without interruption (cached per backend and size)."""
    key = (task_dir.kind, n_requests)
    if key in _REFERENCES:
        return _REFERENCES[key]
    with run_emulator(EmulatorConfig(batch_duration=BATCH_DURATION)) as emu:
        argv = cli_args(task_dir.task_dir, emu.base_url, n_requests, task_dir.storage_options)
        first = forkserver.start(argv, log)
        assert first.finish(timeout=600) == 0, first.log_tail()
        again = forkserver.start(argv, log)
        assert again.finish() == 0, again.log_tail()
        ref = Reference(task_dir.output(), stage_times(first, again, task_dir.state()))
    for (kind, n), other in _REFERENCES.items():  # the backend never changes the result
        assert n != n_requests or other.output == ref.output, f"{kind} and {task_dir.kind} outputs differ"
    _REFERENCES[key] = ref
    return ref
