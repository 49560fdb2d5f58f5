"""End-to-end engine runs against the in-process emulator (no Prefect)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.engine.assemble import assemble
from gbatch_flows.engine.context import EngineStop
from gbatch_flows.engine.output import records
from gbatch_flows.engine.push import metadata_for, reserve_and_mark
from gbatch_flows.engine.runner import run_engine
from gbatch_flows.store import BlobRef

from .conftest import EchoTask, engine_for, make_options
from .invariants import check_limits


def output_keys(engine) -> list[str]:
    return [r["key"] for r in records(engine.store, engine.refresh())]


def test_5000_requests_under_tight_limits_give_5000_results(tmp_path, emulator):
    options = make_options(
        tmp_path, max_batch_requests=300, max_batch_ktokens=6, max_remote_batches=3, max_remote_requests=700,
        max_unpushed_batches=2, max_remote_cost=0.05, max_batch_cost=0.02,
    )
    task = EchoTask(n=5000)
    commits = []
    with engine_for(task, options, emulator) as engine:
        engine.on_commit.append(lambda state: (check_limits(options, state), commits.append(state.generation)))
        summary = run_engine(engine)
        assert summary.status == "finished", summary
        keys = output_keys(engine)
        state = engine.state
    assert len(keys) == 5000 and len(set(keys)) == 5000
    assert keys == sorted(keys)  # generation order
    assert len(state.batches) >= 5000 / 300
    assert all(b.requests <= 300 for b in state.batches.values())
    created = emulator.stats()["batches_by_local_id"]
    assert sorted(int(k) for k in created) == sorted(state.batches)
    assert set(created.values()) == {1}, "a local batch was pushed twice"
    assert len(commits) > 3 * len(state.batches)  # limits were checked on every commit
    assert state.totals.reserved.requests == 0 and state.totals.settled.requests == 5000


def test_retryable_errors_retried_fatal_ones_fail(tmp_path):
    faults = {"seed": 7, "script": [
        {"op": "batches.create", "nth": 1, "fault": "request_errors", "custom_ids": ["0-0-0", "1-0-0"],
         "status_code": 500},
        {"op": "batches.create", "nth": 1, "fault": "request_errors", "custom_ids": ["2-0-0"], "status_code": 400},
    ]}
    with run_emulator(EmulatorConfig(batch_duration=0.05, faults=faults)) as emu:
        options = make_options(tmp_path, max_batch_requests=10, min_pass_ratio=0.5)
        with engine_for(EchoTask(n=10), options, emu) as engine:
            summary = run_engine(engine)
            out = list(records(engine.store, engine.refresh()))
            first = engine.state.batches[1]
    assert summary.status == "finished", summary
    by_key = {r["key"]: r for r in out}
    assert "answer" in by_key["k000000"] and "answer" in by_key["k000001"]  # 500: retried, then fine
    assert "failed" in by_key["k000002"] and "400" in by_key["k000002"]["failed"]  # 400: fatal
    assert first.outcomes.retried == 2 and first.outcomes.failed == 1 and first.outcomes.ok == 7
    assert len(out) == 10


def test_retry_fatal_requests_retries_4xx(tmp_path):
    faults = {"script": [{"op": "batches.create", "nth": 1, "fault": "request_errors", "custom_ids": ["2-0-0"],
                          "status_code": 400}]}
    with run_emulator(EmulatorConfig(batch_duration=0.05, faults=faults)) as emu:
        options = make_options(tmp_path, max_batch_requests=10, retry_fatal_requests=True)
        with engine_for(EchoTask(n=5), options, emu) as engine:
            assert run_engine(engine).status == "finished"
            out = {r["key"]: r for r in records(engine.store, engine.refresh())}
    assert "answer" in out["k000002"]


def test_rejected_responses_retried_until_max_retries(tmp_path, emulator):
    options = make_options(tmp_path, max_batch_requests=4, max_retries=2, min_pass_ratio=0.0)
    task = EchoTask(n=4, invalid_keys=frozenset({"k000001"}))
    with engine_for(task, options, emulator) as engine:
        assert run_engine(engine).status == "finished"
        out = {r["key"]: r for r in records(engine.store, engine.refresh())}
        failed_lines = [json.loads(raw) for b in engine.state.batches.values() if b.failed_ref
                        for raw in engine.store.iter_lines(BlobRef.model_validate(b.failed_ref))]
    assert "retries exhausted (2)" in out["k000001"]["failed"]
    assert [f["request"]["retry"] for f in failed_lines] == [2]  # 3 attempts in all
    assert sum(1 for r in out.values() if "answer" in r) == 3


@pytest.mark.parametrize("max_pass_failures", [1, 2])
def test_pass_failures_abort_after_exactly_n_failing_batches(tmp_path, emulator, max_pass_failures):
    options = make_options(tmp_path, max_batch_requests=2, max_retries=0, min_pass_ratio=0.9,
                           max_pass_failures=max_pass_failures, max_remote_batches=1)
    task = EchoTask(n=10, invalid_keys=frozenset(f"k{i:06d}" for i in range(10)))
    with engine_for(task, options, emulator) as engine:
        summary = run_engine(engine)
        processed = engine.state.batches_in("processed")
    assert summary.status == "error"
    assert len(processed) == max_pass_failures  # N failing batches, not N + 1
    assert f"{max_pass_failures} batches in a row" in summary.reason and "--max_pass_failures" in summary.reason
    files = [BlobRef.model_validate(b.failed_ref).path for b in processed]
    assert files and all(path in summary.reason for path in files)


def test_pass_failure_stop_names_no_failed_files_when_there_are_none(tmp_path, emulator):
    """Rejected answers are requeued for a retry: nothing is in failed/*.jsonl, so the message must not send the
    user there."""
    options = make_options(tmp_path, max_batch_requests=2, max_retries=5, min_pass_ratio=0.9, max_pass_failures=2,
                           max_remote_batches=1)
    task = EchoTask(n=10, invalid_keys=frozenset(f"k{i:06d}" for i in range(10)))
    with engine_for(task, options, emulator) as engine:
        summary = run_engine(engine)
        assert not any(b.failed_ref for b in engine.state.batches.values())
    assert summary.status == "error" and "2 batches in a row" in summary.reason
    assert "failed/" not in summary.reason and "requeued" in summary.reason


def test_request_that_can_never_fit_is_refused_by_name(tmp_path, emulator):
    options = make_options(tmp_path, max_batch_ktokens=0.005)
    with engine_for(EchoTask(n=3), options, emulator) as engine:
        summary = run_engine(engine)
    assert summary.status == "error"
    assert "'k000000'" in summary.reason and "max_batch_ktokens" in summary.reason


def test_session_limit_stops_and_next_session_continues(tmp_path, emulator):
    options = make_options(tmp_path, max_batch_requests=10, max_session_requests=30)
    task = EchoTask(n=50)
    with engine_for(task, options, emulator, session_id="first") as engine:
        engine.on_commit.append(lambda state: check_limits(options, state))
        summary = run_engine(engine)
        assert summary.status == "stopped" and "max_session_requests" in summary.reason
        assert engine.state.session("first").settled.requests == 30
        assert len(output_keys(engine)) == 30
    with engine_for(task, options, emulator, session_id="second") as engine:  # a new session, a new budget
        assert run_engine(engine).status == "finished"
        assert engine.state.session("second").settled.requests == 20
        assert len(output_keys(engine)) == 50


def test_task_cost_limit_never_exceeded_across_sessions(tmp_path, emulator):
    options = make_options(tmp_path, max_batch_requests=5, max_task_cost=0.0004, max_batch_cost=0.0002)
    task = EchoTask(n=200)
    for session in ("a", "b", "c"):
        with engine_for(task, options, emulator, session_id=session) as engine:
            engine.on_commit.append(lambda state: check_limits(options, state))
            summary = run_engine(engine)
            assert summary.status == "stopped", summary
            assert "max_task_cost" in summary.reason or "budget" in summary.reason
    assert engine.state.totals.committed.cost <= 0.0004
    assert 0 < len(output_keys(engine)) < 200


def test_restart_adopts_a_batch_created_before_a_crash(tmp_path, emulator):
    options = make_options(tmp_path, max_batch_requests=10)
    task = EchoTask(n=10)
    with engine_for(task, options, emulator) as engine:
        from gbatch_flows.engine.generate import generate

        generate(engine)
        [local_id] = assemble(engine)
        batch = reserve_and_mark(engine, engine.state.batches[local_id], "pushing")
        # the crash happens after the remote batch was created, before "pushed" was committed
        with engine.store.open_blob(BlobRef.model_validate(batch.input_ref)) as fh:
            uploaded = engine.client.files.create(file=("x.jsonl", fh), purpose="batch")
        engine.client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h",
                                     metadata=metadata_for(engine.state.task.task_id, local_id))
    with engine_for(task, options, emulator) as engine:
        assert run_engine(engine).status == "finished"
        assert len(output_keys(engine)) == 10
    assert emulator.stats()["batches_by_local_id"] == {str(local_id): 1}


def test_enqueued_token_limit_waits_instead_of_failing(tmp_path):
    with run_emulator(EmulatorConfig(batch_duration=0.2, enqueued_token_limit=400)) as emu:
        options = make_options(tmp_path, max_batch_requests=15, max_remote_batches=4)
        with engine_for(EchoTask(n=60), options, emu) as engine:
            summary = run_engine(engine)
            assert summary.status == "finished", summary
            assert len(output_keys(engine)) == 60
            attempts = [b.attempts for b in engine.state.batches.values()]
    assert max(attempts) > 1, "the token limit was never hit: the test does not test anything"


def test_failed_batch_stops_unless_allowed(tmp_path):
    faults = {"script": [{"op": "batches.create", "nth": 1, "fault": "batch_failed"}]}
    with run_emulator(EmulatorConfig(batch_duration=0.05, faults=faults)) as emu:
        options = make_options(tmp_path, max_batch_requests=5)
        task = EchoTask(n=10)
        with engine_for(task, options, emu) as engine:
            summary = run_engine(engine)
        assert summary.status == "error" and "--process_failed_batches 1" in summary.reason
        with engine_for(task, options.model_copy(update={"process_failed_batches": 1}), emu) as engine:
            assert run_engine(engine).status == "finished"
            assert len(output_keys(engine)) == 10


@pytest.mark.parametrize("fault", ["batch_expired", "batch_cancelled", "lines_missing", "lines_malformed"])
def test_partial_results_are_retried(tmp_path, fault):
    rule = {"op": "batches.create", "nth": 1, "fault": fault, "at": 0.5, "fraction": 0.3}
    with run_emulator(EmulatorConfig(batch_duration=0.05, faults={"seed": 3, "script": [rule]})) as emu:
        options = make_options(tmp_path, max_batch_requests=20, min_pass_ratio=0.0)
        with engine_for(EchoTask(n=20), options, emu) as engine:
            assert run_engine(engine).status == "finished"
            keys = output_keys(engine)
            first = engine.state.batches[1]
    assert sorted(keys) == [f"k{i:06d}" for i in range(20)]
    assert first.outcomes.retried > 0


def test_dry_run_changes_nothing(tmp_path, emulator):
    from gbatch_flows.engine.dryrun import dry_run

    options = make_options(tmp_path, max_batch_requests=7)
    task = EchoTask(n=30)
    with engine_for(task, options, emulator) as engine:
        run_engine(engine)  # a finished task: dry run of an existing state
    root = tmp_path / "tasks"
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    summary = dry_run(task, options)
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert before == after
    fresh = make_options(tmp_path / "fresh", max_batch_requests=7, max_unpushed_batches=3)
    summary = dry_run(EchoTask(n=30), fresh)
    assert summary.counts["would_push"] == 3
    assert not (tmp_path / "fresh").exists() or not any((tmp_path / "fresh").rglob("*.json"))
    assert emulator.stats()["batches_created"] == len(engine.state.batches)


def test_wipe_failed_requeues_failed_requests(tmp_path, emulator):
    from gbatch_flows.engine.operations import wipe_failed

    options = make_options(tmp_path, max_batch_requests=10, max_retries=0, min_pass_ratio=0.0)
    rejecting = EchoTask(n=10, invalid_keys=frozenset({"k000003", "k000004"}))
    with engine_for(rejecting, options, emulator) as engine:
        run_engine(engine)
        assert sum(b.outcomes.failed for b in engine.state.batches.values()) == 2
    fixed = EchoTask(n=10)
    with engine_for(fixed, options, emulator) as engine:
        assert wipe_failed(engine) == 2
        assert run_engine(engine).status == "finished"
        out = list(records(engine.store, engine.refresh()))
    answers = Counter(r["key"] for r in out if "answer" in r)
    assert answers["k000003"] == 1 and answers["k000004"] == 1


def test_wipe_requests_regenerates_only_unsent(tmp_path, emulator):
    from gbatch_flows.engine.generate import generate
    from gbatch_flows.engine.operations import wipe_requests

    options = make_options(tmp_path, max_batch_requests=5, max_unpushed_batches=1, max_remote_batches=1)
    task = EchoTask(n=20)
    with engine_for(task, options, emulator) as engine:
        generate(engine)
        assemble(engine)
        from gbatch_flows.engine.push import push

        push(engine)  # batch 1 (5 requests) is remote
        wipe_requests(engine)
        assert engine.state.queued_requests() == 0
        assert run_engine(engine).status == "finished"
        keys = output_keys(engine)
    assert keys == [f"k{i:06d}" for i in range(20)]


def test_task_meta_is_fixed_unless_reinit(tmp_path, emulator):
    options = make_options(tmp_path)
    task = EchoTask(n=2)
    with engine_for(task, options, emulator):
        pass
    changed = options.model_copy(update={"temperature": 0.5})
    with pytest.raises(EngineStop, match="--reinit_meta"), engine_for(task, changed, emulator):
        pass
    with engine_for(task, changed.model_copy(update={"reinit_meta": True}), emulator) as engine:
        assert engine.meta["temperature"] == 0.5


def test_direct_mode_stays_within_rpm(tmp_path):
    with run_emulator(EmulatorConfig(rpm=600, batch_api=False)) as emu:
        options = make_options(tmp_path, force_direct=True, max_direct_rpm=600, max_batch_requests=40)
        with engine_for(EchoTask(n=40), options, emu) as engine:
            summary = run_engine(engine)
            keys = output_keys(engine)
            modes = {b.mode for b in engine.state.batches.values()}
        stats = emu.stats()
    assert summary.status == "finished"
    assert len(keys) == 40 and modes == {"direct"}
    assert stats["responses_429"] <= 1, stats


def test_direct_finish_sends_the_last_requests_directly(tmp_path, emulator):
    options = make_options(tmp_path, max_batch_requests=10, direct_finish_requests=5)
    with engine_for(EchoTask(n=23), options, emulator) as engine:
        assert run_engine(engine).status == "finished"
        modes = Counter(b.mode for b in engine.state.batches.values())
        assert len(output_keys(engine)) == 23
    assert modes["batch"] == 2 and modes["direct"] == 1


def test_estimates_equal_the_emulators_usage_for_structured_requests(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "flows"))
    from char_codes import CharCodes

    options = make_options(tmp_path, max_batch_requests=50)
    task = CharCodes({"char_ranges": "0x41-0x5A,0x3B1-0x3B5,0x1F600-0x1F602"})
    with run_emulator(EmulatorConfig(batch_duration=0.05, responders=task.emulator_responders())) as emu:
        with engine_for(task, options, emu) as engine:
            assert run_engine(engine).status == "finished"
            batches = list(engine.state.batches.values())
    assert sum(b.requests for b in batches) == 26 + 5 + 3
    for b in batches:  # every request's prompt estimate equals what the server counted
        assert b.usage.prompt_tokens == b.tokens, b


def test_dry_run_plan_counts_its_own_batches_against_the_remote_limits(tmp_path, capsys):
    from gbatch_flows.engine.dryrun import dry_run

    options = make_options(tmp_path, max_batch_requests=7, max_unpushed_batches=3, max_remote_batches=2)
    summary = dry_run(EchoTask(n=30), options)
    assert summary.counts["would_push"] == 2
    assert "then max_remote_batches stops pushing" in capsys.readouterr().out
