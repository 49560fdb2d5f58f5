"""The shared quota ledger: one API limit and one budget for every task that names it (``--quota_dir URL``).

The ledger is a store of its own (``open_store(url)``), committed exactly like a task manifest: each change creates
the next manifest generation create-if-absent, so concurrent writers on several machines never lose an update (the
loser of a race reloads and tries again). Its sections:

``limits/<model>``                 what ``python -m gbatch_flows.quota set`` configured for a model
``holds/<task_id>/<local_id>``     tokens in flight and worst-case cost of one batch of one task (``Hold``)
``spend/<model>/<YYYY-MM-DD>``     settled cost and tokens of that UTC day
``waiting/<model>/<task_id>``      a task waiting for room (first come, first served)
``direct/<model>/<task_id>``       a task sending direct requests now (its heartbeat): the direct RPM/TPM limits
                                   are split evenly between the tasks seen in the last ``DIRECT_TTL_S`` seconds

Order of a push, so that a crash anywhere loses no reservation and leaks none for long:
(1) ``reserve`` here, (2) the task commits its push intent, (3) the batch is created remotely, (4) when the task
processes the batch, ``settle`` releases the tokens and books the actual cost. A run that restarts calls
``sync_task`` with its own manifest, which releases holds of batches that were never pushed and settles those
already processed; holds of a task nobody runs any more are reclaimed by ``reclaim`` against the remote batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gbatch_flows.models import FINAL_BATCH_STATUSES
from gbatch_flows.store import ConcurrentModification, Manifest, Store, open_store

log = logging.getLogger("gbatch_flows.quota")

#: A waiter not seen again for this long has given up (its run ended or died) and no longer blocks others.
WAITER_TTL_S = 60.0
#: A direct-mode task not seen for this long no longer takes a share of the direct RPM/TPM limits.
DIRECT_TTL_S = 30.0
#: Commit attempts before a busy ledger is reported as an error.
COMMIT_ATTEMPTS = 50
#: Most remote look-ups one ``free_ended`` call makes (a waiting task calls it at most once per look).
FREE_ENDED_CHECKS = 8
#: Batch states (of the task's own manifest) in which a batch still holds its reservation.
HOLDING_STATES = frozenset({"pushing", "pushed", "done"})


class QuotaError(RuntimeError):
    """A quota problem the user must fix (a batch that can never fit, a ledger that cannot be read)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ModelLimits(_Model):
    """Limits of one model for every task sharing the ledger; None = no limit."""

    model: str
    max_remote_ktokens: float | None = Field(None, gt=0)
    max_daily_cost: float | None = Field(None, ge=0)
    max_monthly_cost: float | None = Field(None, ge=0)
    max_direct_rpm: float | None = Field(None, gt=0)
    max_direct_tpm: float | None = Field(None, gt=0)


class Hold(_Model):
    """One batch's reservation: its estimated tokens in the remote queue and its worst-case cost."""

    task_id: str
    task: str  # where the task lives (its URL), for people reading `quota show`
    local_id: int
    model: str
    tokens: int = Field(ge=0)
    cost: float = Field(ge=0)
    holder: str  # the run that reserved it
    reserved_at: float
    state: Literal["reserved", "pushed"] = "reserved"
    remote_id: str | None = None


class Waiter(_Model):
    task_id: str
    task: str
    model: str
    tokens: int
    cost: float
    since: float
    seen_at: float


class DaySpend(_Model):
    cost: float = 0.0
    tokens: int = 0


@dataclass(frozen=True)
class Decision:
    """The answer to ``reserve``: granted, or why not (one line)."""

    granted: bool
    reason: str = ""


def _day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")


def hold_key(task_id: str, local_id: int) -> str:
    return f"holds/{task_id}/{local_id:06d}"


class QuotaLedger:
    """Reservations of many tasks against one set of per-model limits, on fsspec storage (local folder or S3)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None,
                 clock: Callable[[], float] = time.time):
        self.url = url
        self.store: Store = open_store(url, storage_options=storage_options)
        self.clock = clock

    # ------------------------------------------------------------------ reading

    def load(self) -> Manifest:
        return self.store.load()

    def limits(self, model: str, manifest: Manifest | None = None) -> ModelLimits | None:
        raw = (manifest or self.load()).get(f"limits/{model}")
        return None if raw is None else ModelLimits.model_validate(raw)

    @staticmethod
    def holds(manifest: Manifest, model: str | None = None, task_id: str | None = None) -> dict[str, Hold]:
        prefix = f"holds/{task_id}/" if task_id else "holds/"
        out = {key: Hold.model_validate(manifest.get(key)) for key in manifest.keys(prefix)}
        return {k: h for k, h in out.items() if model is None or h.model == model}

    @staticmethod
    def day_spend(manifest: Manifest, model: str, day: str) -> DaySpend:
        raw = manifest.get(f"spend/{model}/{day}")
        return DaySpend() if raw is None else DaySpend.model_validate(raw)

    def month_cost(self, manifest: Manifest, model: str, day: str) -> float:
        month = day[:7]
        return sum(DaySpend.model_validate(manifest.get(k)).cost for k in manifest.keys(f"spend/{model}/{month}"))

    def waiters(self, manifest: Manifest, model: str) -> list[Waiter]:
        now = self.clock()
        found = [Waiter.model_validate(manifest.get(k)) for k in manifest.keys(f"waiting/{model}/")]
        return sorted((w for w in found if now - w.seen_at <= WAITER_TTL_S), key=lambda w: (w.since, w.task_id))

    # ------------------------------------------------------------------ committing

    def _update(self, change: Callable[[Manifest], tuple[dict[str, Any], Any]], message: str) -> Any:
        """Apply ``change`` (manifest -> (section changes, result)) atomically, retrying lost races."""
        for _ in range(COMMIT_ATTEMPTS):
            base = self.store.load()
            changes, result = change(base)
            if not changes:
                return result
            try:
                self.store.commit(base, changes, message)
                return result
            except ConcurrentModification:
                time.sleep(0.01)
                continue
        raise QuotaError(f"the quota ledger {self.url} is too busy: {COMMIT_ATTEMPTS} commits in a row lost a race")

    def set_limits(self, limits: ModelLimits) -> None:
        self._update(lambda m: ({f"limits/{limits.model}": limits.model_dump(mode="json")}, None),
                     f"set limits of {limits.model}")

    # ------------------------------------------------------------------ reservations

    def check(self, manifest: Manifest, hold: Hold) -> Decision:
        """Whether ``hold`` fits now, ignoring fairness."""
        limits = self.limits(hold.model, manifest)
        if limits is None:
            return Decision(True)
        held = self.holds(manifest, hold.model)
        held.pop(hold_key(hold.task_id, hold.local_id), None)
        if limits.max_remote_ktokens is not None:
            cap = limits.max_remote_ktokens * 1000
            if hold.tokens > cap:
                raise QuotaError(
                    f"batch {hold.local_id} ({hold.tokens} tokens) is larger than the shared max_remote_ktokens of "
                    f"{hold.model} ({limits.max_remote_ktokens:g}k) in {self.url}: lower --max_batch_ktokens or "
                    f"raise the quota with `python -m gbatch_flows.quota set`")
            in_flight = sum(h.tokens for h in held.values())
            if in_flight + hold.tokens > cap:
                return Decision(False, f"shared max_remote_ktokens of {hold.model} ({in_flight} of {cap:.0f} "
                                       f"tokens in flight)")
        held_cost = sum(h.cost for h in held.values())
        day = _day(self.clock())
        if limits.max_daily_cost is not None:
            spent = self.day_spend(manifest, hold.model, day).cost + held_cost
            if spent + hold.cost > limits.max_daily_cost:
                return Decision(False, f"shared max_daily_cost of {hold.model} (${spent:.4f} of "
                                       f"${limits.max_daily_cost:g} spent or held today)")
        if limits.max_monthly_cost is not None:
            spent = self.month_cost(manifest, hold.model, day) + held_cost
            if spent + hold.cost > limits.max_monthly_cost:
                return Decision(False, f"shared max_monthly_cost of {hold.model} (${spent:.4f} of "
                                       f"${limits.max_monthly_cost:g} spent or held this month)")
        return Decision(True)

    def reserve(self, hold: Hold) -> Decision:
        """Reserve ``hold`` if it fits and no task that asked earlier is still waiting for the same model.

        A refused task is queued (``waiting/``): while it keeps asking, later tasks wait behind it, so no task
        starves while others keep the quota busy. A later task may still take room that leaves enough for every
        task ahead of it (backfilling). A waiter that stops asking for WAITER_TTL_S no longer blocks anyone.
        """
        key = hold_key(hold.task_id, hold.local_id)
        wait_key = f"waiting/{hold.model}/{hold.task_id}"

        def change(manifest: Manifest) -> tuple[dict[str, Any], Decision]:
            if manifest.get(key) is not None:
                return {}, Decision(True)  # already ours (a retried call)
            now = self.clock()
            decision = self.decide(manifest, hold)
            mine = manifest.get(wait_key)
            if decision.granted:
                changes: dict[str, Any] = {key: hold.model_dump(mode="json")}
                if mine is not None:
                    changes[wait_key] = None
                return changes, decision
            if mine is not None and now - Waiter.model_validate(mine).seen_at < WAITER_TTL_S / 4:
                return {}, decision  # still fresh in the queue: no commit needed
            since = Waiter.model_validate(mine).since if mine is not None else now
            waiter = Waiter(task_id=hold.task_id, task=hold.task, model=hold.model, tokens=hold.tokens,
                            cost=hold.cost, since=since, seen_at=now)
            return {wait_key: waiter.model_dump(mode="json")}, decision

        return self._update(change, f"reserve {key}")

    def decide(self, manifest: Manifest, hold: Hold) -> Decision:
        """What ``reserve`` would answer on ``manifest``: whether ``hold`` fits, and leaves room for every task
        that asked earlier and still waits (first come, first served, with backfilling)."""
        now = self.clock()
        mine = manifest.get(f"waiting/{hold.model}/{hold.task_id}")
        since = Waiter.model_validate(mine).since if mine is not None else now
        ahead = [w for w in self.waiters(manifest, hold.model)
                 if w.task_id != hold.task_id and (w.since, w.task_id) < (since, hold.task_id)]
        decision = self.check(manifest, hold)
        if decision.granted and ahead and not self._leaves_room(manifest, hold, ahead):
            first = ahead[0]
            return Decision(False, f"first come, first served: task {first.task} waits for {hold.model} since "
                                   f"{now - first.since:.0f} s")
        return decision

    def would_grant(self, hold: Hold) -> bool:
        """Whether ``reserve(hold)`` would be granted now (one read, nothing committed): a task waiting for room
        looks with this and reserves only once there is room."""
        try:
            return self.decide(self.load(), hold).granted
        except QuotaError:  # a batch that can never fit: ``reserve`` says so
            return True

    def _leaves_room(self, manifest: Manifest, hold: Hold, ahead: list[Waiter]) -> bool:
        """Whether ``hold`` fits together with what every task ahead of it waits for (backfilling): granting it
        then delays none of them."""
        probe = hold.model_copy(update={"tokens": hold.tokens + sum(w.tokens for w in ahead),
                                        "cost": hold.cost + sum(w.cost for w in ahead)})
        try:
            return self.check(manifest, probe).granted
        except QuotaError:  # together they exceed the whole limit
            return False

    def withdraw(self, task_id: str, model: str) -> None:
        """The task stopped asking (nothing left to push): it no longer holds a place in the queue."""
        wait_key = f"waiting/{model}/{task_id}"
        self._update(lambda m: ({wait_key: None} if m.get(wait_key) is not None else {}, None),
                     f"withdraw {wait_key}")

    def mark_pushed(self, task_id: str, local_id: int, remote_id: str) -> None:
        key = hold_key(task_id, local_id)

        def change(manifest: Manifest) -> tuple[dict[str, Any], None]:
            raw = manifest.get(key)
            if raw is None:
                return {}, None
            hold = Hold.model_validate(raw).model_copy(update={"state": "pushed", "remote_id": remote_id})
            return {key: hold.model_dump(mode="json")}, None

        self._update(change, f"pushed {key} as {remote_id}")

    def _settle_changes(self, manifest: Manifest, key: str, cost: float | None, tokens: int,
                        changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """Changes (added to ``changes``, which may already hold other settlements of this commit) that drop the
        hold ``key`` and, when ``cost`` is given, book ``cost`` and ``tokens`` on today's spend."""
        changes = {} if changes is None else changes
        raw = manifest.get(key)
        if raw is None:
            return changes
        hold = Hold.model_validate(raw)
        changes[key] = None
        if cost is not None:
            day = _day(self.clock())
            spend_key = f"spend/{hold.model}/{day}"
            pending = changes.get(spend_key)
            before = DaySpend.model_validate(pending) if pending else self.day_spend(manifest, hold.model, day)
            changes[spend_key] = DaySpend(cost=before.cost + cost, tokens=before.tokens + tokens).model_dump()
        return changes

    def settle(self, task_id: str, local_id: int, cost: float, tokens: int = 0) -> None:
        """The batch ended and its actual cost is known: free its tokens, book its cost for today."""
        key = hold_key(task_id, local_id)
        self._update(lambda m: (self._settle_changes(m, key, cost, tokens), None), f"settle {key}")

    def release(self, task_id: str, local_id: int) -> None:
        """The batch was never created remotely: give back its reservation (nothing was spent)."""
        key = hold_key(task_id, local_id)
        self._update(lambda m: (self._settle_changes(m, key, None, 0), None), f"release {key}")

    # ------------------------------------------------------------------ direct mode

    def direct_share(self, task_id: str, model: str, active: bool = True) -> tuple[float | None, float | None]:
        """Heartbeat of a task sending direct requests to ``model``; returns its share (rpm, tpm) of the shared
        direct limits: the limits divided by the number of tasks active now (None = no shared limit).
        ``active=False`` says the task stopped sending (its share goes back to the others at once)."""
        key = f"direct/{model}/{task_id}"

        def change(manifest: Manifest) -> tuple[dict[str, Any], tuple[float | None, float | None]]:
            now = self.clock()
            limits = self.limits(model, manifest)
            others = [k for k in manifest.keys(f"direct/{model}/")
                      if k != key and now - float(manifest.get(k)["seen_at"]) <= DIRECT_TTL_S]
            n = len(others) + 1
            share = (None if limits is None or limits.max_direct_rpm is None else limits.max_direct_rpm / n,
                     None if limits is None or limits.max_direct_tpm is None else limits.max_direct_tpm / n)
            if not active:
                return ({key: None} if manifest.get(key) is not None else {}), share
            return {key: {"task_id": task_id, "seen_at": now}}, share

        return self._update(change, f"direct heartbeat {key}")

    def direct_joined(self, task_id: str, model: str, since: float) -> bool:
        """Whether every other task sending to ``model`` has renewed its share since ``since`` (when this task
        announced itself): they all count this task now and have lowered their share."""
        manifest = self.load()
        now = self.clock()
        for key in manifest.keys(f"direct/{model}/"):
            seen = float(manifest.get(key)["seen_at"])
            if key != f"direct/{model}/{task_id}" and now - seen <= DIRECT_TTL_S and seen < since:
                return False
        return True

    # ------------------------------------------------------------------ recovery

    def sync_task(self, task_id: str, batches: Mapping[int, tuple[str, float, int]]) -> dict[str, int]:
        """Bring this task's holds in line with its own manifest (``batches``: local id -> (state, actual cost,
        actual tokens)): holds of batches that no longer hold (never pushed, or ended while the run died before
        settling) are released or settled. Returns how many of each."""
        done = {"released": 0, "settled": 0}

        def change(manifest: Manifest) -> tuple[dict[str, Any], None]:
            changes: dict[str, Any] = {}
            done.update(released=0, settled=0)
            for key, hold in self.holds(manifest, task_id=task_id).items():
                state, cost, tokens = batches.get(hold.local_id, ("missing", 0.0, 0))
                if state == "done" and hold.tokens:  # over on the remote: its tokens leave the queue now,
                    changes[key] = hold.model_copy(update={"tokens": 0}).model_dump(mode="json")  # its cost later
                    continue
                if state in HOLDING_STATES:
                    continue
                if state in ("missing", "assembled"):
                    self._settle_changes(manifest, key, None, 0, changes)
                    done["released"] += 1
                else:  # processed, failed, expired...: settle with what it really cost
                    self._settle_changes(manifest, key, cost, tokens, changes)
                    done["settled"] += 1
            return changes, None

        self._update(change, f"sync holds of task {task_id}")
        return done

    def free_ended(self, model: str, remote_status: Callable[[Hold], str | None], exclude_task: str,
                   needed: int, limit: int = FREE_ENDED_CHECKS) -> list[str]:
        """Take out of the queue the tokens of other tasks' batches that have ended on the remote although their
        task has not polled them yet: a waiting task asks for them instead of waiting for every holder's next poll.

        Checks at most ``limit`` pushed holds of ``model`` (oldest first, each one look-up by ``remote_status``),
        and stops once ``needed`` tokens are free. Only the tokens leave: the hold stays, with its worst-case
        cost, until its own task settles it (``sync_task``, which finds the tokens already at 0); a batch the
        look-up cannot see (another project, an error) keeps its tokens. Returns the keys freed."""
        manifest = self.load()
        limits = self.limits(model, manifest)
        if limits is None or limits.max_remote_ktokens is None:
            return []
        held = self.holds(manifest, model)
        room = limits.max_remote_ktokens * 1000 - sum(h.tokens for h in held.values())
        candidates = sorted(((k, h) for k, h in held.items() if h.state == "pushed" and h.tokens > 0
                             and h.remote_id and h.task_id != exclude_task), key=lambda kh: kh[1].reserved_at)
        ended: list[str] = []
        for key, hold in candidates[:limit]:
            if room >= needed:
                break
            if remote_status(hold) in FINAL_BATCH_STATUSES:
                ended.append(key)
                room += hold.tokens
        if not ended:
            return []

        def change(m: Manifest) -> tuple[dict[str, Any], list[str]]:
            changes: dict[str, Any] = {}
            for key in ended:
                raw = m.get(key)
                if raw is not None and (hold := Hold.model_validate(raw)).tokens:
                    changes[key] = hold.model_copy(update={"tokens": 0}).model_dump(mode="json")
            return changes, list(changes)

        freed = self._update(change, f"free the tokens of {len(ended)} ended batch(es)")
        for key in freed:
            log.info("quota: %s ended on the remote before its task saw it: its tokens are free", key)
        return freed

    def reclaim(self, remote_status: Callable[[Hold], str | None], older_than_s: float = 900.0,
                exclude_task: str | None = None) -> list[str]:
        """Free holds whose batch is over on the remote although no run settled them (their task is gone).

        ``remote_status(hold)`` says what the remote knows of the hold's batch (looked up by remote id, or by the
        metadata gbatch_task/gbatch_local_id): a terminal status ('completed', 'failed', 'expired', 'cancelled'),
        an active one, or None when no remote batch exists. Holds younger than ``older_than_s`` are left alone
        (their run may still be creating the batch). A reclaimed hold's worst-case cost is booked as spent: the
        ledger never under-counts what a vanished task may have spent."""
        now = self.clock()
        manifest = self.load()
        stale: dict[str, Hold] = {}
        for key, hold in self.holds(manifest).items():
            if hold.task_id == exclude_task or now - hold.reserved_at < older_than_s:
                continue
            status = remote_status(hold)
            if status is None or status in FINAL_BATCH_STATUSES:
                stale[key] = hold

        def change(m: Manifest) -> tuple[dict[str, Any], list[str]]:
            changes: dict[str, Any] = {}
            for key, hold in stale.items():
                if m.get(key) is not None:
                    self._settle_changes(m, key, hold.cost if hold.state == "pushed" else None,
                                         hold.tokens if hold.state == "pushed" else 0, changes)
            return changes, [k for k in stale if m.get(k) is not None]

        reclaimed = self._update(change, f"reclaim {len(stale)} holds")
        for key in reclaimed:
            log.warning("quota: reclaimed %s (its task left it behind)", key)
        return reclaimed

    # ------------------------------------------------------------------ reporting

    def report(self) -> dict[str, Any]:
        """What each model allows, what each task holds now, and today's / this month's spend."""
        manifest = self.load()
        day = _day(self.clock())
        models = sorted({k.split("/", 1)[1] for k in manifest.keys("limits/")}
                        | {h.model for h in self.holds(manifest).values()})
        out: dict[str, Any] = {"url": self.url, "day": day, "models": {}}
        for model in models:
            limits = self.limits(model, manifest)
            holds = self.holds(manifest, model)
            by_task: dict[str, dict[str, Any]] = {}
            for hold in holds.values():
                entry = by_task.setdefault(hold.task, {"batches": 0, "tokens": 0, "cost": 0.0})
                entry["batches"] += 1
                entry["tokens"] += hold.tokens
                entry["cost"] += hold.cost
            out["models"][model] = {
                "limits": limits.model_dump(exclude={"model"}) if limits else None,
                "tokens_in_flight": sum(h.tokens for h in holds.values()),
                "held_cost": sum(h.cost for h in holds.values()),
                "today": self.day_spend(manifest, model, day).model_dump(),
                "month_cost": self.month_cost(manifest, model, day),
                "tasks": by_task,
                "waiting": [w.task for w in self.waiters(manifest, model)],
            }
        return out


def format_report(report: Mapping[str, Any]) -> str:
    lines = [f"quota ledger {report['url']} ({report['day']} UTC)"]
    if not report["models"]:
        lines.append("  no model configured yet: python -m gbatch_flows.quota set URL --model M --max_remote_ktokens K")
    for model, info in report["models"].items():
        limits = info["limits"] or {}
        cap = limits.get("max_remote_ktokens")
        lines.append(f"  {model}: {info['tokens_in_flight']} tokens in flight"
                     + (f" of {cap * 1000:.0f}" if cap else " (no token limit)")
                     + f"; spent today ${info['today']['cost']:.4f}"
                     + (f" of ${limits['max_daily_cost']:g}" if limits.get("max_daily_cost") is not None else "")
                     + f"; this month ${info['month_cost']:.4f}"
                     + (f" of ${limits['max_monthly_cost']:g}" if limits.get("max_monthly_cost") is not None else "")
                     + f"; held (worst case) ${info['held_cost']:.4f}")
        for task, entry in sorted(info["tasks"].items()):
            lines.append(f"    {task}: {entry['batches']} batch(es), {entry['tokens']} tokens, "
                         f"${entry['cost']:.4f} worst case")
        if info["waiting"]:
            lines.append(f"    waiting (first come, first served): {', '.join(info['waiting'])}")
    return "\n".join(lines)

