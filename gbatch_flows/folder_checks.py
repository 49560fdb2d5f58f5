"""Checks of the task folder before a run changes anything (issue 15): data files without any manifest (the state
was lost: a run would silently start over and push everything again), and output parts the state references but
that are gone (found only at the very end before)."""

from __future__ import annotations

from gbatch_flows.engine.context import EngineStop
from gbatch_flows.engine.output import output_parts
from gbatch_flows.engine.state import TaskState
from gbatch_flows.store import Store
from gbatch_flows.store.paths import LEASE_FILE, MANIFEST_DIR

#: files a task folder may hold before its first commit
HARMLESS = frozenset({LEASE_FILE})
SHOWN = 3


class FolderProblem(EngineStop):
    """The task folder is not in a state a run can continue from; the message names the way forward."""


def _shown(paths: list[str]) -> str:
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(paths[:SHOWN]) + more


def orphan_files(store: Store, state: TaskState) -> list[str]:
    """The data files of a folder without any manifest (empty when the folder has a state)."""
    if state.generation != 0:
        return []
    return [p for p in store.list() if p not in HARMLESS and not p.startswith(f"{MANIFEST_DIR}/")]


def clear_orphan_files(store: Store, state: TaskState) -> int:
    """--wipe_task on a folder without manifests: delete its data files so that the task starts over cleanly."""
    data = orphan_files(store, state)
    store.backend.delete_many(data)
    return len(data)


def check_orphan_files(store: Store, state: TaskState) -> None:
    """A folder with data files but no manifest: refuse instead of starting over on top of them."""
    data = orphan_files(store, state)
    if data:
        raise FolderProblem(
            f"the task folder {store.url} holds {len(data)} data files ({_shown(data)}) but no manifests/: its "
            "state was lost (or this is not a task folder), and running would start over and send everything "
            "again. Restore manifests/ from a backup, or run with --wipe_task to start over here, or pick another "
            "--task_dir"
        )


def check_output_parts(store: Store, state: TaskState) -> None:
    """Every output part the state references must exist (else the output cannot be written at the end)."""
    wanted = [ref.path for ref in output_parts(state)]
    if not wanted:
        return
    present = set(store.list("output/"))
    missing = [path for path in wanted if path not in present]
    if missing:
        raise FolderProblem(
            f"{len(missing)} output part(s) of {store.url} are missing ({_shown(missing)}): restore them from a "
            "backup (then run again), or roll back to a manifest generation from before them (docs/store.md), or "
            "run with --wipe_task to start over"
        )
