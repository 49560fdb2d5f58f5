"""Headers clients read: x-request-id on every answer, x-ratelimit-* on every answer of a limited endpoint (also 4xx,
which Curator probes), and rate limits over short windows (a burst gets 429s, an evenly paced client none)."""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest

from .conftest import chat_requests, upload

KEY = {"Authorization": "Bearer sk-test-dummy"}
CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")


def test_every_answer_has_a_request_id(emu, client: openai.OpenAI) -> None:
    emu.set_faults(script=[{"op": "models.list", "nth": 1, "fault": "http_503"}])
    base = emu.base_url
    replies = [
        httpx.post(f"{base}/chat/completions", json=CHAT_BODY, headers=KEY),
        httpx.post(f"{base}/chat/completions", json={"model": "gpt-4o-mini"}, headers=KEY),
        httpx.post(f"{base}/responses", content=b"{not json", headers=KEY),
        httpx.get(f"{base}/nowhere", headers=KEY),
        httpx.get(f"{base}/models", headers=KEY),  # an injected 503
        httpx.get(f"{base}/files", headers=KEY),
        httpx.get(f"{base}/batches/batch_missing", headers=KEY),
    ]
    assert [r.status_code for r in replies] == [200, 400, 400, 404, 503, 200, 404]
    ids = [r.headers.get("x-request-id", "") for r in replies]
    assert all(REQUEST_ID.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    raw = client.files.with_raw_response.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    assert REQUEST_ID.match(raw.headers["x-request-id"]) and raw.request_id == raw.headers["x-request-id"]


def test_rate_limit_headers_on_4xx_answers_of_limited_endpoints(emulator_factory) -> None:
    emu, _ = emulator_factory(rpm=100, tpm=10_000, strict_models=True)
    base = emu.base_url
    bad_body = httpx.post(f"{base}/chat/completions", json={"model": "gpt-4o-mini"}, headers=KEY)
    not_json = httpx.post(f"{base}/embeddings", content=b"[", headers=KEY)
    unknown_model = httpx.post(f"{base}/responses", json={"model": "nope", "input": "x"}, headers=KEY)
    no_model = httpx.post(f"{base}/completions", json={"prompt": "x"}, headers=KEY)
    bad_moderation = httpx.post(f"{base}/moderations", json={}, headers=KEY)
    curator_probe = httpx.post(f"{base}/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                               headers=KEY)  # how Curator reads the limits before a run
    for reply, status in ((bad_body, 400), (not_json, 400), (unknown_model, 404), (no_model, 400),
                          (bad_moderation, 400), (curator_probe, 400)):
        assert reply.status_code == status, reply.text
        assert reply.headers["x-ratelimit-limit-requests"] == "100"
        assert reply.headers["x-ratelimit-limit-tokens"] == "10000"
        assert int(reply.headers["x-ratelimit-remaining-requests"]) >= 0
        assert reply.headers["x-ratelimit-reset-requests"] and reply.headers["x-ratelimit-reset-tokens"]
    assert int(bad_body.headers["x-ratelimit-remaining-requests"]) >= 1  # a refused request takes nothing
    files = httpx.get(f"{base}/files", headers=KEY)
    assert "x-ratelimit-limit-requests" not in files.headers  # only the model endpoints are limited


def _send(base: str, count: int, spacing: float = 0.0) -> list[httpx.Response]:
    """`count` chat requests, back to back or each at least `spacing` seconds after the previous one (a stalled
    client does not catch up with a burst)."""
    replies = []
    last = -spacing
    with httpx.Client(headers=KEY, timeout=30) as http:
        for _ in range(count):
            time.sleep(max(0.0, last + spacing - time.monotonic()))
            last = time.monotonic()
            replies.append(http.post(f"{base}/chat/completions", json=CHAT_BODY))
    return replies


def test_a_burst_gets_429s_but_even_pacing_at_the_limit_gets_none(emulator_factory) -> None:
    emu, _ = emulator_factory(rpm=600)  # 10 per second; the bucket holds one second's worth
    started = time.monotonic()
    burst = _send(emu.base_url, 60)
    elapsed = time.monotonic() - started
    ok = [r for r in burst if r.status_code == 200]
    refused = [r for r in burst if r.status_code == 429]
    assert len(ok) + len(refused) == 60 and refused
    assert 10 <= len(ok) <= 10 + 10 * elapsed + 2  # the bucket plus what refilled meanwhile
    for reply in refused:
        assert reply.json()["error"]["code"] == "rate_limit_exceeded"
        assert reply.headers["x-ratelimit-remaining-requests"] == "0"
        assert int(reply.headers["retry-after"]) >= 1 and 0 < int(reply.headers["retry-after-ms"]) <= 1000
        assert reply.headers["x-ratelimit-limit-requests"] == "600"

    paced_emu, _ = emulator_factory(rpm=600)
    paced = _send(paced_emu.base_url, 30, spacing=0.1)
    assert [r.status_code for r in paced] == [200] * 30
    assert all(int(r.headers["x-ratelimit-remaining-requests"]) >= 0 for r in paced)


def test_whole_minute_bucket_when_burst_seconds_is_60(emulator_factory) -> None:
    emu, _ = emulator_factory(rpm=30, rate_limit_burst_seconds=60)
    replies = _send(emu.base_url, 32)
    assert [r.status_code for r in replies] == [200] * 30 + [429, 429]


def test_token_burst_gets_429s_and_a_large_request_waits_for_a_full_bucket(emulator_factory) -> None:
    _, client = emulator_factory(tpm=6000)  # 100 tokens per second, the bucket holds 100
    first = client.chat.completions.with_raw_response.create(**CHAT_BODY, max_completion_tokens=300)
    assert first.headers["x-ratelimit-remaining-tokens"] == "0"  # larger than the bucket: passes, leaves a debt
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(**CHAT_BODY, max_completion_tokens=10)
    assert info.value.body["type"] == "tokens"
    assert 2 <= int(info.value.response.headers["retry-after"]) <= 5


def test_batch_upload_then_chat_still_works_without_limits(client: openai.OpenAI) -> None:
    upload(client, chat_requests(1))
    raw = client.chat.completions.with_raw_response.create(**CHAT_BODY)
    assert "x-ratelimit-limit-requests" not in raw.headers and raw.headers["x-request-id"].startswith("req_")


def test_the_projects_pacer_gets_no_429_under_short_window_limits(emulator_factory) -> None:
    """The engine's Pacer (evenly spaced sends, limits adopted from the headers) against the short-window buckets,
    with several requests in flight at once."""
    import asyncio

    from gbatch_flows.engine.pacer import Pacer

    emu, _ = emulator_factory(rpm=600, tpm=60_000)

    async def run() -> list[int]:
        pacer = Pacer(rpm=600, tpm=60_000)
        statuses: list[int] = []
        async with httpx.AsyncClient(headers=KEY, timeout=30) as http:
            async def one() -> None:
                for _ in range(8):
                    await pacer.acquire(40)
                    reply = await http.post(f"{emu.base_url}/chat/completions",
                                            json={**CHAT_BODY, "max_completion_tokens": 20})
                    pacer.update_from_headers(reply.headers)
                    statuses.append(reply.status_code)
            await asyncio.gather(*(one() for _ in range(4)))
        return statuses

    assert asyncio.run(run()) == [200] * 32


def test_reset_fills_every_bucket_again() -> None:
    from gbatch_flows.emulator.errors import ApiError
    from gbatch_flows.emulator.ratelimit import RateLimiter

    now = [100.0]
    limiter = RateLimiter(rpm=60, tpm=None, clock=lambda: now[0])  # 1 request per second, a burst of 1 s
    limiter.acquire("m", 10)
    with pytest.raises(ApiError):
        limiter.acquire("m", 10)  # the clock did not move: the bucket is empty
    limiter.reset()
    assert limiter.acquire("m", 10)["x-ratelimit-remaining-requests"] == "0"  # full again, then taken
