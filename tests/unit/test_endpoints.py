"""Per-endpoint usage, contents, worst-case output, prices and request builders (issue 18)."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from gbatch_flows import endpoints
from gbatch_flows.costs import ZERO_PRICES, endpoint_prices, max_output_tokens, prices_for, usage_cost
from gbatch_flows.engine.protocol import ResponseInvalid, Result
from gbatch_flows.models import Request, Usage
from gbatch_flows.task import Task
from gbatch_flows.tokens import get_estimator

RESPONSE_BODY = {
    "id": "resp_1", "object": "response", "status": "completed", "model": "gpt-4o-mini",
    "output": [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": '{"a": ', "annotations": []},
                     {"type": "output_text", "text": "1}", "annotations": []}]},
    ],
    "usage": {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024}, "output_tokens": 300,
              "output_tokens_details": {"reasoning_tokens": 120}, "total_tokens": 1500},
}
CHAT_BODY = {
    "choices": [{"index": 1, "message": {"role": "assistant", "content": "second"}},
                {"index": 0, "message": {"role": "assistant", "content": "first"}}],
    "usage": {"prompt_tokens": 50, "completion_tokens": 8, "total_tokens": 58,
              "prompt_tokens_details": {"cached_tokens": 0}},
}


def test_usage_of_each_endpoint() -> None:
    assert endpoints.usage_of("/v1/responses", RESPONSE_BODY) == Usage(prompt_tokens=1200, completion_tokens=300,
                                                                       cached_tokens=1024)
    assert endpoints.usage_of("/v1/chat/completions", CHAT_BODY) == Usage(prompt_tokens=50, completion_tokens=8)
    completions = {"choices": [{"text": "x"}], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
    assert endpoints.usage_of("/v1/completions", completions) == Usage(prompt_tokens=7, completion_tokens=3)
    embeddings = {"data": [], "usage": {"prompt_tokens": 9, "total_tokens": 9}}
    assert endpoints.usage_of("/v1/embeddings", embeddings) == Usage(prompt_tokens=9)
    assert endpoints.usage_of("/v1/moderations", {"results": [{}]}) == Usage()  # free, reports none
    assert endpoints.usage_of("/chat/completions", CHAT_BODY) == Usage(prompt_tokens=50, completion_tokens=8)


@pytest.mark.parametrize("body", [
    {"output": []},  # no usage at all
    {"usage": {"prompt_tokens": 5, "completion_tokens": 1}},  # chat names on a Responses body
    {"usage": {"input_tokens": -1, "output_tokens": 1}},
    {"usage": {"input_tokens": "12", "output_tokens": 1}},
    None,
])
def test_unreadable_usage_is_none_not_zero(body) -> None:
    assert endpoints.usage_of("/v1/responses", body) is None


def test_responses_cost_prices_cached_tokens_as_cached() -> None:
    usage = endpoints.usage_of("/v1/responses", RESPONSE_BODY)
    assert usage is not None
    prices = prices_for("gpt-4o-mini")  # 0.15 input, 0.075 cached, 0.60 output per 1M
    direct = (176 * 0.15 + 1024 * 0.075 + 300 * 0.60) / 1e6
    assert usage_cost(usage, prices, "direct") == pytest.approx(direct, rel=1e-12)
    assert usage_cost(usage, prices, "batch") == pytest.approx(direct / 2, rel=1e-12)


def test_contents_of_each_endpoint() -> None:
    assert endpoints.contents_of("/v1/responses", RESPONSE_BODY) == ['{"a": 1}']
    assert endpoints.contents_of("/v1/chat/completions", CHAT_BODY) == ["first", "second"]
    assert endpoints.contents_of("/v1/completions", {"choices": [{"index": 0, "text": "hi"}]}) == ["hi"]
    embeddings = {"data": [{"index": 1, "embedding": [0.3]}, {"index": 0, "embedding": [0.1, 0.2]}]}
    assert endpoints.contents_of("/v1/embeddings", embeddings) == [[0.1, 0.2], [0.3]]
    result = {"flagged": True, "categories": {"violence": True}}
    assert endpoints.contents_of("/v1/moderations", {"results": [result]}) == [result]


@pytest.mark.parametrize(("endpoint", "body", "match"), [
    ("/v1/responses", {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
                       "output": [{"type": "reasoning", "summary": []}]}, "no message output.*max_output_tokens"),
    ("/v1/responses", {"output": [{"type": "message", "content": [{"type": "refusal", "refusal": "no"}]}]},
     "refused: no"),
    ("/v1/chat/completions", {"choices": [{"message": {"refusal": "nope"}}]}, "refused: nope"),
    ("/v1/chat/completions", {"choices": []}, "no choices"),
    ("/v1/embeddings", {"data": []}, "no embeddings"),
    ("/v1/moderations", {"results": None}, "no moderation results"),
])
def test_unusable_contents_raise(endpoint: str, body: dict, match: str) -> None:
    with pytest.raises(endpoints.ContentsError, match=match):
        endpoints.contents_of(endpoint, body)


def test_task_contents_reads_the_request_endpoint() -> None:
    request = Request(seq=0, key="k", endpoint="/v1/responses", payload={}, tokens=1, max_out=1)
    result = Result(request, True, RESPONSE_BODY, None, Usage(), None, "batch")
    assert Task.contents(result) == ['{"a": 1}']
    empty = Result(request, True, {"output": []}, None, Usage(), None, "batch")
    with pytest.raises(ResponseInvalid, match="no message output"):
        Task.contents(empty)


def test_endpoint_paths() -> None:
    assert endpoints.canonical("/chat/completions") == "/v1/chat/completions"
    assert endpoints.canonical("/v1/responses") == "/v1/responses"
    assert endpoints.azure_path("/v1/chat/completions") == "/chat/completions"
    assert endpoints.azure_path("/embeddings") == "/embeddings"
    with pytest.raises(ValueError, match="unsupported endpoint"):
        endpoints.spec("/v1/images/generations")


def test_worst_case_output_per_endpoint() -> None:
    assert max_output_tokens({"model": "gpt-4o", "max_output_tokens": 64}, 10, 1.0, "/v1/responses") == 64
    assert max_output_tokens({"model": "gpt-4o", "n": 3}, 10, 1.0, "/v1/responses") == 10  # no n on Responses
    assert max_output_tokens({"model": "gpt-4o", "max_tokens": 99}, 10, 1.0, "/v1/responses") == 10
    completions = {"model": "gpt-3.5-turbo-instruct", "prompt": "x"}
    assert max_output_tokens(completions, 500, 1.0, "/v1/completions") == 16  # the API's default max_tokens
    assert max_output_tokens({**completions, "max_tokens": 40, "n": 2, "best_of": 5}, 5, 1.0, "/v1/completions") == 200
    assert max_output_tokens({**completions, "prompt": ["a", "b", "c"]}, 5, 1.0, "/v1/completions") == 48
    assert max_output_tokens({**completions, "prompt": [1, 2, 3]}, 5, 1.0, "/v1/completions") == 16
    assert max_output_tokens({"model": "omni-moderation-latest", "input": "x"}, 5, 1.0, "/v1/moderations") == 0
    assert max_output_tokens({"model": "text-embedding-3-small", "input": "x"}, 5, 1.0, "/v1/embeddings") == 0


def test_moderations_are_free_whatever_the_flags() -> None:
    flagged = prices_for("omni-moderation-latest")
    assert flagged == ZERO_PRICES
    assert endpoint_prices(prices_for("gpt-4o"), "/v1/moderations") == ZERO_PRICES
    assert endpoint_prices(prices_for("gpt-4o"), "/v1/responses") == prices_for("gpt-4o")


def test_prompt_estimates_of_completions_and_moderations() -> None:
    est = get_estimator()
    count = est.count_text
    total = est.estimate("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": ["one two", "three"],
                                             "suffix": " end"}).total
    assert total == count("one two", "gpt-3.5-turbo-instruct") + count("three", "gpt-3.5-turbo-instruct") + count(
        " end", "gpt-3.5-turbo-instruct")
    parts = [{"type": "text", "text": "some words here"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    moderation = est.estimate("/v1/moderations", {"model": "omni-moderation-latest", "input": parts}).total
    assert moderation == count("some words here", "omni-moderation-latest")


class Answer(BaseModel):
    label: str


def test_responses_request_from_chat_messages() -> None:
    meta = {"model": "gpt-4o-mini", "chat_endpoint": "/v1/responses", "temperature": 0.2, "top_p": None,
            "max_completion_tokens": 40}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Label this."}]
    spec = Task.chat_request("k", messages, meta, response_model=Answer)
    assert spec.endpoint == "/v1/responses"
    payload = spec.payload
    assert payload["input"] == [{"role": "user", "content": "Label this."}]
    assert payload["instructions"] == "Be brief." and payload["max_output_tokens"] == 40
    assert payload["temperature"] == 0.2 and "top_p" not in payload and "messages" not in payload
    fmt = payload["text"]["format"]
    assert fmt["type"] == "json_schema" and fmt["name"] == "Answer" and fmt["strict"] is True
    assert fmt["schema"]["required"] == ["label"] and fmt["schema"]["additionalProperties"] is False
    # the estimator counts it (it used to fail with "field 'input': missing")
    assert get_estimator().estimate(spec.endpoint, payload).total > 0
    with pytest.raises(ValueError, match="no 'n'"):
        Task.chat_request("k", messages, meta, n=3)
    with pytest.raises(ValueError, match="max_output_tokens >= 16"):
        Task.chat_request("k", messages, {**meta, "max_completion_tokens": 8})
    assert Task.max_choices(meta) == 1 and Task.max_choices({"chat_endpoint": "/v1/chat/completions"}) is None


def test_other_request_builders() -> None:
    meta = {"model": "m", "max_completion_tokens": 12, "temperature": None, "top_p": None}
    assert Task.embedding_request("k", ["a"], meta).payload == {"model": "m", "input": ["a"]}
    completion = Task.completion_request("k", "Say", meta)
    assert completion.endpoint == "/v1/completions" and completion.payload["max_tokens"] == 12
    moderation = Task.moderation_request("k", "text", meta)
    assert moderation.endpoint == "/v1/moderations" and moderation.payload == {"model": "m", "input": "text"}


def test_user_text_of_chat_and_responses_bodies() -> None:
    assert endpoints.user_text({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}) == "u"
    assert endpoints.user_text({"input": [{"role": "user", "content": [{"type": "input_text", "text": "v"}]}]}) == "v"
    assert endpoints.user_text({"input": "plain"}) == "plain"
    assert endpoints.user_text({}) == ""


def test_demo_requests_on_responses() -> None:
    """Both demos build valid Responses requests, and their emulator responders answer them."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from flows.char_codes import CharCodes, CharInfo
    from flows.char_codes import emulator_answer as char_answer
    from flows.utterance_emotion import EmotionAnswer, UtteranceEmotionTask
    from flows.utterance_emotion import emulator_answer as emotion_answer

    class Ctx:
        choice_index = 0
        seed = 1
        model = "gpt-4o-mini"
        endpoint = "/v1/responses"

    task = CharCodes({"char_ranges": "0x41-0x42"})
    meta = task.build_meta() | {"chat_endpoint": "/v1/responses"}
    specs = list(task.generate_requests(meta))
    assert [s.endpoint for s in specs] == ["/v1/responses"] * 2
    info = CharInfo.model_validate_json(char_answer(specs[0].payload, Ctx()))
    assert info.character == "A"
    emo = UtteranceEmotionTask()
    meta = emo.build_meta() | {"chat_endpoint": "/v1/responses"}
    first = next(iter(emo.generate_requests(meta)))
    assert "n" not in first.payload and first.payload["max_output_tokens"] == 20
    EmotionAnswer.model_validate(json.loads(emotion_answer(first.payload, Ctx())))
