"""Pydantic models at the store's boundaries: blob references, manifest envelopes, lease records."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, field_validator, model_validator

from gbatch_flows.store.paths import validate_path

SCHEMA_VERSION = 1
"""Version of the on-disk format (manifests and lease). Bump it when a change is not backward compatible."""

_SHA256 = r"^[0-9a-f]{64}$"
_REF_KEYS = frozenset({"path", "size", "sha256"})

json_value_adapter: TypeAdapter[JsonValue] = TypeAdapter(JsonValue)


class BlobRef(BaseModel):
    """An immutable file in the task folder, pinned by size and sha256. Stored in sections as a plain dict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=_SHA256)

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        return validate_path(value)

    @staticmethod
    def is_ref_shaped(value: Any) -> bool:
        """True for a dict with exactly the keys path/size/sha256 (how a BlobRef looks inside a section)."""
        return isinstance(value, dict) and len(value) == 3 and _REF_KEYS.issuperset(value.keys())


def iter_blob_refs(value: Any) -> list[BlobRef]:
    """All BlobRef-shaped dicts found anywhere inside a JSON value (recursively)."""
    found: list[BlobRef] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if BlobRef.is_ref_shaped(item):
                found.append(BlobRef.model_validate(item))
            else:
                stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


class ManifestEnvelope(BaseModel):
    """One file in manifests/: either a full checkpoint of all sections, or a delta on its parent generation.

    The file ends with ``,"sha256":"<hex>"}``: the sha256 of every byte before that trailer, so any edit or
    damage is detected on load.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(ge=1)
    generation: int = Field(ge=1)
    kind: Literal["checkpoint", "delta"]
    checkpoint: int = Field(
        ge=1, description="generation of the checkpoint this generation's state starts from"
    )
    parent: int = Field(ge=0, description="generation this one was committed on (always generation - 1)")
    parent_sha256: str = Field(description="sha256 recorded in the parent's file ('' for generation 1)")
    writer: str
    time: str
    message: str = ""
    sections: dict[str, JsonValue] | None = None
    changes: dict[str, JsonValue] | None = None
    deleted: list[str] | None = None
    sha256: str = Field(pattern=_SHA256)

    @model_validator(mode="after")
    def _check_shape(self) -> ManifestEnvelope:
        if self.parent != self.generation - 1:
            raise ValueError(f"parent is {self.parent}, expected generation - 1 = {self.generation - 1}")
        if self.kind == "checkpoint":
            if self.sections is None or self.changes is not None or self.deleted is not None:
                raise ValueError("a checkpoint holds 'sections' and no 'changes'/'deleted'")
            if self.checkpoint != self.generation:
                raise ValueError("a checkpoint's 'checkpoint' field must equal its generation")
        else:
            if self.sections is not None or self.changes is None or self.deleted is None:
                raise ValueError("a delta holds 'changes' and 'deleted' and no 'sections'")
            if self.checkpoint >= self.generation:
                raise ValueError("a delta's checkpoint must be an older generation")
        return self


class LeaseRecord(BaseModel):
    """Content of lease.json: who runs the task and until when (epoch seconds)."""

    model_config = ConfigDict(extra="ignore")  # a newer writer's extra fields do not make the lease unreadable

    schema_version: int = SCHEMA_VERSION
    owner: str
    host: str
    pid: int
    acquired_at: float
    renewed_at: float
    expires_at: float
    expires: str = Field(description="expires_at in ISO-8601 UTC, for humans")
    ttl_s: float = Field(gt=0)
    seq: int = Field(ge=0, description="incremented on every write so no two bodies are identical")
    released: bool = False
    boot_id: str | None = Field(default=None, description="the holder's kernel boot id (Linux)")
    pid_ns: str | None = Field(default=None, description="the holder's PID namespace, e.g. 'pid:[4026531836]'")
    create_timeout_s: float | None = Field(
        default=None, description="the holder's timeout of a remote create: a successor waits that long past expiry"
    )
