"""Knobs through the official client: rate limits, faults (rates and scripts), no batch API, API key, state_dir."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator

from .conftest import chat_requests, make_client, read_lines, start_batch, upload, wait_for

USER = [{"role": "user", "content": "hi"}]


def _chat(client: openai.OpenAI, model: str = "gpt-4o-mini", **kwargs: Any) -> Any:
    return client.chat.completions.create(model=model, messages=USER, **kwargs)


def test_rpm_limit_answers_429_with_headers(emulator_factory) -> None:
    emu, client = emulator_factory(rpm=2, rate_limit_burst_seconds=60)  # the whole minute's allowance at once
    for remaining in ("1", "0"):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == remaining
        assert raw.headers["x-ratelimit-reset-requests"]
        assert raw.parse().choices[0].message.content
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)
    headers = info.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 30
    assert headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    body = info.value.body
    assert (body["code"], body["type"]) == ("rate_limit_exceeded", "requests") and "RPM" in body["message"]
    assert _chat(client, model="gpt-4o").choices  # limits are per model
    stats = emu.stats()
    assert stats["rate_limited"] == 1 and stats["responses_429"] == 1


def test_tpm_limit_counts_prompt_plus_max_tokens(emulator_factory) -> None:
    _, client = emulator_factory(tpm=100)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER,
                                                           max_completion_tokens=60)
    used = 100 - int(raw.headers["x-ratelimit-remaining-tokens"])
    assert raw.headers["x-ratelimit-limit-tokens"] == "100" and used >= 60
    with pytest.raises(openai.RateLimitError) as info:
        _chat(client, max_completion_tokens=60)
    assert info.value.body["type"] == "tokens" and int(info.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError) as info:
        _chat(client, model="gpt-4o", max_completion_tokens=500)
    assert "Request too large" in info.value.body["message"]


def _outcomes(client: openai.OpenAI, calls: int) -> list[str]:
    result = []
    for _ in range(calls):
        try:
            _chat(client)
            result.append("ok")
        except openai.APIStatusError as exc:
            result.append(str(exc.status_code))
    return result


def test_fault_rates_are_seeded_and_reproducible(emulator_factory) -> None:
    rates = {"http_500": 0.2, "http_429": 0.2, "ops": ["chat.completions"]}
    first_emu, first = emulator_factory(faults={"seed": 7, "rates": rates})
    _, second = emulator_factory(faults={"seed": 7, "rates": rates})
    _, other = emulator_factory(faults={"seed": 8, "rates": rates})
    pattern = _outcomes(first, 40)
    assert pattern == _outcomes(second, 40)
    assert pattern != _outcomes(other, 40)
    assert {"ok", "500", "429"} <= set(pattern)
    injected = first_emu.stats()["faults_injected"]
    assert injected == {"http_500": pattern.count("500"), "http_429": pattern.count("429")}
    assert first.models.list().data  # ops not listed are never faulted


def test_fault_script_by_call_number(emu, client: openai.OpenAI) -> None:
    emu.set_faults(script=[
        {"op": "chat.completions", "nth": 2, "fault": "http_500"},
        {"endpoint": "/v1/chat/completions", "nth": 3, "fault": "http_429"},
        {"op": "chat.completions", "nth": 4, "fault": "drop_connection"},
        {"op": "POST /v1/files", "nth": 1, "fault": "upload_error"},
        {"op": "models.list", "nth": 1, "fault": "http_503"},
    ])
    assert _chat(client).choices
    with pytest.raises(openai.InternalServerError):
        _chat(client)
    with pytest.raises(openai.RateLimitError) as info:
        _chat(client)
    assert info.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.APIConnectionError):
        _chat(client)
    assert _chat(client).choices
    with pytest.raises(openai.InternalServerError) as info:
        upload(client, chat_requests(1))
    assert "uploading" in info.value.body["message"]
    assert upload(client, chat_requests(1)).id
    with pytest.raises(openai.InternalServerError) as info:
        client.models.list()
    assert info.value.status_code == 503
    assert emu.stats()["faults_injected"] == {"http_500": 1, "http_429": 1, "drop_connection": 1,
                                              "upload_error": 1, "http_503": 1}


def test_invalid_fault_rules_are_rejected_clearly(emu) -> None:
    with pytest.raises(ValueError, match="unknown op"):
        emu.set_faults(script=[{"op": "chat.nope", "nth": 1, "fault": "http_500"}])
    with pytest.raises(ValueError, match="batches.create"):
        emu.set_faults(script=[{"op": "chat.completions", "fault": "batch_expired"}])
    reply = httpx.post(f"{emu.url}/_emulator/faults", json={"rates": {"http_500": 2}})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_faults"


@pytest.mark.parametrize(("fault", "at", "status", "done"), [
    ("batch_expired", 0.5, "expired", 5),
    ("batch_cancelled", 0.3, "cancelled", 3),
])
def test_batch_end_faults_leave_partial_output(emu, client, fault: str, at: float, status: str,
                                               done: int) -> None:
    emu.set_faults(script=[{"op": "batches.create", "nth": 1, "fault": fault, "at": at}])
    requests = chat_requests(10)
    batch = wait_for(client, start_batch(client, requests).id)
    assert batch.status == status and batch.request_counts.completed == done
    assert [line["custom_id"] for line in read_lines(client, batch.output_file_id)] == \
        [r["custom_id"] for r in requests[:done]]
    if status == "cancelled":
        assert batch.cancelling_at is not None and batch.cancelled_at is not None
    else:
        assert len(read_lines(client, batch.error_file_id)) == 10 - done
    assert emu.stats()["faults_injected"] == {fault: 1}
    assert wait_for(client, start_batch(client, requests).id).status == "completed"  # only the 1st batch


def test_batch_failed_fault_and_rate(emulator_factory) -> None:
    emu, client = emulator_factory(batch_duration=0, faults={"rates": {"batch_failed": 1.0}})
    batch = wait_for(client, start_batch(client, chat_requests(3)).id)
    assert batch.status == "failed" and batch.errors.data[0].code == "server_error"
    assert emu.stats()["faults_injected"] == {"batch_failed": 1}


def test_line_faults_missing_malformed_and_request_errors(emu, client: openai.OpenAI) -> None:
    emu.set_faults(seed=3, script=[
        {"op": "batches.create", "nth": 1, "fault": "request_errors", "custom_ids": ["r2", "r3"],
         "status_code": 429},
        {"op": "batches.create", "nth": 1, "fault": "lines_malformed", "custom_ids": ["r5"]},
        {"op": "batches.create", "nth": 1, "fault": "lines_missing", "fraction": 0.25},
    ])
    batch = wait_for(client, start_batch(client, chat_requests(40)).id)
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (38, 2)
    errors = read_lines(client, batch.error_file_id)
    assert sorted(e["custom_id"] for e in errors) == ["r2", "r3"]
    assert all(e["response"]["status_code"] == 429 and e["response"]["body"]["error"] for e in errors)
    raw_lines = client.files.content(batch.output_file_id).text.splitlines()
    parsed, broken = [], 0
    for line in raw_lines:
        try:
            parsed.append(json.loads(line)["custom_id"])
        except ValueError:
            broken += 1
    assert broken == 1 and "r5" not in parsed
    missing = emu.stats()["faults_injected"]["lines_missing"]
    assert 0 < missing < 38 and len(raw_lines) == 38 - missing


def test_faults_via_http_control_endpoint(emu, client: openai.OpenAI) -> None:
    rule = {"script": [{"op": "batches.retrieve", "nth": 1, "fault": "http_500"}]}
    assert httpx.post(f"{emu.url}/_emulator/faults", json=rule).status_code == 200
    assert httpx.get(f"{emu.url}/_emulator/faults").json()["script"][0]["op"] == "batches.retrieve"
    batch = start_batch(client, chat_requests(1))
    with pytest.raises(openai.InternalServerError):
        client.batches.retrieve(batch.id)
    assert client.batches.retrieve(batch.id).status == "completed"
    stats = httpx.get(f"{emu.url}/_emulator/stats").json()
    assert stats["faults_injected"] == {"http_500": 1} and stats["responses_by_status"]["500"] == 1


def test_no_batch_api_mode_answers_404(emulator_factory) -> None:
    _, client = emulator_factory(batch_api=False)
    with pytest.raises(openai.NotFoundError):
        client.files.list()
    with pytest.raises(openai.NotFoundError):
        upload(client, chat_requests(1))
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-x", endpoint="/v1/chat/completions", completion_window="24h")
    assert _chat(client).choices


def test_api_key_is_checked(emulator_factory) -> None:
    emu, wrong = emulator_factory(api_key="sk-the-right-key")  # the factory's client sends the dummy key
    with pytest.raises(openai.AuthenticationError) as info:
        _chat(wrong)
    assert info.value.body["code"] == "invalid_api_key" and "sk-" in info.value.body["message"]
    with make_client(emu, api_key="sk-the-right-key") as right:
        assert _chat(right).choices
    missing = httpx.get(f"{emu.base_url}/models")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"


def test_state_dir_keeps_files_and_resumes_a_running_batch(tmp_path) -> None:
    config = EmulatorConfig(state_dir=tmp_path, batch_duration=3)
    requests = chat_requests(30)
    with run_emulator(config.model_copy(update={"batch_duration": 0})) as emu, make_client(emu) as client:
        finished = client.batches.retrieve(start_batch(client, chat_requests(2, prefix="f")).id)
        assert finished.status == "completed"
    with run_emulator(config) as emu, make_client(emu) as client:
        running = start_batch(client, requests)
        before = wait_for(client, running.id, lambda b: b.request_counts is not None and
                          b.request_counts.completed >= 3)
        assert before.status == "in_progress"
    with run_emulator(config) as emu, make_client(emu) as client:
        again = client.batches.retrieve(running.id)
        assert again.created_at == before.created_at and again.in_progress_at == before.in_progress_at
        assert again.status in ("in_progress", "finalizing", "completed")
        assert again.request_counts.completed >= before.request_counts.completed  # never goes back
        done = wait_for(client, running.id)
        assert done.status == "completed" and done.request_counts.completed == 30
        assert done.completed_at - done.created_at >= 1  # the original clock, not a fresh one
        assert [line["custom_id"] for line in read_lines(client, done.output_file_id)] == \
            [r["custom_id"] for r in requests]
        old = client.batches.retrieve(finished.id)
        assert old.status == "completed" and len(read_lines(client, old.output_file_id)) == 2
        assert client.files.retrieve(old.input_file_id).bytes > 0
        assert {b.id for b in client.batches.list()} == {finished.id, running.id}
