import json
from dataclasses import dataclass

import pytest
from pydantic import BaseModel

from gbatch_flows.engine.protocol import Result
from gbatch_flows.models import Request, Usage
from gbatch_flows.outputs import DataclassListOutputFile, DataclassOutputFile
from gbatch_flows.task import ResponseInvalid, Task


class Rec(BaseModel):
    name: str
    value: int


@dataclass
class Summary:
    total: int
    names: list[str]


def test_list_output_round_trip(tmp_path):
    out = DataclassListOutputFile(str(tmp_path / "o.jsonl"), Rec)
    assert out.write([Rec(name="a", value=1), Rec(name="b", value=2)]) == 2
    assert list(out.read()) == [Rec(name="a", value=1), Rec(name="b", value=2)]
    assert (tmp_path / "o.jsonl").read_text().splitlines()[0] == '{"name": "a", "value": 1}'


def test_single_output_round_trip_with_a_dataclass(tmp_path):
    out = DataclassOutputFile(f"file://{tmp_path}/s.json", Summary)
    out.write(Summary(total=2, names=["a", "b"]))
    assert out.read() == Summary(total=2, names=["a", "b"])


def test_memory_fs_url():
    out = DataclassListOutputFile("memory://gbatch-test/out.jsonl")
    out.write([{"x": 1}])
    assert list(out.read()) == [{"x": 1}] and out.exists()


def test_chat_request_builds_a_strict_json_schema_from_pydantic():
    meta = {"model": "gpt-4o-mini", "temperature": 0.3, "top_p": None, "max_completion_tokens": 50}
    spec = Task.chat_request("k1", [{"role": "user", "content": "hi"}], meta, response_model=Rec, n=3)
    payload = spec.payload
    assert payload["model"] == "gpt-4o-mini" and payload["temperature"] == 0.3 and "top_p" not in payload
    assert payload["n"] == 3 and payload["max_completion_tokens"] == 50
    fmt = payload["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert set(schema["required"]) == {"name", "value"} and schema["additionalProperties"] is False


def _result(contents):
    request = Request(seq=0, key="k", endpoint="/v1/chat/completions", payload={}, tokens=1, max_out=1)
    body = {"choices": [{"index": i, "message": {"role": "assistant", "content": c}} for i, c in enumerate(contents)]}
    return Result(request, True, body, None, Usage(), None, "batch")


def test_contents_and_parse():
    result = _result([json.dumps({"name": "x", "value": 3}), "not json"])
    first, second = Task.contents(result)
    assert Task.parse(first, Rec) == Rec(name="x", value=3)
    with pytest.raises(ResponseInvalid, match="does not match Rec"):
        Task.parse(second, Rec)
    with pytest.raises(ResponseInvalid, match="no choices"):
        Task.contents(_result([]))


def test_meta_takes_option_overrides_and_params():
    class P(BaseModel):
        size: int = 3

    class T(Task):
        name = "t"
        Params = P

    class Opts:
        model = "gpt-4.1-mini"
        temperature = None
        confidence = 0.8

    meta = T({"size": 5}).build_meta(Opts())
    assert meta["model"] == "gpt-4.1-mini" and meta["confidence"] == 0.8 and meta["size"] == 5
    assert meta["temperature"] is None and meta["completion_ratio"] == Task.default_meta["completion_ratio"]
