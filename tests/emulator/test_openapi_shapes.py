"""Emulator responses validated against the schemas of OpenAI's official OpenAPI spec.

The schemas come from `openapi/openai_subset.json` (this folder: the part of OpenAI's spec these tests use, made by
`openapi/extract.py`; source and license inside), or from the whole spec at $GBATCH_OPENAPI_SPEC. The spec leaves out
`null` for many optional fields the real API sends as null (e.g. Batch.output_file_id, errors, *_at), so nulls of
optional fields are dropped before validation; required fields are validated as they are.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from openapi_schema_validator import OAS30Validator, OAS31Validator

from .conftest import chat_requests, read_lines, start_batch, upload

HERE = Path(__file__).resolve().parent
SUBSET_PATH = HERE / "openapi" / "openai_subset.json"
FULL_SPEC_PATH = Path(os.environ.get("GBATCH_OPENAPI_SPEC", HERE.parents[2] / "shared" / "openapi" / "openapi.yml"))


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    if "GBATCH_OPENAPI_SPEC" not in os.environ:
        return json.loads(SUBSET_PATH.read_text(encoding="utf-8"))
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(FULL_SPEC_PATH, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=loader)


def test_the_subset_is_the_spec_extract() -> None:
    """The committed subset is what extract.py makes from the full spec, and names its source and license."""
    subset = json.loads(SUBSET_PATH.read_text(encoding="utf-8"))
    assert subset["info"]["license"]["name"] == "MIT" and "openai-python" in subset["x-gbatch-source"]
    if not FULL_SPEC_PATH.is_file():
        pytest.skip(f"the full spec is not at {FULL_SPEC_PATH}: cannot check that the subset is current")
    spec = importlib.util.spec_from_file_location("openapi_extract", HERE / "openapi" / "extract.py")
    assert spec is not None and spec.loader is not None
    extract = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extract)
    assert extract.render(FULL_SPEC_PATH) == SUBSET_PATH.read_text(encoding="utf-8"), \
        "run: python tests/emulator/openapi/extract.py PATH/TO/openapi.yml"


def _resolve(schema: Any, root: dict[str, Any]) -> dict[str, Any]:
    while isinstance(schema, dict) and "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        schema = target
    return schema if isinstance(schema, dict) else {}


def _object_parts(schema: dict[str, Any], root: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Properties and required names of an object schema (through allOf, and the object branch of anyOf)."""
    properties = dict(schema.get("properties", {}))
    required = set(schema.get("required", []))
    for key in ("allOf", "anyOf", "oneOf"):
        for branch in schema.get(key, []):
            branch = _resolve(branch, root)
            if "properties" in branch or key == "allOf":
                sub_properties, sub_required = _object_parts(branch, root)
                properties.update(sub_properties)
                if key == "allOf":
                    required |= sub_required
    return properties, required


def without_optional_nulls(value: Any, schema: Any, root: dict[str, Any]) -> Any:
    schema = _resolve(schema, root)
    if isinstance(value, dict):
        properties, required = _object_parts(schema, root)
        return {k: without_optional_nulls(v, properties.get(k, {}), root) for k, v in value.items()
                if v is not None or k in required}
    if isinstance(value, list):
        return [without_optional_nulls(v, schema.get("items", {}), root) for v in value]
    return value


def check(spec: dict[str, Any], name: str, instance: Any) -> None:
    """Validate `instance` against components.schemas[name] (refs resolved inside the spec)."""
    assert name in spec["components"]["schemas"], name
    validator_class = OAS31Validator if str(spec["openapi"]).startswith("3.1") else OAS30Validator
    schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    cleaned = without_optional_nulls(instance, schema, spec)
    errors = sorted(validator_class(schema).iter_errors(cleaned), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def raw_json(raw: Any) -> Any:
    return json.loads(raw.http_response.text)


def test_file_and_batch_objects_match_the_spec(spec, client: openai.OpenAI) -> None:
    upload(client, chat_requests(1))
    created_file = client.files.with_raw_response.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    check(spec, "OpenAIFile", raw_json(created_file))
    file_id = created_file.parse().id
    check(spec, "OpenAIFile", raw_json(client.files.with_raw_response.retrieve(file_id)))
    check(spec, "ListFilesResponse", raw_json(client.files.with_raw_response.list()))
    check(spec, "DeleteFileResponse", raw_json(client.files.with_raw_response.delete(file_id)))

    batch = start_batch(client, chat_requests(3))
    check(spec, "Batch", raw_json(client.batches.with_raw_response.retrieve(batch.id)))
    failed = start_batch(client, chat_requests(1) + ["{broken"])
    failed_json = raw_json(client.batches.with_raw_response.retrieve(failed.id))
    assert failed_json["status"] == "failed" and failed_json["errors"]["data"]
    check(spec, "Batch", failed_json)
    check(spec, "ListBatchesResponse", raw_json(client.batches.with_raw_response.list(limit=5)))

    finished = client.batches.retrieve(batch.id)
    for line in read_lines(client, finished.output_file_id):
        check(spec, "CreateChatCompletionResponse", line["response"]["body"])


def test_create_batch_response_matches_the_spec(spec, client: openai.OpenAI) -> None:
    file = upload(client, chat_requests(2))
    raw = client.batches.with_raw_response.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                                  completion_window="24h", metadata={"k": "v"})
    created = raw_json(raw)
    assert created["status"] == "validating"
    check(spec, "Batch", created)


def test_model_endpoint_responses_match_the_spec(spec, client: openai.OpenAI) -> None:
    chat = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], n=2, max_completion_tokens=3)
    check(spec, "CreateChatCompletionResponse", raw_json(chat))
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"],
              "additionalProperties": False}
    structured = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    check(spec, "CreateChatCompletionResponse", raw_json(structured))
    embedding = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a", "b"],
                                                           encoding_format="float")
    check(spec, "CreateEmbeddingResponse", raw_json(embedding))
    check(spec, "ListModelsResponse", raw_json(client.models.with_raw_response.list()))
    check(spec, "Model", raw_json(client.models.with_raw_response.retrieve("gpt-4o-mini")))


def test_errors_match_the_spec(spec, client: openai.OpenAI) -> None:
    failures: list[openai.APIStatusError] = []
    for call in (
        lambda: client.batches.retrieve("batch_missing"),
        lambda: client.files.retrieve("file-missing"),
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=[]),
        lambda: client.models.retrieve("no-such-model"),
        lambda: client.batches.list(limit=1000),
    ):
        with pytest.raises(openai.APIStatusError) as info:
            call()
        failures.append(info.value)
    assert [f.status_code for f in failures] == [404, 404, 400, 404, 400]
    for failure in failures:
        body = failure.response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}
        check(spec, "ErrorResponse", body)


def test_responses_completions_and_moderations_match_the_spec(spec, client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"],
              "additionalProperties": False}
    for kwargs in ({}, {"text": {"format": {"type": "json_schema", "name": "s", "schema": schema, "strict": True}}},
                   {"max_output_tokens": 16, "instructions": "Be long."}):
        check(spec, "Response", raw_json(client.responses.with_raw_response.create(
            model="gpt-4o-mini", input=[{"role": "user", "content": "hi"}], **kwargs)))
    check(spec, "CreateCompletionResponse", raw_json(client.completions.with_raw_response.create(
        model="gpt-3.5-turbo-instruct", prompt=["a", "b"], n=2)))
    check(spec, "CreateModerationResponse", raw_json(client.moderations.with_raw_response.create(
        input=["calm", "[flag:violence]"])))
    check(spec, "CreateModerationResponse", raw_json(client.moderations.with_raw_response.create(
        input=[{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}])))

    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses",
              "body": {"model": "gpt-4o-mini", "input": f"q{i}"}} for i in range(2)]
    batch = client.batches.retrieve(start_batch(client, lines, endpoint="/v1/responses").id)
    check(spec, "Batch", raw_json(client.batches.with_raw_response.retrieve(batch.id)))
    for line in read_lines(client, batch.output_file_id):
        check(spec, "Response", line["response"]["body"])
    check(spec, "OpenAIFile", raw_json(client.files.with_raw_response.retrieve(batch.output_file_id)))
