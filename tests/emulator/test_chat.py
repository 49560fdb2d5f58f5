"""Direct endpoints through the official client: chat completions (responders, structured output, n, length
limits, usage), embeddings, models, and clear 4xx errors for bad bodies."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from gbatch_flows.emulator import ResponderContext

USER = [{"role": "user", "content": "Describe the character U+0041."}]

SCHEMAS: dict[str, dict[str, Any]] = {
    "flat": {
        "type": "object",
        "properties": {
            "code": {"type": "integer", "minimum": 0, "maximum": 1114111},
            "name": {"type": "string", "minLength": 3, "maxLength": 40},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "printable": {"type": "boolean"},
            "category": {"type": "string", "enum": ["letter", "digit", "symbol"]},
            "note": {"type": ["string", "null"]},
        },
        "required": ["code", "name", "ratio", "printable", "category", "note"],
        "additionalProperties": False,
    },
    "nested_defs_anyof": {
        "type": "object",
        "$defs": {
            "emotion": {"type": "object", "properties": {
                "label": {"enum": ["joy", "anger", "fear"]},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
            }, "required": ["label", "score"], "additionalProperties": False},
            "tree": {"type": "object", "properties": {
                "value": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/tree"}, "maxItems": 2},
            }, "required": ["value", "children"], "additionalProperties": False},
        },
        "properties": {
            "emotions": {"type": "array", "items": {"$ref": "#/$defs/emotion"}, "minItems": 2, "maxItems": 4},
            "main": {"anyOf": [{"$ref": "#/$defs/emotion"}, {"type": "null"}]},
            "tree": {"$ref": "#/$defs/tree"},
            "when": {"type": "string", "format": "date-time"},
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True, "minItems": 1},
            "const": {"const": "fixed"},
            "step": {"type": "integer", "multipleOf": 5, "minimum": 1, "maximum": 50},
        },
        "required": ["emotions", "main", "tree", "when", "tags", "const", "step"],
        "additionalProperties": False,
    },
    "allof_and_optional": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "string"}, "c": {"type": "boolean"}}, "required": ["b"]},
        ],
    },
}


def _schema_format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def test_plain_chat_completion_shape_and_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert reply.object == "chat.completion" and reply.model == "gpt-4o-mini" and reply.id.startswith("chatcmpl-")
    [choice] = reply.choices
    assert choice.finish_reason == "stop" and choice.message.role == "assistant" and choice.message.content
    usage = reply.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0
    again = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert again.choices[0].message.content == choice.message.content  # deterministic


def test_prompt_tokens_come_from_the_project_estimator(client: openai.OpenAI) -> None:
    from gbatch_flows.tokens import get_estimator

    body = {"model": "gpt-4o-mini", "messages": USER}
    reply = client.chat.completions.create(**body)
    assert reply.usage.prompt_tokens == get_estimator().estimate("/v1/chat/completions", body).total
    text = reply.choices[0].message.content
    assert reply.usage.completion_tokens == get_estimator().count_text(text, "gpt-4o-mini")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_structured_output_is_valid_for_its_schema(client: openai.OpenAI, name: str) -> None:
    schema = SCHEMAS[name]
    contents = set()
    for i in range(8):
        messages = [{"role": "user", "content": f"item {i}"}]
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages,
                                               response_format=_schema_format(name, schema))
        content = reply.choices[0].message.content
        jsonschema.validate(json.loads(content), schema)
        contents.add(content)
    assert len(contents) > 1  # different requests get different answers


def test_n_choices_differ_and_are_deterministic(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": "gpt-4o-mini", "messages": USER, "n": 3,
                              "response_format": _schema_format("flat", SCHEMAS["flat"])}
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    contents = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2] and len(set(contents)) == 3
    assert contents == [c.message.content for c in second.choices]
    for content in contents:
        jsonschema.validate(json.loads(content), SCHEMAS["flat"])
    from gbatch_flows.tokens import get_estimator

    assert first.usage.completion_tokens == sum(get_estimator().count_text(c, "gpt-4o-mini") for c in contents)


def test_max_completion_tokens_cuts_with_finish_reason_length(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert full.usage.completion_tokens > 5
    for limit_arg in ("max_completion_tokens", "max_tokens"):
        cut = client.chat.completions.create(model="gpt-4o-mini", messages=USER, **{limit_arg: 5})
        assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 5
        assert full.choices[0].message.content.startswith(cut.choices[0].message.content)
    roomy = client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_completion_tokens=4000)
    assert roomy.choices[0].finish_reason == "stop"


def test_json_object_mode(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=USER, response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_cached_tokens_for_a_repeated_long_prefix(client: openai.OpenAI) -> None:
    system = {"role": "system", "content": "Rules: " + " ".join(f"rule{i} applies." for i in range(600))}
    first = client.chat.completions.create(model="gpt-4o-mini", messages=[system, {"role": "user", "content": "a"}])
    second = client.chat.completions.create(model="gpt-4o-mini", messages=[system, {"role": "user", "content": "b"}])
    assert first.usage.prompt_tokens >= 1024 and first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 1024 and cached % 128 == 0 and cached <= second.usage.prompt_tokens


def plain_responder(body: dict[str, Any]) -> str:
    return "plain:" + body["messages"][-1]["content"]


def context_responder(body: dict[str, Any], ctx: ResponderContext) -> str:
    return f"{ctx.model}#{ctx.choice_index}"


def test_pluggable_responders_per_model(emulator_factory) -> None:
    _, client = emulator_factory(responders={
        "echo-model": plain_responder,
        "*": "tests.emulator.test_chat:context_responder",
    })
    echo = client.chat.completions.create(model="echo-model", messages=[{"role": "user", "content": "hi"}])
    assert echo.choices[0].message.content == "plain:hi"
    other = client.chat.completions.create(model="gpt-4o", messages=USER, n=2)
    assert [c.message.content for c in other.choices] == ["gpt-4o#0", "gpt-4o#1"]
    assert "echo-model" in [m.id for m in client.models.list()]


def test_failing_responder_is_a_clear_500(emulator_factory) -> None:
    def broken(body: dict[str, Any]) -> str:
        raise RuntimeError("boom")

    _, client = emulator_factory(responders={"*": broken})
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert "RuntimeError: boom" in info.value.body["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "gpt-4o-mini"}, "messages"),
    ({"messages": USER}, "model"),
    ({"model": "gpt-4o-mini", "messages": []}, "messages"),
    ({"model": "gpt-4o-mini", "messages": [{"content": "x"}]}, "messages[0].role"),
    ({"model": "gpt-4o-mini", "messages": USER, "n": 0}, "n"),
    ({"model": "gpt-4o-mini", "messages": USER, "max_completion_tokens": "many"}, "max_completion_tokens"),
    ({"model": "gpt-4o-mini", "messages": USER, "response_format": {"type": "xml"}}, "response_format.type"),
    ({"model": "gpt-4o-mini", "messages": USER, "stream": True}, "stream"),
    ({"model": "gpt-4o-mini", "messages": USER,
      "response_format": _schema_format("bad", {"type": "object", "properties": {"x": {"$ref": "#/nowhere"}},
                                                "required": ["x"]})}, "response_format"),
    ({"model": "gpt-4o-mini", "messages": USER,
      "response_format": _schema_format("bad", {"type": "integer", "minimum": 5, "maximum": 1})}, "response_format"),
    ({"model": "gpt-4o-mini", "messages": USER,
      "response_format": _schema_format("bad", {"type": "array", "minItems": 3, "maxItems": 1})}, "response_format"),
])
def test_bad_chat_bodies_are_400_with_param(client: openai.OpenAI, body: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", body=body, cast_to=httpx.Response)
    error = info.value.body
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_invalid_json_body_and_unknown_route(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", content=b"{oops", cast_to=httpx.Response,
                    options={"headers": {"Content-Type": "application/json"}})
    assert "parse the JSON body" in info.value.body["message"]
    with pytest.raises(openai.NotFoundError) as info:
        client.get("/nothing/here", cast_to=httpx.Response)
    assert info.value.body["message"] == "Invalid URL (GET /v1/nothing/here)"


def test_embeddings_float_and_base64_are_deterministic_unit_vectors(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model="text-embedding-3-small", input=["cat", "dog", "cat"],
                                      encoding_format="float")
    vectors = [d.embedding for d in floats.data]
    assert [d.index for d in floats.data] == [0, 1, 2] and len(vectors[0]) == 1536
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert math.isclose(math.fsum(v * v for v in vectors[1]), 1.0, rel_tol=1e-9)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    packed = client.embeddings.create(model="text-embedding-3-small", input="cat")  # the client asks for base64
    assert packed.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)
    short = client.embeddings.create(model="text-embedding-3-large", input="cat", dimensions=64)
    assert len(short.data[0].embedding) == 64
    assert len(client.embeddings.create(model="text-embedding-3-large", input="cat").data[0].embedding) == 3072
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="text-embedding-3-small", input=[])
    assert info.value.body["param"] == "input"


def test_models_list_retrieve_and_strict_mode(emulator_factory) -> None:
    _, client = emulator_factory(models=["gpt-4o-mini", "text-embedding-3-small"], strict_models=True)
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini", "text-embedding-3-small"]
    model = client.models.retrieve("gpt-4o-mini")
    assert (model.id, model.object, model.owned_by) == ("gpt-4o-mini", "model", "gbatch-emulator")
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-nope")
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nope", messages=USER)
    assert info.value.body["code"] == "model_not_found"
