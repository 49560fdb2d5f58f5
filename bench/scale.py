"""Benchmark: a task too big for memory, its restart, and what an S3 store costs (issue 19, "Scale").

Part ``big`` (``--n``, default 10,000,000): the ``BenchChars`` task generated lazily (its ``generate_requests`` is a
generator), batches of 50,000, against the emulator in its own process (``--batch-duration 0``). Each run is a fresh
child process stopped cleanly by ``max_session_requests`` (``--session-requests``, default 100,000 = two batches):

1. first start: generate all N requests, assemble, push, poll and process the first two batches, stop;
2. restart: a new process on the same task folder: assemble, push, ... the next two batches, stop;
3. baseline: the same as 1 for ``--baseline-n`` requests (default N / 10) in another folder.

For each: engine peak RSS (``ru_maxrss`` of the child) after each stage, time from process start and from engine
start (``open_engine``) to the first push intent committed (``pushing``) and the first remote batch created
(``pushed``), commits, and the task folder's size.

Part ``s3`` (``--s3-n``, default 200,000; 0 skips it): the whole pipeline for that many requests, once on a local
folder and once on S3 (a moto server in its own process, every call delayed by ``--latency-ms``, default 30):
commits (manifest generations), bytes written / read, store calls and the wall time spent in them, the S3 run's wall
minus the local run's; scaled linearly to 1,000,000 requests.

    python bench/scale.py                                  # 10M (generate ~10 min here) + S3 at 200,000
    python bench/scale.py --n 1000000 --s3-n 0             # quick-ish: 1M, no S3
    python bench/scale.py --n 300 --session-requests 100 --batch-requests 50 --s3-n 300   # seconds (the test)

Restarts (``--restarts K``, instead of the parts above): a first start of ``--n`` requests in ``<dir>/first``
(reused when ``--dir`` names a folder that has one), then K restarts per variant, each on a hard-linked copy of that
folder and stopped right after its first remote batch is recorded: this checkout's code, and with ``--base-root``
another checkout's (same harness), interleaved. ``--pyc-cache``: bytecode written and reused, as after an install
(the environment may set PYTHONDONTWRITEBYTECODE). ``--kill``: each restart follows a run SIGKILLed right after
committing its first push intent (the batch left ``pushing``, the lease held by a dead process).

    python bench/scale.py --n 1000000 --restarts 5 --base-root /work/main --dir /tmp/restarts
"""

from __future__ import annotations

import os
import time


def _process_age_s() -> float:
    """Seconds since this process started (from /proc: 10 ms resolution), so interpreter start-up counts too."""
    with open("/proc/self/stat") as fh:
        text = fh.read()
    start_ticks = int(text[text.rindex(")") + 2 :].split()[19])
    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


T_PROCESS_START = time.perf_counter() - _process_age_s()

import gc  # noqa: E402
import importlib.util  # noqa: E402

# as the CLI entry (flows/*.py) of the code under test does, if it does: no cyclic collection during the imports
PAUSE_GC = importlib.util.find_spec("gbatch_flows.startup") is not None
if PAUSE_GC:
    gc.disable()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from _common import (  # noqa: E402
    DUMMY_KEY,
    BenchChars,
    EmulatorProcess,
    IOCounts,
    StageTimer,
    bench_options,
    counting_stores,
    fmt_mb,
    print_table,
    self_cpu_seconds,
    self_peak_rss_mb,
    store_size,
)

from gbatch_flows.engine.output import write_output  # noqa: E402
from gbatch_flows.engine.runner import RunSummary, run_engine  # noqa: E402
from gbatch_flows.launch import open_engine, prepare  # noqa: E402
from gbatch_flows.store import open_store  # noqa: E402
from gbatch_flows.testing.moto import create_bucket, storage_options_for  # noqa: E402

if PAUSE_GC:
    from gbatch_flows.startup import imports_loaded  # noqa: E402

    imports_loaded()
T_IMPORTED = time.perf_counter()
CPU_IMPORTED = self_cpu_seconds()  # CPU of this process so far (interpreter start-up and imports)
TARGET_RSS_MB = 1000.0
TARGET_RESTART_S = 2.0


# ---------------------------------------------------------------------------------------- one run (child process)


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """One engine run in this (fresh) process; returns its figures."""
    task = BenchChars({"n": args.n})
    overrides: dict[str, Any] = {"max_batch_requests": args.batch_requests}
    if args.session_requests:
        overrides["max_session_requests"] = args.session_requests
    if args.endpoint:
        overrides["storage_options"] = storage_options_for(args.endpoint)
    options = bench_options(args.dir, **overrides)
    counts = IOCounts()
    marks: dict[str, float] = {}
    commits = [0]

    def on_commit(state: Any) -> None:
        commits[0] += 1
        message = state.manifest.message
        if message.startswith("push intent batch") and "first_pushing" not in marks:
            marks["first_pushing"] = time.perf_counter()  # the intent is committed: the upload starts
            if args.kill_at_intent:  # a crash mid-push: the batch stays `pushing`, the lease stays held
                os.kill(os.getpid(), signal.SIGKILL)
        if message.startswith(("pushed batch", "adopt")) and "first_pushed" not in marks:
            marks["first_pushed"] = time.perf_counter()  # the remote batch exists and is recorded
            marks["first_pushed_rss"] = self_peak_rss_mb()
            marks["first_pushed_cpu"] = self_cpu_seconds()
            if args.until_first_push:
                raise FirstPushed

    rss_imported = self_peak_rss_mb()
    cpu0 = self_cpu_seconds()
    t_engine = time.perf_counter()
    records = None
    with counting_stores(counts), StageTimer() as timer:
        with open_engine(task, options, args.label, base_url=args.base_url, api_key=DUMMY_KEY) as engine:
            engine.on_commit.append(on_commit)
            prepare(engine, task)
            marks["prepared"] = time.perf_counter()
            try:
                summary = run_engine(engine)
            except FirstPushed:  # (--until-first-push) the pushed commit is done; the lease is released on exit
                summary = RunSummary("stopped", "first remote batch created", engine.state.generation)
            marks["ran"] = time.perf_counter()
            if summary.status == "finished":
                _, records = write_output(engine.store, engine.state, task.output_name)
            generation = engine.state.generation
            url = engine.store.url
    wall = time.perf_counter() - t_engine

    def since(t0: float) -> dict[str, float]:
        return {k: v - t0 for k, v in marks.items() if not k.endswith(("_rss", "_cpu"))}

    return {
        "n": args.n, "label": args.label, "status": summary.status, "reason": summary.reason,
        "counts": summary.counts, "records": records, "generation": generation, "commits": commits[0],
        "import_s": T_IMPORTED - T_PROCESS_START, "engine_start_s": t_engine - T_PROCESS_START,
        "from_process": since(T_PROCESS_START), "from_engine": since(t_engine),
        "first_pushed_rss": marks.get("first_pushed_rss"), "import_cpu": CPU_IMPORTED,
        "first_pushed_cpu": marks.get("first_pushed_cpu"),
        "wall": wall, "cpu": self_cpu_seconds() - cpu0, "rss_imported": rss_imported, "peak_rss": self_peak_rss_mb(),
        "stages": {name: {"wall": t.seconds, "cpu": t.cpu, "calls": t.calls, "peak_mb": t.peak_mb,
                          "growth_mb": t.peak_growth_mb} for name, t in timer.timings.items() if t.calls},
        "store": {"read": counts.read, "written": counts.written, "files_written": counts.files_written,
                  "files_read": counts.files_read, "written_by": counts.by_prefix_written,
                  "read_by": dict(_by_folder(counts.by_path_read)), "calls": counts.calls, "seconds": counts.seconds},
        "url": url, "code": str(Path(sys.modules["gbatch_flows"].__file__ or "").resolve().parent.parent),
    }


class FirstPushed(Exception):  # noqa: N818 - not an error: ends a --until-first-push run
    """Raised by the commit hook once the first remote batch is recorded."""


def _by_folder(by_path: dict[str, int]) -> Iterator[tuple[str, int]]:
    out: dict[str, int] = {}
    for path, size in by_path.items():
        top = path.split("/", 1)[0]
        out[top] = out.get(top, 0) + size
    return iter(out.items())


def spawn(args: argparse.Namespace, n: int, task_dir: str, base_url: str, label: str, session_requests: int,
          endpoint: str = "", extra: tuple[str, ...] = (), script: str = __file__, env: dict[str, str] | None = None,
          killed: bool = False) -> dict[str, Any]:
    """One run in a fresh child process (``script``, ``env``: the base code's copy); its figures. ``killed``: the
    child SIGKILLs itself (``--kill-at-intent``), nothing is returned."""
    cmd = [sys.executable, script, "--phase", "run", "--n", str(n), "--dir", task_dir, "--base-url", base_url,
           "--label", label, "--session-requests", str(session_requests),
           "--batch-requests", str(args.batch_requests), *extra]
    if endpoint:
        cmd += ["--endpoint", endpoint]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if killed:
        if done.returncode != -signal.SIGKILL:
            raise RuntimeError(f"run {label} was not killed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        return {}
    if done.returncode != 0:
        raise RuntimeError(f"run {label} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------- moto with latency


def serve_slow_moto(port: int, latency_ms: float) -> None:
    """moto's S3 server (as ``python -m moto.server``) with ``latency_ms`` added before every request it answers.

    Threaded: concurrent calls wait in parallel, as round trips to a remote S3 would."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    delay = latency_ms / 1000
    stats = {"requests": 0, "bytes_in": 0}

    def slow(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/_slow_stats":  # the S3 requests answered so far (this one not counted)
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(stats).encode()]
        stats["requests"] += 1
        stats["bytes_in"] += int(environ.get("CONTENT_LENGTH") or 0)
        time.sleep(delay)
        return app(environ, start_response)

    make_server("127.0.0.1", port, slow, threaded=True).serve_forever()


@contextlib.contextmanager
def slow_moto(latency_ms: float) -> Iterator[str]:
    from gbatch_flows.testing.moto import DUMMY_KEY as S3_KEY
    from gbatch_flows.testing.moto import _wait_until_up
    from gbatch_flows.testing.ports import free_port

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_KEY, "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.Popen([sys.executable, __file__, "--phase", "moto", "--port", str(port), "--latency-ms",
                             str(latency_ms)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not _wait_until_up(proc, endpoint):
            raise RuntimeError("the moto server did not start")
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------------------------------- reports


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def big_part(args: argparse.Namespace, root: Path) -> bool:
    n, base_n = args.n, args.baseline_n or max(1, args.n // 10)
    with EmulatorProcess("--batch-duration", "0") as emu:
        runs = {}
        load = [os.getloadavg()[0]]
        runs["first"] = spawn(args, n, str(root / "big"), emu.base_url, "first", args.session_requests)
        load.append(os.getloadavg()[0])
        runs["restart"] = spawn(args, n, str(root / "big"), emu.base_url, "restart", args.session_requests)
        load.append(os.getloadavg()[0])
        runs["baseline"] = spawn(args, base_n, str(root / "baseline"), emu.base_url, "baseline",
                                 args.session_requests)
        load.append(os.getloadavg()[0])
        stats = emu.stats()
    disk, files = store_size(runs["first"]["url"])
    base_disk, _ = store_size(runs["baseline"]["url"])

    print(f"scale: {n:,}-request task generated lazily, batches of {args.batch_requests:,}, each run stopped by "
          f"max_session_requests {args.session_requests:,}; {os.cpu_count()} CPUs, load average "
          f"{' -> '.join(f'{x:.1f}' for x in load)} (before / after each run)")
    for name, r in runs.items():
        print(f"{name}: {r['n']:,} requests, {r['status']} ({r['reason'].split(';')[0]}); ok {r['counts'].get('ok', 0):,}, "
              f"queued {r['counts'].get('queued', 0):,}; {r['commits']} commits; wall {r['wall']:.1f} s, "
              f"CPU {r['cpu']:.1f} s")
    rows = [("figure", "first start", "restart", "restart / first", f"baseline n={base_n:,}",
             "first / baseline")]
    first, restart, base = runs["first"], runs["restart"], runs["baseline"]

    def row(label: str, get: Any, fmt: Any = _s) -> None:
        a, b, c = get(first), get(restart), get(base)
        rows.append((label, fmt(a), fmt(b), _ratio(b, a), fmt(c), _ratio(a, c)))

    def mb(x: float | None) -> str:
        return "-" if x is None else f"{x:,.0f}"

    row("imports s", lambda r: r["import_s"])
    row("process start -> engine start s", lambda r: r["engine_start_s"])
    row("process start -> 1st pushing s", lambda r: r["from_process"].get("first_pushing"))
    row("process start -> 1st pushed s", lambda r: r["from_process"].get("first_pushed"))
    row("engine start -> 1st pushed s", lambda r: r["from_engine"].get("first_pushed"))
    for stage in ("generate", "assemble", "push", "poll", "process"):
        row(f"{stage} wall s", lambda r, s=stage: r["stages"].get(s, {}).get("wall"))
    row("peak RSS after imports MB", lambda r: r["rss_imported"], mb)
    for stage in ("generate", "assemble", "push", "process"):
        row(f"peak RSS after {stage} MB", lambda r, s=stage: r["stages"].get(s, {}).get("peak_mb"), mb)
    row("peak RSS at 1st pushed MB", lambda r: r["first_pushed_rss"], mb)
    row("peak RSS of the run MB", lambda r: r["peak_rss"], mb)
    print_table(rows, "first start, restart (fresh process, same folder) and a baseline run of fewer requests")
    peak = max(first["peak_rss"], restart["peak_rss"])
    restart_s = restart["from_process"].get("first_pushed")
    print(f"\nengine peak RSS {peak:,.0f} MB for {n:,} requests (target < {TARGET_RSS_MB:,.0f} MB: "
          f"{'met' if peak < TARGET_RSS_MB else 'NOT met'}); baseline {base['peak_rss']:,.0f} MB for {base_n:,}")
    if restart_s is not None:
        print(f"restart: first remote batch created {restart_s:.2f} s after process start "
              f"(target < {TARGET_RESTART_S:.0f} s: {'met' if restart_s < TARGET_RESTART_S else 'NOT met'}), "
              f"{restart['from_engine']['first_pushed']:.2f} s after engine start; first start "
              f"{_s(first['from_process'].get('first_pushed'))} s")
    print(f"task folder: {fmt_mb(disk)} in {files:,} files ({fmt_mb(disk / n * 1_000_000)} per 1M requests; "
          f"baseline {fmt_mb(base_disk)}: ratio {_ratio(disk, base_disk)} for {n / base_n:.0f}x the requests); "
          f"written by first start: "
          f"{', '.join(f'{k} {fmt_mb(v)}' for k, v in sorted(first['store']['written_by'].items()))}")
    print(f"emulator: {stats['batches_created']} batches, {stats['batch_requests_processed']:,} batch requests")
    ok = all(r["status"] == "stopped" or r["status"] == "finished" for r in runs.values())
    ok = ok and restart["counts"].get("ok", 0) > first["counts"].get("ok", 0)
    return ok


# ------------------------------------------------------------------------------- restarts: this code vs a base


def base_tree(base_root: Path, into: Path) -> tuple[str, dict[str, str]]:
    """This bench (script + _common) over another checkout's ``gbatch_flows`` and ``flows`` (symlinked), so both
    sides run the same harness; returns (script, env) for ``spawn``."""
    shutil.rmtree(into, ignore_errors=True)
    (into / "bench").mkdir(parents=True)
    here = Path(__file__).resolve().parent
    for name in ("scale.py", "_common.py"):
        shutil.copy(here / name, into / "bench" / name)
    for name in ("gbatch_flows", "flows"):
        (into / name).symlink_to(base_root.resolve() / name)
    return str(into / "bench" / "scale.py"), {**os.environ, "PYTHONPATH": str(into)}


def with_pyc_cache(env: dict[str, str] | None, folder: Path) -> dict[str, str]:
    """Bytecode written and reused (in ``folder``, not in the checkout), as after ``pip install``."""
    out = {**(env or os.environ), "PYTHONPYCACHEPREFIX": str(folder)}
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    return out


#: The restarts' emulator: a batch takes 22 hours, so the batches the restarts create run at ~1 request/s instead of
#: at full speed (with --batch-duration 0 each would keep a core busy for ~20 s, during the next restarts).
RESTART_EMULATOR = ("--batch-duration", "80000")

RESTART_FIGURES = (("imports s", lambda r: r["import_s"]),
                   ("process start -> 1st pushing s", lambda r: r["from_process"].get("first_pushing")),
                   ("process start -> 1st pushed s", lambda r: r["from_process"].get("first_pushed")),
                   ("engine start -> 1st pushed s", lambda r: r["from_engine"].get("first_pushed")),
                   ("CPU: process start -> imports done s", lambda r: r["import_cpu"]),
                   ("CPU: process start -> 1st pushed s", lambda r: r["first_pushed_cpu"]),
                   ("CPU: imports done -> 1st pushed s", lambda r: r["first_pushed_cpu"] - r["import_cpu"]))


def _or_none(get: Any) -> Any:
    """``get`` that gives None where a figure is missing (a restart after a kill commits no new push intent)."""

    def safe(r: dict[str, Any]) -> float | None:
        try:
            return get(r)
        except (KeyError, TypeError):
            return None

    return safe


def restarts_part(args: argparse.Namespace, root: Path, first_dir: Path, n: int) -> bool:
    """``--restarts`` restarts of the first start's folder per variant (this code; ``--base-root``'s too), each on
    its own hard-linked copy (every store write makes a new file, so copies never share a change), stopped right
    after their first remote batch is recorded; variants interleaved ABBA. ``--kill``: before each restart, a run
    of the same variant is SIGKILLed right after its first push intent is committed (a batch left ``pushing``, the
    lease held by a dead pid), each such pair against a fresh emulator (a copy's twin batch must not be adopted)."""
    variants: list[tuple[str, str, dict[str, str] | None]] = [("new", __file__, None)]
    if args.base_root:
        variants.append(("base", *base_tree(Path(args.base_root), root / "base-tree")))
    if args.pyc_cache:
        variants = [(name, script, with_pyc_cache(env, root / f"pyc-{name}")) for name, script, env in variants]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    load = [os.getloadavg()[0]]
    kind = "SIGKILL mid-push" if args.kill else "clean stop"
    with contextlib.ExitStack() as stack:
        shared = None if args.kill else stack.enter_context(EmulatorProcess(*RESTART_EMULATOR))
        for i in range(args.restarts + (1 if args.pyc_cache else 0)):  # --pyc-cache: round 0 fills the caches
            for name, script, env in variants if i % 2 == 0 else variants[::-1]:
                copy = root / f"restart-{name}-{i}"
                subprocess.run(["cp", "-al", str(first_dir), str(copy)], check=True)
                try:
                    with contextlib.nullcontext(shared) if shared else EmulatorProcess(*RESTART_EMULATOR) as emu:
                        if args.kill:
                            spawn(args, n, str(copy), emu.base_url, f"killed-{name}", args.session_requests,
                                  extra=("--kill-at-intent",), script=script, env=env, killed=True)
                        r = spawn(args, n, str(copy), emu.base_url, f"restart-{name}", args.session_requests,
                                  extra=("--until-first-push",), script=script, env=env)
                finally:
                    shutil.rmtree(copy, ignore_errors=True)
                if not (args.pyc_cache and i == 0):
                    runs[name].append(r)
                    load.append(os.getloadavg()[0])
    print(f"\nrestarts after a {kind}: {args.restarts} per variant on hard-linked copies of the first start's folder "
          f"({n:,} requests), each stopped at its first remote batch; variants interleaved ABBA; bytecode "
          f"{'cached (PYTHONPYCACHEPREFIX, written by an uncounted round 0)' if args.pyc_cache else 'as the environment says (PYTHONDONTWRITEBYTECODE=' + os.environ.get('PYTHONDONTWRITEBYTECODE', '') + ')'}; "
          f"load average {' -> '.join(f'{x:.1f}' for x in load)}")
    header: tuple[str, ...] = ("figure (median [min-max])",) + tuple(runs)
    if "base" in runs:
        header += ("new / base (medians)",)
    rows = [header]
    for label, get in RESTART_FIGURES:
        values = {name: [v for v in map(_or_none(get), rs) if v is not None] for name, rs in runs.items()}
        medians = {name: statistics.median(vs) if vs else None for name, vs in values.items()}
        cells = [f"{medians[name]:.2f} [{min(vs):.2f}-{max(vs):.2f}]" if vs else "-" for name, vs in values.items()]
        if "base" in runs:
            cells.append(_ratio(medians["new"], medians["base"]))
        rows.append((label, *cells))
    print_table(rows, f"restart to the first remote batch ({kind})")
    for name, rs in runs.items():
        print(f"{name} ({rs[0]['code'] if rs else '-'}): process start -> 1st pushed, each run: "
              + ", ".join(f"{r['from_process']['first_pushed']:.2f}" for r in rs))
    return all(r["from_process"].get("first_pushed") is not None for rs in runs.values() for r in rs)


def restart_bench(args: argparse.Namespace, root: Path) -> bool:
    """``--restarts``: a first start of ``--n`` requests in ``<dir>/first`` (kept and reused when ``--dir`` is
    given), then ``restarts_part`` on it."""
    first_dir = root / "first"
    if not (first_dir / "done.json").exists():
        shutil.rmtree(first_dir, ignore_errors=True)
        with EmulatorProcess("--batch-duration", "0") as emu:
            r = spawn(args, args.n, str(first_dir), emu.base_url, "first", args.session_requests)
        print(f"first start: {r['status']} ({r['reason'].split(';')[0]}), {r['commits']} commits, wall {r['wall']:.1f} s")
        (first_dir / "done.json").write_text(json.dumps({"n": args.n, "status": r["status"]}))
    return restarts_part(args, root, first_dir, args.n)


def s3_part(args: argparse.Namespace, root: Path) -> bool:
    n = args.s3_n
    runs: dict[str, dict[str, Any]] = {}
    load = [os.getloadavg()[0]]
    with EmulatorProcess("--batch-duration", "0") as emu:
        runs["local"] = spawn(args, n, str(root / "s3-local"), emu.base_url, "local", 0)
        load.append(os.getloadavg()[0])
        with slow_moto(args.latency_ms) as endpoint:
            bucket = create_bucket(endpoint, "scale-bench")
            before = slow_stats(endpoint)
            runs["s3"] = spawn(args, n, f"s3://{bucket}/tasks", emu.base_url, "s3", 0, endpoint=endpoint)
            after = slow_stats(endpoint)
            http_requests = after["requests"] - before["requests"]
            s3_disk, s3_files = store_size_s3(runs["s3"]["url"], endpoint)
        load.append(os.getloadavg()[0])
    local, s3 = runs["local"], runs["s3"]
    scale = 1_000_000 / n
    print(f"\nS3: {n:,} requests through the whole pipeline, local folder then S3 (moto in its own process, "
          f"{args.latency_ms:g} ms added before every call it answers); per-1M figures scale the measured ones "
          f"linearly by {scale:g}; load average {' -> '.join(f'{x:.1f}' for x in load)}")
    for name, r in runs.items():
        print(f"{name}: {r['status']} ({r['reason'].split(';')[0]}), {r['records'] or 0:,} records")
    rows = [("figure", "local", "S3", "S3 / local", "S3 per 1M requests")]

    def row(label: str, a: float, b: float, fmt: str = "{:,.0f}", per_m: bool = True) -> None:
        rows.append((label, fmt.format(a), fmt.format(b), _ratio(b, a), fmt.format(b * scale) if per_m else ""))

    row("commits (manifest generations)", local["commits"], s3["commits"])
    row("store calls", sum(local["store"]["calls"].values()), sum(s3["store"]["calls"].values()))
    row("MB written", local["store"]["written"] / 1e6, s3["store"]["written"] / 1e6, "{:,.1f}")
    row("MB read", local["store"]["read"] / 1e6, s3["store"]["read"] / 1e6, "{:,.1f}")
    row("manifests MB written", local["store"]["written_by"].get("manifests", 0) / 1e6,
        s3["store"]["written_by"].get("manifests", 0) / 1e6, "{:,.2f}")
    row("wall in store calls s", sum(local["store"]["seconds"].values()), sum(s3["store"]["seconds"].values()),
        "{:,.1f}")
    row("run wall s", local["wall"], s3["wall"], "{:,.1f}")
    row("engine CPU s", local["cpu"], s3["cpu"], "{:,.1f}")
    row("peak RSS MB", local["peak_rss"], s3["peak_rss"], per_m=False)
    print_table(rows, "local vs S3, same n, same emulator")
    print(f"S3 requests moto answered during the S3 run: {http_requests:,} ({http_requests * scale:,.0f} per 1M "
          f"requests; x {args.latency_ms:g} ms = {http_requests * args.latency_ms / 1000:.1f} s of added latency if "
          f"none overlapped)")
    calls = sorted(s3["store"]["calls"].items(), key=lambda kv: -s3["store"]["seconds"][kv[0]])
    print("S3 store calls by method (calls, wall s): " + ", ".join(
        f"{name} {c:,} / {s3['store']['seconds'][name]:.1f}" for name, c in calls))
    added = s3["wall"] - local["wall"]
    print(f"time the store adds: S3 wall - local wall = {added:.1f} s ({added * scale:.0f} s per 1M requests); "
          f"inside store calls {sum(s3['store']['seconds'].values()) - sum(local['store']['seconds'].values()):.1f} s "
          f"more than local; {s3['commits'] * scale:,.0f} commits and "
          f"{s3['store']['written'] * scale / 1e6:,.0f} MB written per 1M; bucket holds {fmt_mb(s3_disk)} in "
          f"{s3_files:,} objects")
    return local["status"] == s3["status"] == "finished" and local["records"] == s3["records"] == n


def slow_stats(endpoint: str) -> dict[str, int]:
    import httpx

    return httpx.get(f"{endpoint}/_slow_stats", timeout=30).json()


def store_size_s3(url: str, endpoint: str) -> tuple[int, int]:
    entries = open_store(url, storage_options=storage_options_for(endpoint)).backend.list_entries("")
    return sum(e.size for e in entries), len(entries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="requests of the big task (0: skip that part)")
    parser.add_argument("--baseline-n", type=int, default=0, help="requests of the baseline run (default n / 10)")
    parser.add_argument("--session-requests", type=int, default=100_000,
                        help="max_session_requests of each big run (stops it cleanly)")
    parser.add_argument("--batch-requests", type=int, default=50_000)
    parser.add_argument("--s3-n", type=int, default=200_000, help="requests of the local vs S3 runs (0: skip)")
    parser.add_argument("--latency-ms", type=float, default=30.0, help="added before every S3 call moto answers")
    parser.add_argument("--dir", help="folder for the task folders (default: a temp dir, deleted afterwards)")
    parser.add_argument("--restarts", type=int, default=0,
                        help="instead of the parts above: a first start of --n requests (kept in --dir), then this "
                        "many restarts to the first remote batch, each on a fresh copy of its folder")
    parser.add_argument("--base-root", help="with --restarts: also restart with this checkout's code (e.g. main), "
                        "interleaved, same harness")
    parser.add_argument("--pyc-cache", action="store_true",
                        help="with --restarts: children write and reuse bytecode (PYTHONDONTWRITEBYTECODE unset)")
    parser.add_argument("--kill", action="store_true",
                        help="with --restarts: each restart follows a run SIGKILLed right after its first push intent")
    parser.add_argument("--phase", choices=["all", "run", "moto"], default="all", help=argparse.SUPPRESS)
    parser.add_argument("--until-first-push", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kill-at-intent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="run", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", default="", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.phase == "run":
        print(json.dumps(run_child(args)))
        return 0
    if args.phase == "moto":
        serve_slow_moto(args.port, args.latency_ms)
        return 0
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="gbatch-bench-scale-"))
    ok = True
    try:
        if args.restarts:
            ok &= restart_bench(args, root)
        elif args.n:
            ok &= big_part(args, root)
        if args.s3_n and not args.restarts:
            ok &= s3_part(args, root)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    if not ok:
        print("ERROR: a run did not end as expected")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
