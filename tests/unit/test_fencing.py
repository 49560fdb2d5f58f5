"""Fencing timings and the create windows of fencing.Fence (issue 14)."""

from __future__ import annotations

import time

import pytest

from gbatch_flows.engine.fencing import CREATE_TIMEOUT_ENV, LEASE_TTL_ENV, Fence, Timing


def test_timing_from_env_and_its_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LEASE_TTL_ENV, raising=False)
    monkeypatch.delenv(CREATE_TIMEOUT_ENV, raising=False)
    assert Timing.from_env() == Timing(60.0, 30.0, 60.0)
    monkeypatch.setenv(LEASE_TTL_ENV, "3")
    monkeypatch.setenv(CREATE_TIMEOUT_ENV, "1")
    assert (Timing.from_env().lease_ttl_s, Timing.from_env().create_timeout_s) == (3.0, 1.0)
    monkeypatch.setenv(CREATE_TIMEOUT_ENV, "2")  # 2 s + margin does not fit in two thirds of a 3 s lease
    with pytest.raises(ValueError, match="two thirds of the lease ttl"):
        Timing.from_env()
    monkeypatch.setenv(CREATE_TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=f"{CREATE_TIMEOUT_ENV}='soon' is not a number"):
        Timing.from_env()


def test_an_unknown_create_is_not_repeated_before_its_window_closes() -> None:
    fence = Fence(None, Timing(lease_ttl_s=3.0, create_timeout_s=0.2))
    assert fence.may_create_again("batch", 1)  # nothing unknown, no predecessor
    fence.mark_unknown("batch", 1)
    assert not fence.may_create_again("batch", 1)
    assert fence.may_create_again("batch", 2)  # per local batch
    time.sleep(0.2 + fence.timing.margin_s + 0.05)
    assert fence.may_create_again("batch", 1)
    fence.mark_unknown("upload", 1)
    fence.resolved("upload", 1)
    assert fence.may_create_again("upload", 1)
    fence.before_create()  # no lease (a test engine): nothing to confirm
    fence.before_call()
    assert fence.lost() is None
