"""Direct-API executor: runs ``direct`` batches request by request, concurrently, under RPM/TPM limits.

A direct batch goes through the same states as a remote one (assembled -> pushing -> done -> processed), with the
spend reserved before the first call, and its results stored as a blob in the batch output line shape, so the
process stage classifies and commits them exactly like Batch API results. A crash mid-batch re-runs that batch (a
few hundred requests at most), never anything already committed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import openai
import orjson

from gbatch_flows import api, costs, remote_errors
from gbatch_flows.engine import limits, quota_gate
from gbatch_flows.engine.assemble import assemble
from gbatch_flows.engine.context import Engine
from gbatch_flows.engine.direct_http import Answer, Caller, CallOutcome, ClientCaller, HttpCaller, endpoint_path
from gbatch_flows.engine.pacer import Pacer, parse_reset
from gbatch_flows.engine.push import reserve_and_mark
from gbatch_flows.engine.state import TOTALS, Changes, session_key
from gbatch_flows.models import BatchRecord
from gbatch_flows.store import BlobRef

log = logging.getLogger("gbatch_flows.direct")

MAX_ATTEMPTS = 6
CHUNK_PER_SLOT = 4  # requests per concurrency slot between two commits
DIRECT_KEY = "direct requests"  # the outage tracker's key of direct calls
MAX_REFILLS = 100  # batches assembled inside one run_direct call (one at a time, between two commits), so that
# sending does not stop for a stage round; then the run loop processes what ran


class DirectStats:
    def __init__(self) -> None:
        self.requests = 0
        self.rate_limited = 0
        self.errors = 0
        self.unknown = 0  # attempts whose outcome is unknown (timeout, dropped connection, 5xx)
        self.commits = 0
        self.shared_wait_s = 0.0  # time attempts waited for the limit shared with other runs (Engine.shared_rate)


@dataclass(slots=True)
class Call:
    """One request's result line, and how many of its attempts may have run without an answer we could use."""

    line: bytes
    unknown: int = 0


async def _call(caller: Caller, path: str, body: bytes) -> Answer:
    """One HTTP attempt (a module-level seam: tests and the bench wrap it)."""
    return await caller.post(path, body)


class DirectRunner:
    def __init__(self, engine: Engine, pacer: Pacer, stats: DirectStats):
        self.engine = engine
        self.pacer = pacer
        self.stats = stats
        self.verbose = _VERBOSITY[engine.options.direct_verbose]
        self.policy = engine.outage or remote_errors.OutagePolicy(engine.options.max_outage_s)
        self.tracker = self.policy.tracker
        self.stop: remote_errors.RemoteStop | None = None  # a refused key, no such endpoint, an outage too long
        self.unanswered_streak = 0  # calls in a row without an answer: the workers back off while it grows
        self.shared = engine.shared_rate  # a limit shared with other runs: an extra gate after the pacer

    def _show(self, level: str, custom_id: str, body: bytes, answer: Any) -> None:
        if self.verbose >= _VERBOSITY[level]:
            log.warning("direct %s %s\n  request: %s\n  response: %s", level, custom_id,
                        body.decode(errors="replace")[:2000], str(answer)[:2000])

    async def one(self, caller: Caller, path: str, custom_id: str, body: bytes, tokens: int,
                  model: str = "") -> Call | None:
        """Send one request (retrying what is worth retrying, paced) and return its result line; None when the run
        must stop (``self.stop``) before this request got an answer (nothing of it was billed).

        Errors follow ``remote_errors``: a refused key or a missing endpoint stops the run (nothing marked failed);
        transient errors are retried while the remote has been down for less than --max_outage_s (longer stops the
        run); a request that keeps failing while others get answers gives up after MAX_ATTEMPTS (requeued by the
        process stage); any other 4xx fails that request. With a shared limit (``Engine.shared_rate``) each attempt
        also takes its request and tokens from it, after the pacer; a shared limit that cannot be reached stops the
        run like an outage.
        """
        last: dict[str, Any] = {}
        attempt = 0
        while self.stop is None:
            await self.pacer.acquire(tokens)
            if self.shared is not None and self.stop is None:
                await self._take_shared(model, tokens)
            if self.stop is not None:
                break
            self.engine.fence.before_call()
            self.stats.requests += 1
            answer = await _call(caller, path, body)
            self.pacer.observe(answer.headers)
            status = answer.status
            if answer.outcome is CallOutcome.UNKNOWN:  # may have been billed: never re-sent blindly here
                self.stats.unknown += 1
                self.stats.errors += 1
                self._show("warn", custom_id, body, answer.error or answer.body)
                if not self._note_failure(answer, path):
                    await self._back_off_unanswered()
                error = {"code": api.UNANSWERED_CODE, "status": status,
                         "message": f"outcome unknown, charged at its worst case: {answer.error or f'HTTP {status}'}"}
                return Call(_line(custom_id, None, None, error, answer.request_id), 1)
            self.unanswered_streak = 0
            if status is not None and 200 <= status < 300:
                self.tracker.succeeded(DIRECT_KEY)
                try:
                    parsed = orjson.loads(answer.body)
                except orjson.JSONDecodeError:
                    parsed = None
                if self.verbose >= 3:
                    self._show("always", custom_id, body, answer.body)
                if not isinstance(parsed, dict):
                    error = {"code": "malformed_result", "message": "the answer's body is not a JSON object"}
                    return Call(_line(custom_id, status, None, error, answer.request_id))
                return Call(_line(custom_id, status, parsed, None, answer.request_id))
            error_exc = _as_exception(answer, caller, path)
            kind = remote_errors.classify(error_exc)
            if kind in (remote_errors.Kind.AUTH, remote_errors.Kind.NO_ENDPOINT):
                self.stop = remote_errors.RemoteStop(remote_errors.stop_message(
                    kind, f"direct request {custom_id}", error_exc, self.policy.base_url), kind)
                break
            if kind is remote_errors.Kind.REQUEST:  # the server answered: this request itself is refused
                self.tracker.succeeded(DIRECT_KEY)
                self.stats.errors += 1
                self._show("error", custom_id, body, answer.body)
                return Call(_line(custom_id, status, None, _error_body(status or 400, answer.body),
                                  answer.request_id))
            last = {"code": "server_error", "message": answer.error or "no answer"} if status is None else \
                _error_body(status, answer.body)
            if status == 429:
                self.stats.rate_limited += 1
                self.pacer.back_off(_retry_after(answer.headers) or 2.0 ** attempt)
            if self._note_failure(answer, path):
                break
            outage = self.tracker.down_for(DIRECT_KEY) > 0  # no answer from the server since this failure began
            if attempt + 1 < MAX_ATTEMPTS or outage:
                self._show("warn", custom_id, body, answer.error or answer.body)
                attempt += 1
                left = self.policy.max_outage_s - self.tracker.down_for(DIRECT_KEY)
                await asyncio.sleep(max(0.0, min(30.0, left, 0.2 * 2 ** min(attempt, 8))) * random.uniform(0.5, 1.0))
                continue
            self.stats.errors += 1
            self._show("error", custom_id, body, answer.error or answer.body)
            return Call(_line(custom_id, status, None, last, answer.request_id))
        return None

    async def _take_shared(self, model: str, tokens: int) -> None:
        """Take one request and ``tokens`` tokens from the shared limit; when it cannot be reached, stop the run."""
        started = time.monotonic()
        try:
            await self.shared.take(model, 1, tokens)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - whatever the hook raised: one line, the run stops cleanly
            if self.stop is None:
                self.stop = remote_errors.RemoteStop(
                    f"direct requests stopped: the limit shared with other runs cannot be taken ({exc}); the task "
                    "keeps what is committed, run again once it can be reached")
        finally:
            self.stats.shared_wait_s += time.monotonic() - started

    async def _back_off_unanswered(self) -> None:
        """After a call without an answer, wait before this worker sends again (exponential, jittered, capped by
        what is left of --max_outage_s): an outage must not be met by a stream of calls each charged at its worst
        case."""
        self.unanswered_streak += 1
        left = self.policy.max_outage_s - self.tracker.down_for(DIRECT_KEY)
        await asyncio.sleep(max(0.0, min(30.0, left, 0.1 * 2 ** min(self.unanswered_streak, 9)))
                            * random.uniform(0.5, 1.0))

    def _note_failure(self, answer: Answer, path: str) -> bool:
        """A transient failure of the remote; True (and ``self.stop`` set) when the outage outlasts the bound."""
        down = self.tracker.failed(DIRECT_KEY)
        if down >= self.policy.max_outage_s and self.stop is None:
            self.stop = remote_errors.RemoteStop(remote_errors.outage_message(
                "direct requests", _as_exception(answer, None, path), down, self.policy.max_outage_s))
        return self.stop is not None


def _as_exception(answer: Answer, caller: Caller | None, path: str) -> Exception:
    """An answer that is not a success as the openai client's exception (what ``remote_errors`` classifies)."""
    import httpx  # here: a run that never sends direct requests does not load it

    base = getattr(caller, "base_url", "http://remote/v1/")
    request = httpx.Request("POST", f"{str(base).rstrip('/')}/{path}")
    if answer.status is None:
        return openai.APIConnectionError(message=answer.error or "no answer", request=request)
    try:
        body = orjson.loads(answer.body) if answer.body else None
    except orjson.JSONDecodeError:
        body = None
    response = httpx.Response(answer.status, headers=dict(answer.headers or {}), content=answer.body,
                              request=request)
    error = body.get("error") if isinstance(body, dict) else None
    message = (error.get("message") if isinstance(error, dict) else None) or f"HTTP {answer.status}"
    return openai.APIStatusError(message, response=response, body=body)


_VERBOSITY = {"never": 0, "error": 1, "warn": 2, "always": 3}


def _retry_after(headers: Any) -> float | None:
    """Seconds a 429 says to wait: ``retry-after-ms`` when given (``retry-after`` is whole seconds, at least 1)."""
    if not headers:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    return parse_reset(headers.get("retry-after"))


def _error_body(status: int, content: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(content) if content else {}
    except orjson.JSONDecodeError:
        body = {}
    err = body.get("error", body) if isinstance(body, dict) else {}
    err = err if isinstance(err, dict) else {}
    message = err.get("message") or content[:500].decode(errors="replace") or f"HTTP {status}"
    return {"code": str(err.get("code") or err.get("type") or status), "message": message}


def _line(custom_id: str, status: int | None, body: Any, error: dict[str, Any] | None, request_id: str | None) -> bytes:
    response = None if status is None else {"status_code": status, "request_id": request_id, "body": body}
    return orjson.dumps({"id": f"direct_{custom_id}", "custom_id": custom_id, "response": response, "error": error})


def run_direct(engine: Engine, pacer: Pacer | None = None, stats: DirectStats | None = None) -> list[int]:
    """Execute every assembled direct batch the budgets allow; returns the ids that ran."""
    pacer = pacer or Pacer(engine.options.max_direct_rpm, engine.options.max_direct_tpm)
    stats = stats or DirectStats()
    if not any(b.mode == "direct" for b in engine.state.batches_in("pushing", "assembled")):
        return []
    share = quota_gate.DirectShare(engine, pacer)
    try:
        with old_objects_frozen():
            return asyncio.run(_run_batches(engine, pacer, stats, share))
    finally:
        share.leave()


@contextmanager
def old_objects_frozen() -> Iterator[None]:
    """Keep what exists before the calls start (modules, the task's state) out of the collector's walks meanwhile.

    Measured at 500 calls/s: the oldest generation's collections walked all of it, each a 0.1-0.3 s pause of the
    event loop (no sends, the pacer's credit only covers 0.5 s) and 1.85 s of collector time in a 20 s run.
    Objects made during the calls are collected as usual; the frozen ones go back into the oldest generation after,
    unless something was frozen before (a script's start-up freezes its imports, `startup.imports_loaded`): that
    freeze is not undone, and what this one added stays frozen with it (reference counting still frees it).
    """
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


async def _run_batches(engine: Engine, pacer: Pacer, stats: DirectStats,
                       share: quota_gate.DirectShare | None = None) -> list[int]:
    """All the direct batches through one pool of workers, one event loop and one HTTP session: a batch's last
    answers overlap the next batch's first requests, and every commit runs in a thread while requests go on."""
    concurrency = max(1, engine.options.max_direct_concurrency)
    client = engine.async_client()
    caller: Caller = (ClientCaller(client) if engine.azure
                      else HttpCaller.from_client(client, concurrency))
    pipeline = Pipeline(engine, DirectRunner(engine, pacer, stats), caller, concurrency * CHUNK_PER_SLOT, share)
    try:
        return await pipeline.run(concurrency)
    finally:
        try:
            await caller.close()
        finally:
            if engine.shared_rate is not None:
                await engine.shared_rate.aclose()


class BatchRun:
    """One direct batch in flight: its requests, results so far and what is committed."""

    def __init__(self, batch: BatchRecord, items: list[dict], sides: list[dict], path: str) -> None:
        self.batch = batch
        self.path = path
        self.custom_ids = [item["custom_id"] for item in items]
        self.bodies = [orjson.dumps(item["body"]) for item in items]
        self.sides = sides
        self.tokens = [side["tokens"] + side["max_out"] for side in sides]
        self.n = len(items)
        self.calls: list[Call | None] = [None] * self.n
        self.next = batch.direct_done  # the next request to hand to a worker
        self.prefix = batch.direct_done  # requests before it all have results
        self.started = time.time()

    @property
    def durable_sent(self) -> int:
        return self.batch.direct_sent

    def finish(self, i: int, call: Call) -> bool:
        """Record request i's result; True when the finished prefix grew."""
        self.calls[i] = call
        grew = False
        while self.prefix < self.n and self.calls[self.prefix] is not None:
            self.prefix += 1
            grew = True
        return grew


class Pipeline:
    """Workers take requests in order from the batch being fed; one committer (a coroutine whose store work runs
    in a thread) keeps the manifest ahead of them: a request is sent only once "sent up to k" (k past it) is
    committed, and results are committed as finished prefixes, a chunk at a time. A crash re-sends at most the
    calls between the committed results and the committed "sent" mark (charged at their worst case, as before).
    """

    def __init__(self, engine: Engine, runner: DirectRunner, caller: Caller, chunk: int,
                 share: quota_gate.DirectShare | None = None) -> None:
        self.engine = engine
        self.share = share  # this run's share of direct limits shared with other tasks (--quota_dir)
        self.runner = runner
        self.caller = caller
        self.chunk = chunk
        self.pending = [b.local_id for b in engine.state.batches_in("pushing", "assembled") if b.mode == "direct"]
        self.active: list[BatchRun] = []  # opened, not yet committed as done
        self.feed: BatchRun | None = None  # the batch whose requests workers take now
        self.upcoming: BatchRun | None = None  # opened ahead: fed as soon as the feed's last request is taken
        self.exhausted = False  # no batch left to open (or the budgets refuse the next one)
        self.ran: list[int] = []
        self.refills = 0
        self.sending = 0  # calls in flight now
        self._work = asyncio.Event()  # wakes workers (after a commit)
        self._commit = asyncio.Event()  # wakes the committer (results to commit, mark to move, batch to open)

    async def run(self, workers: int) -> list[int]:
        tasks = [asyncio.ensure_future(self._committer())]
        tasks += [asyncio.ensure_future(self._worker()) for _ in range(workers)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            for task in tasks:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.ran

    # --- workers ------------------------------------------------------------------------------------------------

    async def _next(self) -> tuple[BatchRun, int] | None:
        while True:
            if self.runner.stop is not None:
                return None
            run = self.feed
            if run is not None and run.next < run.n and run.next < run.durable_sent:
                i = run.next
                run.next += 1
                if run.durable_sent - run.next < self.chunk // 2 and run.durable_sent < run.n:
                    self._commit.set()  # move the "sent" mark on before the workers reach it
                return run, i
            if (run is None or run.next >= run.n) and self.upcoming is not None:
                self.feed, self.upcoming = self.upcoming, None
                self._commit.set()  # open the one after it
                continue
            if self.exhausted and (run is None or run.next >= run.n):
                return None
            self._commit.set()
            self._work.clear()
            await self._work.wait()

    async def _worker(self) -> None:
        try:
            while (job := await self._next()) is not None:
                run, i = job
                self.sending += 1
                try:
                    call = await self.runner.one(self.caller, run.path, run.custom_ids[i], run.bodies[i],
                                                 run.tokens[i], run.batch.model)
                finally:
                    self.sending -= 1
                if call is not None and run.finish(i, call) and (
                        run.prefix - run.batch.direct_done >= self.chunk or run.prefix == run.n):
                    self._commit.set()
        finally:
            self._commit.set()  # the committer may wait for the last call in flight (a stop)

    # --- committer ----------------------------------------------------------------------------------------------

    async def _committer(self) -> None:
        while True:
            if (stop := self.runner.stop) is not None:
                if self.sending == 0:  # every call that went out has its answer: commit them, then stop
                    await asyncio.to_thread(self._commit_stop)
                    raise stop
                self._commit.clear()
                await self._commit.wait()
                continue
            acted = await self._step()
            if acted:
                self._work.set()
                continue
            if self.exhausted and not self.active:
                self._work.set()
                return
            self._commit.clear()
            await self._commit.wait()

    async def _step(self) -> bool:
        """One commit (in a thread), or False when nothing needs committing now."""
        for run in list(self.active):
            if run.prefix == run.n:
                await asyncio.to_thread(self._commit_done, run)
                self.active.remove(run)
                self.ran.append(run.batch.local_id)
                return True
        for run in self.active:
            target = self._mark_ahead(run)
            wants_mark = target > run.durable_sent and (target == run.n or target - run.durable_sent >= self.chunk // 2)
            ready = run.prefix - run.batch.direct_done
            if wants_mark or ready >= self.chunk:
                mark = target if wants_mark else run.durable_sent
                await asyncio.to_thread(self._commit_progress, run, max(mark, run.durable_sent))
                return True
        if not self.exhausted and self.upcoming is None:
            # opened ahead, so that workers go on to it without waiting for its assembly and reservation
            run = await asyncio.to_thread(self._open_next, self.feed is not None and self.feed.next < self.feed.n)
            if run is not None:
                self.active.append(run)
                if self.feed is None or self.feed.next >= self.feed.n:
                    self.feed = run
                else:
                    self.upcoming = run
            return True
        return False

    def _mark_ahead(self, run: BatchRun) -> int:
        """Where the "sent" mark of `run` should be: a chunk past its next request while it is fed; where it is for
        any other batch (one opened ahead is marked only once it is fed: a crash before that must not count its
        requests as sent, which would charge them and, under a task limit, keep them from being sent at all)."""
        if run is self.feed:
            return min(run.n, run.next + self.chunk)
        return run.durable_sent

    def _open_next(self, ahead: bool = False) -> BatchRun | None:
        """Reserve the next direct batch's spend, read it, recover calls a crash lost; None when none is left.
        Its "sent" mark moves on at once when it is fed now, else (`ahead`) once workers reach it: a crash counts
        requests past a durable mark as sent (charged at worst case), so the mark stays a chunk ahead of them."""
        engine = self.engine
        while self.pending or self._refill():
            batch = engine.state.batches[self.pending.pop(0)]
            if batch.mode != "direct" or batch.state not in ("assembled", "pushing"):
                continue
            if batch.state == "pushing" and not engine.fence.may_create_again("direct", batch.local_id):
                continue  # a previous lease holder may still be sending its calls
            if self.share is not None:
                self.share.renew(batch.model)
            if batch.state == "assembled":
                refusal = limits.spend_refusal(engine.options, engine.state, engine.session_id, batch)
                if refusal:
                    log.info("direct batch %d waits: %s reached", batch.local_id, refusal)
                    break
                batch = reserve_and_mark(engine, batch, "pushing")
            store = engine.store
            items = [orjson.loads(raw) for raw in store.iter_lines(BlobRef.model_validate(batch.input_ref))]
            sides = [orjson.loads(raw) for raw in store.iter_lines(BlobRef.model_validate(batch.sidecar_ref))]
            if batch.direct_sent > batch.direct_done:
                batch = _recover_lost_calls(engine, batch, items, sides)
            run = BatchRun(batch, items, sides, endpoint_path(batch.endpoint))
            if run.next < run.n and not ahead:
                self._commit_progress(run, min(run.n, run.next + self.chunk))
            return run
        self.exhausted = True
        return None

    def _refill(self) -> bool:
        """Assemble one more direct batch while the workers still send (the run loop would do it after a pause).
        One at a time: the committer does nothing else meanwhile, and the "sent" mark must keep ahead of the
        workers (assembling ten batches took 0.3-0.8 s under load, longer than a chunk's sending)."""
        from gbatch_flows.engine.runner import choose_mode  # the runner imports this module

        if self.refills >= MAX_REFILLS or choose_mode(self.engine) != "direct":
            return False
        self.refills += 1
        self.pending.extend(assemble(self.engine, "direct", max_new=1))
        return bool(self.pending)

    def _commit_progress(self, run: BatchRun, mark: int, lower: bool = False) -> None:
        """Commit the finished prefix's results (as a new part) and the "sent up to" mark, in one commit; calls with
        an unknown outcome (``Call.unknown``) are charged at their worst case in the same commit."""
        batch = run.batch
        if self.share is not None:
            self.share.renew(batch.model)
        lo, hi = batch.direct_done, run.prefix
        update: dict[str, Any] = {"direct_sent": mark if lower else max(mark, batch.direct_sent)}
        if hi > lo:
            calls: list[Call] = run.calls[lo:hi]  # type: ignore[assignment]
            ref = self.engine.store.put_blob(_part_path(batch), [b"\n".join(c.line for c in calls) + b"\n"])
            update["direct_done"] = hi
            update["direct_parts"] = [*batch.direct_parts, ref.model_dump(mode="json")]
            unknown = _worst_of(self.engine, batch, [run.sides[lo + k] for k, c in enumerate(calls) if c.unknown])
            if unknown.requests:  # within the batch's own reservation: such a call has no result to count
                update["lost_spend"] = batch.lost_spend + unknown
                log.warning("direct batch %d: %d calls with an unknown outcome charged at their worst case $%.4f; "
                            "their requests go back to the queue", batch.local_id, unknown.requests, unknown.cost)
        run.batch = _commit_batch(self.engine, batch, update,
                                  f"direct batch {batch.local_id}: results up to {hi}, sending up to {mark}")
        self.runner.stats.commits += 1

    def _commit_stop(self) -> None:
        """The run stops (key refused, no endpoint, outage too long) with every call answered or abandoned: commit
        the finished prefix of each batch and move its "sent" mark back to the last request that got an answer.
        Requests past that mark were never answered (nothing billed: refused, or never sent); an answered request
        beyond a gap stays "sent", so the next run charges it at its worst case and sends it again, as after a
        crash. Nothing is marked failed."""
        for run in self.active:
            answered = [i for i in range(run.prefix, run.n) if run.calls[i] is not None]
            mark = answered[-1] + 1 if answered else run.prefix
            self._commit_progress(run, mark, lower=True)

    def _commit_done(self, run: BatchRun) -> None:
        """The last results and the whole batch's results file, with the batch marked done, in one commit."""
        if run.prefix > run.batch.direct_done:
            self._commit_progress(run, run.n)
        batch = run.batch
        ref = self.engine.store.put_blob(f"results/{batch.local_id:06d}.jsonl", _concat_parts(self.engine, batch))
        run.batch = _commit_batch(self.engine, batch, {
            "state": "done", "remote_status": "completed", "results_ref": ref.model_dump(mode="json"),
            "pushed_at": batch.pushed_at or run.started, "finished_at": time.time(),
        }, f"direct batch {batch.local_id} ran ({run.n} requests)")
        self.runner.stats.commits += 1


def _worst_of(engine: Engine, batch: BatchRecord, sides: list[dict]) -> limits.Spend:
    """Worst-case spend of the calls of these requests (prompt estimate + max completion tokens)."""
    prices = engine.prices(batch.model, batch.endpoint)
    lost = limits.Spend()
    for side in sides:
        lost = lost + limits.Spend(requests=1, tokens=side["tokens"] + side["max_out"],
                                   cost=costs.worst_case_cost(side["tokens"], side["max_out"], prices, "direct"))
    return lost


def _part_path(batch: BatchRecord) -> str:
    return f"results/{batch.local_id:06d}.part{len(batch.direct_parts):05d}.jsonl"


def _commit_batch(engine: Engine, batch: BatchRecord, update: dict[str, Any], message: str) -> BatchRecord:
    changes = Changes()
    updated = engine.state.batches[batch.local_id].model_copy(update=update)
    changes.batch(updated)
    engine.commit(changes, message)
    return updated


def _concat_parts(engine: Engine, batch: BatchRecord):
    for ref in batch.direct_parts:
        yield engine.store.read_blob(BlobRef.model_validate(ref))


def _recover_lost_calls(engine: Engine, batch: BatchRecord, items: list[dict], sides: list[dict]) -> BatchRecord:
    """Calls started before a crash whose results were never committed: they may have been billed. Charge their
    worst case, then re-send them under a new reservation, or fail them when the limits cannot take it."""
    lo, hi = batch.direct_done, batch.direct_sent
    lost = _worst_of(engine, batch, sides[lo:hi])
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
        ref = engine.store.put_blob(_part_path(batch), [b"\n".join(lines) + b"\n"])
        update["direct_parts"] = [*batch.direct_parts, ref.model_dump(mode="json")]
        update["direct_done"] = hi
    updated = engine.state.batches[batch.local_id].model_copy(update=update)
    changes.batch(updated)
    engine.commit(changes, f"direct batch {batch.local_id}: {hi - lo} calls lost in a crash")
    return updated
