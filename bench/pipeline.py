"""Benchmark: N char_codes-sized requests through the whole batch pipeline against the emulator.

generate -> assemble -> push -> poll -> process -> output, on a local task folder (temp dir), with batches of
50,000 requests that the emulator completes at once (``--batch-duration 0``). The emulator runs in its own process,
so its CPU time is reported apart from the engine's. Target: 1,000,000 requests in under 5 minutes and under 1 GB
peak RSS of the engine process.

    /work/venv/bin/python bench/pipeline.py                 # 1,000,000 requests
    /work/venv/bin/python bench/pipeline.py --n 20000       # quick (seconds)
    /work/venv/bin/python bench/pipeline.py --n 200000 --per-call-schema   # task builds response_format per request

Profile the engine process: ``py-spy record -o prof.svg -- /work/venv/bin/python bench/pipeline.py --n 200000``
(the emulator child is not sampled unless ``--subprocesses`` is given).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import (
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

from gbatch_flows.engine.output import write_output
from gbatch_flows.engine.runner import run_engine
from gbatch_flows.launch import open_engine, prepare

TARGET_S = 300.0
TARGET_RSS_MB = 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of requests (default 1,000,000)")
    parser.add_argument("--batch-requests", type=int, default=50_000, help="max_batch_requests (default 50,000)")
    parser.add_argument("--dir", help="task folder parent (default: a temp dir, deleted afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the task folder")
    parser.add_argument("--per-call-schema", action="store_true",
                        help="the task builds response_format for every request (Task.chat_request(response_model=))")
    parser.add_argument("--emulator-arg", action="append", default=[], help="extra emulator flag (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="gbatch-bench-"))
    task = BenchChars({"n": args.n, "per_call_schema": args.per_call_schema})
    options = bench_options(root / "tasks", max_batch_requests=args.batch_requests)
    counts = IOCounts()
    load0 = os.getloadavg()[0]
    try:
        with EmulatorProcess("--batch-duration", "0", *args.emulator_arg) as emu:
            emu_cpu0, cpu0, rss0 = emu.cpu_seconds(), self_cpu_seconds(), self_peak_rss_mb()
            t0 = time.perf_counter()
            with counting_stores(counts), StageTimer() as timer:
                with open_engine(task, options, "bench", base_url=emu.base_url, api_key=DUMMY_KEY) as engine:
                    timer.time_store_commits(engine.store)
                    prepare(engine, task)
                    summary = run_engine(engine)
                    t_out, c_out, p_out = time.perf_counter(), time.process_time(), self_peak_rss_mb()
                    ref, records = write_output(engine.store, engine.state, task.output_name)
                    out_s, out_cpu = time.perf_counter() - t_out, time.process_time() - c_out
                    out_peak = self_peak_rss_mb() - p_out
                    task_url = engine.store.url
            wall = time.perf_counter() - t0
            cpu = self_cpu_seconds() - cpu0
            emu_cpu = emu.cpu_seconds() - emu_cpu0
            emu_rss = emu.peak_rss_mb()
            stats = emu.stats()
        rss = self_peak_rss_mb()
        disk, files = store_size(task_url)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)

    n = args.n
    print(f"pipeline: {n:,} requests, batches of {args.batch_requests:,}, local store, emulator in its own process; "
          f"{os.cpu_count()} CPUs, load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"run: {summary.status} ({summary.reason}); counts {summary.counts}")
    rows = [("stage", "wall s", "CPU s", "calls", "wall share", "req/CPU s", "peak RSS +MB")]
    for name, t in timer.timings.items():
        if t.calls:
            rate = f"{n / t.cpu:,.0f}" if t.cpu and name in ("generate", "assemble", "process") else ""
            rows.append((name, f"{t.seconds:.2f}", f"{t.cpu:.2f}", str(t.calls), f"{t.seconds / wall:.0%}", rate,
                         f"{t.peak_growth_mb:,.0f}"))
    rows.append(("write_output", f"{out_s:.2f}", f"{out_cpu:.2f}", "1", f"{out_s / wall:.0%}",
                 f"{records / out_cpu:,.0f}" if out_cpu else "", f"{out_peak:,.0f}"))
    print_table(rows, "time per stage (store.commit is inside the stages; poll waits for the emulator)")
    if n >= 200_000:
        verdict = (f"target {TARGET_S:.0f} s for 1M: {'met' if wall * 1_000_000 / n <= TARGET_S else 'NOT met'} "
                   f"at this rate, {wall * 1_000_000 / n:.0f} s/1M")
    else:
        verdict = "too few requests to extrapolate to 1M: start-up costs dominate"
    print(f"\ntotal wall {wall:.1f} s -> {n / wall:,.0f} requests/s ({verdict})")
    print(f"engine process: CPU {cpu:.1f} s ({cpu / wall:.0%} of wall), peak RSS {rss:,.0f} MB "
          f"({rss0:,.0f} MB after imports) "
          f"(target < {TARGET_RSS_MB:.0f} MB: {'met' if rss < TARGET_RSS_MB else 'NOT met'})")
    print(f"emulator process: CPU {emu_cpu:.1f} s ({emu_cpu / wall:.0%} of wall; "
          f"{emu_cpu / (emu_cpu + cpu):.0%} of the CPU of both), peak RSS {emu_rss:,.0f} MB")
    print(f"engine + emulator CPU {cpu + emu_cpu:.1f} s = {(cpu + emu_cpu) / wall:.0%} of wall "
          f"(the runner polls, then processes: the two mostly take turns)")
    print(f"emulator: {stats['batches_created']} batches, {stats['batch_requests_processed']:,} batch requests, "
          f"{fmt_mb(stats['bytes_uploaded'])} uploaded, 429s {stats['responses_429']}")
    print(f"store: {fmt_mb(counts.written)} written in {counts.files_written:,} files "
          f"({', '.join(f'{k} {fmt_mb(v)}' for k, v in sorted(counts.by_prefix_written.items()))}); "
          f"{fmt_mb(counts.read)} read; {fmt_mb(disk)} on disk in {files:,} files at the end")
    print(f"output: {records:,} records in {ref.path} ({fmt_mb(ref.size)})")
    ok = summary.status == "finished" and records == n
    if not ok:
        print("ERROR: the run did not finish with one record per request")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
