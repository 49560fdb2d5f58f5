"""The direct executor: HTTP outcomes, sending never ahead of the committed mark, commits off the sending path."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gbatch_flows.emulator import EmulatorConfig, FaultConfig, run_emulator
from gbatch_flows.emulator.config import FaultRates
from gbatch_flows.engine import direct
from gbatch_flows.engine.direct_http import CallOutcome, HttpCaller, endpoint_path
from gbatch_flows.engine.output import records
from gbatch_flows.engine.runner import Runner, run_engine
from gbatch_flows.engine.shared_rate import SharedRateError

from .conftest import DUMMY_KEY, EchoTask, engine_for, make_options


def out_records(engine) -> list[dict]:
    return list(records(engine.store, engine.refresh()))


BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":5}'


def test_endpoint_paths():
    assert endpoint_path("/v1/chat/completions") == "chat/completions"
    assert endpoint_path("/v1/embeddings") == "embeddings"
    assert endpoint_path("/v1/completions") == "completions"
    assert endpoint_path("/chat/completions") == "chat/completions"  # Azure's spelling
    with pytest.raises(ValueError, match="does not support"):
        endpoint_path("/v1/images/generations")


@pytest.mark.parametrize(("rates", "status", "outcome"), [
    (FaultRates(), 200, CallOutcome.DONE),
    (FaultRates(http_429=1.0), 429, CallOutcome.NOT_DONE),
    (FaultRates(http_500=1.0), 500, CallOutcome.UNKNOWN),
    (FaultRates(http_503=1.0), 503, CallOutcome.NOT_DONE),
    (FaultRates(drop_connection=1.0), None, CallOutcome.UNKNOWN),
])
def test_call_outcomes(rates, status, outcome):
    with run_emulator(EmulatorConfig(batch_api=False, faults=FaultConfig(rates=rates))) as emu:
        caller = HttpCaller(emu.base_url, {"Authorization": f"Bearer {DUMMY_KEY}",
                                           "Content-Type": "application/json"}, 10.0, 2)

        async def go():
            try:
                return await caller.post("chat/completions", BODY)
            finally:
                await caller.close()

        answer = asyncio.run(go())
    assert answer.status == status and answer.outcome is outcome
    if status == 200:
        assert b'"choices"' in answer.body and answer.headers.get("x-ratelimit-limit-requests") is None


def test_connection_refused_is_not_done():
    caller = HttpCaller("http://127.0.0.1:9/v1", {}, 5.0, 1)  # nothing listens on port 9

    async def go():
        try:
            return await caller.post("chat/completions", BODY)
        finally:
            await caller.close()

    answer = asyncio.run(go())
    assert answer.status is None and answer.outcome is CallOutcome.NOT_DONE


def test_unknown_outcomes_are_charged_at_worst_case_and_requeued_not_resent(tmp_path):
    faults = FaultConfig(seed=3, rates=FaultRates(http_500=0.2, drop_connection=0.1, ops=["chat.completions"]))
    with run_emulator(EmulatorConfig(batch_api=False, faults=faults)) as emu:
        options = make_options(tmp_path, force_direct=True, max_batch_requests=30, max_direct_concurrency=4,
                               min_pass_ratio=0.3)  # a third of the calls fail on purpose here
        with engine_for(EchoTask(n=30), options, emu) as engine:
            runner = Runner(engine)
            summary = runner.run()
            stats = runner.direct_stats
            lost = sum(b.lost_spend.requests for b in engine.state.batches.values())
            keys = {r["key"] for r in out_records(engine) if "answer" in r}
    assert summary.status == "finished" and len(keys) == 30  # unknown ones went back to the queue, sent again
    assert stats.unknown > 0 and lost == stats.unknown  # each charged once at its worst case


def test_never_sends_past_the_committed_mark_and_commits_do_not_stall_sending(tmp_path, monkeypatch):
    """Every call starts only when the manifest already says it may have been sent (a crash charges it), and
    calls go on while a (slowed-down) commit is being written."""
    with run_emulator(EmulatorConfig(batch_api=False)) as emu:
        options = make_options(tmp_path, force_direct=True, max_batch_requests=200, max_direct_concurrency=4)
        with engine_for(EchoTask(n=200), options, emu) as engine:
            started = 0
            violations: list[str] = []
            in_commit = threading.Event()
            during_commit = 0
            real_call = direct._call
            real_commit = engine.commit

            async def watched_call(*args, **kwargs):
                nonlocal started, during_commit
                started += 1
                marked = sum(b.direct_sent for b in engine.state.batches.values() if b.mode == "direct")
                if started > marked:
                    violations.append(f"call {started} started with only {marked} marked as sent")
                if in_commit.is_set():
                    during_commit += 1
                return await real_call(*args, **kwargs)

            def slow_commit(changes, message):
                in_commit.set()
                try:
                    time.sleep(0.03)
                    return real_commit(changes, message)
                finally:
                    in_commit.clear()

            monkeypatch.setattr(direct, "_call", watched_call)
            monkeypatch.setattr(engine, "commit", slow_commit)
            summary = run_engine(engine)
            batches = [b for b in engine.state.batches.values() if b.mode == "direct"]
    assert summary.status == "finished" and started == 200
    assert not violations, violations[:3]
    assert during_commit > 20, f"only {during_commit} of 200 calls went out while a commit was being written"
    assert all(b.state == "processed" and b.direct_done == b.requests for b in batches)


class CountingShare:
    """A stand-in for a limit shared with other runs (``Engine.shared_rate``): counts what each attempt takes;
    after ``fail_after`` takes it fails, as a shared limit that can no longer be reached."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.taken: list[tuple[str, int, int]] = []
        self.closed = 0
        self.fail_after = fail_after

    async def take(self, model: str, requests: int, tokens: int) -> None:
        if self.fail_after is not None and len(self.taken) >= self.fail_after:
            raise SharedRateError("the Prefect API did not answer for 30s")
        self.taken.append((model, requests, tokens))
        await asyncio.sleep(0)

    async def aclose(self) -> None:
        self.closed += 1


def test_every_direct_attempt_takes_from_the_shared_limit_and_a_failing_one_stops_the_run(tmp_path):
    with run_emulator(EmulatorConfig(batch_api=False)) as emu:
        options = make_options(tmp_path / "ok", force_direct=True, max_batch_requests=20, max_direct_concurrency=4)
        with engine_for(EchoTask(n=40), options, emu) as engine:
            engine.shared_rate = share = CountingShare()
            runner = Runner(engine)
            summary = runner.run()
            sides = engine.state.batches.values()
        assert summary.status == "finished"
        # one take per attempt (an attempt retried on a loaded machine takes again)
        assert len(share.taken) == runner.direct_stats.requests >= 40 and share.closed >= 1
        assert {m for m, _, _ in share.taken} == {b.model for b in sides} and all(r == 1 for _, r, _ in share.taken)
        if runner.direct_stats.requests == 40:
            assert sum(t for _, _, t in share.taken) == sum(b.tokens + b.max_out for b in sides)

        options = make_options(tmp_path / "stop", force_direct=True, max_batch_requests=20, max_direct_concurrency=4)
        with engine_for(EchoTask(n=40), options, emu) as engine:
            engine.shared_rate = CountingShare(fail_after=10)
            summary = run_engine(engine)
            state = engine.refresh()
            failed = sum(b.outcomes.failed for b in state.batches.values())
            done = sum(b.direct_done for b in state.batches.values() if b.mode == "direct")
    assert summary.status == "error" and "limit shared with other runs cannot be taken" in summary.reason
    assert "did not answer for 30s" in summary.reason
    assert failed == 0 and 1 <= done <= 10  # the answered calls are committed, nothing is marked failed


def test_the_next_batch_is_opened_while_the_current_one_is_sent_and_marks_stay_a_chunk_ahead(tmp_path, monkeypatch):
    """Workers go on from one direct batch to the next without waiting for its assembly (slowed down here): every
    batch but the first is opened while the one before it is still being sent. And opening ahead does not mark the
    next batch's requests as sent early: all batches' "sent" marks together stay within a chunk (plus the calls
    taken but not yet started) of the calls that started, so a crash charges no more than before."""
    concurrency = 2
    chunk = concurrency * direct.CHUNK_PER_SLOT
    with run_emulator(EmulatorConfig(batch_api=False)) as emu:
        options = make_options(tmp_path, force_direct=True, max_batch_requests=10, max_unpushed_batches=1,
                               max_direct_concurrency=concurrency, max_direct_rpm=900)
        with engine_for(EchoTask(n=50), options, emu) as engine:
            opened_ahead: list[bool] = []
            started = 0
            worst_lead = 0
            real_open, real_assemble, real_call = direct.Pipeline._open_next, direct.assemble, direct._call

            def watched_open(self, ahead=False):
                run = real_open(self, ahead)
                if run is not None:
                    opened_ahead.append(ahead)
                return run

            def slow_assemble(*args, **kwargs):
                time.sleep(0.2)
                return real_assemble(*args, **kwargs)

            async def watched_call(*args, **kwargs):
                nonlocal started, worst_lead
                started += 1
                marked = sum(b.direct_sent for b in engine.state.batches.values() if b.mode == "direct")
                worst_lead = max(worst_lead, marked - started)
                return await real_call(*args, **kwargs)

            monkeypatch.setattr(direct.Pipeline, "_open_next", watched_open)
            monkeypatch.setattr(direct, "assemble", slow_assemble)
            monkeypatch.setattr(direct, "_call", watched_call)
            summary = run_engine(engine)
            keys = {r["key"] for r in out_records(engine) if "answer" in r}
    assert summary.status == "finished" and len(keys) == 50 and started == 50
    assert len(opened_ahead) == 5 and opened_ahead[0] is False and all(opened_ahead[1:]), opened_ahead
    assert 0 <= worst_lead <= chunk + concurrency, f"marks {worst_lead} ahead of the started calls (chunk {chunk})"


def test_the_collector_freeze_during_the_calls_keeps_an_earlier_freeze():
    import gc

    gc.unfreeze()
    with direct.old_objects_frozen():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0  # nothing was frozen before: all goes back
    gc.freeze()  # as a script's start-up does with its imports
    try:
        before = gc.get_freeze_count()
        with direct.old_objects_frozen():
            pass
        assert gc.get_freeze_count() >= before  # not undone
    finally:
        gc.unfreeze()
