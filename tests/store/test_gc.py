"""Garbage collection keeps every blob a remaining manifest references and removes old unreferenced ones."""

from __future__ import annotations

import os
import time

from gbatch_flows.store.paths import manifest_path

from .conftest import Target


def test_gc_keeps_referenced_and_deletes_unreferenced(target: Target) -> None:
    store = target.open(max_chain=2, auto_keep_generations=None)
    m = store.load()
    refs = {}
    for i in range(8):  # batch i is referenced from generation i+1 until it is dropped below
        refs[i] = store.put_blob(f"batches/{i:06d}.jsonl", f"batch {i}\n".encode())
        m = store.commit(m, {f"batch/{i:06d}": {"ref": refs[i]}})
    m = store.commit(m, {f"batch/{i:06d}": None for i in range(6)})  # only batches 6 and 7 stay in the state
    leftover = store.put_blob("batches/999999.jsonl", b"crashed run\n")
    store.write_text("output/result.jsonl", "mutable output\n")
    store.write_text("notes.txt", "top-level file\n")
    state = dict(m.sections)

    assert store.gc(grace_s=3600, keep_generations=1) == [
        manifest_path(g) for g in range(1, 9)
    ]  # young blobs survive a long grace; manifests are pruned down to the newest chain
    assert store.exists(leftover.path)

    deleted = store.gc(grace_s=0, keep_generations=1)
    assert sorted(deleted) == sorted([f"batches/{i:06d}.jsonl" for i in range(6)] + [leftover.path])
    for i in (6, 7):
        assert store.read_blob(refs[i]) == f"batch {i}\n".encode()
    assert store.read_text("output/result.jsonl") == "mutable output\n"
    assert store.read_text("notes.txt") == "top-level file\n"
    fresh = target.open().load()
    assert fresh.generation == 9 and dict(fresh.sections) == state


def test_gc_keeps_blobs_of_kept_older_generations(target: Target) -> None:
    store = target.open(auto_keep_generations=None)
    old = store.put_blob("results/old.jsonl", b"old\n")
    m = store.commit(store.load(), {"result": {"ref": old}})
    new = store.put_blob("results/new.jsonl", b"new\n")
    m = store.commit(m, {"result": {"ref": new}})
    assert store.gc(grace_s=0, keep_generations=5) == []  # generation 1 is kept for roll-back, so is its blob
    assert store.read_blob(old) == b"old\n"
    assert store.load_generation(1).get("result")["ref"] == old.model_dump()


def test_gc_grace_and_temp_files_on_disk(local_target: Target) -> None:
    store = local_target.open()
    store.commit(store.load(), {"x": 1})
    young = store.put_blob("batches/young.jsonl", b"y\n")
    old = store.put_blob("batches/old.jsonl", b"o\n")
    temp = local_target.local_root / "batches" / ".part.jsonl.tmp-0123"
    temp.write_bytes(b"half a blob")
    hour_ago = time.time() - 7200
    for path in (local_target.local_root / old.path, temp):
        os.utime(path, (hour_ago, hour_ago))
    deleted = store.gc(grace_s=3600)
    assert deleted == ["batches/.part.jsonl.tmp-0123", "batches/old.jsonl"]
    assert store.exists(young.path) and not temp.exists()


def test_auto_prune_keeps_recent_generations_loadable(local_target: Target) -> None:
    store = local_target.open(max_chain=3, auto_keep_generations=4)
    m = store.load()
    for i in range(30):
        m = store.commit(m, {"x": i})
    gens = store.generations()
    assert gens[-1] == 30 and len(gens) <= 4 + 3
    for gen in gens[-4:]:
        assert store.load_generation(gen).get("x") == gen - 1
