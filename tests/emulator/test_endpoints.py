"""The other endpoints the Batch API accepts, through the official client: /v1/responses (text, structured output,
length limit, cached tokens), /v1/completions, /v1/moderations, directly and in batches."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from .conftest import read_lines, start_batch

RESPONSES = "/v1/responses"
COMPLETIONS = "/v1/completions"
MODERATIONS = "/v1/moderations"
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2},
        "code": {"type": "integer", "minimum": 0, "maximum": 1114111},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "code", "tags"],
    "additionalProperties": False,
}


def line(custom_id: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def test_responses_text_shape_and_usage(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-4o-mini", input="Describe the letter A.",
                                       instructions="Be brief.")
    assert response.id.startswith("resp_") and response.object == "response"
    assert (response.status, response.model, response.instructions) == ("completed", "gpt-4o-mini", "Be brief.")
    [message] = response.output
    assert (message.type, message.role, message.status) == ("message", "assistant", "completed")
    [part] = message.content
    assert part.type == "output_text" and part.text.startswith("Emulated reply to: Describe the letter A.")
    assert response.output_text == part.text
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0
    again = client.responses.create(model="gpt-4o-mini", input="Describe the letter A.", instructions="Be brief.")
    assert again.output_text == response.output_text  # same request, same answer
    other = client.responses.create(model="gpt-4o-mini", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Describe the letter B."}]}])
    assert other.output_text.startswith("Emulated reply to: Describe the letter B.")


def test_responses_text_format_json_schema_is_schema_valid(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "name": "char", "schema": SCHEMA, "strict": True}
    for word in ("alpha", "beta", "gamma"):
        response = client.responses.create(model="gpt-4o-mini", input=f"Describe {word}.", text={"format": fmt})
        jsonschema.validate(json.loads(response.output_text), SCHEMA)
        assert response.text.format.type == "json_schema" and response.text.format.name == "char"
    as_object = client.responses.create(model="gpt-4o-mini", input="x", text={"format": {"type": "json_object"}})
    assert isinstance(json.loads(as_object.output_text), dict)


def test_responses_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-4o-mini", input="Say a lot.", max_output_tokens=16)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 16 and response.output[0].status == "incomplete"


def test_responses_report_cached_tokens_for_a_repeated_long_prefix(client: openai.OpenAI) -> None:
    long_text = " ".join(f"word{i}" for i in range(1500))
    first = client.responses.create(model="gpt-4o-mini", instructions=long_text, input="question one")
    second = client.responses.create(model="gpt-4o-mini", instructions=long_text, input="question two")
    assert first.usage.input_tokens_details.cached_tokens == 0
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached >= 1024 and cached % 128 == 0 and cached < second.usage.input_tokens


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "gpt-4o-mini"}, "input"),
    ({"input": "hi"}, "model"),
    ({"model": "gpt-4o-mini", "input": 5}, "input"),
    ({"model": "gpt-4o-mini", "input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}},
     "text.format.name"),
    ({"model": "gpt-4o-mini", "input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 3}, "max_output_tokens"),
    ({"model": "gpt-4o-mini", "input": "hi", "text": {"format": {"type": "json_schema", "name": "s",
                                                               "schema": {"$ref": "#/nowhere"}}}}, "text.format"),
])
def test_bad_responses_bodies_are_400_with_param(client: openai.OpenAI, body: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/responses", body=body, cast_to=object)
    assert info.value.body["param"] == param


def test_completions_shape_n_prompts_and_default_max_tokens(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=["Once upon", "A long"], n=2,
                                           max_tokens=200)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    texts = [c.text for c in completion.choices]
    assert all(texts) and len(set(texts)) == 4
    assert texts[0].startswith("Emulated reply to: Once upon") and texts[2].startswith("Emulated reply to: A long")
    assert {c.finish_reason for c in completion.choices} == {"stop"}
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    short = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Tell me everything")
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 16  # the spec's default
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/completions", body={"model": "gpt-3.5-turbo-instruct"}, cast_to=object)
    assert info.value.body["param"] == "prompt"


def test_moderations_results_flags_and_no_usage(client: openai.OpenAI) -> None:
    raw = client.moderations.with_raw_response.create(input=["a calm sentence", "x [flag:violence] y"])
    body = json.loads(raw.http_response.text)
    assert "usage" not in body and body["model"] == "omni-moderation-latest" and body["id"].startswith("modr-")
    calm, violent = raw.parse().results
    assert calm.flagged is False and not any(calm.categories.model_dump().values())
    assert violent.flagged is True and violent.categories.violence is True
    assert violent.category_scores.violence > 0.5 and violent.category_scores.hate < 0.05
    again = client.moderations.create(input="a calm sentence", model="omni-moderation-latest")
    assert again.results[0].category_scores == calm.category_scores
    multimodal = client.moderations.create(input=[{"type": "text", "text": "hi"},
                                                  {"type": "image_url", "image_url": {"url": "https://x/y.png"}}])
    [result] = multimodal.results
    assert result.category_applied_input_types.violence == ["text", "image"]
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/moderations", body={"model": "omni-moderation-latest"}, cast_to=object)
    assert info.value.body["param"] == "input"


def test_responses_batch_output_and_usage(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "name": "char", "schema": SCHEMA}
    items = [line(f"r{i}", RESPONSES, {"model": "gpt-4o-mini", "input": f"item {i}", "text": {"format": fmt}})
             for i in range(4)]
    items.append(line("bad", RESPONSES, {"model": "gpt-4o-mini"}))
    batch = client.batches.retrieve(start_batch(client, items, endpoint=RESPONSES).id)
    assert batch.status == "completed" and batch.endpoint == RESPONSES and batch.model == "gpt-4o-mini"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 1)
    lines = read_lines(client, batch.output_file_id)
    bodies = [entry["response"]["body"] for entry in lines]
    assert [entry["custom_id"] for entry in lines] == ["r0", "r1", "r2", "r3"]
    for body in bodies:
        assert body["object"] == "response" and body["id"].startswith("resp_")
        jsonschema.validate(json.loads(body["output"][0]["content"][0]["text"]), SCHEMA)
    assert batch.usage.input_tokens == sum(b["usage"]["input_tokens"] for b in bodies) > 0
    assert batch.usage.output_tokens == sum(b["usage"]["output_tokens"] for b in bodies) > 0
    [error] = read_lines(client, batch.error_file_id)
    assert error["response"]["status_code"] == 400 and error["response"]["body"]["error"]["param"] == "input"


def test_completions_and_moderations_batches(client: openai.OpenAI) -> None:
    items = [line(f"c{i}", COMPLETIONS, {"model": "gpt-3.5-turbo-instruct", "prompt": f"p{i}", "max_tokens": 100})
             for i in range(3)]
    batch = client.batches.retrieve(start_batch(client, items, endpoint=COMPLETIONS).id)
    assert batch.status == "completed" and batch.request_counts.completed == 3
    bodies = [entry["response"]["body"] for entry in read_lines(client, batch.output_file_id)]
    assert all(b["object"] == "text_completion" and b["choices"][0]["text"] for b in bodies)
    assert batch.usage.output_tokens == sum(b["usage"]["completion_tokens"] for b in bodies) > 0

    items = [line("m0", MODERATIONS, {"input": "fine"}),
             line("m1", MODERATIONS, {"model": "omni-moderation-latest", "input": "[flag:hate]"})]
    batch = client.batches.retrieve(start_batch(client, items, endpoint=MODERATIONS).id)
    assert batch.status == "completed" and batch.model == "omni-moderation-latest"
    bodies = [entry["response"]["body"] for entry in read_lines(client, batch.output_file_id)]
    assert [b["results"][0]["flagged"] for b in bodies] == [False, True]
    assert batch.usage.input_tokens == 0 and batch.usage.output_tokens == 0  # moderations report no usage


def test_batch_of_an_endpoint_that_is_not_emulated_is_refused_clearly(client: openai.OpenAI) -> None:
    file = client.files.create(file=("in.jsonl", b'{"custom_id": "a"}\n'), purpose="batch")
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=file.id, endpoint="/v1/images/generations",  # type: ignore[arg-type]
                              completion_window="24h")
    assert info.value.body["param"] == "endpoint" and "not emulated" in info.value.body["message"]
