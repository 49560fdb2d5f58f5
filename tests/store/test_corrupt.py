"""Damaged or hand-edited manifests give the right error naming the file, and nothing is changed."""

from __future__ import annotations

import pytest

from gbatch_flows.store import CorruptManifest, UnsupportedSchemaVersion
from gbatch_flows.store.codec import encode_manifest
from gbatch_flows.store.paths import manifest_path

from .conftest import Target


def _snapshot(target: Target) -> dict[str, bytes]:
    store = target.open()
    return {path: store.backend.read_bytes(path) for path in store.list("")}


def _three_generations(target: Target) -> None:
    store = target.open()
    m = store.commit(store.load(), {"task": {"name": "t"}, "totals": {"n": 1}})
    m = store.commit(m, {"totals": {"n": 2}})
    store.commit(m, {"totals": {"n": 3}, "batch/1": {"state": "done"}})


def _newer_schema(original: bytes) -> bytes:
    body, _ = encode_manifest({"schema_version": 99, "generation": 3, "some_new_field": True}, changes={})
    return body


DAMAGES = {
    "garbage": (lambda data: b"\x00\x01 this is not json", CorruptManifest, "not valid JSON"),
    "edited": (lambda data: data.replace(b'{"n":3}', b'{"n":4}'), CorruptManifest, "checksum mismatch"),
    "truncated": (lambda data: data[: len(data) // 2], CorruptManifest, "not valid JSON"),
    "trailer-removed": (lambda data: data[: data.rindex(b',"sha256"')] + b"}", CorruptManifest, "trailer"),
    "no-schema": (lambda data: data.replace(b'"schema_version":1,', b""), CorruptManifest, "schema_version"),
    "newer-schema": (_newer_schema, UnsupportedSchemaVersion, "newer gbatch_flows"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_newest_manifest(target: Target, damage: str) -> None:
    _three_generations(target)
    change, error, words = DAMAGES[damage]
    path = manifest_path(3)
    backend = target.open().backend
    backend.write_bytes(path, change(backend.read_bytes(path)))
    before = _snapshot(target)
    with pytest.raises(error) as info:
        target.open().load()
    assert path in str(info.value) and words in str(info.value)
    assert info.value.path == path
    if damage == "newer-schema":
        assert "upgrade" in str(info.value).lower()
    assert _snapshot(target) == before  # nothing repaired, dropped or rewritten


def test_damaged_or_missing_middle_generation(target: Target) -> None:
    _three_generations(target)
    backend = target.open().backend
    middle = manifest_path(2)
    original = backend.read_bytes(middle)
    backend.write_bytes(middle, original.replace(b'{"n":2}', b'{"n":9}'))
    with pytest.raises(CorruptManifest, match=middle):
        target.open().load()
    backend.delete_many([middle])
    with pytest.raises(CorruptManifest, match="missing") as info:
        target.open().load()
    assert manifest_path(3) in str(info.value) and middle in str(info.value)


def test_generation_from_another_task_is_detected(tmp_path) -> None:
    a, b = Target("local", str(tmp_path / "a")), Target("local", str(tmp_path / "b"))
    _three_generations(a)
    store_b = b.open()
    m = store_b.commit(store_b.load(), {"task": {"name": "other"}})
    m = store_b.commit(m, {"totals": {"n": 2}})
    store_b.commit(m, {"totals": {"n": 3}})
    a.open().backend.write_bytes(manifest_path(3), b.open().backend.read_bytes(manifest_path(3)))
    with pytest.raises(CorruptManifest, match="does not follow generation 2"):
        a.open().load()


def test_file_named_for_another_generation(local_target: Target) -> None:
    _three_generations(local_target)
    backend = local_target.open().backend
    backend.write_bytes(manifest_path(4), backend.read_bytes(manifest_path(3)))
    with pytest.raises(CorruptManifest, match="says generation 3 but its name says 4"):
        local_target.open().load()
