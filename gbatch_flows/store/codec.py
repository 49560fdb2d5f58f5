"""Byte format of manifest files: writing them, and reading them back with full verification.

A file is one JSON object, one section per line for readability, ending with ``,"sha256":"<hex>"}`` where
<hex> is the sha256 of every byte before that trailer.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from gbatch_flows.store.errors import CorruptManifest, UnsupportedSchemaVersion
from gbatch_flows.store.models import SCHEMA_VERSION, ManifestEnvelope

_TRAILER_START = b',"sha256":"'
_TRAILER = re.compile(rb',"sha256":"([0-9a-f]{64})"\}\s*\Z')


def dump_value(value: Any) -> bytes:
    """Canonical compact JSON of one section value (sorted keys, no NaN)."""
    return json.dumps(
        value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True
    ).encode()


def _dump_key(key: str) -> bytes:
    return json.dumps(key, ensure_ascii=False).encode()


def encode_manifest(
    header: Mapping[str, Any],
    *,
    sections: Mapping[str, bytes] | None = None,
    changes: Mapping[str, bytes] | None = None,
    deleted: Sequence[str] | None = None,
) -> tuple[bytes, str]:
    """Serialise a manifest file from its header fields and pre-encoded section values; return (body, sha256)."""
    head = json.dumps(dict(header), ensure_ascii=False, separators=(",", ":")).encode()
    parts = [head[:-1]]
    for name, values in (("sections", sections), ("changes", changes)):
        if values is None:
            continue
        lines = [_dump_key(key) + b":" + values[key] for key in sorted(values)]
        parts.append(b',\n"' + name.encode() + b'":{\n' + b",\n".join(lines) + b"\n}")
    if deleted is not None:
        parts.append(b',\n"deleted":' + json.dumps(sorted(deleted), ensure_ascii=False).encode() + b"\n")
    prefix = b"".join(parts)
    digest = hashlib.sha256(prefix).hexdigest()
    return prefix + _TRAILER_START + digest.encode() + b'"}\n', digest


def _validation_summary(exc: ValidationError) -> str:
    items = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        items.append(f"{where}: {err['msg']}")
    more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return "; ".join(items) + more


def decode_manifest(path: str, data: bytes, expected_generation: int) -> ManifestEnvelope:
    """Parse and verify a manifest file; raise CorruptManifest/UnsupportedSchemaVersion naming the problem."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptManifest(path, f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CorruptManifest(path, f"expected a JSON object, found {type(obj).__name__}")
    version = obj.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CorruptManifest(path, f"schema_version is missing or invalid ({version!r})")
    if version > SCHEMA_VERSION:
        raise UnsupportedSchemaVersion(path, version, SCHEMA_VERSION)
    start = data.rfind(_TRAILER_START)
    match = _TRAILER.match(data, start) if start >= 0 else None
    if match is None:
        raise CorruptManifest(
            path, 'the checksum trailer ,"sha256":"..."} is missing or was moved (hand edit?)'
        )
    actual = hashlib.sha256(data[:start]).hexdigest()
    recorded = match.group(1).decode()
    if actual != recorded:
        raise CorruptManifest(
            path,
            f"checksum mismatch: the content hashes to {actual[:16]}... but the file records {recorded[:16]}... "
            "(edited or damaged after it was written)",
        )
    try:
        envelope = ManifestEnvelope.model_validate(obj)
    except ValidationError as exc:
        raise CorruptManifest(path, f"invalid content: {_validation_summary(exc)}") from None
    if envelope.generation != expected_generation:
        raise CorruptManifest(
            path, f"the file says generation {envelope.generation} but its name says {expected_generation}"
        )
    return envelope
