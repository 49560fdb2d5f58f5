"""Regression tests from the engine review: crash-left direct batches, lost results, wipes, direct-mode crashes,
only_process adoption."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.engine.assemble import assemble
from gbatch_flows.engine.generate import generate
from gbatch_flows.engine.output import records
from gbatch_flows.engine.poll import poll
from gbatch_flows.engine.process import process
from gbatch_flows.engine.protocol import Processed, Result
from gbatch_flows.engine.push import push
from gbatch_flows.engine.runner import Runner, run_engine

from .conftest import EchoTask, engine_for, make_options


def out_records(engine) -> list[dict]:
    return list(records(engine.store, engine.refresh()))


def drive_until_processed(engine, rounds: int = 400) -> None:
    """generate / assemble / push / poll / process by hand until no batch is pending."""
    generate(engine)
    assemble(engine)
    push(engine)
    for _ in range(rounds):
        poll(engine)
        process(engine)
        if not engine.state.batches_in("pushing", "pushed", "done"):
            return
    raise AssertionError("batches never finished")


class Crash(BaseException):
    """Stands for a SIGKILL / Ctrl+C right after a commit."""


# ---------------------------------------------------------------- 1. a direct batch left by a crash is never run
@pytest.mark.parametrize("crash_state", ["assembled", "pushing"])
def test_direct_batch_left_by_a_crash_is_finished_on_restart(tmp_path, emulator, crash_state):
    options = make_options(tmp_path, max_batch_requests=10, direct_finish_requests=5, max_poll_wait_s=1.0)
    task = EchoTask(n=13)

    def crash_on(state) -> None:
        if any(b.mode == "direct" and b.state == crash_state for b in state.batches.values()):
            raise Crash(f"killed after a direct batch became {crash_state}")

    with engine_for(task, options, emulator) as engine:
        engine.on_commit.append(crash_on)
        with pytest.raises(Crash):
            run_engine(engine)
    with engine_for(task, options, emulator) as engine:  # restart, same options
        summary = run_engine(engine)
        states = {b.local_id: (b.mode, b.state) for b in engine.state.batches.values()}
        keys = [r["key"] for r in out_records(engine)]
    assert summary.status == "finished", (summary, states)
    assert len(keys) == 13


# ---------------------------------------------------------------- 2. an output file that cannot be downloaded
def test_undownloadable_results_do_not_spin_forever(tmp_path, emulator):
    options = make_options(tmp_path, max_batch_requests=10, max_poll_wait_s=1.0)
    task = EchoTask(n=10)
    with engine_for(task, options, emulator) as engine:
        generate(engine)
        assemble(engine)
        push(engine)
        for _ in range(400):
            if poll(engine).finished:
                break
        [batch] = engine.state.batches_in("done")
        engine.client.files.delete(batch.output_file_id)  # e.g. the provider's file expired / was removed
        ticks = 0

        def on_tick(engine, info: dict[str, Any]) -> None:
            nonlocal ticks
            ticks += 1
            if ticks > 200:
                raise Crash("run loop spun 200 times without sleeping or ending")

        try:
            summary = Runner(engine, sleep=lambda s: time.sleep(min(s, 0.02)), on_tick=on_tick).run()
        except Crash as exc:
            pytest.fail(f"{exc}; batch state {engine.state.batches[1].state}")
    assert summary.status in ("finished", "error"), summary


# ---------------------------------------------------------------- 3. wipe_failed duplicates output records
def test_wipe_failed_leaves_one_record_per_sample(tmp_path, emulator):
    from gbatch_flows.engine.operations import wipe_failed

    options = make_options(tmp_path, max_batch_requests=10, max_retries=0, min_pass_ratio=0.0)
    rejecting = EchoTask(n=10, invalid_keys=frozenset({"k000003"}))
    with engine_for(rejecting, options, emulator) as engine:
        assert run_engine(engine).status == "finished"
    with engine_for(EchoTask(n=10), options, emulator) as engine:
        assert wipe_failed(engine) == 1
        assert run_engine(engine).status == "finished"
        out = out_records(engine)
    per_key = Counter(r["key"] for r in out)
    assert per_key["k000003"] == 1, [r for r in out if r["key"] == "k000003"]


# ---------------------------------------------------------------- 4. wipe_requests and follow-ups / empty results
class FollowUpTask(EchoTask):
    """Part 0 yields one record and one follow-up for the same sample; the follow-up yields one record."""

    name = "followup"

    def __init__(self, n: int = 6, silent: frozenset[str] = frozenset()):
        super().__init__(n)
        self.silent = silent  # keys whose result gives no record (a filter)
        self.calls: Counter[str] = Counter()

    def process_result(self, result: Result, meta: dict[str, Any]) -> Processed:
        req = result.request
        self.calls[req.key] += 1
        if req.key in self.silent:
            return Processed()
        rec = {"key": req.key, "part": req.part}
        if req.part == 0:
            spec = self.chat_request(req.key, [{"role": "user", "content": f"again {req.key}"}], meta)
            return Processed(records=[rec], followups=[spec])
        return Processed(records=[rec])


def test_wipe_requests_keeps_queued_followups(tmp_path, emulator):
    from gbatch_flows.engine.operations import wipe_requests

    options = make_options(tmp_path, max_batch_requests=6, max_unpushed_batches=1, max_poll_wait_s=5)
    task = FollowUpTask(n=6)
    with engine_for(task, options, emulator) as engine:
        drive_until_processed(engine)  # batch 1 processed: 6 follow-ups are queued, not sent yet
        assert engine.state.queued_requests() == 6
        wipe_requests(engine)
        assert run_engine(engine).status == "finished"
        out = out_records(engine)
    per_key = Counter(r["key"] for r in out)
    assert all(per_key[f"k{i:06d}"] == 2 for i in range(6)), per_key  # part 0 + its follow-up


def test_wipe_requests_does_not_resend_done_samples_without_records(tmp_path, emulator):
    from gbatch_flows.engine.operations import wipe_requests

    options = make_options(tmp_path, max_batch_requests=5, max_unpushed_batches=1, max_remote_batches=1,
                           max_poll_wait_s=5)
    task = EchoTask(n=10)

    class Silent(EchoTask):  # same name/meta as EchoTask; k000000 is filtered out (no record)
        def __init__(self):
            super().__init__(n=10)
            self.calls: Counter[str] = Counter()

        def process_result(self, result, meta):
            self.calls[result.request.key] += 1
            if result.request.key == "k000000":
                return Processed()
            return super().process_result(result, meta)

    silent = Silent()
    with engine_for(silent, options, emulator) as engine:
        generate(engine)
        assemble(engine)
        push(engine)
        for _ in range(400):
            poll(engine)
            if process(engine):
                break
        assert engine.state.batches[1].state == "processed"
        wipe_requests(engine)  # the unsent k000005..k000009 are regenerated; k000000..4 are done
        assert run_engine(engine).status == "finished"
    assert silent.calls["k000000"] == 1, "a sample already done was sent and paid for again"
    del task


# ---------------------------------------------------------------- 6. direct batch re-run after a crash
def test_direct_crash_does_not_exceed_task_request_limit(tmp_path):
    from gbatch_flows.engine import direct

    with run_emulator(EmulatorConfig(batch_api=False)) as emu:
        options = make_options(tmp_path, force_direct=True, max_direct_concurrency=1, max_batch_requests=10,
                               max_task_requests=10, max_poll_wait_s=1.0)
        task = EchoTask(n=10)
        real = direct._call
        calls = 0

        async def call_then_crash(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls > 6:
                raise Crash("Ctrl+C in the middle of a direct batch")
            return await real(*args, **kwargs)

        with engine_for(task, options, emu) as engine:
            direct._call = call_then_crash
            try:
                with pytest.raises(Crash):
                    run_engine(engine)
            finally:
                direct._call = real
            assert emu.stats()["requests_by_op"].get("chat.completions") == 6
        with engine_for(task, options, emu) as engine:
            summary = run_engine(engine)
            settled = engine.state.totals.settled
        served = emu.stats()["requests_by_op"]
    sent = sum(v for k, v in served.items() if "chat" in k)
    assert summary.status == "finished"
    assert sent <= options.max_task_requests, f"{sent} chat requests sent, limit 10; settled {settled}"


# ---------------------------------------------------------------- 7. only_process and a batch left "pushing"
def test_only_process_adopts_a_batch_created_before_a_crash(tmp_path, emulator):
    from gbatch_flows.engine.push import metadata_for, reserve_and_mark
    from gbatch_flows.store import BlobRef

    options = make_options(tmp_path, max_batch_requests=10, max_poll_wait_s=1.0)
    task = EchoTask(n=10)
    with engine_for(task, options, emulator) as engine:
        generate(engine)
        [local_id] = assemble(engine)
        batch = reserve_and_mark(engine, engine.state.batches[local_id], "pushing")
        with engine.store.open_blob(BlobRef.model_validate(batch.input_ref)) as fh:  # crash after the create
            uploaded = engine.client.files.create(file=("x.jsonl", fh), purpose="batch")
        engine.client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h",
                                     metadata=metadata_for(engine.state.task.task_id, local_id))
    with engine_for(task, options.model_copy(update={"only_process": True}), emulator) as engine:
        summary = run_engine(engine)
        keys = [r["key"] for r in out_records(engine)]
    assert len(keys) == 10, (summary, engine.state.batches[local_id].state)
