"""Request pacing under RPM and TPM limits (from options, tightened by the server's ``x-ratelimit-*`` headers).

Each limit (requests, tokens) is a token bucket (GCRA: a theoretical arrival time ``tat`` that every send moves on by
``cost / rate``) holding ``burst_s`` seconds of allowance. Time lost to a stall (a commit, CPU contention, a slow
answer) is made up right after it, but never more than ``burst_s`` worth at once, and a saturated sender settles into
even spacing at the limit. In any interval of ``T`` seconds at most ``limit * (T + burst_s) / 60`` goes out: exactly
what a server token bucket holding ``burst_s`` seconds of allowance accepts (the real API enforces its per-minute
limits over shorter periods: a minute's allowance in one second is refused).

``window_s`` adds a strict sliding window: never more than ``limit * window_s / 60`` in any ``window_s`` seconds.
Against a server that counts a strict sliding window, nothing lost to a stall can be made up (a burst after it is
paid back by a gap one window later), so this is off by default. When the window is what holds a request back, the
bucket's credit is dropped, so no second burst follows when the window frees up.

Until the first answer the buckets hold no credit (requests go evenly spaced: the server's bucket may be partly
used), or, when no limit is known yet, only one request is out (the probe). The first answer's
``x-ratelimit-limit-*`` headers tighten the limits and its ``x-ratelimit-remaining-*`` headers seed the buckets:
allowance the server says is already used (by another process, or a run that just stopped) is not spent again.

Reservations are taken in call order without an ``await`` in between (no lock needed in one event loop); each caller
then sleeps until its own slot. A caller that wakes late (the process stalled: CPU contention, a blocked loop) is
checked again against a second bucket kept on the times requests really went out (``sent_tat``): requests whose
slots passed during a stall do not go out all at once on top of the credit the stall built up; they take that credit
and then go evenly spaced, so the bound above holds on actual send times, not only on planned ones (measured before
this check: 13 x 429 in 646 calls from three tasks sharing one limit on a loaded 2-core machine).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")

BURST_S = 0.5  # seconds of allowance a stall may be made up by, at once: half the emulator's short window (1 s), the
# other half absorbs answers the server counts later or earlier than they were sent (measured: 4 x 429 in 2,004 calls
# with 1.0 against a 1 s server bucket on a loaded machine)
PROBE_POLL_S = 0.002
EPSILON_S = 1e-6
PROBE_TIMEOUT_S = 30.0


def parse_reset(value: str | None) -> float | None:
    """Seconds in an ``x-ratelimit-reset-*`` value such as ``6m0s``, ``1.5s`` or ``20ms``."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    match = _DURATION.match(value.strip())
    if not match or not any(match.groups()):
        return None
    h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
    return h * 3600 + m * 60 + s + ms / 1000


class Limit:
    """One per-minute limit: token-bucket spacing with ``burst_s`` of credit, optionally a strict sliding window."""

    def __init__(self, per_minute: float, window_s: float | None, burst_s: float, headroom: float = 1.0) -> None:
        self.window_s = window_s
        self.burst_s = burst_s
        self.headroom = headroom
        self.tat = -math.inf  # the bucket's theoretical arrival time (empty history: full credit)
        self.log: deque[tuple[float, float]] = deque()  # (send time, cost) within the window, oldest first
        self.used = 0.0  # sum of the costs in ``log``
        self.sent_tat = -math.inf  # the same bucket, on the times requests really went out
        self.set_limit(per_minute)

    def set_limit(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute * self.headroom / 60.0  # per second
        self.allowance = self.rate * self.window_s if self.window_s else math.inf

    def bucket_ready(self, cost: float) -> float:
        """Earliest time the bucket holds ``cost`` (a cost above its capacity waits for a full bucket)."""
        return self.tat + min(cost / self.rate, self.burst_s) - self.burst_s

    def sent_ready(self, cost: float) -> float:
        """Earliest time a request of ``cost`` may really go out, by what really went out before it."""
        return self.sent_tat + min(cost / self.rate, self.burst_s) - self.burst_s

    def no_credit_before(self, t: float) -> None:
        """Whatever was sent or planned, the bucket holds no credit before ``t`` (both clocks: planned and actual)."""
        self.tat = max(self.tat, t + self.burst_s)
        self.sent_tat = max(self.sent_tat, t + self.burst_s)

    def went_out(self, t: float, cost: float) -> None:
        self.sent_tat = max(self.sent_tat, t) + cost / self.rate

    def window_ready(self, t: float, cost: float) -> float:
        """Earliest time >= ``t`` at which ``cost`` fits in the window (drops entries no later slot can see)."""
        if not self.window_s:
            return t
        horizon = t - self.window_s
        log = self.log
        while log and log[0][0] <= horizon:
            self.used -= log.popleft()[1]
        while log and self.used + cost > self.allowance + 1e-9:  # a cost above the allowance goes alone
            sent, old = log.popleft()
            self.used -= old
            t = max(t, sent + self.window_s + EPSILON_S)  # strictly after: no float tie at the edge
        if not log:
            self.used = 0.0  # no float drift over a long run
        return t

    def take(self, t: float, cost: float, forfeit: bool) -> None:
        base = max(self.tat, t + self.burst_s - cost / self.rate if forfeit else t)
        self.tat = base + cost / self.rate
        if self.window_s:
            self.log.append((t, cost))
            self.used += cost

    def seed(self, now: float, remaining: float) -> None:
        """The server says only ``remaining`` is left: the bucket's credit (and the window) cannot hold more."""
        self.no_credit_before(now - self.burst_s)  # a bucket never holds more than burst_s of credit
        self.no_credit_before(now - max(0.0, remaining) / self.rate)  # what could go at once now: remaining
        if self.window_s:
            free = self.allowance - self.used
            if remaining < free:
                self.log.append((max(now, self.log[-1][0] if self.log else now), free - remaining))
                self.used += free - remaining


class Pacer:
    """Paces requests under an RPM and a TPM limit (either may be ``None``); see the module docstring."""

    def __init__(self, rpm: float | None, tpm: float | None, clock: Callable[[], float] = time.monotonic,
                 burst_s: float = BURST_S, window_s: float | None = None, headroom: float = 1.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self.window_s = window_s
        self.burst_s = burst_s
        self.headroom = headroom
        self.requests = self._limit(rpm)
        self.tokens = self._limit(tpm)
        self._hold_until = -math.inf
        self._seeded = False
        self._probe_started: float | None = None
        self.waited_s = 0.0

    def _limit(self, per_minute: float | None) -> Limit | None:
        if not per_minute:
            return None
        return Limit(per_minute, self.window_s, self.burst_s, self.headroom)

    @property
    def rpm(self) -> float | None:
        return self.requests.per_minute if self.requests else None

    @property
    def tpm(self) -> float | None:
        return self.tokens.per_minute if self.tokens else None

    # --- what the answers say -----------------------------------------------------------------------------------

    def observe(self, headers: Mapping[str, str] | None) -> None:
        """After any answer (or a failed call, with ``None``): adopt tighter limits; the first one seeds the
        window from ``x-ratelimit-remaining-*`` and releases the requests waiting behind the probe."""
        if headers:
            self._tighten(headers)
            if not self._seeded:
                now = self._clock()
                for kind, limit in (("requests", self.requests), ("tokens", self.tokens)):
                    remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
                    if limit is not None and remaining is not None:
                        limit.seed(now, remaining)
        self._seeded = True

    update_from_headers = observe

    def _tighten(self, headers: Mapping[str, str]) -> None:
        for kind in ("requests", "tokens"):
            value = _number(headers.get(f"x-ratelimit-limit-{kind}"))
            if value is None or value <= 0:
                continue
            current: Limit | None = getattr(self, kind)
            if current is None:
                setattr(self, kind, Limit(value, self.window_s, self.burst_s, self.headroom))
            elif value < current.per_minute:
                current.set_limit(value)

    def set_ceiling(self, rpm: float | None, tpm: float | None) -> None:
        """The most this run may use from now on (its share of a limit shared with other runs, which may rise or
        fall); None leaves that limit as it is. The server's headers still tighten it further."""
        for kind, value in (("requests", rpm), ("tokens", tpm)):
            if value is None or value <= 0:
                continue
            current: Limit | None = getattr(self, kind)
            if current is None:
                setattr(self, kind, Limit(value, self.window_s, self.burst_s, self.headroom))
            else:
                current.set_limit(value)

    def back_off(self, seconds: float) -> None:
        """After a 429: nothing is sent before ``seconds`` from now, and then no burst (the server's bucket is
        taken to be empty): sends resume evenly spaced."""
        self._hold_until = max(self._hold_until, self._clock() + seconds)
        for limit in (self.requests, self.tokens):
            if limit is not None:
                limit.no_credit_before(self._hold_until)

    # --- sending ------------------------------------------------------------------------------------------------

    def reserve(self, tokens: float) -> float:
        """Take the earliest slot for one request of ``tokens`` tokens; returns its time (may be in the past)."""
        now = self._clock()
        pairs = [(lim, cost) for lim, cost in ((self.requests, 1.0), (self.tokens, float(tokens))) if lim]
        t = max(now, self._hold_until)
        for lim, cost in pairs:
            t = max(t, lim.bucket_ready(cost))
        bucket_t = t
        moved = True
        while moved:  # the two windows may push each other on
            moved = False
            for lim, cost in pairs:
                ready = lim.window_ready(t, cost)
                if ready > t:
                    t, moved = ready, True
        forfeit = t > bucket_t
        for lim, cost in pairs:
            lim.take(t, cost, forfeit)
        return t

    async def acquire(self, tokens: int) -> None:
        if not self._seeded:
            if self.requests is None and self.tokens is None:
                await self._behind_probe()  # no limit known yet: only the probe goes until its answer
            else:
                self._no_credit()  # limits known: evenly spaced until the first answer says what is left
        if self.requests is None and self.tokens is None and self._hold_until == -math.inf:
            return
        slot = self.reserve(tokens)
        delay = slot - self._clock()
        if delay > 0:
            self.waited_s += delay
            await self._sleep(delay)
        while (late := self.go_out(tokens)) > 0:  # woke late, behind others that went out late: space them
            self.waited_s += late
            await self._sleep(late)

    def go_out(self, tokens: float) -> float:
        """Record one request going out now, if what really went out before it leaves room; else return how long
        to wait (only after a stall: on-time sends always have room)."""
        now = self._clock()
        pairs = [(lim, cost) for lim, cost in ((self.requests, 1.0), (self.tokens, float(tokens))) if lim]
        ready = max((lim.sent_ready(cost) for lim, cost in pairs), default=now)
        if ready > now + EPSILON_S:
            return ready - now
        for lim, cost in pairs:
            lim.went_out(now, cost)
        return 0.0

    def _no_credit(self) -> None:
        now = self._clock()
        for limit in (self.requests, self.tokens):
            if limit is not None:
                limit.no_credit_before(now)

    async def _behind_probe(self) -> None:
        """The first caller goes (the probe); the others wait for its answer (or ``PROBE_TIMEOUT_S``)."""
        if self._probe_started is None:
            self._probe_started = self._clock()
            return
        while not self._seeded and self._clock() - self._probe_started < PROBE_TIMEOUT_S:
            await self._sleep(PROBE_POLL_S)


def _number(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        return None
