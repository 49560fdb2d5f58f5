"""Files API through the official client: upload, retrieve, list (pagination, filters), delete, content, limits."""

from __future__ import annotations

import httpx
import openai
import pytest

from .conftest import chat_requests, jsonl, upload


def test_upload_retrieve_content_delete(client: openai.OpenAI) -> None:
    data = jsonl(chat_requests(3))
    created = upload(client, data, name="my-input.jsonl")
    assert created.id.startswith("file-")
    assert (created.object, created.purpose, created.status) == ("file", "batch", "processed")
    assert created.bytes == len(data) and created.filename == "my-input.jsonl"

    fetched = client.files.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    assert client.files.content(created.id).content == data

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (created.id, True, "file")
    with pytest.raises(openai.NotFoundError) as info:
        client.files.retrieve(created.id)
    assert info.value.body["message"] == f"No such File object: {created.id}"
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(created.id)


def test_list_is_newest_first_with_cursor_pagination_and_purpose_filter(client: openai.OpenAI) -> None:
    batch_ids = [upload(client, chat_requests(1), name=f"f{i}.jsonl").id for i in range(5)]
    other = client.files.create(file=("notes.txt", b"plain text"), purpose="user_data")

    page = client.files.list(purpose="batch", limit=2)
    assert [f.id for f in page.data] == batch_ids[::-1][:2]
    assert page.has_more is True
    assert [f.id for f in page] == batch_ids[::-1]  # follows `after` cursors

    ascending = client.files.list(purpose="batch", order="asc")
    assert [f.id for f in ascending.data] == batch_ids and ascending.has_more is False
    everything = [f.id for f in client.files.list().data]
    assert everything[0] == other.id and set(everything) == {*batch_ids, other.id}
    assert [f.id for f in client.files.list(purpose="user_data").data] == [other.id]

    with pytest.raises(openai.BadRequestError) as info:
        client.files.list(after="file-does-not-exist")
    assert info.value.body["param"] == "after"


def test_upload_checks_purpose_content_and_size(emulator_factory) -> None:
    _, client = emulator_factory(max_file_bytes=1000)
    line = b'{"custom_id": "a"}'
    exact = line + b" " * (999 - len(line)) + b"\n"
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("in.jsonl", exact + b"\n"), purpose="batch")
    assert info.value.body["code"] == "file_too_large" and "1000" in info.value.body["message"]
    assert client.files.create(file=("in.jsonl", exact), purpose="batch").bytes == 1000

    with pytest.raises(openai.BadRequestError) as info:  # the content decides, not the name
        client.files.create(file=("in.jsonl", b"a,b\n1,2\n"), purpose="batch")
    assert (info.value.body["code"], info.value.body["param"]) == ("invalid_file_format", "file")
    assert ".jsonl" in info.value.body["message"]
    assert client.files.create(file=("in.csv", line + b"\n"), purpose="batch").filename == "in.csv"
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("in.jsonl", '{"x": "\u00e9"}\n'.encode("latin-1")), purpose="batch")
    assert "utf-8" in info.value.body["message"]
    assert client.files.list().data and len(client.files.list().data) == 2  # refused uploads are not kept
    assert client.files.create(file=("notes.txt", b"plain text"), purpose="user_data").bytes == 10
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("in.jsonl", b"{}\n"), purpose="nonsense")  # type: ignore[arg-type]
    assert info.value.body["param"] == "purpose"


def test_expires_after_sets_expires_at(client: openai.OpenAI) -> None:
    created = client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch",
                                  expires_after={"anchor": "created_at", "seconds": 3600})
    assert created.expires_at == created.created_at + 3600
    for policy, param in (({"anchor": "created_at", "seconds": 5}, "expires_after.seconds"),
                          ({"anchor": "last_active_at", "seconds": 3600}, "expires_after.anchor"),
                          ({"anchor": "created_at", "seconds": "soon"}, "expires_after.seconds")):
        with pytest.raises(openai.BadRequestError) as info:
            client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch", expires_after=policy)  # type: ignore
        assert info.value.body["param"] == param


def test_batch_files_expire_after_30_days_by_default(client: openai.OpenAI) -> None:
    batch_file = client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    assert batch_file.expires_at == batch_file.created_at + 30 * 86400  # the spec's default for purpose=batch
    other = client.files.create(file=("a.txt", b"notes"), purpose="user_data")
    assert other.expires_at is None


def test_raw_bytes_uploads_named_upload_are_accepted(emu, client: openai.OpenAI) -> None:
    data = jsonl(chat_requests(2))
    from_client = client.files.create(file=data, purpose="batch")  # the client names raw bytes "upload"
    assert (from_client.filename, from_client.bytes) == ("upload", len(data))
    reply = httpx.post(f"{emu.base_url}/files", data={"purpose": "batch"}, files={"file": data},
                       headers={"Authorization": "Bearer sk-test-dummy"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["filename"] == "upload" and client.files.content(reply.json()["id"]).content == data
    batch = client.batches.create(input_file_id=from_client.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    assert client.batches.retrieve(batch.id).status == "completed"


def test_output_expires_after_gives_result_files_their_expiry(client: openai.OpenAI) -> None:
    good = chat_requests(2)
    bad = {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}}
    file = upload(client, [*good, bad])
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  output_expires_after={"anchor": "created_at", "seconds": 7200})
    batch = client.batches.retrieve(batch.id)
    for file_id in (batch.output_file_id, batch.error_file_id):
        result = client.files.retrieve(file_id)
        assert result.purpose == "batch_output" and result.expires_at == result.created_at + 7200
    plain = client.batches.retrieve(client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                                          completion_window="24h").id)
    assert client.files.retrieve(plain.output_file_id).expires_at is None
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h",
                              output_expires_after={"anchor": "created_at", "seconds": 60})
    assert info.value.body["param"] == "output_expires_after.seconds"
