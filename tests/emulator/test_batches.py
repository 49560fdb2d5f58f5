"""Batch API life cycles through the official client: completed, failed (validation, token limit), expired and
cancelled with partial output, listing, and the errors of create/retrieve/cancel."""

from __future__ import annotations

import httpx
import openai
import pytest

from .conftest import (
    CHAT,
    EMBEDDINGS,
    chat_line,
    chat_requests,
    jsonl,
    read_lines,
    start_batch,
    upload,
    wait_for,
)


def test_completed_batch_has_real_shaped_output_lines(emu, client: openai.OpenAI) -> None:
    requests = chat_requests(6)
    created = start_batch(client, requests, metadata={"gbatch_local_id": "7", "gbatch_task": "t"})
    assert created.status == "validating" and created.id.startswith("batch_")
    assert created.metadata == {"gbatch_local_id": "7", "gbatch_task": "t"}

    batch = client.batches.retrieve(created.id)
    assert batch.status == "completed"
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (6, 6, 0)
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.expires_at == batch.created_at + 86400
    assert batch.model == "gpt-4o-mini" and batch.error_file_id is None and batch.errors is None

    lines = read_lines(client, batch.output_file_id)
    assert [line["custom_id"] for line in lines] == [r["custom_id"] for r in requests]
    for line in lines:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
    assert batch.usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in lines)
    assert batch.usage.output_tokens == sum(line["response"]["body"]["usage"]["completion_tokens"] for line in lines)
    output_file = client.files.retrieve(batch.output_file_id)
    assert output_file.purpose == "batch_output"
    assert emu.stats()["batches_by_local_id"] == {"7": 1}


def test_bad_request_bodies_go_to_the_error_file(client: openai.OpenAI) -> None:
    good = chat_line("ok")
    no_messages = {"custom_id": "bad", "method": "POST", "url": CHAT, "body": {"model": "gpt-4o-mini"}}
    batch = client.batches.retrieve(start_batch(client, [good, no_messages]).id)
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    assert [line["custom_id"] for line in read_lines(client, batch.output_file_id)] == ["ok"]
    [error] = read_lines(client, batch.error_file_id)
    assert error["custom_id"] == "bad" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "messages"


def test_embeddings_batch(client: openai.OpenAI) -> None:
    items = [{"custom_id": f"e{i}", "method": "POST", "url": EMBEDDINGS,
              "body": {"model": "text-embedding-3-small", "input": [f"text {i}", "shared"], "dimensions": 8}}
             for i in range(3)]
    batch = client.batches.retrieve(start_batch(client, items, endpoint=EMBEDDINGS).id)
    assert batch.status == "completed" and batch.request_counts.completed == 3
    lines = read_lines(client, batch.output_file_id)
    vectors = [line["response"]["body"]["data"] for line in lines]
    assert all(len(v) == 2 and len(v[0]["embedding"]) == 8 for v in vectors)
    assert vectors[0][1]["embedding"] == vectors[2][1]["embedding"]  # same input → same vector
    assert vectors[0][0]["embedding"] != vectors[1][0]["embedding"]


BAD_FILES = {
    "invalid_json_line": [chat_line("a"), "{not json"],
    "duplicate_custom_id": [chat_line("a"), chat_line("a")],
    "model_mismatch": [chat_line("a"), chat_line("b", model="gpt-4o")],
    "url_mismatch": [chat_line("a"), {**chat_line("b"), "url": EMBEDDINGS}],
    "missing_required_parameter": [chat_line("a"), {"method": "POST", "url": CHAT, "body": {"model": "gpt-4o-mini"}}],
    "invalid_method": [chat_line("a"), {**chat_line("b"), "method": "GET"}],
}


@pytest.mark.parametrize("code", sorted(BAD_FILES))
def test_invalid_input_file_fails_the_batch_with_line_errors(client: openai.OpenAI, code: str) -> None:
    batch = client.batches.retrieve(start_batch(client, BAD_FILES[code]).id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.output_file_id is None and batch.errors is not None
    [error] = batch.errors.data
    assert (error.code, error.line) == (code, 2)
    assert error.message


def test_too_many_requests_and_empty_file_fail(emulator_factory) -> None:
    _, client = emulator_factory(batch_duration=0, max_requests_per_batch=3)
    batch = client.batches.retrieve(start_batch(client, chat_requests(4)).id)
    assert batch.status == "failed" and [e.code for e in batch.errors.data] == ["too_many_tasks"]
    assert client.batches.retrieve(start_batch(client, chat_requests(3)).id).status == "completed"
    empty = client.batches.retrieve(start_batch(client, b"\n").id)
    assert [e.code for e in empty.errors.data] == ["empty_file"]


def test_batch_input_size_limit(emulator_factory) -> None:
    _, client = emulator_factory(batch_duration=0, max_batch_input_bytes=200)
    batch = client.batches.retrieve(start_batch(client, chat_requests(5)).id)
    assert batch.status == "failed" and batch.errors.data[0].code == "file_too_large"


def test_enqueued_token_limit_fails_with_token_limit_exceeded(emulator_factory) -> None:
    from gbatch_flows.tokens import get_estimator

    tokens = sum(get_estimator().estimate(CHAT, r["body"]).total for r in chat_requests(5))
    limit = tokens * 3 // 2  # one batch of 5 requests fits, two do not
    _, client = emulator_factory(batch_duration=10, enqueued_token_limit=limit)
    running = start_batch(client, chat_requests(5))
    assert wait_for(client, running.id, lambda b: b.status != "validating").status == "in_progress"
    second = wait_for(client, start_batch(client, chat_requests(5, prefix="s")).id)
    assert second.status == "failed"
    [error] = second.errors.data
    assert error.code == "token_limit_exceeded" and error.line is None
    assert "Enqueued token limit reached for gpt-4o-mini" in error.message and f"Limit: {limit:,}" in error.message
    client.batches.cancel(running.id)
    assert wait_for(client, running.id).status == "cancelled"
    # the cancelled batch released its tokens: the same requests fit again
    third = start_batch(client, chat_requests(5))
    assert wait_for(client, third.id, lambda b: b.status != "validating").status == "in_progress"
    client.batches.cancel(third.id)


def test_cancel_leaves_partial_output(emulator_factory) -> None:
    _, client = emulator_factory(batch_duration=8)
    requests = chat_requests(40)
    batch = start_batch(client, requests)
    wait_for(client, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 2)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at is not None
    done = wait_for(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    counts = done.request_counts
    assert counts.total == 40 and 2 <= counts.completed < 40
    lines = read_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in lines] == [r["custom_id"] for r in requests[: counts.completed]]
    assert client.batches.cancel(batch.id).status == "cancelled"  # idempotent


def test_cancel_finished_batch_is_refused(client: openai.OpenAI) -> None:
    batch = client.batches.retrieve(start_batch(client, chat_requests(1)).id)
    with pytest.raises(openai.ConflictError) as info:
        client.batches.cancel(batch.id)
    assert "completed" in info.value.body["message"]


def test_expiry_of_the_completion_window_leaves_partial_output(emulator_factory) -> None:
    _, client = emulator_factory(batch_duration=4, expire_after=1.0)
    requests = chat_requests(40)
    done = wait_for(client, start_batch(client, requests).id)
    assert done.status == "expired" and done.expired_at is not None
    finished = done.request_counts.completed
    assert 0 < finished < 40
    assert [line["custom_id"] for line in read_lines(client, done.output_file_id)] == \
        [r["custom_id"] for r in requests[:finished]]
    expired = read_lines(client, done.error_file_id)
    assert [line["custom_id"] for line in expired] == [r["custom_id"] for r in requests[finished:]]
    assert all(line["response"] is None and line["error"]["code"] == "batch_expired" for line in expired)


def test_list_batches_newest_first_with_pagination(client: openai.OpenAI) -> None:
    ids = [start_batch(client, chat_requests(1)).id for _ in range(5)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more is True
    second = client.batches.list(limit=2, after=page.data[-1].id)
    assert [b.id for b in second.data] == ids[::-1][2:4]
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # the iterator follows the cursor
    last = client.batches.list(limit=10, after=ids[1])
    assert [b.id for b in last.data] == [ids[0]] and last.has_more is False
    with pytest.raises(openai.BadRequestError):
        client.batches.list(limit=0)


def test_create_errors_are_clear(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.batches.create(input_file_id="file-missing", endpoint=CHAT, completion_window="24h")
    assert info.value.body["param"] == "input_file_id"
    text_file = client.files.create(file=("notes.jsonl", jsonl(chat_requests(1))), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=text_file.id, endpoint=CHAT, completion_window="24h")
    assert "purpose 'batch'" in info.value.body["message"]
    file = upload(client, chat_requests(1))
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="48h")  # type: ignore[arg-type]
    assert info.value.body["param"] == "completion_window"
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=file.id, endpoint="/v1/nope", completion_window="24h")  # type: ignore
    assert info.value.body["param"] == "endpoint"
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h",
                              metadata={"k": "v" * 600})
    assert "metadata" in info.value.body["param"]
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/batches", body=[file.id], cast_to=httpx.Response)
    assert "JSON object" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.get("/batches?limit=many", cast_to=httpx.Response)
    assert info.value.body["param"] == "limit"
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_unknown")
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_unknown")
