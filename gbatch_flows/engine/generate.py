"""Stage 1: create the task and commit its generated requests to the store in chunks, before anything is sent."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import orjson

from gbatch_flows import costs
from gbatch_flows.engine.context import Engine, EngineStop
from gbatch_flows.engine.keyset import HashSet
from gbatch_flows.engine.state import TASK, Changes, TaskState, segment_key
from gbatch_flows.models import RequestSpec, Segment, TaskInfo
from gbatch_flows.store import BlobRef

if TYPE_CHECKING:
    from gbatch_flows.tokens import TokenEstimator

log = logging.getLogger("gbatch_flows.engine.generate")

CHUNK_REQUESTS = 10_000


def effective_meta(task: TaskInfo | None, meta: dict[str, Any], given: Mapping[str, Any] | None = None,
                   reinit_meta: bool = False) -> dict[str, Any]:
    """The metadata the task will run with: ``meta`` (built from scratch) for a new task or ``--reinit_meta``, else
    the stored metadata. Raises EngineStop when a value given explicitly (``given``; ``None``: all of ``meta``)
    differs from the stored one."""
    if task is None or reinit_meta:
        return meta
    given = meta if given is None else given
    differs = {key: (task.meta.get(key), value) for key, value in sorted(given.items()) if task.meta.get(key) != value}
    if differs:
        shown = ", ".join(f"--{key} {value!r} (stored: {stored!r})" for key, (stored, value) in differs.items())
        raise EngineStop(f"task metadata differs from the one fixed at task creation: {shown}; pass --reinit_meta "
                         "to change it, or drop the flag to reuse the stored value")
    return task.meta


def ensure_task(engine: Engine, name: str, meta: dict[str, Any], reinit_meta: bool = False,
                given: Mapping[str, Any] | None = None) -> TaskState:
    """Create the task on first use; afterwards its stored metadata is reused (the flags in ``given`` must agree with
    it) unless ``reinit_meta`` is given. A re-initialised metadata makes the generator run again: samples it yields
    that the task does not know yet (e.g. a wider parameter) are queued, the known ones are skipped."""
    state = engine.state
    if state.task is None:
        info = TaskInfo(task_id=uuid.uuid4().hex, name=name, created_at=time.time(), meta=meta)
        changes = Changes()
        changes.set(TASK, info)
        return engine.commit(changes, f"create task {name}")
    if state.task.name != name:
        raise EngineStop(
            f"the task folder {engine.store.url} holds task {state.task.name!r}, not {name!r}: "
            "use another --task_dir, or --wipe_task to start over"
        )
    new_meta = effective_meta(state.task, meta, given, reinit_meta)
    if new_meta == state.task.meta:
        return state
    update: dict[str, Any] = {"meta": new_meta}
    if state.task.generated:  # run the generator again over the new metadata, skipping the samples already known
        update.update(generated=False, generated_count=0, skip_sent_keys=True)
    changes = Changes()
    changes.set(TASK, state.task.model_copy(update=update))
    changed = sorted(k for k in set(new_meta) | set(state.task.meta) if new_meta.get(k) != state.task.meta.get(k))
    log.info("task metadata re-initialised (%s)", ", ".join(changed))
    return engine.commit(changes, f"reinit meta: {', '.join(changed)}")


def _with_model(spec: RequestSpec, meta: dict[str, Any]) -> dict[str, Any]:
    payload = spec.payload
    if "model" not in payload:
        if not meta.get("model"):
            raise EngineStop(f"request {spec.key!r} has no 'model' and the task has no model: pass --model")
        payload = {**payload, "model": meta["model"]}
    return payload


_tokens: ModuleType | None = None  # gbatch_flows.tokens once loaded (an import statement per request costs 2 µs)


def _estimator() -> TokenEstimator:
    """The token estimator, imported on first use: a run that only pushes, polls and processes what an earlier run
    generated (a restart) never loads tiktoken."""
    global _tokens
    if _tokens is None:
        from gbatch_flows import tokens

        _tokens = tokens
    return _tokens.get_estimator()


def request_dict(spec: RequestSpec, meta: dict[str, Any], seq: int, part: int = 0) -> dict[str, Any]:
    """Estimate one request (prompt tokens, worst-case completion) and return its queue record."""
    if not isinstance(spec, RequestSpec):
        spec = RequestSpec.model_validate(spec)
    payload = _with_model(spec, meta)
    tokens = _estimator().estimate(spec.endpoint, payload, custom_id=spec.key).total
    ratio = float(meta.get("completion_ratio") or costs.DEFAULT_COMPLETION_RATIO)
    return {
        "seq": seq, "key": spec.key, "endpoint": spec.endpoint, "payload": payload, "meta": spec.meta,
        "retry": 0, "part": part, "tokens": tokens,
        "max_out": costs.max_output_tokens(payload, tokens, ratio, endpoint=spec.endpoint),
    }


def write_segment(engine: Engine, index: int, lines: list[bytes], tokens: int, origin: str) -> Segment:
    ref = engine.store.put_blob(f"requests/{index:06d}.jsonl", [b"\n".join(lines) + b"\n"])
    return Segment(ref=ref.model_dump(mode="json"), count=len(lines), tokens=tokens, origin=origin)  # type: ignore[arg-type]


def generate(engine: Engine, chunk_requests: int = CHUNK_REQUESTS) -> TaskState:
    """Run the task's generator (skipping what a previous run already committed) and commit chunk by chunk.

    A sample's ``seq`` is its position in the generator, so the generator must yield in a deterministic order.
    """
    task = engine.state.require_task()
    if task.generated:
        return engine.state
    position = task.generated_count
    specs = itertools.islice(iter(engine.task.generate_requests(task.meta)), position, None)
    known = sent_keys(engine) if task.skip_sent_keys else set()
    start = position
    seen = HashSet()  # hashes, not the keys: a set of 10M keys alone holds 880 MB
    lines: list[bytes] = []
    tokens = 0
    for spec in specs:
        if not isinstance(spec, RequestSpec):
            spec = RequestSpec.model_validate(spec)
        if seen.add(spec.key) and yielded_before(engine, task.meta, spec.key, start, position):
            raise EngineStop(f"generate_requests yielded the sample key {spec.key!r} twice: keys must be unique")
        position += 1
        if spec.key in known:
            continue
        record = request_dict(spec, task.meta, position - 1)
        lines.append(orjson.dumps(record))
        tokens += record["tokens"]
        if len(lines) >= chunk_requests:
            _commit_chunk(engine, lines, tokens, position, done=False)
            lines, tokens = [], 0
    _commit_chunk(engine, lines, tokens, position, done=True)
    log.info("generated %d requests", engine.state.require_task().generated_requests)
    return engine.state


def yielded_before(engine: Engine, meta: dict[str, Any], key: str, start: int, stop: int) -> bool:
    """Whether the generator yielded ``key`` at a position in [start, stop): the exact check behind a hash match
    (a repeated key, or two keys sharing a 64-bit hash). Runs the generator again up to ``stop``."""
    for spec in itertools.islice(iter(engine.task.generate_requests(meta)), start, stop):
        if not isinstance(spec, RequestSpec):
            spec = RequestSpec.model_validate(spec)
        if spec.key == key:
            return True
    return False


def sent_keys(engine: Engine) -> set[str]:
    """Keys of samples that must not be generated again: in any batch (sent or not, whatever came of it), or still
    queued (generated, retries or follow-ups)."""
    keys: set[str] = set()
    store = engine.store
    state = engine.state
    refs = [b.sidecar_ref for b in state.batches.values() if b.cancel_requested_at is None]  # wiped: regenerated
    refs += [seg.ref for seg in state.segments.values()]  # also samples still queued (a re-generation adds none twice)
    for ref in refs:
        for raw in store.iter_lines(BlobRef.model_validate(ref)):
            if raw.strip():
                keys.add(orjson.loads(raw)["key"])
    return keys


def _commit_chunk(engine: Engine, lines: list[bytes], tokens: int, count: int, done: bool) -> None:
    task = engine.state.require_task()
    changes = Changes()
    update: dict[str, Any] = {"generated_count": count, "generated": done}
    if done:
        update["skip_sent_keys"] = False
    if lines:
        index = task.next_segment
        changes.set(segment_key(index), write_segment(engine, index, lines, tokens, "generated"))
        update["next_segment"] = index + 1
        update["generated_requests"] = task.generated_requests + len(lines)
    changes.set(TASK, task.model_copy(update=update))
    engine.commit(changes, f"generate: {count} requests" + (" (done)" if done else ""))
