"""Fixtures of the reliability suite: scale (ci/full), forked CLI runs, moto S3, reference runs, figures."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.testing.moto import MotoS3, moto_s3_server

from .harness import Forkserver, TaskDir, cli_args

SCALE_ENV = "GBATCH_RELIABILITY_SCALE"
FIGURES_ENV = "GBATCH_RELIABILITY_FIGURES"  # optional: append the figures of this run to this JSON-lines file
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
    "ci": Scale("ci", n_requests=2000, kills_local=50, kills_s3=20, sigints=16, fault_requests=400,
                limit_examples=12),
    "full": Scale("full", n_requests=10_000, kills_local=200, kills_s3=200, sigints=60, fault_requests=3000,
                  limit_examples=120),
}


@pytest.fixture(scope="session")
def scale() -> Scale:
    name = os.environ.get(SCALE_ENV, "ci").strip().lower() or "ci"
    if name not in SCALES:
        raise pytest.UsageError(f"{SCALE_ENV}={name!r}: use one of {', '.join(SCALES)}")
    return SCALES[name]


# ---------------------------------------------------------------- figures (printed at the end of the session)

_FIGURES: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="session")
def figures() -> dict[str, dict[str, Any]]:
    """Tests record what they measured here (kills survived, faults injected...); shown after the run."""
    return _FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name, values in _FIGURES.items():
        terminalreporter.write_line(f"{name}: {json.dumps(values, sort_keys=True, default=str)}")
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": time.time(), "figures": _FIGURES}, default=str) + "\n")


# ---------------------------------------------------------------- processes and servers


@pytest.fixture(scope="session")
def forkserver() -> Forkserver:
    return Forkserver()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3]:
    with moto_s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3_bucket(s3_server: MotoS3) -> str:
    return s3_server.create_bucket()


def make_task_dir(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> TaskDir:
    if kind == "local":
        return TaskDir("local", str(tmp_path / "tasks"))
    server: MotoS3 = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return TaskDir("s3", server.url(bucket, f"tasks-{uuid.uuid4().hex[:10]}"), server.storage_options)


@pytest.fixture(params=["local", "s3"])
def task_dir(request: pytest.FixtureRequest, tmp_path: Path) -> TaskDir:
    """A fresh --task_dir on the local disk and on S3 (moto)."""
    return make_task_dir(request.param, request, tmp_path)


# ---------------------------------------------------------------- uninterrupted reference runs


@dataclass
class Reference:
    """What an uninterrupted run of the task gives, and how long its parts take (to aim the kills)."""

    output: bytes
    commits: int
    batches: int
    requests_sent: int  # requests over all batches (retries and follow-ups included)
    generate_s: float  # from the start of the run to the commit that completes generation
    run_s: float
    finished_run_s: float  # a run on the finished task (it only writes the output again)
    stats: dict[str, Any] = field(default_factory=dict)


_REFERENCES: dict[tuple[str, int], Reference] = {}


def reference_run(forkserver: Forkserver, task_dir: TaskDir, n_requests: int, log: Path) -> Reference:
    key = (task_dir.kind, n_requests)
    if key in _REFERENCES:
        return _REFERENCES[key]
    with run_emulator(EmulatorConfig(batch_duration=BATCH_DURATION)) as emu:
        argv = cli_args(task_dir.task_dir, emu.base_url, n_requests, task_dir.storage_options)
        run = forkserver.start(argv, log)
        code = run.finish(timeout=600)
        assert code == 0, run.log_tail()
        start = run.markers[0].t
        generated = next(m for m in run.commits() if "(done)" in m.text)
        state = task_dir.state()
        again = forkserver.start(argv, log)
        assert again.finish() == 0, again.log_tail()
        ref = Reference(
            output=task_dir.output(), commits=len(run.commits()), batches=len(state.batches),
            requests_sent=sum(b.requests for b in state.batches.values()), generate_s=generated.t - start,
            run_s=run.markers[-1].t - start, finished_run_s=again.markers[-1].t - again.markers[0].t,
            stats=emu.stats(),
        )
    _REFERENCES[key] = ref
    return ref
