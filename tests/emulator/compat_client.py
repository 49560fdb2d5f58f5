"""A client session against the emulator using only the official `openai` package (any version from 1.60 on).

Run in a subprocess by test_compat.py, so the `openai` it imports is whichever version is first on sys.path:
``python compat_client.py OPENAI_BASE_URL [AZURE_ENDPOINT]``. Prints one JSON object with what it saw. It imports
nothing from this project: it is a stand-in for code the project did not write.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import openai

KEY = "sk-test-dummy"
AZURE_KEY = "azure-test-dummy"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}},
          "required": ["n"], "additionalProperties": False}
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"model": "gpt-4o-mini", "input": "hi",
                      "text": {"format": {"type": "json_schema", "name": "n", "schema": SCHEMA}}},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi", "dimensions": 4},
    "/v1/completions": {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "max_tokens": 50},
    "/v1/moderations": {"input": "hi [flag:harassment]"},
}


def jsonl(url: str, count: int) -> bytes:
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": url, "body": BODIES[url]} for i in range(count)]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def direct(client: openai.OpenAI) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    chat = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA, "strict": True}})
    seen["chat_json"] = json.loads(chat.choices[0].message.content or "null")
    seen["chat_usage"] = chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens > 0
    embedding = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"], dimensions=4)
    seen["embedding_sizes"] = [len(e.embedding) for e in embedding.data]
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", max_tokens=50)
    seen["completion_text"] = bool(completion.choices[0].text) and completion.object == "text_completion"
    moderation = client.moderations.create(input=["calm", "x [flag:violence]"])
    seen["moderation_flags"] = [r.flagged for r in moderation.results]
    if hasattr(client, "responses"):  # the Responses API arrived in openai 1.66
        response = client.responses.create(**BODIES["/v1/responses"])
        seen["responses_json"] = json.loads(response.output_text)
        seen["responses_usage"] = [response.usage.input_tokens > 0, response.usage.output_tokens > 0]
    else:
        raw = client.post("/responses", body=BODIES["/v1/responses"], cast_to=object)
        seen["responses_json"] = json.loads(raw["output"][0]["content"][0]["text"])  # type: ignore[index]
        seen["responses_usage"] = [raw["usage"]["input_tokens"] > 0, raw["usage"]["output_tokens"] > 0]  # type: ignore[index]
    seen["models"] = "gpt-4o-mini" in [m.id for m in client.models.list().data]
    return seen


def batches(client: openai.OpenAI) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for url in BODIES:
        file = client.files.create(file=jsonl(url, 3), purpose="batch")  # raw bytes: the client names them upload
        batch = client.batches.create(input_file_id=file.id, endpoint=url, completion_window="24h",  # type: ignore
                                      extra_body={"output_expires_after": {"anchor": "created_at",
                                                                           "seconds": 3600}})
        batch = client.batches.retrieve(batch.id)  # the emulator runs with batch_duration=0: done at retrieve
        lines = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines() if x]
        output = client.files.retrieve(batch.output_file_id)
        seen[url] = {"filename": file.filename, "status": batch.status,
                     "completed": batch.request_counts.completed,
                     "statuses": sorted({line["response"]["status_code"] for line in lines}),
                     "output_expiry": output.expires_at - output.created_at,
                     "input_expiry": client.files.retrieve(file.id).expires_at - file.created_at}
    seen["listed"] = len(client.batches.list(limit=100).data)
    return seen


def errors(client: openai.OpenAI) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for name, call, kind in (
        ("not_found", lambda: client.batches.retrieve("batch_missing"), openai.NotFoundError),
        ("bad_request", lambda: client.chat.completions.create(model="gpt-4o-mini", messages=[]),
         openai.BadRequestError),
        ("rate_limited", lambda: client.models.retrieve("gpt-4o-mini"), openai.RateLimitError),  # a scripted 429
    ):
        try:
            call()
            seen[name] = "no error"
        except kind as exc:
            seen[name] = [exc.status_code, bool(exc.response.headers.get("x-request-id"))]
    seen["after_429"] = client.models.retrieve("gpt-4o-mini").id
    return seen


def azure(endpoint: str) -> dict[str, Any]:
    client = openai.AzureOpenAI(azure_endpoint=endpoint, api_version="2024-10-21", api_key=AZURE_KEY,
                                max_retries=0)
    chat = client.chat.completions.create(model="dep-1", messages=[{"role": "user", "content": "hi"}])
    line = {"custom_id": "z", "method": "POST", "url": "/chat/completions",
            "body": {"model": "dep-1", "messages": [{"role": "user", "content": "hi"}]}}
    file = client.files.create(file=("in.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/chat/completions",  # type: ignore[arg-type]
                                  completion_window="24h")
    batch = client.batches.retrieve(batch.id)
    return {"model": chat.model, "batch": [batch.status, batch.request_counts.completed]}


def main() -> None:
    base_url = sys.argv[1]
    client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=60)
    result: dict[str, Any] = {"version": openai.VERSION, "direct": direct(client), "batches": batches(client),
                              "errors": errors(client)}
    if len(sys.argv) > 2:
        result["azure"] = azure(sys.argv[2])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
