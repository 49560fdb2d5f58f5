"""The shared quota ledger: limits never exceeded by concurrent writers, first come first served, recovery."""

from __future__ import annotations

import multiprocessing
import random
import time
from pathlib import Path

import pytest

from gbatch_flows.quota import Hold, ModelLimits, QuotaError, QuotaLedger
from gbatch_flows.quota.__main__ import main as quota_main

MODEL = "gpt-4o-mini"


def hold(task: str, local_id: int, tokens: int = 1000, cost: float = 0.01, at: float | None = None) -> Hold:
    return Hold(task_id=task, task=f"file:///tasks/{task}", local_id=local_id, model=MODEL, tokens=tokens,
                cost=cost, holder=f"run-{task}", reserved_at=time.time() if at is None else at)


@pytest.fixture
def ledger(tmp_path: Path) -> QuotaLedger:
    led = QuotaLedger(str(tmp_path / "quota"))
    led.set_limits(ModelLimits(model=MODEL, max_remote_ktokens=3, max_daily_cost=0.05))
    return led


def test_tokens_in_flight_never_exceed_the_shared_limit(ledger: QuotaLedger) -> None:
    assert ledger.reserve(hold("a", 1, 2000)).granted
    refused = ledger.reserve(hold("b", 1, 1500))
    assert not refused.granted and "max_remote_ktokens" in refused.reason
    assert ledger.report()["models"][MODEL]["tokens_in_flight"] == 2000
    ledger.settle("a", 1, cost=0.004, tokens=2100)
    assert ledger.reserve(hold("b", 1, 1500)).granted
    report = ledger.report()["models"][MODEL]
    assert report["tokens_in_flight"] == 1500 and report["today"]["cost"] == pytest.approx(0.004)


def test_a_batch_larger_than_the_limit_is_one_clear_error(ledger: QuotaLedger) -> None:
    with pytest.raises(QuotaError, match="lower --max_batch_ktokens"):
        ledger.reserve(hold("a", 1, 5000))


def test_daily_cost_counts_spend_and_worst_case_holds(ledger: QuotaLedger) -> None:
    assert ledger.reserve(hold("a", 1, 100, cost=0.03)).granted
    refused = ledger.reserve(hold("b", 1, 100, cost=0.03))
    assert not refused.granted and "max_daily_cost" in refused.reason
    ledger.settle("a", 1, cost=0.01)  # the batch cost less than its worst case: room again
    assert ledger.reserve(hold("b", 1, 100, cost=0.03)).granted


def test_first_come_first_served(ledger: QuotaLedger) -> None:
    assert ledger.reserve(hold("a", 1, 2500)).granted
    assert not ledger.reserve(hold("big", 1, 2000)).granted  # waits first
    # a later, smaller request would fit, but must not overtake the waiting task
    later = ledger.reserve(hold("small", 1, 400))
    assert not later.granted and "first come, first served" in later.reason
    ledger.settle("a", 1, cost=0.0)
    # room for "big" and more: a later task may backfill what "big" does not need, but no more than that
    assert not ledger.reserve(hold("medium", 1, 1200)).granted  # 1200 + 2000 > 3000: it would delay "big"
    assert ledger.reserve(hold("small", 1, 400)).granted  # 400 + 2000 <= 3000: "big" still fits after it
    assert ledger.reserve(hold("big", 1, 2000)).granted
    assert ledger.report()["models"][MODEL]["waiting"] == ["file:///tasks/medium"]


def test_would_grant_answers_as_reserve_would_and_commits_nothing(ledger: QuotaLedger) -> None:
    assert ledger.reserve(hold("a", 1, 2500)).granted
    assert not ledger.reserve(hold("big", 1, 2000)).granted  # waits first
    generation = ledger.load().generation
    assert not ledger.would_grant(hold("big", 1, 2000))  # no room yet
    assert not ledger.would_grant(hold("small", 1, 400))  # room, but "big" waits ahead of it
    assert ledger.load().generation == generation  # looking commits nothing: no waiter added, none refreshed
    ledger.settle("a", 1, cost=0.0)
    assert ledger.would_grant(hold("big", 1, 2000))
    assert ledger.would_grant(hold("small", 1, 400))  # backfilling: it leaves room for "big"
    assert not ledger.would_grant(hold("later", 1, 1500))  # it would not
    assert ledger.would_grant(hold("huge", 1, 5000))  # can never fit: reserve says so, in one line
    assert ledger.load().generation == generation + 1  # only the settle committed


def test_a_waiter_that_went_away_does_not_block(tmp_path: Path) -> None:
    now = [1_000_000.0]
    led = QuotaLedger(str(tmp_path / "q"), clock=lambda: now[0])
    led.set_limits(ModelLimits(model=MODEL, max_remote_ktokens=3))
    assert led.reserve(hold("a", 1, 2500, at=now[0])).granted
    assert not led.reserve(hold("gone", 1, 2000, at=now[0])).granted
    led.settle("a", 1, cost=0.0)
    now[0] += 600  # the waiting task never asked again
    assert led.reserve(hold("b", 1, 400, at=now[0])).granted


def test_sync_task_releases_unpushed_and_settles_processed(ledger: QuotaLedger) -> None:
    for local_id in (1, 2, 3):
        assert ledger.reserve(hold("t", local_id, 500, cost=0.01)).granted
    batches = {
        1: ("pushed", 0.0, 0),
        2: ("processed", 0.002, 321),
        # 3: reserved, then the run died before committing its push intent: not in the manifest
    }
    assert ledger.sync_task("t", batches) == {"released": 1, "settled": 1}
    report = ledger.report()["models"][MODEL]
    assert report["tokens_in_flight"] == 500
    assert report["today"] == {"cost": pytest.approx(0.002), "tokens": 321}


def test_reclaim_frees_holds_of_vanished_tasks(ledger: QuotaLedger) -> None:
    old = time.time() - 3600
    assert ledger.reserve(hold("gone", 1, 1000, cost=0.01, at=old)).granted
    ledger.mark_pushed("gone", 1, "batch_x")
    assert ledger.reserve(hold("gone", 2, 1000, cost=0.01, at=old)).granted  # never created remotely
    assert ledger.reserve(hold("alive", 1, 500, at=old)).granted
    statuses = {("gone", 1): "completed", ("gone", 2): None, ("alive", 1): "in_progress"}
    reclaimed = ledger.reclaim(lambda h: statuses[(h.task_id, h.local_id)])
    assert sorted(reclaimed) == ["holds/gone/000001", "holds/gone/000002"]
    report = ledger.report()["models"][MODEL]
    assert report["tokens_in_flight"] == 500
    assert report["today"]["cost"] == pytest.approx(0.01)  # the pushed one is booked at its worst case


def test_a_waiting_task_frees_the_tokens_of_batches_that_ended_before_their_task_saw_it(ledger: QuotaLedger) -> None:
    for task, local_id, remote in (("a", 1, "batch_a1"), ("a", 2, "batch_a2"), ("b", 1, "batch_b1")):
        assert ledger.reserve(hold(task, local_id, 700, cost=0.01, at=time.time() - 10 * local_id)).granted
        ledger.mark_pushed(task, local_id, remote)
    assert ledger.reserve(hold("b", 2, 700, cost=0.01, at=time.time() - 60)).granted  # not created yet: not asked
    statuses = {"batch_a1": "in_progress", "batch_a2": "completed", "batch_b1": "completed"}
    asked: list[str] = []

    def status(h: Hold) -> str | None:
        asked.append(h.remote_id)
        return statuses[h.remote_id]

    # "c" needs 900 tokens (2,800 of 3,000 held): the oldest ended batch is enough, the others are not asked
    assert ledger.free_ended(MODEL, status, exclude_task="c", needed=900) == ["holds/a/000002"]
    assert asked == ["batch_a2"]
    report = ledger.report()["models"][MODEL]
    assert report["tokens_in_flight"] == 2100 and report["held_cost"] == pytest.approx(0.04)  # cost still held
    # a task that looks up nothing it can see (errors answer None) frees nothing
    assert ledger.free_ended(MODEL, lambda h: None, exclude_task="c", needed=5000) == []
    # the holder's own sync later finds the tokens at 0 and settles the actual cost when it has processed
    ledger.sync_task("a", {1: ("pushed", 0.0, 0), 2: ("done", 0.0, 0)})
    assert ledger.report()["models"][MODEL]["tokens_in_flight"] == 2100
    ledger.sync_task("a", {1: ("pushed", 0.0, 0), 2: ("processed", 0.004, 800)})
    report = ledger.report()["models"][MODEL]
    assert report["tokens_in_flight"] == 2100 and report["today"]["cost"] == pytest.approx(0.004)
    assert report["held_cost"] == pytest.approx(0.03)


def _worker(url: str, task: str, rounds: int, seed: int, out) -> None:
    rng = random.Random(seed)
    led = QuotaLedger(url)
    granted = 0
    for local_id in range(rounds):
        h = hold(task, local_id, tokens=rng.choice([400, 700, 1000]), cost=0.0)
        if led.reserve(h).granted:
            granted += 1
            report = led.report()["models"][MODEL]
            out.put(report["tokens_in_flight"])
            led.settle(task, local_id, cost=0.0)
    out.put(("granted", task, granted))


def test_concurrent_processes_never_exceed_the_limit(tmp_path: Path) -> None:
    url = str(tmp_path / "quota")
    led = QuotaLedger(url)
    led.set_limits(ModelLimits(model=MODEL, max_remote_ktokens=2))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, f"t{i}", 12, i, out)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    seen, granted = [], {}
    while not out.empty():
        item = out.get()
        if isinstance(item, tuple):
            granted[item[1]] = item[2]
        else:
            seen.append(item)
    assert seen and max(seen) <= 2000
    assert len(granted) == 3 and sum(granted.values()) > 0
    # every hold was settled: nothing leaked
    assert led.report()["models"][MODEL]["tokens_in_flight"] == 0


@pytest.mark.s3
def test_ledger_on_s3(s3_server, s3_bucket) -> None:
    url = s3_server.url(s3_bucket, "quota-ledger")
    led = QuotaLedger(url, storage_options=s3_server.storage_options)
    led.set_limits(ModelLimits(model=MODEL, max_remote_ktokens=1))
    assert led.reserve(hold("a", 1, 800)).granted
    assert not led.reserve(hold("b", 1, 800)).granted
    again = QuotaLedger(url, storage_options=s3_server.storage_options)
    assert again.report()["models"][MODEL]["tokens_in_flight"] == 800


def test_cli_set_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = str(tmp_path / "q")
    assert quota_main(["set", url, "--model", MODEL, "--max_remote_ktokens", "50", "--max_daily_cost", "2"]) == 0
    QuotaLedger(url).reserve(hold("a", 1, 1234, cost=0.5))
    assert quota_main(["show", url]) == 0
    shown = capsys.readouterr().out
    assert "1234 tokens in flight of 50000" in shown and "file:///tasks/a: 1 batch(es)" in shown
    with pytest.raises(SystemExit) as exc:
        quota_main(["set", url, "--model", MODEL, "--max_daily_cost", "-3"])
    assert exc.value.code == 2


def test_direct_limits_are_split_between_active_tasks(tmp_path: Path) -> None:
    now = [1_000_000.0]
    led = QuotaLedger(str(tmp_path / "q"), clock=lambda: now[0])
    led.set_limits(ModelLimits(model=MODEL, max_direct_rpm=3000, max_direct_tpm=90_000))
    assert led.direct_share("a", MODEL) == (3000, 90_000)
    assert led.direct_share("b", MODEL) == (1500, 45_000)
    assert led.direct_share("a", MODEL) == (1500, 45_000)
    led.direct_share("b", MODEL, active=False)
    assert led.direct_share("a", MODEL) == (3000, 90_000)
    led.direct_share("c", MODEL)
    now[0] += 60  # c stopped sending without saying so: its share comes back after DIRECT_TTL_S
    assert led.direct_share("a", MODEL) == (3000, 90_000)
    assert QuotaLedger(str(tmp_path / "other")).direct_share("a", MODEL) == (None, None)


def test_settling_several_holds_in_one_commit_books_each(ledger: QuotaLedger) -> None:
    for local_id in (1, 2, 3):
        assert ledger.reserve(hold("t", local_id, 500, cost=0.01)).granted
    ledger.sync_task("t", {1: ("processed", 0.001, 10), 2: ("processed", 0.002, 20), 3: ("failed", 0.0, 0)})
    assert ledger.report()["models"][MODEL]["today"] == {"cost": pytest.approx(0.003), "tokens": 30}


def test_a_joining_direct_task_waits_until_every_sender_counts_it(tmp_path: Path) -> None:
    """A task that joins may send only once each task already sending has renewed its share after the join (and so
    lowered it): until then their shares and the newcomer's would add up to more than the limit."""
    now = [1_000_000.0]
    led = QuotaLedger(str(tmp_path / "q"), clock=lambda: now[0])
    led.set_limits(ModelLimits(model=MODEL, max_direct_rpm=3000))
    led.direct_share("a", MODEL)
    now[0] += 1
    joined_at = now[0]
    assert led.direct_share("b", MODEL) == (1500, None)
    assert not led.direct_joined("b", MODEL, joined_at)  # "a" still sends at 3000
    now[0] += 1
    assert led.direct_share("a", MODEL) == (1500, None)  # "a" renews: now it counts "b"
    assert led.direct_joined("b", MODEL, joined_at)
    assert led.direct_joined("c", MODEL, now[0] + 100) is False
    now[0] += 60  # "a" went silent: it no longer holds anyone back
    assert led.direct_joined("c", MODEL, now[0])
