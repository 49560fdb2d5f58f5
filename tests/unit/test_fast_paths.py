"""Fast paths of the batch pipeline (issue 19) against the general ways they shortcut."""

from __future__ import annotations

import heapq
import json
import math
from types import MappingProxyType, SimpleNamespace
from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gbatch_flows import endpoints
from gbatch_flows.engine import output as output_module
from gbatch_flows.engine.parts import PartLines
from gbatch_flows.models import RequestSpec, ResultLine, Usage, trusted
from gbatch_flows.status import CompletionStats, _bucket
from gbatch_flows.store import open_store
from gbatch_flows.task import Task

counts = st.one_of(st.integers(-3, 10**7), st.none(), st.booleans(), st.floats(0, 10), st.just("12"))
details = st.one_of(st.none(), st.just({}), st.just([]), st.just("x"), st.just(0),
                    st.fixed_dictionaries({}, optional={"cached_tokens": counts}))
ints = st.integers(0, 10**6)
valid_usages = st.builds(lambda p, c, d, cached: {"prompt_tokens": p, "completion_tokens": c, "input_tokens": p,
                                                   "output_tokens": c, d: {"cached_tokens": cached}},
                         ints, ints, st.sampled_from(["prompt_tokens_details", "input_tokens_details"]), ints)
usages = st.one_of(st.none(), st.just("usage"), valid_usages,
                   st.fixed_dictionaries({}, optional={"prompt_tokens": counts, "completion_tokens": counts,
                                                       "input_tokens": counts, "output_tokens": counts,
                                                       "prompt_tokens_details": details,
                                                       "input_tokens_details": details}))


@settings(max_examples=400, deadline=None)
@given(usage=usages)
def test_usage_readers_fast_way_equals_the_general_way(usage: Any) -> None:
    for endpoint in endpoints.BATCH_ENDPOINTS:
        fast = endpoints.usage_of(endpoint, {"usage": usage})
        # a read-only mapping is not a dict: the reader takes the general way
        general = endpoints.usage_of(endpoint, {"usage": MappingProxyType(usage) if isinstance(usage, dict) else usage})
        assert fast == general
        if fast is not None:
            assert type(fast.prompt_tokens) is int and fast.model_fields_set == general.model_fields_set


def test_single_choice_contents_equal_the_general_way() -> None:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}
    assert endpoints.contents_of(endpoints.CHAT, body) == ["hi"]
    assert endpoints.contents_of(endpoints.CHAT, {"choices": [MappingProxyType(body["choices"][0])]}) == ["hi"]
    with pytest.raises(endpoints.ContentsError, match="refused"):
        endpoints.contents_of(endpoints.CHAT, {"choices": [{"message": {"refusal": "no"}}]})
    assert endpoints.contents_of(endpoints.CHAT, {"choices": [{"message": None}]}) == [""]


class _Out(pydantic.BaseModel):
    a: int


@pytest.mark.parametrize("meta", [{"chat_endpoint": "/v1/chat/completions"}, {"chat_endpoint": "/v1/responses"}])
@pytest.mark.parametrize("request_meta", [None, {}, {"i": 3, "tags": ["x"]}])
def test_request_helpers_build_the_same_spec_as_validation(meta: dict[str, Any], request_meta: Any) -> None:
    meta = {**Task.default_meta, **meta, "temperature": 0.3, "max_completion_tokens": 20}
    spec = Task.chat_request("k1", [{"role": "user", "content": "x"}], meta, response_model=_Out,
                             request_meta=request_meta, seed=1)
    validated = RequestSpec(key=spec.key, payload=spec.payload, endpoint=spec.endpoint, meta=request_meta or {})
    assert spec == validated
    assert spec.model_dump() == validated.model_dump()
    assert spec.model_dump_json() == validated.model_dump_json()
    assert spec.model_fields_set == validated.model_fields_set
    if request_meta:
        assert spec.meta is not request_meta  # copied, as validation copies it


@pytest.mark.parametrize(("key", "request_meta"), [(1, None), ("k", {1: "x"}), ("k", ["x"])])
def test_request_helpers_still_refuse_invalid_values(key: Any, request_meta: Any) -> None:
    with pytest.raises(pydantic.ValidationError):
        Task.chat_request(key, [{"role": "user", "content": "x"}], Task.default_meta, request_meta=request_meta)


def test_trusted_models_equal_validated_ones() -> None:
    values = {"custom_id": "1-0-0", "status_code": 200, "body": {"a": 1}, "error": None, "request_id": "r"}
    line = trusted(ResultLine, dict(values))
    assert line == ResultLine(**values) and line.model_dump() == values
    assert line.model_fields_set == ResultLine(**values).model_fields_set
    assert trusted(Usage, {"prompt_tokens": 1, "completion_tokens": 2, "cached_tokens": 0}) == \
        Usage(prompt_tokens=1, completion_tokens=2)


@settings(max_examples=100, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 5000)), max_size=40))
def test_completion_stats_memo_equals_the_computation(pairs: list[tuple[int, int]]) -> None:
    stats = CompletionStats()
    for completion, prompt in pairs + pairs:  # the second time from the memo
        stats.add(completion, prompt)
    ratios = [c / p if p > 0 else 0.0 for c, p in pairs + pairs]
    assert stats.count == 2 * len(pairs)
    assert stats.total == 2 * sum(c for c, _ in pairs)
    assert stats.max_tokens == max([0] + [c for c, _ in pairs])
    assert stats.max_ratio == max([0.0, *ratios])
    tokens: dict[int, int] = {}
    by_ratio: dict[int, int] = {}
    for (completion, _), ratio in zip(pairs + pairs, ratios, strict=True):
        tokens[_bucket(completion)] = tokens.get(_bucket(completion), 0) + 1
        by_ratio[_bucket(ratio * 1000)] = by_ratio.get(_bucket(ratio * 1000), 0) + 1
    assert stats.tokens == tokens and stats.ratios == by_ratio
    assert not any(math.isnan(r) for r in ratios)


# -- assemble: queued lines read without parsing their payloads -------------------------------------------------------

json_text = st.text(max_size=12) | st.sampled_from(['"', "\\", ',"meta":', ',"payload":', '{"model":"x"}', "é😀"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**12) | json_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_text | st.sampled_from(["meta", "payload",
                                                                                             "model"]),
                                                                inner, max_size=3),
    max_leaves=8,
)
payloads = st.builds(
    lambda first, model, rest: ({"model": model, **rest} if first else {**rest, "model": model}) if model is not None
    else rest,
    st.booleans(), st.none() | json_text | st.integers(0, 3), st.dictionaries(json_text, json_values, max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(key=json_text, payload=payloads, meta=st.dictionaries(json_text | st.just("meta"), json_values, max_size=3),
       numbers=st.tuples(st.integers(0, 10**9), st.integers(0, 9), st.integers(0, 9), st.integers(0, 10**6),
                         st.integers(0, 10**6)),
       azure=st.booleans(), newline=st.booleans())
def test_queued_lines_give_the_batch_and_sidecar_lines_of_the_parsed_request(
    key: str, payload: dict[str, Any], meta: dict[str, Any], numbers: tuple[int, ...], azure: bool, newline: bool
) -> None:
    import orjson

    from gbatch_flows.engine.assemble import batch_line, queued_line, request_lines, sidecar_line

    seq, retry, part, tokens, max_out = numbers
    request = {"seq": seq, "key": key, "endpoint": "/v1/chat/completions", "payload": payload, "meta": meta,
               "retry": retry, "part": part, "tokens": tokens, "max_out": max_out}
    raw = orjson.dumps(request) + (b"\n" if newline else b"")
    item = queued_line(0, 0, raw)
    assert item.parts is not None  # the engine's layout: the payload is not parsed
    assert request_lines(item, azure) == (batch_line(request, azure), sidecar_line(request))
    assert item.model == payload.get("model", "")
    assert item.request == {k: v for k, v in request.items() if k != "payload"}
    # any other layout is parsed: the same lines
    other = json.dumps(request).encode()
    item = queued_line(0, 0, other)
    assert item.parts is None and item.model == payload.get("model", "")
    assert request_lines(item, azure) == (batch_line(request, azure), sidecar_line(request))



# ------------------------------------------------------------------------------------ output merge, part lines

def _reference_output(store: Any, refs: list[Any]) -> bytes:
    """The output file as written before each part line was parsed once: (seq, part, raw) merged, parsed again."""
    def keyed(ref: Any) -> Any:
        for raw in store.iter_lines(ref):
            if raw.strip():
                obj = orjson.loads(raw)
                yield obj["seq"], obj["part"], raw
    merged = heapq.merge(*(keyed(r) for r in refs))
    return b"".join(orjson.dumps(orjson.loads(raw)["record"]) + b"\n" for _, _, raw in merged)


part_entries = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 2), st.sampled_from(["k", "k2"]),
                                  st.dictionaries(json_text, json_values, max_size=2)), max_size=8)


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(part_entries, min_size=1, max_size=7), fan_in=st.integers(2, 4), chunk=st.integers(1, 5))
def test_output_written_from_lines_parsed_once_equals_the_reference(parts: list[list[Any]], fan_in: int,
                                                                     chunk: int) -> None:
    store = open_store("memory://fast-paths-output")
    batches = {}
    for n, entries in enumerate(parts):
        entries = sorted(entries, key=lambda e: (e[0], e[1]))
        lines = [orjson.dumps({"seq": s, "key": k, "part": p, "record": r}) for s, p, k, r in entries]
        ref = store.put_blob(f"output/parts/{n:06d}.jsonl", b"".join(line + b"\n" for line in lines))
        batches[n] = SimpleNamespace(output_ref=ref.model_dump(mode="json"), failure_output_ref=None)
    state: Any = SimpleNamespace(batches=batches)
    refs = output_module.output_parts(state)
    expected = _reference_output(store, refs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(output_module, "MERGE_FAN_IN", fan_in)
        patch.setattr(output_module, "WRITE_CHUNK_RECORDS", chunk)
        ref, count = output_module.write_output(store, state, "out.jsonl")
        assert store.read_blob(ref) == expected
        assert count == expected.count(b"\n")
        assert [orjson.dumps(r) + b"\n" for r in output_module.records(store, state)] == expected.splitlines(True)


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(st.tuples(st.one_of(st.integers(0, 5), st.integers(-2, 2**70)),
                                  st.one_of(st.integers(0, 3), st.integers(-2, 2**65)), st.binary(max_size=4)),
                        min_size=1, max_size=30))
def test_part_lines_sorted_by_packed_keys_equal_the_tuple_sort(entries: list[tuple[int, int, bytes]]) -> None:
    packed = PartLines()
    for seq, part, line in entries:
        packed.add(seq, part, line)
    expected = sorted(entries, key=lambda t: (t[0], t[1]))
    assert packed.blob() == b"\n".join(t[2] for t in expected) + b"\n"
    assert len(packed) == len(entries)
