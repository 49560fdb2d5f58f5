"""Blobs and plain files: streamed atomic writes, verified reads, path rules."""

from __future__ import annotations

import hashlib
import os

import pytest

from gbatch_flows.store import BlobNotFound, BlobRef, ChecksumMismatch, InvalidPath, StoreError
from gbatch_flows.store import s3 as s3_module

from .conftest import Target


def test_round_trip_bytes_and_chunks(target: Target) -> None:
    store = target.open()
    lines = [f'{{"id": {i}}}\n'.encode() for i in range(1000)]
    data = b"".join(lines)
    ref = store.put_blob("requests/000001.jsonl", iter(lines))
    assert ref == BlobRef(
        path="requests/000001.jsonl", size=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    assert store.read_blob(ref) == data
    assert list(store.iter_lines(ref)) == lines
    assert store.read_blob(ref.model_dump()) == data  # a ref stored in a section (plain dict) works too
    with store.open_blob(ref) as handle:
        pieces = []
        while piece := handle.read(777):
            pieces.append(piece)
    assert b"".join(pieces) == data

    whole = store.put_blob("batches/a.jsonl", b"x\ny")  # last line without newline
    assert list(store.iter_lines(whole)) == [b"x\n", b"y"]
    empty = store.put_blob("batches/empty.jsonl", [])
    assert empty.size == 0 and store.read_blob(empty) == b"" and list(store.iter_lines(empty)) == []
    assert store.exists("batches/a.jsonl") and not store.exists("batches/nope.jsonl")
    assert store.list("batches/") == ["batches/a.jsonl", "batches/empty.jsonl"]
    assert store.list("requests") == ["requests/000001.jsonl"]


def _tamper(target: Target, path: str, data: bytes) -> None:
    target.open().backend.write_bytes(path, data)


def test_tampered_blob_same_size_is_detected(target: Target) -> None:
    store = target.open()
    ref = store.put_blob("results/1.jsonl", b'{"a": 1}\n{"a": 2}\n')
    _tamper(target, ref.path, b'{"a": 1}\n{"a": 3}\n')
    with pytest.raises(ChecksumMismatch, match="results/1.jsonl") as info:
        store.read_blob(ref)
    assert "sha256" in str(info.value)
    with pytest.raises(ChecksumMismatch, match="results/1.jsonl"):
        list(store.iter_lines(ref))
    with pytest.raises(ChecksumMismatch), store.open_blob(ref) as handle:
        handle.read(ref.size)


def test_truncated_and_extended_blobs_are_detected(target: Target) -> None:
    store = target.open()
    ref = store.put_blob("results/2.jsonl", b"line one\nline two\n")
    _tamper(target, ref.path, b"line one\n")
    lines = store.iter_lines(ref)
    with pytest.raises(ChecksumMismatch, match="9 bytes, recorded 18"):
        next(lines)  # a wrong size is reported before any line is handed out
    _tamper(target, ref.path, b"line one\nline two\nextra\n")
    with pytest.raises(ChecksumMismatch, match="results/2.jsonl"):
        store.read_blob(ref)


def test_missing_blob(target: Target) -> None:
    store = target.open()
    ref = BlobRef(path="batches/ghost.jsonl", size=1, sha256="0" * 64)
    with pytest.raises(BlobNotFound, match="batches/ghost.jsonl"):
        store.read_blob(ref)
    with pytest.raises(FileNotFoundError):
        store.read_text("output/none.txt")


def test_failed_write_leaves_nothing(target: Target) -> None:
    store = target.open()

    def chunks():
        yield b"first part\n"
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError, match="generator failed"):
        store.put_blob("batches/broken.jsonl", chunks())
    assert not store.exists("batches/broken.jsonl")
    assert store.list("") == []
    if target.local_root is not None:
        leftovers = [name for _, _, files in os.walk(target.local_root) for name in files]
        assert leftovers == []  # the temp file was removed as well


def test_overwrite_rules(target: Target) -> None:
    store = target.open()
    first = store.put_blob("batches/7.jsonl", b"crashed run leftover\n")
    second = store.put_blob("batches/7.jsonl", b"new content\n")  # unreferenced: overwriting is fine
    assert first.sha256 != second.sha256 and store.read_blob(second) == b"new content\n"
    store.commit(store.load(), {"batch/7": {"ref": second}})
    with pytest.raises(StoreError, match="references it"):
        store.put_blob("batches/7.jsonl", b"other\n")
    with pytest.raises(StoreError, match="references it"):
        store.delete("batches/7.jsonl")
    assert store.read_blob(second) == b"new content\n"


def test_text_files_and_delete(target: Target) -> None:
    store = target.open()
    store.write_text("output/result.jsonl", "héllo\n")
    store.write_text("output/result.jsonl", "replaced\n")
    assert store.read_text("output/result.jsonl") == "replaced\n"
    store.delete("output/result.jsonl")
    store.delete("output/result.jsonl")  # deleting a missing file is fine
    assert not store.exists("output/result.jsonl")


@pytest.mark.parametrize(
    "bad",
    ["", "/abs/x", "../x", "a/../b", "a//b", ".hidden", "a/.tmp", "manifests/x.json", "lease.json", "a\\b"],
)
def test_invalid_paths(local_target: Target, bad: str) -> None:
    store = local_target.open()
    with pytest.raises(InvalidPath):
        store.put_blob(bad, b"x")


def test_put_blob_refuses_text(local_target: Target) -> None:
    with pytest.raises(TypeError, match="encode"):
        local_target.open().put_blob("batches/x", "text")  # type: ignore[arg-type]


def test_s3_multipart_stream_and_abort(s3_server, s3_bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    from gbatch_flows.store import open_store

    monkeypatch.setattr(s3_module, "PART_SIZE", 5 << 20)
    store = open_store(s3_server.url(s3_bucket, "multipart"), s3_server.storage_options)
    block = bytes(range(256)) * 4096  # 1 MiB
    ref = store.put_blob("batches/big.bin", (block for _ in range(11)))
    assert ref.size == 11 << 20
    assert store.read_blob(ref) == block * 11

    def failing():
        for _ in range(6):
            yield block
        raise RuntimeError("stream broke")

    with pytest.raises(RuntimeError, match="stream broke"):
        store.put_blob("batches/broken.bin", failing())
    assert not store.exists("batches/broken.bin")
    bucket, key = store.backend._split("batches/broken.bin")
    uploads = store.backend.fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])
    assert [u for u in uploads if u["Key"] == key] == []
