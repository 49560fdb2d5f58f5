"""Issue 15's fault matrix: every stage x every fault -> the run finishes, or exits != 0 with one line (no traceback);
the state loads; the next run, with the fault gone, ends with the same output as an undisturbed run.

The faults come from a proxy in front of the emulator (``fault_proxy.py``), from a closed port (connection refused),
from a seam on the local disk (disk full) and from the proxy in front of the S3 emulator (S3 unreachable). Time is
scaled so that CI stays fast: ``--max_outage_s 1`` stands for the default 180 s; an outage of "1 s" lasts 0.05 s, one
of "30 s" lasts 0.4 s (inside the bound: waited out), one of "3 min" lasts until the fault is cleared (beyond the bound:
the run stops with the line naming --max_outage_s). The openai client's own retries are turned off here, so that the
matrix tests the engine's rule, not the client's. Runs are in-process (``--no_prefect``). Table: README.md.
"""

from __future__ import annotations

import errno
import functools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gbatch_flows import api, cli
from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.engine.state import TaskState
from gbatch_flows.store import open_store
from gbatch_flows.store.local import LocalBackend

from .fault_proxy import Fault, FaultProxy, fault_proxy
from .harness import DUMMY_KEY, cli_args
from .tasks import RelTask

N = 10
BOUND_S = 1.0
API_STAGES = ("upload", "create", "poll", "download", "direct")
OUTAGE = "--max_outage_s"

#: fault -> how it is injected: (proxy kind, status, window in s (None = until cleared), delay)
API_FAULTS: dict[str, tuple[str, int, float | None, float]] = {
    "outage 1s": ("drop", 0, 0.05, 0.0),
    "outage 30s": ("drop", 0, 0.4, 0.0),
    "outage 3min": ("drop", 0, None, 0.0),
    "401": ("status", 401, None, 0.0),
    "403": ("status", 403, None, 0.0),
    "404 endpoint": ("status", 404, None, 0.0),
    "429": ("status", 429, 0.4, 0.0),
    "500": ("status", 500, 0.4, 0.0),
    "slow answer": ("slow", 0, None, 0.2),
}

FINISHES = "finishes"


def expected(stage: str, fault: str) -> str:
    """``finishes``, or a substring of the one line the run stops with."""
    if fault == "outage 3min":
        return OUTAGE
    if fault == "401":
        return "refused the API key"
    if fault == "403":
        return "permission denied"
    if fault == "404 endpoint":
        return {"upload": "has no Batch API", "create": "has no Batch API", "poll": FINISHES,
                "download": "without results", "direct": "has no /v1/chat/completions endpoint"}[stage]
    return FINISHES


@dataclass
class Cell:
    stage: str
    fault: str
    expect: str


CELLS = [Cell(stage, fault, expected(stage, fault)) for stage in API_STAGES for fault in API_FAULTS]
CELLS += [
    Cell("any", "connection refused", OUTAGE),
    Cell("store (local)", "disk full", "no space left"),
    Cell("store (s3)", "S3 unreachable 1s", FINISHES),
    Cell("store (s3)", "S3 unreachable 3min", OUTAGE),
]


@pytest.fixture(scope="module")
def emulator() -> Iterator[Any]:
    with run_emulator(EmulatorConfig(batch_duration=0.05)) as emu:
        yield emu


@pytest.fixture(scope="module")
def api_proxy(emulator: Any) -> Iterator[FaultProxy]:
    with fault_proxy(emulator.base_url.removesuffix("/v1")) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def no_client_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "make_client", functools.partial(api.make_client, max_retries=0))


_REFERENCE: dict[bool, bytes] = {}


def _output(task_dir: str, storage_options: dict | None = None) -> bytes:
    store = open_store(f"{task_dir}/{RelTask.name}", storage_options=storage_options)
    return store.read_text(f"{RelTask.name}_output.jsonl").encode()


def _argv(task_dir: str, base_url: str, direct: bool, storage_options: dict | None = None) -> list[str]:
    return cli_args(task_dir, base_url, N, storage_options, openai_api_key=DUMMY_KEY, max_batch_requests=5,
                    max_outage_s=BOUND_S, force_direct=direct, max_session_cost="none")


def reference(emulator: Any, tmp_root: Path, direct: bool) -> bytes:
    if direct not in _REFERENCE:
        task_dir = str(tmp_root / f"reference-{direct}")
        assert cli.main(RelTask, _argv(task_dir, emulator.base_url, direct)) == 0
        _REFERENCE[direct] = _output(task_dir)
    return _REFERENCE[direct]


def check_run(code: int, text: str, expect: str) -> None:
    assert "Traceback" not in text, text[-3000:]
    if expect == FINISHES:
        assert code == 0, text[-3000:]
        return
    assert code != 0, text[-3000:]
    lines = [line for line in text.splitlines() if line.startswith(("error: ", f"{RelTask.name}: error: "))]
    assert len(lines) == 1 and expect in lines[0], text[-3000:]


def check_state(task_dir: str, storage_options: dict | None = None) -> None:
    TaskState.from_manifest(open_store(f"{task_dir}/{RelTask.name}", storage_options=storage_options).load())


PARAMS = [pytest.param(c, id=f"{c.stage}-{c.fault}") for c in CELLS]


@pytest.mark.parametrize("cell", PARAMS)
def test_fault_matrix(cell: Cell, emulator: Any, api_proxy: FaultProxy, tmp_path: Path, capsys: Any,
                      monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, figures: dict) -> None:
    direct = cell.stage == "direct"
    ref = reference(emulator, tmp_path.parent, direct)
    capsys.readouterr()
    task_dir, storage, base_url = str(tmp_path / "tasks"), None, api_proxy.url + "/v1"
    s3_proxy = None
    api_proxy.clear()
    if cell.stage in API_STAGES:
        kind, status, window, delay = API_FAULTS[cell.fault]
        until = None if window is None else time.monotonic() + window
        api_proxy.add(Fault(cell.stage, kind, status=status, delay_s=delay, until=until))
    elif cell.fault == "connection refused":
        base_url = "http://127.0.0.1:9/v1"
    elif cell.fault == "disk full":
        real, calls = LocalBackend.write_stream, {"n": 0}

        def full(self: LocalBackend, path: str, chunks: Any) -> tuple[int, str]:
            calls["n"] += 1
            if calls["n"] > 8 and path != "lease.json":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self._full(path)))
            return real(self, path, chunks)

        monkeypatch.setattr(LocalBackend, "write_stream", full)
    else:
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        s3_proxy = FaultProxy(server.endpoint_url)
        storage = {**server.storage_options, "client_kwargs": {**server.storage_options["client_kwargs"],
                                                                "endpoint_url": s3_proxy.url},
                   "config_kwargs": {"retries": {"max_attempts": 1}}}  # botocore's retries off: scaled time
        task_dir = server.url(bucket, f"matrix-{tmp_path.name}")
    try:
        if s3_proxy is not None:
            window = 0.4 if cell.fault.endswith("1s") else None
            s3_proxy.add(Fault("any", "drop", until=None if window is None else time.monotonic() + window))
        code = cli.main(RelTask, _argv(task_dir, base_url, direct, storage))
        captured = capsys.readouterr()
        check_run(code, captured.err + captured.out, cell.expect)
        # the fault is gone: the state loads and the next run ends like an undisturbed one
        api_proxy.clear()
        monkeypatch.undo()
        monkeypatch.setattr(api, "make_client", functools.partial(api.make_client, max_retries=0))
        if s3_proxy is not None:
            s3_proxy.clear()
        check_state(task_dir, storage)
        again = cli.main(RelTask, _argv(task_dir, api_proxy.url + "/v1", direct, storage))
        captured = capsys.readouterr()
        assert again == 0 and "Traceback" not in captured.err, captured.err[-3000:]
        assert _output(task_dir, storage) == ref, "the output differs from an undisturbed run's"
    finally:
        if s3_proxy is not None:
            s3_proxy.close()
    figures.setdefault("fault_matrix", {"cells": 0})
    figures["fault_matrix"]["cells"] += 1
