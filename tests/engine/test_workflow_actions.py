"""Maintenance actions and run rules of the original workflow: counts after each action, pass failures, local-only
batches, --wipe_requests cancelling remote batches, stored metadata reused, the status view's figures."""

from __future__ import annotations

import openai
import pytest
from pydantic import BaseModel

from gbatch_flows import reporting
from gbatch_flows.cli import options_model, split_options
from gbatch_flows.cli_args import parse_options
from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.engine.context import EngineStop
from gbatch_flows.engine.generate import generate
from gbatch_flows.engine.operations import wipe_failed, wipe_requests, wipe_task
from gbatch_flows.engine.runner import run_engine
from gbatch_flows.status import CompletionStats, request_counts, status_lines
from gbatch_flows.task import Task, records

from .conftest import EchoTask, engine_for, make_options
from .test_engine_e2e import output_keys


def assert_counts(engine, total: int, **expected: int) -> None:
    """Counts from the state add up to ``total`` (the task's real number of requests), and the reported metrics
    agree."""
    counts = request_counts(engine.refresh())
    assert counts.total == total, counts
    for name, value in expected.items():
        assert getattr(counts, name) == value, counts
    figures = reporting.metrics(engine.state, engine.session_id)
    assert figures["requests/total"] == total
    assert figures["requests/done"] == counts.done + counts.failed <= total


def test_counts_stay_right_after_each_maintenance_action(tmp_path, emulator):
    bad = frozenset({"k000003", "k000007", "k000011"})
    options = make_options(tmp_path, max_batch_requests=5, max_retries=0, min_pass_ratio=0.0)
    with engine_for(EchoTask(n=20, invalid_keys=bad), options, emulator, "one") as engine:
        assert run_engine(engine).status == "finished"
        assert_counts(engine, 20, done=17, failed=3, queued=0)
        assert wipe_failed(engine) == 3
        assert_counts(engine, 20, done=17, failed=0, queued=3)  # was 17 done + 3 failed + 3 queued = 23 of 20
    with engine_for(EchoTask(n=20), options, emulator, "two") as engine:
        assert run_engine(engine).status == "finished"
        assert_counts(engine, 20, done=20, failed=0, queued=0)
        wipe_requests(engine)
        assert_counts(engine, 20, done=20)  # was 20 done of 0
        generate(engine)
        assert_counts(engine, 20, done=20, queued=0)
    reinit = options.model_copy(update={"reinit_meta": True, "temperature": 0.7})
    with engine_for(EchoTask(n=20), reinit, emulator, "three") as engine:
        assert engine.meta["temperature"] == 0.7
        assert run_engine(engine).status == "finished"
        assert_counts(engine, 20, done=20, queued=0)
        wipe_task(engine)
        assert_counts(engine, 0)


def test_counts_right_after_wipe_requests_in_the_middle_of_a_task(tmp_path, emulator):
    options = make_options(tmp_path, max_batch_requests=10, max_session_requests=30, max_unpushed_batches=1)
    with engine_for(EchoTask(n=50), options, emulator, "first") as engine:
        assert run_engine(engine).status == "stopped"
        assert_counts(engine, 50, done=30)
    wipe = options.model_copy(update={"wipe_requests": True})
    with engine_for(EchoTask(n=50), wipe, emulator, "second") as engine:
        generate(engine)
        assert_counts(engine, 50, done=30, queued=20, in_batches=0)
        assert run_engine(engine).status == "finished"
        assert_counts(engine, 50, done=50)
        assert sorted(output_keys(engine)) == [f"k{i:06d}" for i in range(50)]


@pytest.mark.parametrize("fault,extra", [("batch_expired", {}), ("batch_cancelled", {}),
                                         ("batch_failed", {"process_failed_batches": -1})])
def test_batches_the_server_did_not_finish_are_not_pass_failures(tmp_path, fault, extra):
    script = [{"op": "batches.create", "nth": n, "fault": fault} for n in (1, 2)]
    with run_emulator(EmulatorConfig(batch_duration=0.05, faults={"script": script})) as emu:
        options = make_options(tmp_path, max_batch_requests=5, max_remote_batches=1, min_pass_ratio=0.9,
                               max_pass_failures=1, **extra)
        with engine_for(EchoTask(n=10), options, emu) as engine:
            summary = run_engine(engine)
            assert summary.status == "finished", summary
            assert sorted(output_keys(engine)) == [f"k{i:06d}" for i in range(10)]
            judged = [b.passed for b in engine.state.batches_in("processed")]
    assert judged.count(None) == 2 and all(judged[2:])


def test_max_remote_batches_0_assembles_and_pushes_none(tmp_path, emulator):
    options = make_options(tmp_path, max_remote_batches=0, max_batch_requests=4, max_unpushed_batches=2)
    with engine_for(EchoTask(n=10), options, emulator) as engine:
        summary = run_engine(engine)
        batches = engine.state.batches_in("assembled")
        assert summary.status == "stopped" and "max_remote_batches" in summary.reason
        assert [b.requests for b in batches] == [4, 4]
        for batch in batches:
            assert f"batches/{batch.local_id:06d}.jsonl" in summary.reason
        assert engine.state.totals.committed.requests == 0
    assert not emulator.stats()["batches_by_local_id"]


def test_zero_session_budget_leaves_a_batch_to_inspect(tmp_path, emulator):
    options = make_options(tmp_path, max_session_requests=0, max_batch_requests=100, max_unpushed_batches=1)
    with engine_for(EchoTask(n=150), options, emulator) as engine:
        summary = run_engine(engine)
        [batch] = engine.state.batches.values()
        assert (batch.state, batch.requests) == ("assembled", 100)
        assert "max_session_requests" in summary.reason and "batches/000001.jsonl" in summary.reason
    later = make_options(tmp_path, max_session_requests=None, max_batch_requests=100)
    with engine_for(EchoTask(n=150), later, emulator, "later") as engine:  # a later session pushes it
        assert run_engine(engine).status == "finished"
        assert len(output_keys(engine)) == 150


def test_wipe_requests_cancels_running_remote_batches_and_records_it(tmp_path):
    with run_emulator(EmulatorConfig(batch_duration=3.0)) as emu:
        options = make_options(tmp_path, max_batch_requests=5, max_remote_batches=2, max_poll_wait_s=0.05)
        task = EchoTask(n=10)
        with engine_for(task, options, emu) as engine:
            assert run_engine(engine).status == "waiting"
            running = {b.remote_id for b in engine.state.batches_in("pushed")}
            assert len(running) == 2
        wipe = options.model_copy(update={"wipe_requests": True, "max_poll_wait_s": 60})
        with engine_for(task, wipe, emu, "s2") as engine:
            recorded = [b for b in engine.state.batches.values() if b.cancel_requested_at is not None]
            assert {b.remote_id for b in recorded} == running
            assert "cancelled: [1, 2]" in engine.state.manifest.message
            client = openai.OpenAI(api_key="sk-test-dummy", base_url=emu.base_url)
            assert {client.batches.retrieve(r).status for r in running} <= {"cancelling", "cancelled"}
            generate(engine)
            assert_counts(engine, 10, done=0, queued=10, in_batches=0)  # the samples are queued again
            assert run_engine(engine).status == "finished"
            assert_counts(engine, 10, done=10, failed=0)
            assert sorted(output_keys(engine)) == [f"k{i:06d}" for i in range(10)]  # once each


class SizeParams(BaseModel):
    size: int = 3


class SizedTask(Task):
    """A task with a parameter (its value joins the metadata)."""

    name = "sized"
    default_meta = {**Task.default_meta, "max_completion_tokens": 16}
    Params = SizeParams

    def generate_requests(self, meta):
        for i in range(meta["size"]):
            yield self.chat_request(f"p{i}", [{"role": "user", "content": f"item {i}"}], meta)

    def process_result(self, result, meta):
        return records({"key": result.request.key})


def _cli_options(tmp_path, *argv: str):
    """Task and options as ``main()`` builds them from a command line."""
    combined = parse_options(["--task_dir", str(tmp_path / "tasks"), "--no_wandb", "--emulator", "never",
                              *argv], env={}, model=options_model(SizedTask))
    options, params = split_options(SizedTask, combined)
    return SizedTask(params), options


def test_stored_metadata_is_reused_and_only_a_different_given_flag_is_refused(tmp_path, emulator):
    task, options = _cli_options(tmp_path, "--size", "5", "--temperature", "0.4", "--max_completion_tokens", "20")
    with engine_for(task, options, emulator):
        pass
    task, options = _cli_options(tmp_path)  # nothing repeated: the stored metadata is used
    with engine_for(task, options, emulator) as engine:
        assert (engine.meta["size"], engine.meta["temperature"], engine.meta["max_completion_tokens"]) == (5, 0.4, 20)
        before = engine.state.generation
        assert run_engine(engine).status == "finished"
        assert len(output_keys(engine)) == 5
    task, options = _cli_options(tmp_path, "--temperature", "0.4", "--size", "5")  # same values: fine
    with engine_for(task, options, emulator):
        pass
    for argv in (["--temperature", "0.9"], ["--size", "4"], ["--model", "gpt-4o"]):
        task, options = _cli_options(tmp_path, *argv)
        with pytest.raises(EngineStop, match="--reinit_meta") as info, engine_for(task, options, emulator):
            pass
        assert f"{argv[0]} " in str(info.value) and "stored" in str(info.value)
    task, options = _cli_options(tmp_path)
    with engine_for(task, options, emulator) as engine:
        assert engine.state.generation > before and engine.meta["size"] == 5  # refusals changed nothing


def test_completion_stats_quantiles_and_merge() -> None:
    values = list(range(1, 201))
    one, two = CompletionStats(), CompletionStats()
    for v in values[:120]:
        one.add(v, 100)
    for v in values[120:]:
        two.add(v, 50)
    one.merge(CompletionStats.from_dict(two.to_dict()))
    assert (one.count, one.max_tokens, one.total) == (200, 200, sum(values))
    assert 190 <= one.p95_tokens() <= 200  # exact p95 is 190; buckets are at most 10% wide
    assert one.max_ratio == 4.0 and 3.8 * 0.99 <= one.p95_ratio() <= 4.0


def test_status_lines_show_spend_remaining_and_batch_files(tmp_path, emulator):
    options = make_options(tmp_path, max_session_requests=10, max_batch_requests=10, max_unpushed_batches=1)
    with engine_for(EchoTask(n=25), options, emulator) as engine:
        run_engine(engine)
        assert "requests: 25 = 10 done + 0 failed + 15 queued + 0 in batches" in "\n".join(status_lines(engine))
    local = options.model_copy(update={"max_session_requests": None, "max_remote_batches": 0})
    with engine_for(EchoTask(n=25), local, emulator, "local") as engine:
        run_engine(engine)
        text = "\n".join(status_lines(engine))
        spent = engine.state.totals.settled.cost
    assert "requests: 25 = 10 done + 0 failed + 5 queued + 10 in batches" in text
    assert f"task ${spent:.4f}" in text and spent > 0
    assert "remaining: 15 requests" in text and "batches/000002.jsonl" in text
    assert "completion tokens over 10 answered requests" in text
