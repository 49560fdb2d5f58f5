"""Direct-API executor: runs ``direct`` batches request by request, concurrently, under RPM/TPM limits.

A direct batch goes through the same states as a remote one (assembled -> pushing -> done -> processed), with the
spend reserved before the first call, and its results stored as a blob in the batch output line shape, so the
process stage classifies and commits them exactly like Batch API results. A crash mid-batch re-runs that batch (a
few hundred requests at most), never anything already committed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import openai
import orjson

from gbatch_flows import api, costs, endpoints
from gbatch_flows.engine import limits
from gbatch_flows.engine.context import Engine
from gbatch_flows.engine.pacer import Pacer, parse_reset
from gbatch_flows.engine.push import reserve_and_mark
from gbatch_flows.engine.state import TOTALS, Changes, session_key
from gbatch_flows.models import BatchRecord
from gbatch_flows.store import BlobRef

log = logging.getLogger("gbatch_flows.direct")

MAX_ATTEMPTS = 6
CHUNK_PER_SLOT = 4  # requests per concurrency slot between two commits


class DirectStats:
    def __init__(self) -> None:
        self.requests = 0
        self.rate_limited = 0
        self.errors = 0


def _resource(client: openai.AsyncOpenAI, endpoint: str) -> Any:
    """The client resource whose ``create`` calls ``endpoint`` (either path spelling)."""
    path = endpoints.canonical(endpoint)
    resources = {
        endpoints.CHAT: lambda: client.chat.completions,
        endpoints.RESPONSES: lambda: client.responses,
        endpoints.EMBEDDINGS: lambda: client.embeddings,
        endpoints.COMPLETIONS: lambda: client.completions,
        endpoints.MODERATIONS: lambda: client.moderations,
    }
    if path not in resources:
        raise ValueError(f"the direct executor does not support endpoint {endpoint!r}; supported: "
                         f"{', '.join(endpoints.BATCH_ENDPOINTS)}")
    return resources[path]()


async def _call(client: openai.AsyncOpenAI, endpoint: str, body: dict[str, Any]):
    return await _resource(client, endpoint).with_raw_response.create(**body)


class DirectRunner:
    def __init__(self, engine: Engine, pacer: Pacer, stats: DirectStats):
        self.engine = engine
        self.pacer = pacer
        self.stats = stats
        self.verbose = engine.options.direct_verbose

    def _show(self, level: str, custom_id: str, body: dict[str, Any], answer: Any) -> None:
        order = {"never": 0, "error": 1, "warn": 2, "always": 3}
        if order[self.verbose] >= order[level]:
            log.warning("direct %s %s\n  request: %s\n  response: %s", level, custom_id,
                        orjson.dumps(body).decode()[:2000], str(answer)[:2000])

    async def one(self, client: openai.AsyncOpenAI, sem: asyncio.Semaphore, endpoint: str, item: dict[str, Any],
                  tokens: int) -> bytes:
        custom_id, body = item["custom_id"], item["body"]
        last: dict[str, Any] = {}
        for attempt in range(MAX_ATTEMPTS):
            await self.pacer.acquire(tokens)
            async with sem:
                self.stats.requests += 1
                try:
                    raw = await _call(client, endpoint, body)
                except openai.APIStatusError as exc:
                    status, last = exc.status_code, _error_body(exc)
                    outcome = api.classify_exception(exc)
                    if status == 429:
                        self.stats.rate_limited += 1
                        wait = parse_reset(exc.response.headers.get("retry-after")) or 2.0 ** attempt
                        self.pacer.back_off(wait)
                    if outcome is api.Outcome.RETRYABLE and attempt + 1 < MAX_ATTEMPTS:
                        self._show("warn", custom_id, body, exc)
                        await asyncio.sleep(min(30.0, 0.2 * 2 ** attempt) * random.uniform(0.5, 1.0))
                        continue
                    self.stats.errors += 1
                    self._show("error", custom_id, body, exc)
                    return _line(custom_id, status, None, last, exc.request_id)
                except (openai.APIConnectionError, openai.APITimeoutError) as exc:
                    last = {"code": "server_error", "message": str(exc)}
                    if attempt + 1 < MAX_ATTEMPTS:
                        self._show("warn", custom_id, body, exc)
                        await asyncio.sleep(min(30.0, 0.2 * 2 ** attempt) * random.uniform(0.5, 1.0))
                        continue
                    self.stats.errors += 1
                    self._show("error", custom_id, body, exc)
                    return _line(custom_id, None, None, last, None)
            self.pacer.update_from_headers(raw.headers)
            parsed = raw.parse()
            answer = parsed.model_dump(mode="json", exclude_unset=True) if hasattr(parsed, "model_dump") else parsed
            self._show("always", custom_id, body, answer)
            return _line(custom_id, raw.status_code, answer, None, raw.headers.get("x-request-id"))
        return _line(custom_id, None, None, last or {"code": "server_error", "message": "no attempt"}, None)


def _error_body(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error", body) if isinstance(body, dict) else {}
    return {"code": (err or {}).get("code") or str(exc.status_code), "message": (err or {}).get("message") or str(exc)}


def _line(custom_id: str, status: int | None, body: Any, error: dict[str, Any] | None, request_id: str | None) -> bytes:
    response = None if status is None else {"status_code": status, "request_id": request_id, "body": body}
    return orjson.dumps({"id": f"direct_{custom_id}", "custom_id": custom_id, "response": response, "error": error})


async def _run_lines(engine: Engine, batch: BatchRecord, items: list[dict], sides: list[dict], pacer: Pacer,
                     stats: DirectStats, client: openai.AsyncOpenAI) -> list[bytes]:
    runner = DirectRunner(engine, pacer, stats)
    sem = asyncio.Semaphore(max(1, engine.options.max_direct_concurrency))
    return await asyncio.gather(*(
        runner.one(client, sem, batch.endpoint, item, side["tokens"] + side["max_out"])
        for item, side in zip(items, sides)
    ))


def run_direct(engine: Engine, pacer: Pacer | None = None, stats: DirectStats | None = None) -> list[int]:
    """Execute every assembled direct batch the budgets allow; returns the ids that ran."""
    pacer = pacer or Pacer(engine.options.max_direct_rpm, engine.options.max_direct_tpm)
    stats = stats or DirectStats()
    if not any(b.mode == "direct" for b in engine.state.batches_in("pushing", "assembled")):
        return []
    return asyncio.run(_run_batches(engine, pacer, stats))


async def _run_batches(engine: Engine, pacer: Pacer, stats: DirectStats) -> list[int]:
    """The batches one after the other in one event loop with one client: a new client per batch cost ~45 ms
    (its SSL context) plus new connections, time the pacer cannot make up (it never bursts)."""
    ran: list[int] = []
    client: openai.AsyncOpenAI | None = None
    try:
        for batch in engine.state.batches_in("pushing", "assembled"):
            if batch.mode != "direct":
                continue
            if batch.state == "assembled":
                refusal = limits.spend_refusal(engine.options, engine.state, engine.session_id, batch)
                if refusal:
                    log.info("direct batch %d waits: %s reached", batch.local_id, refusal)
                    break
                batch = reserve_and_mark(engine, batch, "pushing")
            if client is None:
                client = engine.async_client()
            await _run_batch(engine, batch, pacer, stats, client)
            ran.append(batch.local_id)
    finally:
        if client is not None:
            await client.close()
    return ran


async def _run_batch(engine: Engine, batch: BatchRecord, pacer: Pacer, stats: DirectStats,
                     client: openai.AsyncOpenAI) -> None:
    """Send a direct batch in chunks: commit "sent up to k" before a chunk and its results after it, so that a
    crash re-sends at most one chunk, whose calls are charged at their worst case and reserved again."""
    store = engine.store
    items = [orjson.loads(raw) for raw in store.iter_lines(BlobRef.model_validate(batch.input_ref))]
    sides = [orjson.loads(raw) for raw in store.iter_lines(BlobRef.model_validate(batch.sidecar_ref))]
    started = time.time()
    if batch.direct_sent > batch.direct_done:
        batch = _recover_lost_calls(engine, batch, items, sides)
    chunk = max(1, engine.options.max_direct_concurrency) * CHUNK_PER_SLOT
    while batch.direct_done < len(items):
        lo = batch.direct_done
        hi = min(len(items), lo + chunk)
        batch = _commit_batch(engine, batch, {"direct_sent": hi}, f"direct batch {batch.local_id}: sending {lo}-{hi}")
        lines = await _run_lines(engine, batch, items[lo:hi], sides[lo:hi], pacer, stats, client)
        batch = _commit_part(engine, batch, lines, hi)
    ref = store.put_blob(f"results/{batch.local_id:06d}.jsonl", _concat_parts(engine, batch))
    _commit_batch(engine, batch, {
        "state": "done", "remote_status": "completed", "results_ref": ref.model_dump(mode="json"),
        "pushed_at": batch.pushed_at or started, "finished_at": time.time(),
    }, f"direct batch {batch.local_id} ran ({len(items)} requests)")


def _commit_batch(engine: Engine, batch: BatchRecord, update: dict[str, Any], message: str) -> BatchRecord:
    changes = Changes()
    updated = engine.state.batches[batch.local_id].model_copy(update=update)
    changes.batch(updated)
    engine.commit(changes, message)
    return updated


def _commit_part(engine: Engine, batch: BatchRecord, lines: list[bytes], done: int) -> BatchRecord:
    ref = engine.store.put_blob(f"results/{batch.local_id:06d}.part{len(batch.direct_parts):05d}.jsonl",
                                [b"\n".join(lines) + b"\n"])
    return _commit_batch(engine, batch, {"direct_done": done,
                                         "direct_parts": [*batch.direct_parts, ref.model_dump(mode="json")]},
                         f"direct batch {batch.local_id}: results up to {done}")


def _concat_parts(engine: Engine, batch: BatchRecord):
    for ref in batch.direct_parts:
        yield engine.store.read_blob(BlobRef.model_validate(ref))


def _recover_lost_calls(engine: Engine, batch: BatchRecord, items: list[dict], sides: list[dict]) -> BatchRecord:
    """Calls started before a crash whose results were never committed: they may have been billed. Charge their
    worst case, then re-send them under a new reservation, or fail them when the limits cannot take it."""
    lo, hi = batch.direct_done, batch.direct_sent
    prices = engine.prices(batch.model, batch.endpoint)
    lost = limits.Spend()
    for side in sides[lo:hi]:
        lost = lost + limits.Spend(requests=1, tokens=side["tokens"] + side["max_out"],
                                   cost=costs.worst_case_cost(side["tokens"], side["max_out"], prices, "direct"))
    state = engine.state
    owner = batch.session or engine.session_id  # a batch's spend stays on the session that reserved it
    probe = batch.model_copy(update={"requests": lost.requests, "tokens": lost.tokens, "max_out": 0,
                                     "worst_cost": lost.cost})
    refusal = limits.spend_refusal(engine.options, state, owner, probe)
    changes = Changes()
    update: dict[str, Any] = {"lost_spend": batch.lost_spend + lost}
    if refusal is None:
        log.warning("direct batch %d: %d calls were in flight when a run stopped; re-sending them (charged at worst "
                    "case $%.4f)", batch.local_id, hi - lo, lost.cost)
        update["extra_reserved"] = batch.extra_reserved + lost
        changes.set(TOTALS, limits.reserve(state.totals, lost))
        changes.set(session_key(owner), limits.reserve(state.session(owner), lost))
        update["direct_sent"] = lo
    else:
        log.warning("direct batch %d: %d calls lost in a crash are not re-sent: %s would be exceeded",
                    batch.local_id, hi - lo, refusal)
        error = {"code": "lost_in_crash", "message": f"sent before a crash; re-sending would exceed {refusal}"}
        lines = [_line(item["custom_id"], 400, None, error, None) for item in items[lo:hi]]
        ref = engine.store.put_blob(f"results/{batch.local_id:06d}.part{len(batch.direct_parts):05d}.jsonl",
                                    [b"\n".join(lines) + b"\n"])
        update["direct_parts"] = [*batch.direct_parts, ref.model_dump(mode="json")]
        update["direct_done"] = hi
    updated = engine.state.batches[batch.local_id].model_copy(update=update)
    changes.batch(updated)
    engine.commit(changes, f"direct batch {batch.local_id}: {hi - lo} calls lost in a crash")
    return updated
