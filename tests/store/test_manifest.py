"""Manifests: commit/load, deltas and checkpoints, O(change) commits, validation, stale bases, roll-back."""

from __future__ import annotations

import math

import pytest

from gbatch_flows.store import (
    SCHEMA_VERSION,
    BlobRef,
    ConcurrentModification,
    InvalidSection,
    Manifest,
    StoreError,
)
from gbatch_flows.store.codec import decode_manifest
from gbatch_flows.store.paths import manifest_path

from .conftest import Target


def _kinds(store) -> dict[int, str]:
    out = {}
    for gen in store.generations():
        path = manifest_path(gen)
        out[gen] = decode_manifest(path, store.backend.read_bytes(path), gen).kind
    return out


def test_new_task_is_generation_zero(target: Target) -> None:
    m = target.open().load()
    assert isinstance(m, Manifest)
    assert (m.generation, len(m.sections), m.schema_version) == (0, 0, SCHEMA_VERSION)
    assert m.get("task") is None and m.get("task", 5) == 5


def test_commit_load_delete(target: Target) -> None:
    store = target.open()
    ref = store.put_blob("batches/1.jsonl", b"{}\n")
    m1 = store.commit(
        store.load(), {"task": {"name": "demo"}, "batch/000001": {"ref": ref, "state": "pending"}}, "create"
    )
    assert m1.generation == 1 and m1.get("batch/000001")["ref"] == ref.model_dump()
    m2 = store.commit(m1, {"batch/000001": None, "totals": {"requests": 3, "cost": 0.25}}, "drop batch")
    assert dict(m2.sections) == {"task": {"name": "demo"}, "totals": {"requests": 3, "cost": 0.25}}
    assert m2.message == "drop batch" and m2.writer
    fresh = target.open().load()
    assert fresh == m2 and fresh.generation == 2 and dict(fresh.sections) == dict(m2.sections)
    value = fresh.get("task")
    value["name"] = "mutated"
    assert fresh.get("task") == {"name": "demo"}  # callers get copies
    with pytest.raises(TypeError):
        fresh.sections["task"] = {}  # type: ignore[index]
    assert m1.get("batch/000001") is not None  # older Manifest objects are unchanged


def test_deltas_checkpoints_and_fresh_reload(target: Target) -> None:
    store = target.open(max_chain=4, min_checkpoint_bytes=1 << 20, auto_keep_generations=None)
    states = {}
    m = store.load()
    for i in range(11):
        m = store.commit(
            m, {f"chunk/{i:06d}": {"n": i, "items": list(range(i))}, "totals": {"chunks": i + 1}}
        )
        states[m.generation] = dict(m.sections)
    kinds = _kinds(store)
    assert kinds == {g: ("checkpoint" if g in (1, 5, 9) else "delta") for g in range(1, 12)}
    fresh = target.open()
    assert fresh.load() == m and dict(fresh.load().sections) == states[11]
    for gen, state in states.items():
        assert dict(fresh.load_generation(gen).sections) == state


def test_checkpoint_when_deltas_outgrow_snapshot(local_target: Target) -> None:
    store = local_target.open(max_chain=1000, min_checkpoint_bytes=0, auto_keep_generations=None)
    m = store.commit(store.load(), {"small": 1})
    for i in range(6):
        m = store.commit(m, {f"k{i}": "x" * 100})
    kinds = _kinds(store)
    assert kinds[1] == "checkpoint"
    assert "checkpoint" in [kinds[g] for g in range(2, 8)]  # deltas would outgrow the tiny snapshot


def test_commit_is_o_change(target: Target) -> None:
    store = target.open()
    big = {
        f"chunk/{i:06d}": {
            "ref": {"path": f"requests/{i:06d}.jsonl", "size": 10, "sha256": "a" * 64},
            "count": 10_000,
        }
        for i in range(2000)
    }
    m = store.commit(store.load(), big, "bulk")
    checkpoint_size = len(store.backend.read_bytes(manifest_path(m.generation)))
    m = store.commit(m, {"batch/000001": {"state": "pushing"}, "totals": {"pushed": 1}}, "small")
    delta_size = len(store.backend.read_bytes(manifest_path(m.generation)))
    assert checkpoint_size > 200_000
    assert delta_size < 1_000
    assert len(m.referenced_paths()) == 2000


def test_incremental_load_reads_only_new_generations(target: Target) -> None:
    writer, reader = target.open(), target.open()
    m = writer.commit(writer.load(), {f"s{i}": i for i in range(50)})
    assert reader.load() == m
    for i in range(3):
        m = writer.commit(m, {"s0": -i})
    seen: list[str] = []
    original = reader.backend.read_many

    def spy(paths: list[str]) -> dict[str, bytes]:
        seen.extend(paths)
        return original(paths)

    reader.backend.read_many = spy  # type: ignore[method-assign]
    assert reader.load() == m
    assert sorted(seen) == [manifest_path(g) for g in (2, 3, 4)]
    seen.clear()
    assert reader.load() is reader.load() and seen == []  # nothing new: nothing read


def test_blobref_objects_and_invalid_values(target: Target) -> None:
    store = target.open()
    ref = store.put_blob("batches/1.jsonl", b"a\n")
    m = store.commit(store.load(), {"batch/1": {"input": ref, "pair": (1, 2)}})
    assert BlobRef.model_validate(m.get("batch/1")["input"]) == ref and m.get("batch/1")["pair"] == [1, 2]
    bad_values = [
        {"x": math.nan},
        {"x": object()},
        {"x": {1: "int key"}},
        {"path": "batches/1", "size": 1, "sha256": "not-hex"},
        {"path": "../escape", "size": 1, "sha256": "a" * 64},
    ]
    for value in bad_values:
        with pytest.raises(InvalidSection, match="batch/2"):
            store.commit(m, {"batch/2": value})
    for key in ["", " padded", "x" * 300, 7]:
        with pytest.raises(InvalidSection):
            store.commit(m, {key: 1})  # type: ignore[dict-item]
    assert store.generations() == [1]  # nothing was written by the refused commits


def test_stale_base_gets_clear_conflict(target: Target) -> None:
    a, b = target.open(), target.open()
    base = a.commit(a.load(), {"x": 1})
    b.commit(b.load(), {"x": 2}, "b wins")
    with pytest.raises(ConcurrentModification) as info:
        a.commit(base, {"x": 3})
    message = str(info.value)
    assert "generation 2" in message and "generation 1" in message and "b wins" in message
    assert b.writer_id in message and "store.load()" in message
    assert info.value.generation == 2 and info.value.base_generation == 1
    retried = a.commit(a.load(), {"x": 3})
    assert retried.generation == 3 and target.open().load().get("x") == 3


def test_stale_base_after_pruning_is_refused(local_target: Target) -> None:
    store = local_target.open(max_chain=2, auto_keep_generations=2)
    stale = store.commit(store.load(), {"x": 0})
    m = stale
    for i in range(1, 12):
        m = store.commit(m, {"x": i})
    assert 2 not in store.generations()  # pruned, so a create-if-absent of generation 2 would succeed
    with pytest.raises(ConcurrentModification, match="stale"):
        store.commit(stale, {"x": "from the past"})
    assert 2 not in store.generations()
    assert local_target.open().load().get("x") == 11


def test_manual_rollback_by_moving_newest_away(target: Target) -> None:
    store = target.open(auto_keep_generations=None)
    m = store.load()
    for i in range(5):
        m = store.commit(m, {"x": i})
    running = target.open()
    stale = running.load()  # a run that still works on generation 5
    store.backend.delete_many([manifest_path(5), manifest_path(4)])
    with pytest.raises(ConcurrentModification, match="no longer in manifests"):
        running.commit(stale, {"x": "built on a rolled-back state"})
    assert store.generations() == [1, 2, 3]
    assert store.load().generation == 3 and store.load().get("x") == 2  # same Store object (had gen 5 cached)
    again = store.commit(store.load(), {"x": "after rollback"})
    assert again.generation == 4 and target.open().load().get("x") == "after rollback"


def test_base_from_another_store_is_refused(tmp_path) -> None:
    a, b = Target("local", str(tmp_path / "a")).open(), Target("local", str(tmp_path / "b")).open()
    other = b.commit(b.load(), {"x": 1})
    with pytest.raises(StoreError, match="loaded from"):
        a.commit(other, {"x": 2})
    with pytest.raises(StoreError, match="does not exist"):
        a.load_generation(3)
    assert a.generations() == []


def test_s3_endpoint_without_conditional_writes_is_refused(s3_server, s3_bucket, monkeypatch) -> None:
    from gbatch_flows.store import open_store
    from gbatch_flows.store import s3 as s3_module

    store = open_store(s3_server.url(s3_bucket, "no-conditions"), s3_server.storage_options)
    original = store.backend._call

    def ignoring_conditions(method: str, **kwargs):
        kwargs.pop("IfNoneMatch", None)
        return original(method, **kwargs)

    monkeypatch.setattr(store.backend, "_call", ignoring_conditions)
    monkeypatch.setattr(s3_module, "_PROBED", set())
    with pytest.raises(StoreError, match="does not support conditional writes"):
        store.commit(store.load(), {"x": 1})
    assert store.generations() == []
