"""The task lease: conflicts, expiry take-over, loss detection, renewal, release on exit and on SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gbatch_flows.store import LeaseHeld, StoreError
from gbatch_flows.store.models import LeaseRecord

from .conftest import Target

WORKERS = Path(__file__).with_name("workers.py")


def _record(target: Target) -> LeaseRecord:
    return LeaseRecord.model_validate_json(target.open().backend.read_bytes("lease.json"))


def _wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_second_run_is_refused_with_clear_message(target: Target) -> None:
    first = target.open().acquire_lease(ttl_s=30, renew=False)
    with pytest.raises(LeaseHeld) as info:
        target.open().acquire_lease(ttl_s=30)
    message = str(info.value)
    assert first.owner in message and "lease.json" in message and "expire" in message
    assert info.value.holder == first.owner and info.value.expires_at == pytest.approx(first.expires_at)
    again = target.open().acquire_lease(ttl_s=30, owner=first.owner, renew=False)  # same owner may re-take it
    assert again.owner == first.owner and again.expires_at >= first.expires_at
    again.release()
    first.release()
    with pytest.raises(StoreError, match="released"):
        first.check()


def test_expired_lease_is_taken_over_and_the_old_holder_notices(target: Target) -> None:
    store = target.open()
    old = store.acquire_lease(ttl_s=0.3, renew=False)
    _wait_until(lambda: time.time() > old.expires_at)
    new = target.open().acquire_lease(ttl_s=30, renew=False)
    assert _record(target).owner == new.owner
    with pytest.raises(LeaseHeld, match=new.owner):
        old.check()
    base = store.load()
    with pytest.raises(LeaseHeld):
        store.commit(base, {"x": 1}, lease=old)
    assert store.generations() == []  # the refused commit wrote nothing
    committed = store.commit(base, {"x": 1}, lease=new)
    assert committed.writer == new.owner
    old.release()  # releasing a lost lease must not touch the new holder's record
    assert _record(target).owner == new.owner and not _record(target).released
    new.release()


def test_renewal_and_release(target: Target) -> None:
    with target.open().acquire_lease(ttl_s=0.9) as lease:
        first = _record(target)
        _wait_until(lambda: _record(target).seq > first.seq)  # renewed by the background thread
        renewed = _record(target)
        assert renewed.owner == lease.owner and renewed.expires_at > first.expires_at
        lease.check()
    record = _record(target)
    assert record.released and lease.released
    target.open().acquire_lease(ttl_s=30, renew=False).release()  # free at once, no waiting for expiry


def test_released_on_exception(local_target: Target) -> None:
    with pytest.raises(RuntimeError), local_target.open().acquire_lease(ttl_s=30):
        raise RuntimeError("flow failed")
    assert _record(local_target).released


def test_expired_but_untaken_lease_is_renewed_by_check(local_target: Target) -> None:
    lease = local_target.open().acquire_lease(ttl_s=0.2, renew=False)
    _wait_until(lambda: time.time() > lease.expires_at)
    lease.check()
    assert lease.expires_at > time.time()
    lease.release()


def test_damaged_lease_file(local_target: Target) -> None:
    store = local_target.open()
    store.backend.write_bytes("lease.json", b"{not json")
    with pytest.raises(StoreError, match="delete lease.json"):
        store.acquire_lease()


def _sigint_round_trip(target: Target, style: str) -> None:
    child = subprocess.Popen(
        [sys.executable, str(WORKERS), "lease", target.url, json.dumps(target.storage_options), style],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    owner = json.loads(child.stdout.readline())["owner"]
    with pytest.raises(LeaseHeld, match=owner):
        target.open().acquire_lease(ttl_s=30, renew=False)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert "KeyboardInterrupt" in err
    record = _record(target)
    assert record.owner == owner and record.released
    target.open().acquire_lease(ttl_s=30, renew=False).release()  # the next run starts at once


def test_released_on_sigint(durable_target: Target) -> None:
    """SIGINT unwinds a ``with lease:`` block; without one, the atexit hook releases it."""
    styles = ["with"] if durable_target.kind == "s3" else ["with", "atexit"]
    for style in styles:
        _sigint_round_trip(durable_target, style)
