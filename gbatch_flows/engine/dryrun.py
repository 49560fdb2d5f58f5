"""Dry run: what a run would do (requests, batches, tokens, worst-case cost, which limit stops it), with no API call
and no change to the stored state.

The real stages run on a copy-on-write view of the store: reads come from the task folder, every write (blobs,
commits) stays in memory and is thrown away. So the plan printed is exactly what the real stages would build.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO

from gbatch_flows.engine import limits
from gbatch_flows.engine.assemble import assemble
from gbatch_flows.engine.context import Engine
from gbatch_flows.engine.generate import ensure_task, generate
from gbatch_flows.engine.push import reserve_and_mark
from gbatch_flows.engine.runner import RunSummary, choose_mode, counts
from gbatch_flows.store import BlobRef, Manifest, Store, open_store

log = logging.getLogger("gbatch_flows.dryrun")


class OverlayStore:
    """Reads fall through to ``base``; writes and commits live in memory only."""

    def __init__(self, base: Store):
        self.base = base
        self.url = base.url
        self.scratch = open_store(f"memory://gbatch-dryrun-{uuid.uuid4().hex}")
        self.written: set[str] = set()
        self._manifest: Manifest = base.load()

    def load(self) -> Manifest:
        return self._manifest

    def commit(self, base: Manifest, changes: Mapping[str, Any], message: str = "", lease: Any = None) -> Manifest:
        raw = dict(base._raw)
        for key, value in changes.items():
            if value is None:
                raw.pop(key, None)
            else:
                raw[key] = json.dumps(value, separators=(",", ":")).encode()
        self._manifest = Manifest(base.generation + 1, raw, message=message)
        return self._manifest

    def put_blob(self, path: str, data: bytes | Iterable[bytes]) -> BlobRef:
        self.written.add(path)
        return self.scratch.put_blob(path, data)

    def _owner(self, ref: BlobRef | Mapping[str, Any]) -> Store:
        path = ref.path if isinstance(ref, BlobRef) else ref["path"]
        return self.scratch if path in self.written else self.base

    def iter_lines(self, ref: BlobRef | Mapping[str, Any]) -> Iterator[bytes]:
        return self._owner(ref).iter_lines(ref)

    def open_blob(self, ref: BlobRef | Mapping[str, Any]) -> BinaryIO:
        return self._owner(ref).open_blob(ref)

    def read_blob(self, ref: BlobRef | Mapping[str, Any]) -> bytes:
        return self._owner(ref).read_blob(ref)

    def exists(self, path: str) -> bool:
        return path in self.written or self.base.exists(path)


def plan_pushes(engine: Engine) -> tuple[list[dict[str, Any]], str | None]:
    """Which assembled batches the push stage would send now, and the limit that would stop it.

    Each planned batch is marked pushing with its spend reserved, as a real push does (in the overlay's memory
    only), so the remote-queue and budget checks of the next one see it."""
    rows: list[dict[str, Any]] = []
    stop = None
    for batch in engine.state.batches_in("assembled"):
        stop = limits.push_refusal(engine.options, engine.state, engine.session_id, batch)
        if stop:
            break
        rows.append({"batch": batch.local_id, "mode": batch.mode, "requests": batch.requests, "tokens": batch.tokens,
                     "max_out": batch.max_out, "mb": round(batch.mb, 3), "worst_cost": round(batch.worst_cost, 6)})
        reserve_and_mark(engine, batch, "pushing")
    return rows, stop


#: ``--direct_verbose always`` with ``--dryrun`` shows at most this many request bodies per planned batch.
MAX_SHOWN_PER_BATCH = 50


def request_bodies(engine: Engine, batch_ids: list[int]) -> list[str]:
    """The request bodies the planned batches would send, one line each (``--direct_verbose always``)."""
    lines: list[str] = []
    for local_id in batch_ids:
        batch = engine.state.batches[local_id]
        for n, raw in enumerate(engine.store.iter_lines(BlobRef.model_validate(batch.input_ref))):
            if n >= MAX_SHOWN_PER_BATCH:
                lines.append(f"  ... {batch.requests - n} more request(s) in batch {local_id}")
                break
            item = json.loads(raw)
            lines.append(f"  would send {item['custom_id']} to {item['url']}: {json.dumps(item['body'])}")
    return lines


def dry_run(task: Any, options: Any, local_server: bool = False) -> RunSummary:
    """Plan one session of ``task`` and print it; the task folder is left byte-for-byte unchanged."""
    from gbatch_flows.launch import needs_price_flags, open_task_store

    def no_client() -> Any:
        raise RuntimeError("dry run: no API call is made")

    store = open_task_store(options, task)
    engine = Engine(store=OverlayStore(store), options=options, task=task, session_id="dryrun",  # type: ignore[arg-type]
                    client_factory=no_client, async_client_factory=no_client, local_server=local_server,
                    flags_only_prices=needs_price_flags(options.client_base_url))
    ensure_task(engine, task.name, task.build_meta(options), reinit_meta=options.reinit_meta,
                given=task.given_meta(options))
    generate(engine)
    mode = choose_mode(engine)
    assemble(engine, mode)
    rows, stop = plan_pushes(engine)
    total_cost = sum(r["worst_cost"] for r in rows)
    lines = [f"dry run of {task.name} in {store.url} ({mode} mode): {engine.state.require_task().generated_requests} "
             f"requests generated, {engine.state.queued_requests()} still queued after assembly"]
    for r in rows:
        lines.append(f"  would push batch {r['batch']}: {r['requests']} requests, {r['tokens']} prompt tokens "
                     f"(+ up to {r['max_out']} completion), {r['mb']} MB, worst case ${r['worst_cost']:.4f}")
    lines.append(f"  total worst case ${total_cost:.4f}" + (f"; then {stop} stops pushing" if stop else ""))
    if options.direct_verbose == "always":
        lines += request_bodies(engine, [r["batch"] for r in rows])
    print("\n".join(lines), flush=True)
    state = engine.state
    return RunSummary("stopped", "dry run: nothing sent, nothing stored", state.generation,
                      counts(state) | {"would_push": len(rows)})
