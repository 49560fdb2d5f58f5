"""Benchmark: resuming a half-done task. How long does the resume take to start, and what does it read again?

Phase 1 builds an N-request task (default 1,000,000) and stops it at its midpoint (``max_session_requests`` = N/2:
every request is generated, half are sent, processed and committed). Phase 2 runs in a fresh child process (cold
start, new session) against the same emulator and finishes the task. It reports:

- start: open the engine (store, lease) + load the manifest and check the task (``prepare``), then the first stage
  decisions (generate sees the task is generated, process finds nothing, the mode is chosen) and the first new batch
  assembled and committed;
- the whole resume (run + output), and the bytes it read from the store, by folder, against what the store holds.

    /work/venv/bin/python bench/resume.py                  # 1,000,000 requests
    /work/venv/bin/python bench/resume.py --n 20000        # quick
"""

from __future__ import annotations

import time

T_PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
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
    fmt_bytes,
    fmt_mb,
    print_table,
    self_peak_rss_mb,
    store_size,
)

from gbatch_flows.engine import runner as runner_module  # noqa: E402
from gbatch_flows.engine.output import write_output  # noqa: E402
from gbatch_flows.engine.runner import choose_mode, run_engine  # noqa: E402
from gbatch_flows.launch import open_engine, prepare  # noqa: E402
from gbatch_flows.store import open_store  # noqa: E402

T_IMPORTED = time.perf_counter()


def first_half(root: Path, n: int, base_url: str) -> dict[str, Any]:
    task = BenchChars({"n": n})
    options = bench_options(root / "tasks", max_session_requests=n // 2)
    counts = IOCounts()
    t0 = time.perf_counter()
    with counting_stores(counts), open_engine(task, options, "first", base_url=base_url, api_key=DUMMY_KEY) as engine:
        prepare(engine, task)
        summary = run_engine(engine)
        url = engine.store.url
    return {"wall": time.perf_counter() - t0, "status": summary.status, "reason": summary.reason,
            "counts": summary.counts, "written": counts.written, "url": url}


def resume(root: Path, n: int, base_url: str) -> dict[str, Any]:
    """Phase 2 (in its own process): finish the task, timing the start and counting the bytes read."""
    task = BenchChars({"n": n})
    options = bench_options(root / "tasks")
    counts = IOCounts()
    marks: dict[str, float] = {}
    reads: dict[str, dict[str, int]] = {}

    def mark(name: str) -> None:
        marks[name] = time.perf_counter()
        reads[name] = dict(counts.by_path_read)

    t0 = time.perf_counter()
    with counting_stores(counts), StageTimer() as timer:
        with open_engine(task, options, "resume", base_url=base_url, api_key=DUMMY_KEY) as engine:
            mark("opened")
            prepare(engine, task)
            mark("loaded")
            state = engine.state
            cursor = (state.cursor.segment, state.cursor.line)
            queued = state.queued_requests()
            # the first stage decisions, as the runner takes them (generate and process find nothing to do)
            runner_module.generate(engine)
            runner_module.process(engine)
            mode = choose_mode(engine)
            mark("decided")

            def first_commit(_state: Any) -> None:
                if "first_commit" not in marks:
                    mark("first_commit")

            engine.on_commit.append(first_commit)
            summary = run_engine(engine)
            mark("ran")
            _, records = write_output(engine.store, engine.state, task.output_name)
            mark("output")
            url = engine.store.url
    stages = {name: [t.seconds, t.calls] for name, t in timer.timings.items() if t.calls}
    return {
        "import_s": T_IMPORTED - T_PROCESS_START, "marks": {k: v - t0 for k, v in marks.items()}, "reads": reads,
        "cursor": cursor, "queued": queued, "mode": mode, "status": summary.status, "reason": summary.reason,
        "records": records, "read_total": counts.read, "files_read": counts.files_read, "stages": stages,
        "peak_rss_mb": self_peak_rss_mb(), "url": url,
    }


def file_sizes(url: str) -> dict[str, int]:
    return {entry.path: entry.size for entry in open_store(url).backend.list_entries("")}


def by_folder(sizes: dict[str, int], only: set[str] | None = None) -> dict[str, int]:
    out: dict[str, int] = {}
    for path, size in sizes.items():
        if only is None or path in only:
            top = path.split("/", 1)[0]
            out[top] = out.get(top, 0) + size
    return out


def minus(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of requests (default 1,000,000)")
    parser.add_argument("--dir", help="task folder parent (default: a temp dir, deleted afterwards)")
    parser.add_argument("--phase", choices=["all", "resume"], default="all", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.phase == "resume":
        print(json.dumps(resume(Path(args.dir), args.n, args.base_url)))
        return 0

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="gbatch-bench-resume-"))
    load0 = os.getloadavg()[0]
    try:
        with EmulatorProcess("--batch-duration", "0") as emu:
            first = first_half(root, args.n, emu.base_url)
            before = file_sizes(first["url"])
            child = subprocess.run(
                [sys.executable, __file__, "--phase", "resume", "--n", str(args.n), "--dir", str(root),
                 "--base-url", emu.base_url], capture_output=True, text=True, check=False)
            if child.returncode != 0:
                print(child.stdout, child.stderr, sep="\n")
                return 1
            second = json.loads(child.stdout.strip().splitlines()[-1])
            stats = emu.stats()
        disk, _ = store_size(first["url"])
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)

    n = args.n
    m = second["marks"]
    print(f"resume: {n:,}-request task stopped at its midpoint, then resumed in a fresh process; "
          f"load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"phase 1: {first['status']} ({first['reason']}) in {first['wall']:.1f} s; ok {first['counts']['ok']:,}, "
          f"queued {first['counts']['queued']:,}; wrote {fmt_mb(first['written'])}")
    print(f"phase 2: {second['status']} ({second['reason']}); cursor at segment/line {second['cursor']}, "
          f"{second['queued']:,} queued, mode {second['mode']}; {second['records']:,} output records; "
          f"peak RSS {second['peak_rss_mb']:,.0f} MB")
    rows = [("resume step", "at s (from open)", "step s")]
    previous = 0.0
    for name, label in (("opened", "open engine (store + lease)"), ("loaded", "load manifest + check task"),
                        ("decided", "first stage decisions"), ("first_commit", "first new batch committed"),
                        ("ran", "run to the end"), ("output", "write output")):
        if name in m:
            rows.append((label, f"{m[name]:.3f}", f"{m[name] - previous:.3f}"))
            previous = m[name]
    print_table(rows, f"resume timeline (imports before it: {second['import_s']:.2f} s)")
    old = set(before)
    reads = second["reads"]
    start = reads.get("first_commit", reads["decided"])
    run = minus(reads["ran"], start)
    merge = minus(reads["output"], reads["ran"])
    columns = {
        "start (to 1st commit)": by_folder(start),
        "run: older files": by_folder(run, old),
        "run: own new files": by_folder(run, set(run) - old),
        "output merge": by_folder(merge),
    }
    stored = by_folder(before)
    rows = [("folder", "in store before", *columns)]
    for folder in sorted(set(stored).union(*columns.values())):
        rows.append((folder, fmt_bytes(stored.get(folder, 0)), *(fmt_bytes(c.get(folder, 0)) for c in columns.values())))
    print_table(rows, "bytes read by the resume, by folder (older files = written before the resume)")
    total_before = sum(before.values())
    reread = sum(by_folder(start).values()) + sum(by_folder(run, old).values())
    print(f"\nbefore the output merge the resume read {fmt_mb(reread)} of files written before it = "
          f"{reread / total_before:.0%} of the {fmt_mb(total_before)} stored then (segments past the cursor are "
          f"unsent work and must be read); the output merge reads every output part ({fmt_mb(sum(merge.values()))}); "
          f"{fmt_mb(disk)} in the store at the end")
    sent_once = stats["batch_requests_processed"] == n
    print(f"emulator: {stats['batches_created']} batches, {stats['batch_requests_processed']:,} batch requests over "
          f"both phases for {n:,} samples (each sent once: {'yes' if sent_once else 'NO'})")
    ok = second["status"] == "finished" and second["records"] == n and sent_once
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
