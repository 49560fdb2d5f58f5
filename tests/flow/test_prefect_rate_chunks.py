"""The chunking helper of ``--shared_direct_limit`` (``gbatch_flows/prefect_rate.py``) against a stand-in for the
Prefect API's rate-limit bucket (no server): few API calls for many requests, several runs together within the
rate and its burst, refusals waited out, a deleted limit created again, a refusal that is not a full bucket stops
the run with one line."""

from __future__ import annotations

import asyncio
import math
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from gbatch_flows import prefect_rate
from gbatch_flows.engine.shared_rate import SharedRateError
from gbatch_flows.prefect_rate import PrefectRateLimits, limit_name


class FakeServer:
    """Prefect's rate-limit buckets as the server computes them: slots decay at ``slot_decay_per_second``, rounded
    down at each update, and an increment passes only when the slots fit under ``limit`` (else HTTP 423)."""

    def __init__(self) -> None:
        self.limits: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, int]] = []
        self.refuse_with: int | None = None

    def level(self, limit: dict[str, Any], now: float) -> int:
        return max(0, limit["active"] - math.floor(limit["decay"] * (now - limit["updated"])))

    def client(self) -> FakeClient:
        return FakeClient(self)


def _error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://prefect/api/v2/concurrency_limits/increment")
    response = httpx.Response(status, headers=headers or {}, json={"detail": "no"}, request=request)
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


class FakeClient:
    def __init__(self, server: FakeServer):
        self.server = server

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        pass

    async def read_global_concurrency_limit_by_name(self, name: str) -> Any:
        from prefect.exceptions import ObjectNotFound

        self.server.calls.append(("read", name, 0))
        limit = self.server.limits.get(name)
        if limit is None:
            raise ObjectNotFound(http_exc=_error(404))
        return SimpleNamespace(limit=limit["limit"], slot_decay_per_second=limit["decay"])

    async def create_global_concurrency_limit(self, create: Any) -> None:
        self.server.calls.append(("create", create.name, create.limit))
        self.server.limits[create.name] = {"limit": create.limit, "decay": create.slot_decay_per_second,
                                           "active": 0, "updated": time.monotonic()}

    async def update_global_concurrency_limit(self, name: str, update: Any) -> None:
        self.server.calls.append(("update", name, update.limit))
        self.server.limits[name].update(limit=update.limit, decay=update.slot_decay_per_second)

    async def increment_concurrency_slots(self, names: list[str], slots: int, mode: str) -> httpx.Response:
        assert mode == "rate_limit" and len(names) == 1
        server = self.server
        server.calls.append(("increment", names[0], slots))
        await asyncio.sleep(0.002)  # an API call takes a little time
        if server.refuse_with is not None:
            raise _error(server.refuse_with)
        limit = server.limits.get(names[0])
        request = httpx.Request("POST", "http://prefect/api/v2/concurrency_limits/increment")
        if limit is None:
            return httpx.Response(200, json=[], request=request)
        if slots > limit["limit"]:
            raise _error(422)
        now = time.monotonic()
        level = server.level(limit, now)
        if level + slots > limit["limit"]:
            raise _error(423, {"Retry-After": str(slots / limit["decay"])})
        limit.update(active=level + slots, updated=now)
        return httpx.Response(200, json=[{"name": names[0]}], request=request)


async def _send(limits: PrefectRateLimits, model: str, tokens: int, until: float, sent: list[float],
                workers: int) -> None:
    async def worker() -> None:
        while time.monotonic() < until:
            await limits.take(model, 1, tokens)
            sent.append(time.monotonic())

    await asyncio.gather(*(worker() for _ in range(workers)))
    await limits.aclose()


def _most_in(times: list[float], window: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _run(server: FakeServer, runs: int, rpm: float, tpm: float, tokens: int, seconds: float,
         workers: int = 8) -> tuple[list[PrefectRateLimits], list[list[float]], float]:
    limits = [PrefectRateLimits("team", rpm, tpm, client_factory=server.client) for _ in range(runs)]
    sent: list[list[float]] = [[] for _ in limits]

    async def main() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(_send(r, "gpt-4o-mini", tokens, until, s, workers) for r, s in zip(limits, sent)))

    started = time.monotonic()
    asyncio.run(main())
    return limits, sent, time.monotonic() - started


def test_one_run_takes_chunks_a_few_api_calls_for_many_requests() -> None:
    server = FakeServer()
    # 100 requests/s, 50,000 tokens/s (90% of them shared: HEADROOM): chunks of 22.5 requests and 11,250 tokens
    (limits,), (sent,), elapsed = _run(server, 1, 6000.0, 3_000_000.0, 300, 2.0)
    calls = len(server.calls)
    assert limits.calls == calls
    assert len(sent) == limits.taken["requests"] and limits.taken["tokens"] == 300 * len(sent)
    assert len(sent) >= 0.8 * 100 * elapsed, (len(sent), elapsed)  # alone, it gets the whole rate (less the headroom)
    assert calls <= 0.2 * len(sent), (calls, len(sent))  # 1/22 + 1/37 per request, refusals and the set-up
    rpm_name, tpm_name = limit_name("team", "gpt-4o-mini", "requests"), limit_name("team", "gpt-4o-mini", "tokens")
    assert {c[2] for c in server.calls if c[0] == "increment" and c[1] == rpm_name} == {22_500}  # in thousandths
    assert {c[2] for c in server.calls if c[0] == "increment" and c[1] == tpm_name} == {11_250}
    # decay = per minute / 60 x HEADROOM (requests in thousandths), capacity BURST_S of it
    assert server.limits[rpm_name]["decay"] == pytest.approx(90_000) and server.limits[rpm_name]["limit"] == 45_000
    assert server.limits[tpm_name]["decay"] == pytest.approx(45_000) and server.limits[tpm_name]["limit"] == 22_500
    print(f"\none run: {len(sent)} requests in {elapsed:.1f}s, {calls} Prefect API calls "
          f"({calls / len(sent):.3f} per request)")


def test_three_runs_share_the_rate_within_its_burst() -> None:
    server = FakeServer()
    rpm, tpm, tokens = 2400.0, 600_000.0, 300  # 40 requests/s, 10,000 tokens/s: the tokens bind, at 33 requests/s
    runs, sent, elapsed = _run(server, 3, rpm, tpm, tokens, 3.0)
    everything = [t for s in sent for t in s]
    rate = min(rpm, tpm / tokens) / 60 * prefect_rate.HEADROOM
    # Sent as soon as granted (no pacer here): together within the rate plus the bucket (BURST_S) and the chunks a
    # run holds or asks for ahead (up to 2 x CHUNK_S), also in the first second (the bucket starts empty); most of
    # the rate used, and every run got its part (the split varies: whoever asks when the bucket has room gets it).
    slack = prefect_rate.BURST_S + 2 * prefect_rate.CHUNK_S
    assert len(everything) <= rate * (elapsed + slack) + 1, (len(everything), rate * elapsed)
    assert _most_in(everything, 1.0) <= rate * (1.0 + slack) + 1
    assert len(everything) >= 0.7 * rate * elapsed, (len(everything), rate * elapsed)
    assert all(len(s) >= 0.05 * len(everything) for s in sent), [len(s) for s in sent]
    # Refused chunks cost calls too (three runs ask the same full bucket), still far from one per request.
    calls = sum(r.calls for r in runs)
    assert calls == len(server.calls) and calls < len(everything), (calls, len(everything))
    assert sum(c[0] == "create" for c in server.calls) == 2  # once per limit, whichever run came first
    print(f"\nthree runs: {len(everything)} requests in {elapsed:.1f}s ({len(everything) / elapsed / rate:.0%} of "
          f"the rate), {calls} calls ({calls / len(everything):.2f} per request, {sum(r.refused for r in runs)} "
          f"refused), per run {[len(s) for s in sent]}")


def test_a_deleted_limit_is_created_again_and_the_newest_rate_wins() -> None:
    server = FakeServer()
    first = PrefectRateLimits("k", 600.0, None, client_factory=server.client)
    name = limit_name("k", "org/model<1>", "requests")
    assert name == "gbatch-direct-rpm-k-org_model_1_"

    async def some(limits: PrefectRateLimits, n: int) -> None:
        for _ in range(n):
            await limits.take("org/model<1>", 1, 50)
        await limits.aclose()

    asyncio.run(some(first, 3))
    assert server.limits[name]["decay"] == pytest.approx(10_000 * prefect_rate.HEADROOM)
    del server.limits[name]  # deleted in the UI while the run sends: created again on the next chunk
    first._stash.clear()
    asyncio.run(some(first, 3))
    assert name in server.limits and first.taken["requests"] == 6
    second = PrefectRateLimits("k", 1200.0, None, client_factory=server.client)
    asyncio.run(some(second, 1))
    assert server.limits[name]["decay"] == pytest.approx(20_000 * prefect_rate.HEADROOM)
    assert server.limits[name]["limit"] == math.ceil(20_000 * prefect_rate.HEADROOM * prefect_rate.BURST_S)
    assert [c[0] for c in server.calls if c[0] != "increment"] == ["read", "create", "read", "create", "read", "update"]


def test_unspent_slots_age_out(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeServer()
    now = [100.0]
    limits = PrefectRateLimits("k", 6000.0, None, client_factory=server.client, clock=lambda: now[0])

    async def one() -> None:
        await limits.take("m", 1, 10)
        await limits.aclose()

    asyncio.run(one())  # a chunk of 22.5 requests taken (90 per second x CHUNK_S), 21.5 left
    assert limits._stash[("m", "requests")][0] == 21_500
    now[0] += prefect_rate.STASH_TTL_S + 0.1
    server.limits[limit_name("k", "m", "requests")]["active"] = 0
    asyncio.run(one())  # too old to be sent as a burst now: dropped, a new chunk taken
    assert limits.dropped["requests"] == 21_500
    assert sum(c[0] == "increment" for c in server.calls) == 2


def test_a_refusal_stops_with_one_line_and_an_outage_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeServer()
    limits = PrefectRateLimits("k", 600.0, None, client_factory=server.client)
    server.refuse_with = 403
    with pytest.raises(SharedRateError, match="Prefect refused the rate limit 'gbatch-direct-rpm-k-m': HTTP 403"):
        asyncio.run(limits.take("m", 1, 1))

    monkeypatch.setattr(prefect_rate, "MAX_OUTAGE_S", 0.3)
    server.refuse_with = 500
    limits = PrefectRateLimits("k", 600.0, None, client_factory=server.client)
    with pytest.raises(SharedRateError, match="did not answer for"):
        asyncio.run(limits.take("m", 1, 1))
