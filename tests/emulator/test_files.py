"""Files API through the official client: upload, retrieve, list (pagination, filters), delete, content, limits."""

from __future__ import annotations

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
    assert created.expires_at is not None and created.expires_at - created.created_at in (3600, 3601)
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": 5})
