"""One direct-mode RPM/TPM budget shared by every flow run against the same key and model, on the Prefect server
(``--shared_direct_limit NAME``): the flow layer's implementation of ``engine.shared_rate.SharedRate``.

Two Prefect global concurrency limits per (NAME, model), used as rate limits: ``gbatch-direct-rpm-NAME-MODEL`` and
``gbatch-direct-tpm-NAME-MODEL``. Each is a token bucket on the server: its slots decay at ``slot_decay_per_second``
= HEADROOM x the per-minute limit / 60, and its ``limit`` is the bucket's capacity, BURST_S seconds of that rate
(not a minute: the real API and the emulator refuse a minute's allowance sent in one second). Requests are counted
in thousandths (REQUEST_SLOTS slots per request): slots are whole numbers and the server rounds each decay step
down, so a low RPM keeps its precision. The flow creates the limits when missing and sets them to this run's
``--max_direct_rpm`` / ``--max_direct_tpm`` (the newest run's values win); a limit set inactive in the Prefect UI
lets everything through; one deleted while runs send is created again.

No Prefect API call per request: a run takes slots a chunk at a time (CHUNK_S seconds of the shared rate, or what
one request needs when that is more) and spends them request by request; it asks for the next chunk when half a
chunk is left, so the API's latency does not hold its requests up, and drops slots left unspent for STASH_TTL_S.
A refused chunk (HTTP 423) is asked for again after the chunk's time (longer after refusals in a row); a failed call
(a 503: SQLite refuses a write that met another one) within milliseconds, not after the Prefect client's 2 s.
So at most ``rate x (T + BURST_S + 2 x CHUNK_S)`` goes out in T seconds from the runs together; HEADROOM (10 %)
keeps the remote's own short-window bucket from running dry when the chunks of two runs arrive close together
(measured on the emulator with two runs in two processes: a few 429s in one trial of four at 100 %, none at 90 %).

Without a Prefect server (no ``PREFECT_API_URL``) each process starts its own temporary server, so runs share the
limits only within one process: the flow warns. Without Prefect at all (``--no_prefect``), ``--quota_dir`` shares
direct limits through the ledger instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL

from gbatch_flows.engine.shared_rate import SharedRateError
from gbatch_flows.remote_errors import OutagePolicy

log = logging.getLogger("gbatch_flows.prefect_rate")

REQUEST_SLOTS = 1000  # slots per request (tokens: one slot per token)
BURST_S = 0.5  # the bucket's capacity, in seconds of the shared rate (as the pacer's BURST_S)
HEADROOM = 0.9  # the shared limits run at this fraction of the options' (see above)
CHUNK_S = 0.25  # slots taken per Prefect API call, in seconds of the shared rate
STASH_TTL_S = 1.0  # slots taken but unspent for this long are dropped
MIN_RETRY_S = 0.01
MAX_STREAK = 2  # after n refusals in a row a run waits n chunks' time (at most this many) before asking again
MAX_OUTAGE_S = 30.0  # how long the Prefect API may fail (not refuse) before the run stops
#: The back-off between failed increments: the run's outage rule with waits from 20 ms (a 503 of SQLite) to 2 s.
PREFECT_OUTAGE = OutagePolicy(max_outage_s=MAX_OUTAGE_S, first_wait_s=0.02, max_wait_s=2.0)

_BANNED = re.compile(r"[/%&<>]")  # characters Prefect refuses in names
KINDS = {"requests": ("rpm", REQUEST_SLOTS), "tokens": ("tpm", 1)}


def limit_name(scope: str, model: str, kind: str) -> str:
    """``gbatch-direct-rpm-<scope>-<model>`` (``tpm`` for tokens); characters Prefect refuses become ``_``."""
    return _BANNED.sub("_", f"gbatch-direct-{KINDS[kind][0]}-{scope}-{model}")


@dataclass
class LimitSpec:
    """One limit as this run uses it: slots per unit, decay per second, capacity and chunk in slots."""

    name: str
    unit: int
    decay: float
    capacity: int
    chunk: int

    @classmethod
    def for_rate(cls, name: str, unit: int, per_minute: float) -> LimitSpec:
        decay = per_minute * unit / 60.0 * HEADROOM
        capacity = max(unit, math.ceil(decay * BURST_S))  # at least one request (one token)
        return cls(name, unit, decay, capacity, cls._chunk(decay, capacity))

    @classmethod
    def from_server(cls, name: str, unit: int, limit: Any) -> LimitSpec:
        decay = float(limit.slot_decay_per_second)
        return cls(name, unit, decay, int(limit.limit), cls._chunk(decay, int(limit.limit)))

    @staticmethod
    def _chunk(decay: float, capacity: int) -> int:
        return max(1, min(capacity, round(decay * CHUNK_S)))


class PrefectRateLimits:
    """The shared limits of one run (``engine.shared_rate``): ``take`` before each direct attempt.

    Figures for reports and tests: ``calls`` (every Prefect API call, refused ones included), ``refused`` (HTTP 423),
    ``taken`` (requests and tokens spent), ``dropped`` (slots that aged out unspent).
    """

    def __init__(self, scope: str, rpm: float | None, tpm: float | None,
                 client_factory: Callable[[], Any] = get_client, clock: Callable[[], float] = time.monotonic):
        self.scope = scope
        self.per_minute = {"requests": rpm, "tokens": tpm}
        self.client_factory = client_factory
        self.clock = clock
        self.calls = 0
        self.call_s = 0.0  # time spent in increment calls
        self.refused = 0
        self.taken = {"requests": 0, "tokens": 0}
        self.dropped = {"requests": 0, "tokens": 0}
        self._specs: dict[tuple[str, str], LimitSpec] = {}
        self._stash: dict[tuple[str, str], tuple[int, float]] = {}  # (slots left, when taken)
        self._client: Any = None  # bound to the event loop of the direct stage that opened it
        self._refills: dict[tuple[str, str], asyncio.Future[None]] = {}  # of this event loop
        self._wanted: dict[tuple[str, str], int] = {}  # the most slots a waiting request needs
        self._streak: dict[tuple[str, str], int] = {}  # refusals in a row
        self._reported: tuple[int, int, int, float] = (0, 0, 0, 0.0)  # figures already logged

    # --- the hook -------------------------------------------------------------------------------------------------

    async def take(self, model: str, requests: int, tokens: int) -> None:
        wanted = [((model, kind), amount) for kind, amount in (("requests", requests), ("tokens", tokens))
                  if self.per_minute[kind] is not None and amount > 0]
        await asyncio.gather(*(self._take(key, amount) for key, amount in wanted))  # both kinds at once
        for (_, kind), amount in wanted:
            self.taken[kind] += amount

    async def aclose(self) -> None:
        refills, self._refills = list(self._refills.values()), {}
        for task in refills:
            task.cancel()
        await asyncio.gather(*refills, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.__aexit__(None, None, None)
        now = (self.taken["requests"], self.calls, self.refused, self.call_s)
        requests, calls, refused, call_s = (a - b for a, b in zip(now, self._reported))
        if requests:  # this direct stage's figures
            log.info("shared direct limit %r: %d requests took %d Prefect API calls (%d refused; %.1fs waiting for "
                     "answers)", self.scope, requests, calls, refused, call_s)
        self._reported = now

    # --- slots ----------------------------------------------------------------------------------------------------

    async def _take(self, key: tuple[str, str], amount: int) -> None:
        """Spend ``amount`` from the slots this run holds; wait for the next chunk when they are short. The next
        chunk is asked for before they run out (prefetch), so the API's latency does not hold the requests up."""
        while True:
            spec = self._specs.get(key)
            if spec is not None:
                need = min(amount * spec.unit, spec.capacity)  # more than the bucket holds: wait for a full one
                have, since = self._stash.get(key, (0, 0.0))
                if have and self.clock() - since > STASH_TTL_S:  # too old to be sent as a burst now
                    self.dropped[key[1]] += have
                    have = 0
                if have >= need:
                    self._stash[key] = (have - need, since)
                    if have - need < spec.chunk // 2:
                        self._refill(key)
                    return
                self._stash[key] = (have, since)
                self._wanted[key] = max(self._wanted.get(key, 0), need - have)
            await asyncio.shield(self._refill(key))  # a waiter cancelled does not cancel the refill

    def _refill(self, key: tuple[str, str]) -> asyncio.Future[None]:
        """The chunk being asked for (one at a time per limit); a new one when none is."""
        task = self._refills.get(key)
        if task is not None and task.done():
            error = None if task.cancelled() else task.exception()
            if error is not None:  # the last refill failed (an outage longer than MAX_OUTAGE_S): stop
                raise error
            task = None
        if task is None:
            task = self._refills[key] = asyncio.ensure_future(self._fill(key))
        return task

    async def _fill(self, key: tuple[str, str]) -> None:
        if key not in self._specs:
            await self._set_up(*key)
        while True:
            spec = self._specs[key]
            chunk = min(spec.capacity, max(spec.chunk, self._wanted.get(key, 0)))
            if await self._increment(key, chunk):
                self._wanted.pop(key, None)
                have, _ = self._stash.get(key, (0, 0.0))
                self._stash[key] = (have + chunk, self.clock())
                return

    async def _increment(self, key: tuple[str, str], slots: int) -> bool:
        """Ask the server for ``slots``; True when given, False after a refusal (and the wait that follows it).
        Failed calls are sent again here, for up to MAX_OUTAGE_S."""
        spec = self._specs[key]
        failing_since: float | None = None
        failures = 0
        while True:
            client = await self._open()
            self.calls += 1
            started = self.clock()
            try:
                response = await _increment_once(client, spec.name, slots)
            except httpx.HTTPStatusError as exc:
                self.call_s += self.clock() - started
                status = exc.response.status_code
                if status == 423:  # the bucket is full: ask again once the chunk may fit, later after each refusal
                    self.refused += 1
                    streak = self._streak[key] = self._streak.get(key, 0) + 1
                    chunk_s = slots / max(spec.decay, 1e-9)
                    await asyncio.sleep(max(_retry_after(exc.response, chunk_s),
                                            chunk_s * min(streak, MAX_STREAK) * random.uniform(0.75, 1.25)))
                    return False
                if status == 422:  # more than the limit holds: another run lowered it; use it as it is now
                    await self._read(key)
                    return False
                if status < 500:
                    raise SharedRateError(f"Prefect refused the rate limit {spec.name!r}: HTTP {status} "
                                          f"{_detail(exc.response)}") from None
                failures += 1
                failing_since = await self._pause(spec, failing_since, failures, f"HTTP {status}")
                continue
            except (httpx.TransportError, OSError) as exc:
                failures += 1
                failing_since = await self._pause(spec, failing_since, failures, f"{type(exc).__name__}: {exc}")
                continue
            self.call_s += self.clock() - started
            if not _names(response):  # the limit is gone (deleted in the UI): create it again
                log.warning("shared direct limit %s was deleted; creating it again", spec.name)
                await self._set_up(*key)
                return False
            self._streak[key] = 0
            return True

    async def _pause(self, spec: LimitSpec, failing_since: float | None, failures: int, what: str) -> float:
        """A failed increment (a 5xx, no answer) is asked again soon: on SQLite a write that met another one gets a
        503 at once, and the Prefect client's own retry would wait 2 s. Longer than MAX_OUTAGE_S: the run stops."""
        now = self.clock()
        failing_since = now if failing_since is None else failing_since
        if now - failing_since >= MAX_OUTAGE_S:
            raise SharedRateError(f"the Prefect API did not answer for {now - failing_since:.0f}s while taking the "
                                  f"rate limit {spec.name!r} ({what})")
        await asyncio.sleep(PREFECT_OUTAGE.backoff(min(failures, 7), now - failing_since))
        return failing_since

    # --- the limits on the server -----------------------------------------------------------------------------------

    async def _open(self) -> Any:
        if self._client is None:
            client = self.client_factory()
            self._client = await client.__aenter__()
        return self._client

    async def _set_up(self, model: str, kind: str) -> LimitSpec:
        """Create the limit when missing, else set it to this run's rate (the newest run's values win)."""
        per_minute = self.per_minute[kind]
        assert per_minute is not None
        name = limit_name(self.scope, model, kind)
        spec = LimitSpec.for_rate(name, KINDS[kind][1], per_minute)
        client = await self._open()
        try:
            self.calls += 1
            current = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            current = None
        if current is None:
            try:
                self.calls += 1
                await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                    name=name, limit=spec.capacity, slot_decay_per_second=spec.decay))
                log.info("shared direct limit %s created: %g per minute", name, per_minute)
            except ObjectAlreadyExists:  # another run created it at the same moment: set it as below
                self.calls += 1
                current = await client.read_global_concurrency_limit_by_name(name)
        if current is not None and (current.limit != spec.capacity
                                    or not math.isclose(current.slot_decay_per_second, spec.decay, rel_tol=1e-9)):
            self.calls += 1
            await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(
                limit=spec.capacity, slot_decay_per_second=spec.decay))
            log.warning("shared direct limit %s set to %g per minute (it was %g)", name, per_minute,
                        current.slot_decay_per_second * 60 / spec.unit / HEADROOM)
        self._specs[(model, kind)] = spec
        return spec

    async def _read(self, key: tuple[str, str]) -> None:
        spec = self._specs[key]
        client = await self._open()
        self.calls += 1
        self._specs[key] = LimitSpec.from_server(spec.name, spec.unit,
                                                 await client.read_global_concurrency_limit_by_name(spec.name))


async def _increment_once(client: Any, name: str, slots: int) -> httpx.Response:
    """``PrefectClient.increment_concurrency_slots`` sent once: the Prefect client's transport retries a 503 (which
    SQLite gives at once to a write that met another one) only after sleeping 2 s, even with retries turned off, so
    the request goes through its httpx client's plain ``send``; ``_increment`` retries within milliseconds."""
    http = getattr(client, "_client", None)  # PrefectHttpxAsyncClient: base URL, auth headers, transport
    if not isinstance(http, httpx.AsyncClient):
        return await client.increment_concurrency_slots(names=[name], slots=slots, mode="rate_limit")
    request = http.build_request("POST", "/v2/concurrency_limits/increment",
                                 json={"names": [name], "slots": slots, "mode": "rate_limit"})
    response = await httpx.AsyncClient.send(http, request)
    if response.status_code == 403 and "csrf" in response.text.lower():  # a server with CSRF protection on
        return await client.increment_concurrency_slots(names=[name], slots=slots, mode="rate_limit")
    response.raise_for_status()
    return response


def _retry_after(response: httpx.Response, fallback: float) -> float:
    try:
        wait = float(response.headers.get("Retry-After", fallback))
    except ValueError:
        wait = fallback
    return max(MIN_RETRY_S, min(wait, 2 * fallback, 30.0))


def _names(response: Any) -> list[Any]:
    try:
        data = response.json()
    except Exception:  # noqa: BLE001 - an answer without a body: nothing was acquired
        return []
    return data if isinstance(data, list) else []


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", ""))[:200]
    except Exception:  # noqa: BLE001
        return response.text[:200]


def server_present() -> bool:
    """Whether the flow talks to a Prefect server (``PREFECT_API_URL``), rather than a temporary one of its own."""
    return bool(PREFECT_API_URL.value())

