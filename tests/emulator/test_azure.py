"""Azure mode through the official client's AzureOpenAI: deployments as models, api-version, api-key, files, batches."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from .conftest import read_lines

API_VERSION = "2025-03-01-preview"
KEY = "azure-test-dummy-key"


@pytest.fixture
def azure(emulator_factory):
    emu, _ = emulator_factory(azure=True, api_key=KEY, batch_duration=0, azure_deployments=["my-gpt4o", "my-embed"])
    with openai.AzureOpenAI(azure_endpoint=emu.url, api_version=API_VERSION, api_key=KEY, max_retries=0,
                            timeout=30) as client:
        yield emu, client


def test_chat_embeddings_and_responses_by_deployment(azure) -> None:
    emu, client = azure
    raw = client.chat.completions.with_raw_response.create(model="my-gpt4o",
                                                           messages=[{"role": "user", "content": "hi"}])
    assert raw.http_request.url.path == "/openai/deployments/my-gpt4o/chat/completions"
    assert raw.http_request.url.params["api-version"] == API_VERSION
    assert raw.http_request.headers["api-key"] == KEY
    completion = raw.parse()
    assert completion.model == "my-gpt4o" and completion.choices[0].message.content
    assert raw.headers["x-request-id"].startswith("req_")
    vectors = client.embeddings.create(model="my-embed", input=["a", "b"], dimensions=4)
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 4
    response = client.responses.create(model="my-gpt4o", input="hello")
    assert response.output_text and response.model == "my-gpt4o"
    assert emu.stats()["requests_by_op"]["chat.completions"] == 1


def test_files_and_batches_with_azure_paths(azure) -> None:
    _, client = azure
    lines = [{"custom_id": f"a{i}", "method": "POST", "url": "/chat/completions",
              "body": {"model": "my-gpt4o", "messages": [{"role": "user", "content": f"q{i}"}]}} for i in range(3)]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    file = client.files.create(file=("in.jsonl", data), purpose="batch")
    assert client.files.retrieve(file.id).bytes == len(data)
    batch = client.batches.create(input_file_id=file.id, endpoint="/chat/completions",  # type: ignore[arg-type]
                                  completion_window="24h")
    batch = client.batches.retrieve(batch.id)  # batch_duration=0: waits until the batch is done
    assert batch.status == "completed" and batch.endpoint == "/chat/completions"
    assert batch.request_counts.completed == 3 and batch.model == "my-gpt4o"
    assert [line["custom_id"] for line in read_lines(client, batch.output_file_id)] == ["a0", "a1", "a2"]
    assert [b.id for b in client.batches.list()] == [batch.id]


def test_azure_errors(azure) -> None:
    emu, client = azure
    no_version = httpx.post(f"{emu.url}/openai/deployments/my-gpt4o/chat/completions",
                            json={"messages": [{"role": "user", "content": "hi"}]}, headers={"api-key": KEY})
    assert no_version.status_code == 404 and "api-version" in no_version.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="not-deployed", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["code"] == "DeploymentNotFound"
    wrong = openai.AzureOpenAI(azure_endpoint=emu.url, api_version=API_VERSION, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.files.list()
    bearer = httpx.get(f"{emu.url}/openai/files", params={"api-version": API_VERSION},
                       headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200
    v1 = httpx.post(f"{emu.url}/openai/v1/chat/completions", headers={"api-key": KEY},
                    json={"model": "my-gpt4o", "messages": [{"role": "user", "content": "hi"}]})
    assert v1.status_code == 200 and v1.json()["model"] == "my-gpt4o"


def test_azure_paths_are_404_when_azure_mode_is_off(emu) -> None:
    reply = httpx.get(f"{emu.url}/openai/files", params={"api-version": API_VERSION})
    assert reply.status_code == 404
