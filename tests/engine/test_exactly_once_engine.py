"""Exactly once at the edges, engine level (issue 14): a 404 is confirmed by listing before a requeue (which is not
a pass failure), a batch that reappears is adopted, and the end-of-run reconcile finds remote batches the manifest
does not know, cancels them and counts their real cost."""

from __future__ import annotations

import time

from gbatch_flows import costs
from gbatch_flows.engine.assemble import assemble
from gbatch_flows.engine.fencing import Timing
from gbatch_flows.engine.generate import generate
from gbatch_flows.engine.poll import poll
from gbatch_flows.engine.process import process
from gbatch_flows.engine.push import commit_pushed, metadata_for, push, reserve_and_mark
from gbatch_flows.engine.reconcile import orphans, reconcile
from gbatch_flows.engine.runner import run_engine
from gbatch_flows.store import BlobRef

from .conftest import EchoTask, engine_for, make_options

GONE_CONFIRM_S = 0.3


def _pushed_without_remote(engine, remote_id: str) -> int:
    """A local batch recorded as pushed under ``remote_id`` that no remote batch carries (or a stale id)."""
    generate(engine)
    [local_id] = assemble(engine)
    batch = reserve_and_mark(engine, engine.state.batches[local_id], "pushing")
    commit_pushed(engine, batch, remote_id, "file-none", "in_progress")
    return local_id


def test_a_404_is_confirmed_by_listing_spaced_over_time_before_a_requeue(tmp_path, emulator):
    options = make_options(tmp_path, max_batch_requests=10, min_pass_ratio=0.5, max_pass_failures=1)
    task = EchoTask(n=10)
    with engine_for(task, options, emulator) as engine:
        engine.timing = Timing(gone_confirm_s=GONE_CONFIRM_S)
        local_id = _pushed_without_remote(engine, "batch_never_created")
        first = poll(engine)
        assert first.finished == [] and first.in_flight == 1  # one 404 is not enough
        assert engine.state.batches[local_id].state == "pushed"
        time.sleep(GONE_CONFIRM_S + 0.05)
        assert poll(engine).finished == [local_id]  # still 404 and not listed, 0.3 s later: gone
        assert engine.state.batches[local_id].remote_status == "lost"
        process(engine)
        lost = engine.state.batches[local_id]
        assert lost.passed is None and engine.state.task.consecutive_pass_failures == 0  # a requeue: not judged
        summary = run_engine(engine)
    assert summary.status == "finished", summary


def test_a_batch_that_answers_404_but_is_listed_is_adopted(tmp_path, emulator):
    options = make_options(tmp_path, max_batch_requests=10)
    task = EchoTask(n=10)
    with engine_for(task, options, emulator) as engine:
        engine.timing = Timing(gone_confirm_s=60)
        generate(engine)
        [local_id] = assemble(engine)
        batch = reserve_and_mark(engine, engine.state.batches[local_id], "pushing")
        with engine.store.open_blob(BlobRef.model_validate(batch.input_ref)) as fh:
            uploaded = engine.client.files.create(file=("x.jsonl", fh), purpose="batch")
        real = engine.client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                            completion_window="24h",
                                            metadata=metadata_for(engine.state.task.task_id, local_id))
        commit_pushed(engine, batch, "batch_stale_id", uploaded.id, "in_progress")
        poll(engine)
        assert engine.state.batches[local_id].remote_id == real.id  # found by metadata: adopted, not requeued
        summary = run_engine(engine)
    assert summary.status == "finished" and emulator.stats()["batches_by_local_id"] == {str(local_id): 1}


def test_reconcile_cancels_an_unknown_twin_and_counts_its_real_cost(tmp_path, emulator):
    options = make_options(tmp_path, max_batch_requests=10)
    task = EchoTask(n=10)
    with engine_for(task, options, emulator) as engine:
        assert run_engine(engine).status == "finished"
        assert reconcile(engine).unknown == []  # a clean run: the manifest knows every remote batch
        before = engine.state.totals.settled.cost
        # a twin of local batch 1 that this run never recorded (a re-sent create, a woken paused run...)
        batch = engine.state.batches[1]
        with engine.store.open_blob(BlobRef.model_validate(batch.input_ref)) as fh:
            uploaded = engine.client.files.create(file=("twin.jsonl", fh), purpose="batch")
        twin = engine.client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                            completion_window="24h",
                                            metadata=metadata_for(engine.state.task.task_id, 1))
        report = reconcile(engine)
        assert report.unknown == [twin.id] and report.adopted == []
        record = orphans(engine)[twin.id]
        assert record.local_id == 1
        deadline = time.monotonic() + 30
        while record.settled is None:  # the twin ends (cancelled or completed): its usage is then counted
            assert time.monotonic() < deadline, record
            time.sleep(0.05)
            reconcile(engine)
            record = orphans(engine)[twin.id]
        assert engine.state.totals.reserved.cost == 0 or abs(engine.state.totals.reserved.cost) < 1e-12
        counted = engine.state.totals.settled.cost - before
        usage = record.usage
        expected = costs.actual_cost({"prompt_tokens": usage.prompt_tokens,
                                      "completion_tokens": usage.completion_tokens,
                                      "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}},
                                     engine.prices("gpt-4o-mini"), "batch")
        assert abs(counted - expected) < 1e-12
        assert reconcile(engine).unknown == []  # counted once, whatever the number of runs that see it


def test_reconcile_adopts_a_batch_left_pushing_whose_create_took_effect(tmp_path, emulator):
    options = make_options(tmp_path, max_batch_requests=10)
    task = EchoTask(n=10)
    with engine_for(task, options, emulator) as engine:
        generate(engine)
        [local_id] = assemble(engine)
        batch = reserve_and_mark(engine, engine.state.batches[local_id], "pushing")
        with engine.store.open_blob(BlobRef.model_validate(batch.input_ref)) as fh:
            uploaded = engine.client.files.create(file=("x.jsonl", fh), purpose="batch")
        remote = engine.client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                              completion_window="24h",
                                              metadata=metadata_for(engine.state.task.task_id, local_id))
        report = reconcile(engine)
        assert report.adopted == [remote.id]
        assert engine.state.batches[local_id].state == "pushed"
        assert engine.state.batches[local_id].remote_id == remote.id
        push(engine)  # nothing left to create
        assert run_engine(engine).status == "finished"
    assert emulator.stats()["batches_by_local_id"] == {str(local_id): 1}
