"""The batch pipeline's fast paths (issue 19) store exactly what the validated paths store.

The same task runs twice against identically configured emulators (deterministic answers, seeded faults): once as
is, once with the fast paths switched off (sidecar lines rebuilt as validated ``Request``s with their payloads,
pydantic models validated instead of built from trusted values, response_format estimates taken the general way,
queued lines parsed whole, the output file written record by record, output part lines sorted by tuple keys). Every
stored file the runs wrote (request segments, batch and sidecar files, output parts, failures, the output file; not
the results, which hold the server's ids and times) and every batch's outcomes, usage, cost and completion
statistics must be equal.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from gbatch_flows import api, endpoints
from gbatch_flows import task as task_module
from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.engine import assemble as assemble_module
from gbatch_flows.engine import output as output_module
from gbatch_flows.engine import parts as parts_module
from gbatch_flows.engine import process as process_module
from gbatch_flows.engine.output import records, write_output
from gbatch_flows.engine.protocol import Processed, Result
from gbatch_flows.engine.runner import run_engine
from gbatch_flows.store import BlobRef
from gbatch_flows.task import Task
from gbatch_flows.tokens import TokenEstimator

from .conftest import engine_for, make_options


class Answer(BaseModel):
    text: str


class SchemaTask(Task):
    """Structured-output requests with request meta; some answers are rejected (retried), some fail for good."""

    name = "schema_echo"
    default_meta = {**Task.default_meta, "model": "gpt-4o-mini", "max_completion_tokens": 40}

    def generate_requests(self, meta: dict[str, Any]):
        for i in range(60):
            yield self.chat_request(f"k{i:04d}", [{"role": "system", "content": "Answer briefly."},
                                                  {"role": "user", "content": f"Item {i} ✓"}], meta,
                                    response_model=Answer, request_meta={"i": i})

    def process_result(self, result: Result, meta: dict[str, Any]) -> Processed:
        i = result.request.meta["i"]
        if i % 7 == 3 and result.request.retry == 0:
            return Processed(retry="rejected once by the test task")
        if i % 11 == 5:
            return Processed(fail="refused by the test task")
        content = self.contents(result)[0]
        return Processed(records=[{"key": result.request.key, "answer": content, "usage": result.usage.model_dump(),
                                   "payload_model": result.request.payload["model"]}])

    def process_failure(self, request, reason, meta):
        return [{"key": request.key, "failed": reason}]


def _validated(cls: Any, values: dict[str, Any]) -> Any:
    return cls(**values)


def _run(tmp_path, fast: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(process_module, "SIDECAR_KEYS", frozenset())  # validated Requests, payloads loaded
            for module in (api, endpoints, task_module):
                patch.setattr(module, "trusted", _validated)
            patch.setattr(TokenEstimator, "_format_tokens", lambda self, response_format, ctx: None)
            patch.setattr(assemble_module, "split_line", lambda raw: None)  # queued lines parsed whole
            patch.setattr(output_module, "WRITE_CHUNK_RECORDS", 1)  # the output file written record by record
            patch.setattr(parts_module, "PACK_KEYS", False)  # output part lines sorted by (seq, part) tuples
        rule = {"op": "batches.create", "nth": 1, "fault": "lines_malformed", "at": 0.5, "fraction": 0.2}
        with run_emulator(EmulatorConfig(batch_duration=0.05, faults={"seed": 5, "script": [rule]})) as emu:
            options = make_options(tmp_path / ("fast" if fast else "validated"), max_batch_requests=100, max_remote_batches=1,
                                   min_pass_ratio=0.0, max_retries=2)
            with engine_for(SchemaTask(), options, emu) as engine:
                assert run_engine(engine).status == "finished"
                state = engine.refresh()
                store = engine.store
                files: dict[str, bytes] = {}
                for batch in state.batches.values():
                    for name in ("input_ref", "sidecar_ref", "output_ref", "failed_ref",
                                 "failure_output_ref"):
                        ref = getattr(batch, name)
                        if ref is not None:
                            files[f"{batch.local_id}:{name}"] = b"\n".join(store.iter_lines(BlobRef.model_validate(ref)))
                for index, seg in state.segments.items():
                    files[f"segment:{index}"] = b"\n".join(store.iter_lines(BlobRef.model_validate(seg.ref)))
                batches = {b.local_id: (b.requests, b.tokens, b.max_out, b.worst_cost, b.outcomes, b.usage, b.cost,
                                        b.completion) for b in state.batches.values()}
                ref, _ = write_output(store, state, "schema_echo_output.jsonl")
                files["output file"] = b"\n".join(store.iter_lines(ref))
                return {"files": files, "batches": batches, "records": list(records(store, state)),
                        "totals": state.totals}


def test_fast_paths_store_what_the_validated_paths_store(tmp_path, monkeypatch):
    fast = _run(tmp_path, True, monkeypatch)
    validated = _run(tmp_path, False, monkeypatch)
    assert fast["batches"] == validated["batches"]
    assert fast["files"].keys() == validated["files"].keys()
    for name, data in fast["files"].items():
        assert data == validated["files"][name], name
    assert fast["records"] == validated["records"]
    assert fast["totals"] == validated["totals"]
    outcomes = [b[4] for b in fast["batches"].values()]
    assert sum(o.retried for o in outcomes) > 0 and sum(o.failed for o in outcomes) > 0  # every way was taken
    assert len(fast["records"]) >= 55
