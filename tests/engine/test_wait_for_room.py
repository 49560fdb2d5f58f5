"""The wait stage of a task whose next batch waits for room in the shared quota (``--quota_dir``): it looks at the
ledger every poll_interval_min_s and returns as soon as there is room, without a sleep first, even with nothing of
its own in flight (a late look is the shared limit left idle)."""

from __future__ import annotations

import json
import time

import openai
import pytest

from gbatch_flows.engine import runner
from gbatch_flows.quota import Hold, ModelLimits, QuotaLedger

from .conftest import DUMMY_KEY, EchoTask, engine_for, make_options

MODEL = "gpt-4o-mini"


class FakeTime:
    """A clock that moves only when the code under test sleeps; ``on_sleep(n)`` runs before the n-th sleep."""

    def __init__(self, on_sleep) -> None:
        self.now, self.sleeps, self.on_sleep = 1000.0, [], on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.on_sleep(len(self.sleeps))
        self.sleeps.append(seconds)
        self.now += seconds


def _other_holds(ledger: QuotaLedger, tokens: int, cost: float = 0.0) -> None:
    hold = Hold(task_id="other", task="elsewhere", local_id=1, model=MODEL, tokens=tokens, cost=cost, holder="x",
                reserved_at=time.time())
    assert ledger.reserve(hold).granted


def _one_batch_held_back(engine) -> runner.Stages:
    """Generate, assemble and push the task's one batch, which the ledger holds back."""
    stages = runner.Stages(engine)
    stages.generate()
    stages.assemble("batch")
    stages.push()
    assert [b.state for b in engine.refresh().batches.values()] == ["assembled"]  # held back by the ledger
    return stages


@pytest.mark.parametrize("free_after_sleeps", [0, 3, None])
def test_the_wait_stage_returns_as_soon_as_the_ledger_has_room(tmp_path, emulator, free_after_sleeps) -> None:
    quota = str(tmp_path / "quota")
    ledger = QuotaLedger(quota)
    ledger.set_limits(ModelLimits(model=MODEL, max_remote_ktokens=2.0))
    _other_holds(ledger, 1900)  # room for no batch of ours
    options = make_options(tmp_path, quota_dir=quota, max_batch_requests=10, poll_interval_min_s=0.5,
                           poll_interval_max_s=8.0)
    with engine_for(EchoTask(n=10), options, emulator) as engine:
        _one_batch_held_back(engine)
        if free_after_sleeps == 0:
            ledger.settle("other", 1, cost=0.0)

        def on_sleep(n: int) -> None:
            if free_after_sleeps is not None and n == free_after_sleeps - 1:
                ledger.settle("other", 1, cost=0.0)  # the other task's batch ended during this sleep

        fake = FakeTime(on_sleep)
        result = runner.wait_for_batches(engine, fake.sleep, None, clock=fake.clock)

    assert result.finished == [] and not result.timed_out
    # never slept longer than the look interval, though the poll interval backs off to 8 s
    assert all(s <= 0.5 for s in fake.sleeps), fake.sleeps
    if free_after_sleeps is None:  # never any room: back after QUOTA_LOOK_S, to renew its place in the queue
        assert runner.QUOTA_LOOK_S <= sum(fake.sleeps) <= runner.QUOTA_LOOK_S + 0.5
    else:  # room seen on the look right after it appeared: no sleep after it
        assert len(fake.sleeps) == free_after_sleeps, fake.sleeps


def test_a_waiting_task_takes_room_left_by_a_batch_that_ended_before_its_task_polled_it(tmp_path, emulator) -> None:
    """The other task's batch is over on the remote but still held in the ledger (its task has not polled it yet):
    the waiting task looks it up, frees its tokens (its cost stays held for its task to settle) and goes on."""
    quota = str(tmp_path / "quota")
    ledger = QuotaLedger(quota)
    ledger.set_limits(ModelLimits(model=MODEL, max_remote_ktokens=2.0))
    client = openai.OpenAI(base_url=emulator.base_url, api_key=DUMMY_KEY)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    line = json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": body})
    file = client.files.create(file=("other.jsonl", line.encode() + b"\n"), purpose="batch")
    remote = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 30
    while client.batches.retrieve(remote.id).status != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _other_holds(ledger, 1900, cost=0.5)
    ledger.mark_pushed("other", 1, remote.id)
    options = make_options(tmp_path, quota_dir=quota, max_batch_requests=10, poll_interval_min_s=0.5,
                           poll_interval_max_s=1.0)
    with engine_for(EchoTask(n=10), options, emulator) as engine:
        stages = _one_batch_held_back(engine)  # the ledger still counts the other task's 1,900 tokens
        fake = FakeTime(lambda n: None)
        result = runner.wait_for_batches(engine, fake.sleep, None, clock=fake.clock)
        assert result.finished == [] and fake.sleeps == []  # room on the first look
        report = ledger.report()["models"][MODEL]
        assert report["tokens_in_flight"] == 0 and report["held_cost"] == pytest.approx(0.5)
        stages.push()
        assert [b.state for b in engine.refresh().batches.values()] == ["pushed"]
