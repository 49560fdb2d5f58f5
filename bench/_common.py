"""Shared pieces of the bench scripts (pipeline, direct, resume).

- ``BenchChars``: a task with char_codes-sized requests (system + user message, the ``CharInfo`` json_schema response
  format of ``flows/char_codes.py``, ``max_completion_tokens`` 100) for any number of samples.
- ``EmulatorProcess``: the emulator in its own process (``python -m gbatch_flows.emulator``), so that its CPU time is
  measured apart from the engine's (``/proc/<pid>/stat``).
- ``CountingBackend``: a store backend proxy counting the bytes read and written, installed by patching
  ``gbatch_flows.launch.open_task_store`` (the engine itself is untouched).
- ``StageTimer``: wall time and calls of each stage function the runner calls (patched in
  ``gbatch_flows.engine.runner``; behaviour unchanged).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flows.char_codes import SYSTEM, CharInfo, user_prompt  # noqa: E402
from gbatch_flows import launch  # noqa: E402
from gbatch_flows.engine import runner as runner_module  # noqa: E402
from gbatch_flows.options import Options  # noqa: E402
from gbatch_flows.store import Store, open_store  # noqa: E402
from gbatch_flows.task import Processed, ResponseInvalid, Result, Task  # noqa: E402

MB = 1_000_000
DUMMY_KEY = "sk-bench-dummy"


# --------------------------------------------------------------------------------------------------- the bench task


class BenchParams(BaseModel):
    n: int = Field(1000, ge=1, description="number of samples (one request each)")
    per_call_schema: bool = Field(False, description="build response_format per request (Task.chat_request with "
                                  "response_model=...), as flows/char_codes.py does, instead of once")


def printable_points(limit: int = 0x30000) -> list[int]:
    return [cp for cp in range(0x21, limit) if chr(cp).isprintable() and not chr(cp).isspace()]


class BenchChars(Task):
    """``n`` char_codes-sized requests (code points cycled); the record is the parsed ``CharInfo``."""

    name = "bench_chars"
    default_meta = {**Task.default_meta, "model": "gpt-4o-mini", "max_completion_tokens": 100, "temperature": 0.2}
    Params = BenchParams

    def generate_requests(self, meta: dict[str, Any]):
        points = printable_points()
        from openai.lib._parsing._completions import type_to_response_format_param

        response_format = type_to_response_format_param(CharInfo)  # the same dict chat_request builds per call
        per_call = bool(meta.get("per_call_schema"))
        for i in range(int(meta["n"])):
            char = chr(points[i % len(points)])
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_prompt(char)}]
            if per_call:
                yield self.chat_request(f"c{i:07d}", messages, meta, response_model=CharInfo)
            else:
                yield self.chat_request(f"c{i:07d}", messages, meta, response_format=response_format)

    def process_result(self, result: Result, meta: dict[str, Any]) -> Processed:
        info = self.parse(self.contents(result)[0], CharInfo)
        if not info.description:
            raise ResponseInvalid("empty description")
        return Processed(records=[{"key": result.request.key, **info.model_dump(mode="json")}])


def bench_options(task_dir: str | Path, **overrides: Any) -> Options:
    """Options of a bench run: big batches, remote limits out of the way, no session cost limit, no W&B."""
    base: dict[str, Any] = {
        "task_dir": str(task_dir), "no_wandb": True, "no_prefect": True, "emulator": "never",
        "max_session_cost": None, "max_batch_requests": 50_000, "max_batch_mb": 200, "max_batch_ktokens": 1e9,
        "max_batch_cost": 1e9, "max_remote_batches": 1000, "max_remote_requests": 100_000_000, "max_remote_mb": 1e9,
        "max_remote_ktokens": 1e12, "max_remote_cost": 1e9, "poll_interval_min_s": 0.01,
        "poll_interval_max_s": 0.05, "log_level": "WARNING",
    }
    base.update(overrides)
    return Options(**base)


# --------------------------------------------------------------------------------------------- emulator process


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process, in MB."""
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) * 1024 / MB if match else float("nan")


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def self_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # ru_maxrss is in KiB on Linux


class CpuHog:
    """Another process burning one core (``while True: pass``) while the bench runs; stopped on exit."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.proc: subprocess.Popen[bytes] | None = None
        self.cpu = 0.0

    def __enter__(self) -> CpuHog:
        if self.enabled:
            self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.cpu = proc_cpu_seconds(self.proc.pid)
            self.proc.kill()
            self.proc.wait()


class EmulatorProcess:
    """``python -m gbatch_flows.emulator --port 0 ARGS`` in a child process; stopped on exit."""

    def __init__(self, *args: str, startup_timeout: float = 60.0):
        self.args = [str(a) for a in args]
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> EmulatorProcess:
        cmd = [sys.executable, "-m", "gbatch_flows.emulator", "--port", "0", "--log-level", "warning", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        deadline = time.monotonic() + self.startup_timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the emulator exited before listening (exit code {self.proc.wait()})")
            match = re.search(r"listening on (\S+)", line)
            if match:
                self.base_url = match.group(1)
                return self
        raise RuntimeError("the emulator did not start in time")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float:
        return proc_peak_rss_mb(self.pid)

    def warm_up(self, body: dict[str, Any]) -> float:
        """One chat request before the measured run (the emulator's first answer loads its tokenizer and responder:
        seconds on a loaded machine, a stall no pacer can make up); returns its latency."""
        import httpx  # here: the engine's own imports are what the bench times (bench/scale.py)

        start = time.perf_counter()
        httpx.post(f"{self.base_url}/chat/completions", json=body, timeout=120,
                   headers={"Authorization": f"Bearer {DUMMY_KEY}"}).raise_for_status()
        return time.perf_counter() - start

    def stats(self) -> dict[str, Any]:
        import httpx

        root = self.base_url.removesuffix("/v1")
        return httpx.get(f"{root}/_emulator/stats", timeout=30).json()


# ------------------------------------------------------------------------------------------- byte-counting store


@dataclass
class IOCounts:
    read: int = 0
    written: int = 0
    files_read: int = 0
    files_written: int = 0
    by_prefix_read: dict[str, int] = field(default_factory=dict)
    by_prefix_written: dict[str, int] = field(default_factory=dict)
    by_path_read: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # backend method -> calls (reads of open handles included)
    seconds: dict[str, float] = field(default_factory=dict)  # backend method -> wall seconds inside the backend

    def add_call(self, method: str, seconds: float) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        self.seconds[method] = self.seconds.get(method, 0.0) + seconds

    @property
    def store_seconds(self) -> float:
        """Wall time spent inside the backend (all threads, so overlapping calls are counted twice)."""
        return sum(self.seconds.values())

    @property
    def store_calls(self) -> int:
        return sum(self.calls.values())

    def add_read(self, path: str, n: int) -> None:
        self.read += n
        prefix = path.split("/", 1)[0]
        self.by_prefix_read[prefix] = self.by_prefix_read.get(prefix, 0) + n
        self.by_path_read[path] = self.by_path_read.get(path, 0) + n

    def add_written(self, path: str, n: int) -> None:
        self.written += n
        self.files_written += 1
        prefix = path.split("/", 1)[0]
        self.by_prefix_written[prefix] = self.by_prefix_written.get(prefix, 0) + n


class _CountingReader:
    def __init__(self, handle: Any, path: str, counts: IOCounts):
        self._handle, self._path, self._counts = handle, path, counts

    def read(self, n: int = -1) -> bytes:
        start = time.perf_counter()
        data = self._handle.read(n)
        self._counts.add_call("handle.read", time.perf_counter() - start)
        self._counts.add_read(self._path, len(data))
        return data

    def close(self) -> None:
        self._handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


class CountingBackend:
    """Delegates to a real backend and counts the bytes, calls and wall time that go through it."""

    def __init__(self, inner: Any, counts: IOCounts | None = None):
        self._inner = inner
        self.counts = counts or IOCounts()
        self.url = inner.url

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value) or name.startswith("_"):
            return value

        @functools.wraps(value)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self.counts.add_call(name, time.perf_counter() - start)

        return timed

    def _timed(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.counts.add_call(name, time.perf_counter() - start)

    def write_stream(self, path: str, chunks: Any) -> tuple[int, str]:
        size, sha = self._timed("write_stream", self._inner.write_stream, path, chunks)
        self.counts.add_written(path, size)
        return size, sha

    def write_bytes(self, path: str, data: bytes) -> None:
        self._timed("write_bytes", self._inner.write_bytes, path, data)
        self.counts.add_written(path, len(data))

    def create_exclusive(self, path: str, data: bytes) -> None:
        self._timed("create_exclusive", self._inner.create_exclusive, path, data)
        self.counts.add_written(path, len(data))

    def cas_write(self, path: str, data: bytes, expected: str | None) -> str:
        token = self._timed("cas_write", self._inner.cas_write, path, data, expected)
        self.counts.add_written(path, len(data))
        return token

    def read_bytes(self, path: str) -> bytes:
        data = self._timed("read_bytes", self._inner.read_bytes, path)
        self.counts.add_read(path, len(data))
        self.counts.files_read += 1
        return data

    def read_many(self, paths: list[str]) -> dict[str, bytes]:
        out = self._timed("read_many", self._inner.read_many, paths)
        for path, data in out.items():
            self.counts.add_read(path, len(data))
        self.counts.files_read += len(out)
        return out

    def cas_read(self, path: str) -> tuple[bytes | None, str | None]:
        data, token = self._timed("cas_read", self._inner.cas_read, path)
        if data is not None:
            self.counts.add_read(path, len(data))
        return data, token

    def open_read(self, path: str) -> tuple[Any, int]:
        handle, size = self._timed("open_read", self._inner.open_read, path)
        self.counts.files_read += 1
        return _CountingReader(handle, path, self.counts), size


@contextlib.contextmanager
def counting_stores(counts: IOCounts) -> Iterator[IOCounts]:
    """While active, the engine's task store (``launch.open_task_store``) counts its bytes into ``counts``."""
    original = launch.open_task_store

    def open_counting(options: Options, task: Task, *args: Any, **kwargs: Any) -> Store:
        store = original(options, task, *args, **kwargs)
        return Store(CountingBackend(store.backend, counts))

    launch.open_task_store = open_counting
    try:
        yield counts
    finally:
        launch.open_task_store = original


def store_size(url: str) -> tuple[int, int]:
    """Total bytes and number of files in a task folder (as the store lists them)."""
    store = open_store(url)
    entries = store.backend.list_entries("")
    return sum(e.size for e in entries), len(entries)


# ------------------------------------------------------------------------------------------------ stage timing

STAGES = ("generate", "process", "assemble", "push", "poll", "run_direct")


@dataclass
class Timing:
    seconds: float = 0.0
    cpu: float = 0.0  # CPU seconds of the engine process (all its threads) during the calls
    peak_growth_mb: float = 0.0  # how much the process's peak RSS rose during the calls
    peak_mb: float = 0.0  # the process's peak RSS (ru_maxrss) when its last call ended
    calls: int = 0
    first_start: float | None = None
    last_end: float | None = None


class StageTimer:
    """Wraps the stage functions the runner calls and sums their wall and CPU time (nested calls are counted in
    both, e.g. ``store.commit`` inside the stages)."""

    def __init__(self) -> None:
        self.timings: dict[str, Timing] = {name: Timing() for name in STAGES}
        self._saved: dict[str, Callable[..., Any]] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        timing = self.timings.setdefault(name, Timing())

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start, cpu, peak = time.perf_counter(), time.process_time(), self_peak_rss_mb()
            if timing.first_start is None:
                timing.first_start = start
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.perf_counter()
                timing.cpu += time.process_time() - cpu
                timing.peak_mb = self_peak_rss_mb()
                timing.peak_growth_mb += timing.peak_mb - peak
                timing.seconds += end - start
                timing.calls += 1
                timing.last_end = end

        return timed

    def __enter__(self) -> StageTimer:
        for name in STAGES:
            self._saved[name] = getattr(runner_module, name)
            setattr(runner_module, name, self.wrap(name, self._saved[name]))
        return self

    def __exit__(self, *exc: Any) -> None:
        for name, fn in self._saved.items():
            setattr(runner_module, name, fn)
        self._saved.clear()

    def time_store_commits(self, store: Store) -> None:
        store.commit = self.wrap("store.commit", store.commit)  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------------------------ output


def fmt_mb(n: float) -> str:
    return f"{n / MB:,.1f} MB"


def fmt_bytes(n: float) -> str:
    if n < 10_000:
        return f"{n:,.0f} B"
    if n < 10 * MB:
        return f"{n / 1000:,.0f} kB"
    return fmt_mb(n)


def print_table(rows: list[tuple[str, ...]], title: str = "") -> None:
    if title:
        print(f"\n{title}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))))
