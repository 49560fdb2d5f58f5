"""The batch runner's cheaper per-line work gives the answers of the general path.

Each batch below (chat with and without response_format, n > 1, tools, truncation, bad bodies; responses;
embeddings; completions; the CLI's demo responder) runs through the emulator's batch runner, and every output and
error line is compared with what the general path computes for the same input line: the ids from ``derived_id``,
the request seed computed eagerly before the responder runs, prompt tokens from the estimator, and completion tokens
counted by tiktoken itself (no cache, no quicktok).
"""

from __future__ import annotations

import io
import json
import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest

from gbatch_flows.emulator import executor as executor_module
from gbatch_flows.emulator import usage
from gbatch_flows.emulator.__main__ import DEMO_RESPONDER
from gbatch_flows.emulator.config import EmulatorConfig
from gbatch_flows.emulator.executor import ID_LENGTHS, ID_PREFIXES, RequestExecutor
from gbatch_flows.emulator.ids import DerivedIds, derived_id
from gbatch_flows.emulator.responders import LazySeed, ResponderContext, choice_seed, request_seed
from gbatch_flows.emulator.runtime import Emulator
from gbatch_flows.emulator.state import BatchRecord
from gbatch_flows.emulator.stats import Stats
from gbatch_flows.endpoints import user_text
from gbatch_flows.tokenizing.encodings import load_encoding
from gbatch_flows.tokenizing.rules import rules_for

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"
COMPLETIONS = "/v1/completions"

SCHEMA = {"type": "json_schema", "json_schema": {"name": "Answer", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["title", "score", "tags"],
    "properties": {"title": {"type": "string"}, "score": {"type": "integer"},
                   "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}}}}}}
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a word up.",
                                           "parameters": {"type": "object", "properties": {"word": {"type": "string"}},
                                                          "required": ["word"]}}}]
TEXTS = ["hello", "Ünïcödé façade — «quotes» 日本語のテキスト", "bell \x07 and tab\t and line\u2028separator",
         "emoji 🧪🚀 and <|endoftext|> as text", "x" * 600, "  spaced   out  ", ""]


def line(custom_id: str, url: str, body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def chat_lines() -> list[dict[str, Any]]:
    items = []
    for i, text in enumerate(TEXTS):
        messages = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": text}]
        base = {"model": "gpt-4o-mini", "messages": messages}
        items += [
            line(f"plain{i}", CHAT, base),
            line(f"schema{i}", CHAT, {**base, "response_format": SCHEMA, "max_completion_tokens": 200}),
            line(f"object{i}", CHAT, {**base, "response_format": {"type": "json_object"}, "n": 3}),
            line(f"text{i}", CHAT, {**base, "response_format": {"type": "text"}, "temperature": 0.3}),
            line(f"tools{i}", CHAT, {**base, "tools": TOOLS, "n": 2}),
            line(f"short{i}", CHAT, {**base, "max_completion_tokens": 5}),  # truncated: finish_reason "length"
            line(f"parts{i}", CHAT, {"model": "gpt-4o-mini", "messages": [
                {"role": "user", "content": [{"type": "text", "text": text}]}]}),
        ]
    items += [  # bad bodies: 400 lines in the error file
        line("bad-messages", CHAT, {"model": "gpt-4o-mini", "messages": "hi"}),
        line("bad-n", CHAT, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "n": 0}),
        line("bad-role", CHAT, {"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]}),
        line("bad-format", CHAT, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
                                  "response_format": {"type": "yaml"}}),
        line("bad-stream", CHAT, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
                                  "stream": True}),
    ]
    return items


def responses_lines() -> list[dict[str, Any]]:
    items = []
    for i, text in enumerate(TEXTS):
        items += [
            line(f"input{i}", RESPONSES, {"model": "gpt-4o-mini", "input": text or "empty"}),
            line(f"format{i}", RESPONSES, {"model": "gpt-4o-mini", "instructions": "Be brief.", "input": [
                {"role": "user", "content": text or "empty"}], "text": {"format": {"type": "json_schema",
                "name": "Answer", "schema": SCHEMA["json_schema"]["schema"], "strict": True}}}),
            line(f"cut{i}", RESPONSES, {"model": "gpt-4o-mini", "input": text or "empty", "max_output_tokens": 16}),
        ]
    items.append(line("bad-input", RESPONSES, {"model": "gpt-4o-mini"}))
    return items


def embedding_lines() -> list[dict[str, Any]]:
    texts = [t for t in TEXTS if t]
    return [line(f"e{i}", EMBEDDINGS, {"model": "text-embedding-3-small", "input": text})
            for i, text in enumerate(texts)] + [
        line("many", EMBEDDINGS, {"model": "text-embedding-3-small", "input": texts}),
        line("ids", EMBEDDINGS, {"model": "text-embedding-3-small", "input": [1, 2, 3]}),
        line("bad-empty", EMBEDDINGS, {"model": "text-embedding-3-small", "input": ""}),
    ]


def completion_lines() -> list[dict[str, Any]]:
    return [line(f"c{i}", COMPLETIONS, {"model": "gpt-3.5-turbo-instruct", "prompt": text or "empty",
                                        "max_tokens": 30, "n": 2}) for i, text in enumerate(TEXTS)] + [
        line("two", COMPLETIONS, {"model": "gpt-3.5-turbo-instruct", "prompt": ["a b", "c d"], "max_tokens": 12}),
        line("bad-prompt", COMPLETIONS, {"model": "gpt-3.5-turbo-instruct"}),
    ]


def demo_lines() -> list[dict[str, Any]]:
    from openai.lib._parsing._completions import type_to_response_format_param  # noqa: PLC0415

    from flows.char_codes import SYSTEM, CharInfo, user_prompt  # noqa: PLC0415 - the demo the CLI answers with

    response_format = type_to_response_format_param(CharInfo)
    chars = ["A", "é", "\x00", "\u2028", "😀", "\ud7ff", "\U000e0001", "\"", "\\"]
    return [line(f"char{i}", CHAT, {"model": "gpt-4o-mini", "max_completion_tokens": 100,
                                    "response_format": response_format, "messages": [
                                        {"role": "system", "content": SYSTEM},
                                        {"role": "user", "content": user_prompt(char)}]})
            for i, char in enumerate(chars)]


# ---------------------------------------------------------------------------------------------- running a batch


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> Iterator[Emulator]:
    responders = getattr(request, "param", {})
    emu = Emulator(EmulatorConfig(batch_duration=0, responders=responders))
    try:
        yield emu
    finally:
        emu.shutdown()
        emu.store.close()


def run_batch(emu: Emulator, items: list[dict[str, Any]], endpoint: str) -> tuple[BatchRecord, list[dict[str, Any]]]:
    """Run a batch; its output and error lines, in input order."""
    data = "".join(json.dumps(item) + "\n" for item in items).encode()
    record = emu.store.create_file(io.BytesIO(data), "input.jsonl", "batch", 1 << 30)
    created = emu.batches.create({"input_file_id": record.id, "endpoint": endpoint, "completion_window": "24h"}, 1)
    emu.batches._runners[created["id"]].join(60)
    batch = emu.store.get_batch(created["id"])
    assert batch is not None and batch.status == "completed", batch
    lines = []
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id is not None:
            lines += [json.loads(raw) for raw in emu.store.iter_lines(file_id)]
    order = {item["custom_id"]: n for n, item in enumerate(items)}
    return batch, sorted(lines, key=lambda result: order[result["custom_id"]])


# --------------------------------------------------------------------------------------------- the general path


def tiktoken_count(text: str, model: str) -> int:
    return len(load_encoding(rules_for(model)[0].encoding).encode_ordinary(text))


def eager_seed(body: Any) -> LazySeed:
    seed = request_seed(body)  # before the responder runs, as the emulator did before seeds were lazy
    return LazySeed(lambda: seed)


def reference_lines(emu: Emulator, batch: BatchRecord, items: list[dict[str, Any]], actual: list[dict[str, Any]],
                    monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What each line is by the general path (created times taken from the actual lines)."""
    executor = RequestExecutor(emu.config, Stats())
    with monkeypatch.context() as patch:
        patch.setattr(usage, "text_tokens", tiktoken_count)
        patch.setattr(executor_module, "_request_seed", eager_seed)
        expected = []
        for index, (item, result) in enumerate(zip(items, actual, strict=True)):
            answer = result["response"]["body"]
            created = answer.get("created", answer.get("created_at"))
            ids = {} if batch.endpoint == EMBEDDINGS else {
                "completion_id": derived_id(ID_PREFIXES[batch.endpoint], batch.id, index,
                                            length=ID_LENGTHS[batch.endpoint]),
                "created": created}
            try:
                params = executor.check(batch.endpoint, item["body"])
            except executor_module.ApiError as exc:
                status, body = exc.status, exc.body()
            else:
                prompt = usage.prompt_tokens(batch.endpoint, item["body"])
                status, body = 200, executor.respond(batch.endpoint, item["body"], params, prompt, **ids)
            expected.append({
                "id": derived_id("batch_req_", batch.id, index, length=32),
                "custom_id": item["custom_id"],
                "response": {"status_code": status, "request_id": derived_id("", batch.id, index, "request",
                                                                              length=32), "body": body},
                "error": None,
            })
    return expected


def check_batch(emu: Emulator, items: list[dict[str, Any]], endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    batch, actual = run_batch(emu, items, endpoint)
    assert len(actual) == len(items)
    expected = reference_lines(emu, batch, items, actual, monkeypatch)
    for got, want in zip(actual, expected, strict=True):
        assert got == want, got["custom_id"]
    ok = [want["response"]["body"] for want in expected if want["response"]["status_code"] == 200]
    assert batch.completed == len(ok) and batch.failed == len(items) - len(ok)
    assert batch.input_tokens == sum(executor_module.usage_counts(body)[0] for body in ok)
    assert batch.output_tokens == sum(executor_module.usage_counts(body)[1] for body in ok)


@pytest.mark.parametrize(("items", "endpoint"), [
    (chat_lines(), CHAT), (responses_lines(), RESPONSES), (embedding_lines(), EMBEDDINGS),
    (completion_lines(), COMPLETIONS)], ids=["chat", "responses", "embeddings", "completions"])
def test_batch_lines_equal_the_general_path(emulator: Emulator, items: list[dict[str, Any]], endpoint: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    check_batch(emulator, items, endpoint, monkeypatch)


@pytest.mark.parametrize("emulator", [{"*": DEMO_RESPONDER}], indirect=True)
def test_demo_responder_batch_equals_the_general_path(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    check_batch(emulator, demo_lines(), CHAT, monkeypatch)


def test_chat_usage_is_tiktokens_count_of_the_contents(emulator: Emulator) -> None:
    items = [item for item in chat_lines() if not item["custom_id"].startswith(("bad", "short"))]
    _batch, results = run_batch(emulator, items, CHAT)
    for result in results:
        body = result["response"]["body"]
        contents = [choice["message"]["content"] for choice in body["choices"]]
        assert body["usage"]["completion_tokens"] == sum(tiktoken_count(c, "gpt-4o-mini") for c in contents)


# ------------------------------------------------------------------------------------------------ the pieces


def test_derived_ids_equal_derived_id() -> None:
    ids = DerivedIds("batch_abc")
    for index in (0, 7, 49_999, 10**12):
        assert ids.id("batch_req_", index, length=32) == derived_id("batch_req_", "batch_abc", index, length=32)
        assert ids.id("", index, "request", length=32) == derived_id("", "batch_abc", index, "request", length=32)
        assert ids.id("chatcmpl-", index, length=29) == derived_id("chatcmpl-", "batch_abc", index, length=29)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4", "some-unknown-model"])
def test_completion_counter_is_exact(model: str) -> None:
    counter = usage.CompletionCounter(model)
    texts = [*TEXTS, "lone \ud800 surrogate", "guarded \u088f code point", "\u0000\u0001 controls",
             json.dumps({"k": "v" * 50}), "a" * 5000]
    encoding = load_encoding(rules_for(model)[0].encoding)
    for _ in range(2):  # counted, then memoised
        for text in texts:
            reference = len(encoding.encode_ordinary(text.encode("utf-16", "surrogatepass").decode("utf-16",
                                                                                                  "replace")))
            assert counter(text) == reference, text


def test_completion_counter_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage.CompletionCounter, "MAX_ENTRIES", 10)
    monkeypatch.setattr(usage.CompletionCounter, "MAX_CHARS", 100)
    counter = usage.CompletionCounter("gpt-4o-mini")
    for i in range(1000):
        counter(f"text number {i}")
    assert len(counter._young) <= 10 and len(counter._old) <= 10
    assert counter._young_chars <= 100
    assert counter("x" * 1000) == tiktoken_count("x" * 1000, "gpt-4o-mini")  # larger than a generation: not kept
    assert "x" * 1000 not in counter._young


def test_lazy_seed_equals_the_eager_one() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 3}
    base = LazySeed(lambda: request_seed(body))
    for index in range(3):
        lazy = ResponderContext("m", CHAT, index, base.choice(index))
        eager = ResponderContext("m", CHAT, index, choice_seed(request_seed(body), index))
        assert lazy.seed == eager.seed and lazy == eager and hash(lazy) == hash(eager) and repr(lazy) == repr(eager)
    with pytest.raises(AttributeError):
        eager.seed = 1  # type: ignore[misc]


def test_demo_answer_equals_json_dumps() -> None:
    from flows.char_codes import emulator_answer, user_prompt  # noqa: PLC0415

    points = [*range(0x3000), *range(0x3000, 0x110000, 97)]
    for cp in points:
        char = chr(cp)
        body = {"messages": [{"role": "user", "content": user_prompt(char)}]}
        kind = {"L": "letter", "N": "digit", "P": "punctuation", "S": "symbol", "Z": "whitespace"}.get(
            unicodedata.category(char)[0], "other")
        name = unicodedata.name(char, f"U+{cp:04X}").lower()
        assert user_text(body).startswith("Character: ")
        assert emulator_answer(body, None) == json.dumps({
            "character": char, "type": kind, "description": f"The character {char} is the Unicode {name}.",
            "sample_sentence": f"Here is {char} and here is {char} again."}), hex(cp)
