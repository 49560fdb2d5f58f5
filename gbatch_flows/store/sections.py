"""Turning the ``changes`` given to ``Store.commit`` into validated, canonically encoded section values."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from gbatch_flows.store.codec import dump_value
from gbatch_flows.store.errors import InvalidSection
from gbatch_flows.store.models import iter_blob_refs, json_value_adapter

MAX_KEY_LENGTH = 200


def validate_key(key: Any) -> str:
    """Section keys are short printable strings such as ``"batch/000017"``."""
    if not isinstance(key, str) or not key:
        raise InvalidSection(f"section keys are non-empty strings, got {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidSection(f"section key longer than {MAX_KEY_LENGTH} characters: {key[:40]!r}...")
    if key != key.strip() or any(ord(c) < 32 for c in key):
        raise InvalidSection(f"section key has surrounding whitespace or control characters: {key!r}")
    return key


def to_jsonable(value: Any) -> Any:
    """Convert pydantic models (e.g. BlobRef) and tuples inside ``value`` to plain JSON types."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def encode_section(key: str, value: Any) -> tuple[bytes, list[str]]:
    """Validate one section value; return its canonical JSON bytes and the blob paths it references."""
    plain = to_jsonable(value)
    try:
        json_value_adapter.validate_python(plain)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidSection(
            f"section {key!r} is not JSON-serialisable ({where}: {first['msg']}); use dict/list/str/int/float/"
            "bool/None with string keys"
        ) from None
    try:
        refs = [ref.path for ref in iter_blob_refs(plain)]
    except ValidationError as exc:
        raise InvalidSection(
            f"section {key!r} holds a dict with keys path/size/sha256 that is not a valid BlobRef: "
            f"{exc.errors()[0]['msg']}"
        ) from None
    try:
        raw = dump_value(plain)
    except ValueError as exc:
        raise InvalidSection(
            f"section {key!r} cannot be stored as JSON: {exc} (NaN/Infinity are not allowed)"
        ) from None
    return raw, refs


def encode_changes(changes: Mapping[str, Any]) -> tuple[dict[str, bytes], list[str], dict[str, list[str]]]:
    """Split ``changes`` into encoded upserts, deleted keys (value None) and the blob paths of each upsert."""
    if not isinstance(changes, Mapping):
        raise InvalidSection(
            f"changes must be a mapping of section key -> value, got {type(changes).__name__}"
        )
    upserts: dict[str, bytes] = {}
    deleted: list[str] = []
    refs: dict[str, list[str]] = {}
    for key, value in changes.items():
        validate_key(key)
        if value is None:
            deleted.append(key)
            continue
        upserts[key], found = encode_section(key, value)
        if found:
            refs[key] = found
    return upserts, deleted, refs


def raw_ref_paths(raw: bytes) -> list[str]:
    """Blob paths referenced by an encoded section value (cheap when it holds none)."""
    if b'"sha256"' not in raw:
        return []
    return [ref.path for ref in iter_blob_refs(json.loads(raw))]
