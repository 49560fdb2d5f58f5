"""Typed view of the manifest's sections and the change sets that update them.

Section keys:
  ``task``              TaskInfo
  ``cursor``            Cursor (assembly position in the queue)
  ``totals``            Budget of the whole task
  ``session/<id>``      Budget of one session (one run, or one Prefect flow run and its retries)
  ``segment/<n>``       Segment: a blob of queued requests
  ``batch/<n>``         BatchRecord
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gbatch_flows.models import BatchRecord, Budget, Cursor, OrphanRecord, Segment, TaskInfo
from gbatch_flows.store import Manifest

TASK = "task"
CURSOR = "cursor"
TOTALS = "totals"
ORPHAN_PREFIX = "orphan/"  # + remote id: a remote batch of this task no local batch owns (engine/reconcile.py)

IN_FLIGHT = ("pushing", "pushed")
UNPROCESSED = ("assembled", "pushing", "pushed", "done")


def batch_key(local_id: int) -> str:
    return f"batch/{local_id:06d}"


def segment_key(index: int) -> str:
    return f"segment/{index:06d}"


def session_key(session_id: str) -> str:
    return f"session/{session_id}"


def dump(model: Any) -> Any:
    return model.model_dump(mode="json")


@dataclass
class TaskState:
    """Parsed sections of one manifest generation (read-only: stages build ``Changes`` instead)."""

    manifest: Manifest
    task: TaskInfo | None
    cursor: Cursor
    totals: Budget
    batches: dict[int, BatchRecord]
    segments: dict[int, Segment]

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> TaskState:
        sections = manifest.sections
        task = TaskInfo.model_validate(sections[TASK]) if TASK in sections else None
        batches: dict[int, BatchRecord] = {}
        segments: dict[int, Segment] = {}
        for key, value in sections.items():
            if key.startswith("batch/"):
                rec = BatchRecord.model_validate(value)
                batches[rec.local_id] = rec
            elif key.startswith("segment/"):
                segments[int(key.split("/", 1)[1])] = Segment.model_validate(value)
        return cls(
            manifest=manifest,
            task=task,
            cursor=Cursor.model_validate(sections.get(CURSOR, {})),
            totals=Budget.model_validate(sections.get(TOTALS, {})),
            batches=dict(sorted(batches.items())),
            segments=dict(sorted(segments.items())),
        )

    @property
    def generation(self) -> int:
        return self.manifest.generation

    def session(self, session_id: str) -> Budget:
        return Budget.model_validate(self.manifest.sections.get(session_key(session_id), {}))

    def batches_in(self, *states: str) -> list[BatchRecord]:
        return [b for b in self.batches.values() if b.state in states]

    def orphans(self) -> dict[str, OrphanRecord]:
        """Remote batches of this task that no local batch owns, by remote id (see ``engine/reconcile.py``)."""
        return {k.removeprefix(ORPHAN_PREFIX): OrphanRecord.model_validate(v)
                for k, v in self.manifest.sections.items() if k.startswith(ORPHAN_PREFIX)}

    def queued_requests(self) -> int:
        """Requests in the queue not yet assembled into a batch."""
        total = 0
        for index, seg in self.segments.items():
            if index > self.cursor.segment:
                total += seg.count
            elif index == self.cursor.segment:
                total += max(0, seg.count - self.cursor.line)
        return total

    def require_task(self) -> TaskInfo:
        if self.task is None:
            raise RuntimeError("the task has not been created yet in this store (run it once without --no_run)")
        return self.task


@dataclass
class Changes:
    """A change set: section key -> new value (``None`` deletes)."""

    values: dict[str, Any] = field(default_factory=dict)

    def set(self, key: str, model: Any) -> None:
        self.values[key] = dump(model) if hasattr(model, "model_dump") else model

    def delete(self, key: str) -> None:
        self.values[key] = None

    def batch(self, rec: BatchRecord) -> None:
        self.set(batch_key(rec.local_id), rec)

    def __bool__(self) -> bool:
        return bool(self.values)
