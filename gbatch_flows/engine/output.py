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
#: Output records written per chunk (the blob is hashed and written chunk by chunk: the same bytes either way).
WRITE_CHUNK_RECORDS = 4096


def output_parts(state: TaskState) -> list[BlobRef]:
    return [BlobRef.model_validate(ref) for b in state.batches.values()
            for ref in (b.output_ref, b.failure_output_ref) if ref is not None]


def _keyed(store: Store, ref: BlobRef) -> Iterator[tuple[int, int, bytes, dict]]:
    """``(seq, part, raw line, parsed line)`` of a part's lines. The merge orders them as it ordered
    ``(seq, part, raw)``: two entries equal that far hold equal parsed lines, which tuples compare with ``==`` only."""
    for raw in store.iter_lines(ref):
        if raw.strip():
            obj = orjson.loads(raw)
            yield obj["seq"], obj["part"], raw, obj


def merged_lines(store: Store, refs: list[BlobRef], tmp_prefix: str = "tmp/merge") -> Iterator[bytes]:
    """Part lines (with their seq/part envelope) in (seq, part) order."""
    for raw, _ in merged_entries(store, refs, tmp_prefix):
        yield raw


def merged_entries(store: Store, refs: list[BlobRef], tmp_prefix: str = "tmp/merge") -> Iterator[tuple[bytes, dict]]:
    """``(raw line, parsed line)`` of the part lines in (seq, part) order: each line is parsed once."""
    level = 0
    while len(refs) > MERGE_FAN_IN:
        grouped = []
        for g in range(0, len(refs), MERGE_FAN_IN):
            merged = heapq.merge(*(_keyed(store, r) for r in refs[g : g + MERGE_FAN_IN]))
            path = f"{tmp_prefix}/{level:02d}-{g // MERGE_FAN_IN:06d}.jsonl"
            grouped.append(store.put_blob(path, (t[2] + b"\n" for t in merged)))
        refs, level = grouped, level + 1
    for _, _, raw, obj in heapq.merge(*(_keyed(store, r) for r in refs)):
        yield raw, obj


def records(store: Store, state: TaskState) -> Iterator[dict]:
    """The task's output records in order (what downstream code reads back)."""
    for _, obj in merged_entries(store, output_parts(state)):
        yield obj["record"]


def write_output(store: Store, state: TaskState, path: str) -> tuple[BlobRef, int]:
    """Write the merged output as JSONL (one record per line) at ``path``; returns its ref and line count."""
    count = 0

    def lines() -> Iterator[bytes]:
        nonlocal count
        dumps = orjson.dumps
        chunk: list[bytes] = []
        for _, obj in merged_entries(store, output_parts(state)):
            chunk.append(dumps(obj["record"]))
            if len(chunk) >= WRITE_CHUNK_RECORDS:
                count += len(chunk)
                yield b"\n".join(chunk) + b"\n"
                chunk = []
        if chunk:
            count += len(chunk)
            yield b"\n".join(chunk) + b"\n"

    ref = store.put_blob(path, lines())
    for tmp in store.list("tmp/merge"):
        store.delete(tmp)
    return ref, count
