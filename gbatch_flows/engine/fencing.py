"""Exactly once at the edges: the timing of remote creates, the lease fence around them, and the creates whose
outcome is unknown.

- Before each remote create (upload, batch create) the run confirms in lease.json that it still holds the lease
  with at least the create's timeout (plus a margin) left; after the create it checks again, and cancels what it
  created if the lease was lost meanwhile.
- A create that failed without a clear answer (timeout, dropped connection, 5xx) may have taken effect: the object
  is looked up (batches by metadata, uploads by name) and only created again once its create window (the create
  timeout) has closed and the look-up still finds nothing. The same holds for batches a previous holder left
  ``pushing``: not re-created before its lease expiry plus its create timeout.
- A batch that answers 404 is confirmed gone by listing by metadata, twice, spaced by ``gone_confirm_s``.

Timings come from the environment so that tests can shorten them (``GBATCH_LEASE_TTL_S``,
``GBATCH_CREATE_TIMEOUT_S``, ``GBATCH_GONE_CONFIRM_S``); the defaults suit the real API.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from gbatch_flows.store import Lease, StoreError

log = logging.getLogger("gbatch_flows.engine.fencing")

LEASE_TTL_ENV = "GBATCH_LEASE_TTL_S"
CREATE_TIMEOUT_ENV = "GBATCH_CREATE_TIMEOUT_S"
GONE_CONFIRM_ENV = "GBATCH_GONE_CONFIRM_S"
DEFAULT_LEASE_TTL_S = 60.0
DEFAULT_CREATE_TIMEOUT_S = 30.0
DEFAULT_GONE_CONFIRM_S = 60.0


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{name}={raw!r} must be > 0 seconds")
    return value


@dataclass(frozen=True)
class Timing:
    """How long a lease lasts, how long a remote create may take, how far apart a 404 is confirmed."""

    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    create_timeout_s: float = DEFAULT_CREATE_TIMEOUT_S
    gone_confirm_s: float = DEFAULT_GONE_CONFIRM_S

    def __post_init__(self) -> None:
        if self.create_timeout_s + self.margin_s > self.lease_ttl_s * 2 / 3:
            raise ValueError(
                f"the create timeout ({self.create_timeout_s:g} s) must leave a margin inside two thirds of the "
                f"lease ttl ({self.lease_ttl_s:g} s): the lease is renewed every third of its ttl"
            )

    @property
    def margin_s(self) -> float:
        """Slack for clocks and storage latency around a create window."""
        return max(0.5, 0.1 * self.create_timeout_s)

    @classmethod
    def from_env(cls) -> Timing:
        return cls(_env_seconds(LEASE_TTL_ENV, DEFAULT_LEASE_TTL_S),
                   _env_seconds(CREATE_TIMEOUT_ENV, DEFAULT_CREATE_TIMEOUT_S),
                   _env_seconds(GONE_CONFIRM_ENV, DEFAULT_GONE_CONFIRM_S))


@dataclass
class Fence:
    """This run's view of its lease around remote creates, and the creates whose outcome it does not know."""

    lease: Lease | None
    timing: Timing
    unknown_since: dict[tuple[str, int], float] = field(default_factory=dict)  # (what, local id) -> time
    gone_since: dict[int, float] = field(default_factory=dict)  # local id -> first 404 without a remote twin
    listed_only: set[int] = field(default_factory=set)  # local ids polled through the listing (retrieve 404s)
    uploaded: dict[str, str] = field(default_factory=dict)  # upload name -> file id (reused when a create fails)
    _waiting_logged: set[tuple[str, int]] = field(default_factory=set)

    def before_create(self) -> None:
        """Right before a remote create: the lease must be ours (read from storage) with the create's timeout
        left. Raises LeaseHeld when it is lost."""
        if self.lease is not None:
            self.lease.ensure_time_left(self.timing.create_timeout_s + self.timing.margin_s)

    def before_call(self) -> None:
        """Right before a direct call: the lease as this process last saw it must still run for the create
        timeout (no storage access: a paused run that wakes up stops here); confirmed in storage when not."""
        lease = self.lease
        if lease is None:
            return
        if lease.lost or lease.expires_at - time.time() < self.timing.create_timeout_s + self.timing.margin_s:
            self.before_create()

    def lost(self) -> Exception | None:
        """After a create: None while the lease is still ours; else why not (LeaseHeld, or a StoreError when
        lease.json cannot be read: then we cannot be sure either)."""
        if self.lease is None:
            return None
        try:
            self.lease.check()
        except StoreError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - storage trouble: the lease cannot be confirmed
            return StoreError(f"cannot confirm this run's lease after a remote create: {exc}")
        return None

    def mark_unknown(self, what: str, local_id: int) -> None:
        self.unknown_since.setdefault((what, local_id), time.time())

    def resolved(self, what: str, local_id: int) -> None:
        self.unknown_since.pop((what, local_id), None)
        self._waiting_logged.discard((what, local_id))

    def window_end(self, what: str, local_id: int) -> float:
        """Until when a create of ``local_id`` may still land remotely (ours with an unknown outcome, or the
        previous lease holder's)."""
        ends = [self.lease.predecessor_window_end if self.lease is not None else 0.0]
        since = self.unknown_since.get((what, local_id))
        if since is not None:
            ends.append(since + self.timing.create_timeout_s + self.timing.margin_s)
        return max(ends)

    def may_create_again(self, what: str, local_id: int) -> bool:
        """True once no earlier create of ``local_id`` can still land: creating it now cannot make a twin."""
        end = self.window_end(what, local_id)
        if time.time() >= end:
            return True
        if (what, local_id) not in self._waiting_logged:
            self._waiting_logged.add((what, local_id))
            log.info("%s of batch %d: an earlier create may still land until %.1f s from now; looking it up "
                     "before creating it again", what, local_id, end - time.time())
        return False
