"""Commit cost of the state store vs task size: is a small commit O(change)?

For each task size (number of requests) a realistic manifest is built (one section per chunk of 10,000
requests, one per batch of 50,000, one queue section per batch, task and totals), then 50 small commits are
timed (one batch section changes + totals). Prints the bytes written per commit, mean/p95 latency, and the
ratio between the largest and the smallest size (target ~1). Also times a cold load, and blob streaming.

    python bench/store_commit.py                     # 10k and 1M requests, local temp folder
    python bench/store_commit.py --n 1000 20000      # quick
    python bench/store_commit.py --moto              # against a moto S3 server (slow emulator; logic only)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

from gbatch_flows.store import BlobRef, Store, open_store
from gbatch_flows.store.paths import manifest_path

CHUNK = 10_000
BATCH = 50_000


def _ref(path: str, size: int) -> dict[str, Any]:
    return BlobRef(path=path, size=size, sha256=hashlib.sha256(path.encode()).hexdigest()).model_dump()


def build_sections(n: int) -> dict[str, Any]:
    """Sections an engine would hold for a task of ``n`` requests."""
    sections: dict[str, Any] = {
        "task": {
            "name": "bench",
            "model": "gpt-4o-mini",
            "options": {"max_batch_requests": BATCH, "chunk_requests": CHUNK},
        },
        "totals": {
            "requests": n,
            "pushed": 0,
            "done": 0,
            "failed": 0,
            "tokens_in": 0,
            "tokens_out": 0,
            "cost_usd": 0.0,
        },
    }
    for c in range((n + CHUNK - 1) // CHUNK):
        first = c * CHUNK
        count = min(CHUNK, n - first)
        sections[f"chunk/{c:06d}"] = {
            "ref": _ref(f"requests/{c:06d}.jsonl", count * 400),
            "first": first,
            "count": count,
            "tokens_est": count * 120,
            "cost_est": round(count * 0.00003, 6),
        }
    for b in range((n + BATCH - 1) // BATCH):
        first = b * BATCH
        count = min(BATCH, n - first)
        sections[f"batch/{b:06d}"] = {
            "state": "pending",
            "remote_id": None,
            "input": _ref(f"batches/{b:06d}.jsonl", count * 420),
            "output": None,
            "errors": None,
            "first": first,
            "count": count,
            "reserved": {"tokens": count * 1000, "cost_usd": count * 0.0006},
            "usage": None,
            "attempts": 0,
        }
        sections[f"queue/{b:06d}"] = {
            "chunks": [f"chunk/{c:06d}" for c in range(first // CHUNK, (first + count - 1) // CHUNK + 1)]
        }
    return sections


def bench_size(url: str, options: dict[str, Any] | None, n: int, commits: int) -> dict[str, float]:
    store = open_store(url, options)
    sections = build_sections(n)
    base = store.commit(store.load(), sections, "initial plan")
    full_bytes = len(store.backend.read_bytes(manifest_path(base.generation)))
    batches = base.keys("batch/")
    latencies: list[float] = []
    written: list[int] = []
    m = base
    for i in range(commits):
        key = batches[i % len(batches)]
        batch = m.get(key)
        batch.update(
            state="in_progress", remote_id=f"batch_{uuid.uuid4().hex[:24]}", attempts=batch["attempts"] + 1
        )
        totals = m.get("totals")
        totals.update(pushed=totals["pushed"] + batch["count"], done=totals["done"] + 1)
        start = time.perf_counter()
        m = store.commit(m, {key: batch, "totals": totals}, f"push {key}")
        latencies.append(time.perf_counter() - start)
        written.append(len(store.backend.read_bytes(manifest_path(m.generation))))
    start = time.perf_counter()
    fresh = open_store(url, options).load()
    cold_load = time.perf_counter() - start
    assert fresh == m
    latencies.sort()
    return {
        "sections": len(sections),
        "snapshot_bytes": full_bytes,
        "bytes_per_commit": statistics.mean(written),
        "max_bytes": max(written),
        "mean_ms": statistics.mean(latencies) * 1000,
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))] * 1000,
        "cold_load_ms": cold_load * 1000,
    }


def bench_blobs(store: Store, megabytes: int, folder: str | None) -> None:
    line = (
        b'{"custom_id":"req-0000000","method":"POST","url":"/v1/chat/completions","body":{}}'
        + b" " * 40
        + b"\n"
    )
    per_chunk = (1 << 20) // len(line)

    def chunks() -> Iterator[bytes]:
        block = line * per_chunk
        for _ in range(megabytes):
            yield block

    size_mb = megabytes * per_chunk * len(line) / (1 << 20)
    if folder:
        raw = os.path.join(folder, "raw.bin")
        start = time.perf_counter()
        with open(raw, "wb") as handle:
            handle.writelines(chunks())
            handle.flush()
            os.fsync(handle.fileno())
        raw_s = time.perf_counter() - start
        os.unlink(raw)
        print(f"blob: plain open/write/fsync of {size_mb:.0f} MiB (reference): {size_mb / raw_s:.0f} MiB/s")
    start = time.perf_counter()
    ref = store.put_blob("bench/blob.jsonl", chunks())
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    count = sum(1 for _ in store.iter_lines(ref))
    read_s = time.perf_counter() - start
    print(
        f"blob: {size_mb:.0f} MiB put_blob (sha256+fsync+rename) {size_mb / write_s:.0f} MiB/s; "
        f"iter_lines verified {size_mb / read_s:.0f} MiB/s ({count} lines)"
    )
    store.delete("bench/blob.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 1_000_000], help="task sizes (requests)")
    parser.add_argument("--commits", type=int, default=50)
    parser.add_argument("--blob-mb", type=int, default=128, help="size of the blob streaming test (0 = skip)")
    parser.add_argument(
        "--moto", action="store_true", help="run against a moto S3 server instead of a temp folder"
    )
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        if args.moto:
            from gbatch_flows.testing.moto import moto_s3_server

            s3 = stack.enter_context(moto_s3_server())
            bucket = s3.create_bucket()
            make_url, options, folder = (lambda name: s3.url(bucket, name)), s3.storage_options, None
            print("moto S3 emulator: ~100 ops/s, so these figures test the logic, not S3 speed")
        else:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="store-bench-"))
            make_url, options = (lambda name: os.path.join(folder, name)), None
        results = {}
        for n in args.n:
            results[n] = r = bench_size(make_url(f"task-{n}"), options, n, args.commits)
            print(
                f"n={n:>9,} requests: {r['sections']:>4} sections, snapshot {r['snapshot_bytes']:>8,} B | "
                f"{args.commits} commits: {r['bytes_per_commit']:>7,.0f} B/commit (max {r['max_bytes']:,}), "
                f"mean {r['mean_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms | cold load {r['cold_load_ms']:.1f} ms"
            )
        small, large = min(results), max(results)
        if small != large:
            a, b = results[small], results[large]
            print(
                f"ratio {large:,}/{small:,}: bytes/commit {b['bytes_per_commit'] / a['bytes_per_commit']:.2f}, "
                f"mean latency {b['mean_ms'] / a['mean_ms']:.2f}, p95 {b['p95_ms'] / a['p95_ms']:.2f} "
                f"(snapshot ratio {b['snapshot_bytes'] / a['snapshot_bytes']:.0f})"
            )
        if args.blob_mb > 0:
            bench_blobs(
                open_store(make_url("blobs"), options),
                min(args.blob_mb, 8) if args.moto else args.blob_mb,
                folder,
            )


if __name__ == "__main__":
    main()
