"""Helpers of the reliability suite: forked CLI runs that can be killed, task folders, and state checks."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.forkserver
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gbatch_flows import costs
from gbatch_flows.cli import options_model, split_options
from gbatch_flows.cli_args import parse_options
from gbatch_flows.engine.fencing import CREATE_TIMEOUT_ENV, GONE_CONFIRM_ENV, LEASE_TTL_ENV
from gbatch_flows.engine.state import TaskState
from gbatch_flows.models import Request
from gbatch_flows.options import Options
from gbatch_flows.store import Store, open_store
from gbatch_flows.store.paths import LEASE_FILE

from . import child
from .tasks import RelTask

DUMMY_KEY = "sk-test-dummy-reliability"
#: The emulator behind --client_base_url counts as a local server (free unless priced): price it like gpt-4o-mini.
PRICES = costs.Prices(input_direct=0.15, input_cached=0.075, input_batch=0.075, output_direct=0.6,
                      output_batch=0.3)
PRICE_FLAGS = {"cost_input_direct_mtoken": PRICES.input_direct, "cost_input_cached_mtoken": PRICES.input_cached,
               "cost_input_batch_mtoken": PRICES.input_batch, "cost_output_direct_mtoken": PRICES.output_direct,
               "cost_output_batch_mtoken": PRICES.output_batch}
TASK_FOLDER = RelTask.name
OUTPUT_PATH = f"{RelTask.name}_output.jsonl"


# ---------------------------------------------------------------- options


def cli_args(task_dir: str, base_url: str, n_requests: int, storage_options: dict | None = None,
             **overrides: Any) -> list[str]:
    """The command line of one run of the reliability task (flags as a user would type them)."""
    flags: dict[str, Any] = {
        "task_dir": task_dir, "client_base_url": base_url, "emulator": "never", "n_requests": n_requests,
        "max_batch_requests": 100, "max_remote_batches": 4, "max_unpushed_batches": 2,
        "poll_interval_min_s": 0.05, "poll_interval_max_s": 0.2, "max_session_cost": "none", "log_level": "INFO",
        **PRICE_FLAGS,
    }
    flags.update(overrides)
    argv = ["--no_prefect", "--no_wandb"]
    if storage_options:
        argv += ["--storage_options", json.dumps(storage_options)]
    for name, value in flags.items():
        if value is True:
            argv.append(f"--{name}")
        elif value is not None and value is not False:
            argv += [f"--{name}", str(value)]
    return argv


def options_of(argv: list[str]) -> Options:
    """The engine Options a command line gives (what the child process runs with)."""
    combined = parse_options(argv, env={}, model=options_model(RelTask))
    return split_options(RelTask, combined)[0]


# ---------------------------------------------------------------- forked runs


@dataclass
class Marker:
    kind: str  # "started", "stage", "commit", "signal", "exit"
    t: float
    number: int  # pid / generation / signal / exit code
    text: str  # commit message


@dataclass
class ChildRun:
    """A CLI run in a forked child process; markers arrive over a pipe."""

    process: Any
    conn: Any
    log_path: Path
    markers: list[Marker] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    def next_marker(self, timeout: float) -> Marker | None:
        """The next marker, or None on timeout or when the child has exited (pipe closed)."""
        try:
            if not self.conn.poll(timeout):
                return None
            kind, t, number, text = self.conn.recv()
        except (EOFError, OSError):
            return None
        marker = Marker(kind, t, number, text)
        self.markers.append(marker)
        return marker

    def commits(self) -> list[Marker]:
        return [m for m in self.markers if m.kind == "commit"]

    def wait_for(self, wanted: Callable[[Marker], bool], timeout: float) -> Marker | None:
        """Read markers until one matches; None if the child exits (or the timeout passes) first."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            marker = self.next_marker(min(left, 0.5))
            if marker is not None and wanted(marker):
                return marker
            if marker is None and not self.process.is_alive():
                self.drain()
                return None
        raise TimeoutError(f"no matching marker within {timeout}s; log tail:\n{self.log_tail()}")

    def drain(self) -> None:
        while self.next_marker(0.0) is not None:
            pass

    def join(self, timeout: float = 60.0) -> int | None:
        self.process.join(timeout)
        self.drain()
        return self.process.exitcode

    def finish(self, timeout: float = 120.0) -> int | None:
        """Wait for the run to end (by itself or by its stop plan); returns the exit code."""
        deadline = time.monotonic() + timeout
        while self.process.is_alive() and time.monotonic() < deadline:
            self.next_marker(0.2)
        code = self.join(max(0.1, deadline - time.monotonic()))
        self.ended = time.monotonic()
        return code

    def marker(self, kind: str) -> Marker | None:
        return next((m for m in self.markers if m.kind == kind), None)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)
        self.conn.close()


class Forkserver:
    """Starts CLI runs as children of a multiprocessing forkserver that imported gbatch_flows once."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(["__main__", child.__name__])
        # Python 3.11's forkserver ignores the parent's sys.path when it preloads: give it ours through PYTHONPATH
        # (for the preload only; a forkserver already started by someone else just makes slower children).
        root = Path(child.__file__).resolve().parents[child.__name__.count(".")]
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *([old] if old else [])])
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            if old is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old

    def start(self, argv: list[str], log_path: Path, env: dict[str, str | None] | None = None,
              plan: child.StopPlan | None = None, uid: int | None = None) -> ChildRun:
        timing = {name: os.environ.get(name) for name in (LEASE_TTL_ENV, CREATE_TIMEOUT_ENV, GONE_CONFIRM_ENV)}
        env = {"OPENAI_API_KEY": DUMMY_KEY, **timing, **(env or {})}
        reader, writer = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(target=child.run_cli, args=(argv, env, str(log_path), writer, plan, uid),
                                   daemon=True)
        process.start()
        writer.close()
        run = ChildRun(process, reader, log_path)
        started = run.next_marker(30.0)
        if started is None or started.kind != "started":
            raise RuntimeError(f"the child did not start: {run.log_tail()}")
        return run


# ---------------------------------------------------------------- task folders


@dataclass
class TaskDir:
    """A --task_dir (local or S3) and access to the task folder inside it."""

    kind: str
    task_dir: str
    storage_options: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        return f"{self.task_dir.rstrip('/')}/{TASK_FOLDER}"

    def store(self) -> Store:
        return open_store(self.url, self.storage_options)

    def state(self) -> TaskState:
        return TaskState.from_manifest(self.store().load())

    def delete_lease(self) -> bool:
        """Remove lease.json (what the LeaseHeld message tells a user to do once the old run is surely dead)."""
        backend = self.store().backend
        present = backend.exists(LEASE_FILE)
        backend.delete_many([LEASE_FILE])
        return present

    def lease(self) -> dict[str, Any] | None:
        backend = self.store().backend
        return json.loads(backend.read_bytes(LEASE_FILE)) if backend.exists(LEASE_FILE) else None

    def output(self) -> bytes:
        return self.store().backend.read_bytes(OUTPUT_PATH)


def snapshot_tree(root: Path) -> dict[str, bytes]:
    """Every file under a local folder, hidden ones included (path -> bytes)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- checks


def recorded_cost(state: TaskState) -> float:
    return sum(b.cost for b in state.batches.values() if b.state == "processed")


def recomputed_cost(store: Store, state: TaskState) -> tuple[float, dict[str, int]]:
    """Cost of the usage found in the results/*.jsonl files, computed here from scratch, and the token totals."""
    total = 0.0
    tokens: Counter[str] = Counter()
    for path in store.list("results/"):
        name = Path(path).stem
        if not name.isdigit():  # a direct batch's parts: the final results blob concatenates them
            assert state.batches[int(name.split(".")[0])].mode == "direct", path
            continue
        batch = state.batches[int(name)]
        sides = {Request(payload={}, **side).custom_id: side
                 for side in map(orjson.loads, store.read_blob(batch.sidecar_ref).splitlines())}
        usage: Counter[str] = Counter()
        for raw in store.backend.read_bytes(path).splitlines():
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a malformed line (fault injection) carries no usage the engine could have counted
            response = ((line or {}).get("response") or {}) if isinstance(line, dict) else {}
            body = response.get("body")
            u = body.get("usage") if isinstance(body, dict) else None
            side = sides.get(line.get("custom_id")) if isinstance(line, dict) else None
            if not u and side and isinstance(body, dict) and 200 <= (response.get("status_code") or 0) < 300:
                u = {"prompt_tokens": side["tokens"], "completion_tokens": side["max_out"]}  # charged at worst case
            if not u:
                continue
            usage["prompt_tokens"] += int(u.get("prompt_tokens") or 0)
            usage["completion_tokens"] += int(u.get("completion_tokens") or 0)
            usage["cached_tokens"] += int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        total += costs.actual_cost({"prompt_tokens": usage["prompt_tokens"],
                                    "completion_tokens": usage["completion_tokens"],
                                    "prompt_tokens_details": {"cached_tokens": usage["cached_tokens"]}},
                                   PRICES, batch.mode)
        tokens.update(usage)
    return total, dict(tokens)


def output_records(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def assert_complete_output(data: bytes, n_requests: int) -> None:
    """One main record per item (answer or failure), follow-ups at most once, in generation order."""
    from .tasks import FOLLOWUP_EVERY, item_key

    records = output_records(data)
    main = [r["key"] for r in records if "answer" in r or r.get("part") == "main"]
    assert main == [item_key(i) for i in range(n_requests)], "items missing, duplicated or out of order"
    follow = Counter(r["key"] for r in records if "followup" in r or r.get("part") == "followup")
    assert set(follow) <= {item_key(i) for i in range(0, n_requests, FOLLOWUP_EVERY)}
    assert max(follow.values(), default=1) == 1, "a follow-up record is duplicated"
