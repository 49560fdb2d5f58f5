"""Final task output: the committed output parts of all processed batches, merged in generation order.

Parts are immutable and each is sorted by (seq, part), so a streamed k-way merge gives the same file whatever
batches the requests went through, across crashes and retries. Groups of parts are merged first when there are many,
so the number of open files stays bounded.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import orjson

from gbatch_flows.engine.state import TaskState
from gbatch_flows.store import BlobRef, Store

MERGE_FAN_IN = 128


def output_parts(state: TaskState) -> list[BlobRef]:
    return [BlobRef.model_validate(ref) for b in state.batches.values()
            for ref in (b.output_ref, b.failure_output_ref) if ref is not None]


def _keyed(store: Store, ref: BlobRef) -> Iterator[tuple[int, int, bytes]]:
    for raw in store.iter_lines(ref):
        if raw.strip():
            obj = orjson.loads(raw)
            yield obj["seq"], obj["part"], raw


def merged_lines(store: Store, refs: list[BlobRef], tmp_prefix: str = "tmp/merge") -> Iterator[bytes]:
    """Part lines (with their seq/part envelope) in (seq, part) order."""
    level = 0
    while len(refs) > MERGE_FAN_IN:
        grouped = []
        for g in range(0, len(refs), MERGE_FAN_IN):
            merged = heapq.merge(*(_keyed(store, r) for r in refs[g : g + MERGE_FAN_IN]))
            path = f"{tmp_prefix}/{level:02d}-{g // MERGE_FAN_IN:06d}.jsonl"
            grouped.append(store.put_blob(path, (t[2] + b"\n" for t in merged)))
        refs, level = grouped, level + 1
    for _, _, raw in heapq.merge(*(_keyed(store, r) for r in refs)):
        yield raw


def records(store: Store, state: TaskState) -> Iterator[dict]:
    """The task's output records in order (what downstream code reads back)."""
    for raw in merged_lines(store, output_parts(state)):
        yield orjson.loads(raw)["record"]


def write_output(store: Store, state: TaskState, path: str) -> tuple[BlobRef, int]:
    """Write the merged output as JSONL (one record per line) at ``path``; returns its ref and line count."""
    count = 0

    def lines() -> Iterator[bytes]:
        nonlocal count
        for raw in merged_lines(store, output_parts(state)):
            count += 1
            yield orjson.dumps(orjson.loads(raw)["record"]) + b"\n"

    ref = store.put_blob(path, lines())
    for tmp in store.list("tmp/merge"):
        store.delete(tmp)
    return ref, count
