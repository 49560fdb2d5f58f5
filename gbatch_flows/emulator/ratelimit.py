"""RPM/TPM limits per model on the direct endpoints, enforced over short windows as the real API does.

Each (model, requests|tokens) limit is a token bucket refilled at limit/60 per second that holds only
`burst_seconds` worth of the allowance (at least one request; `burst_seconds=60` is the old whole-minute bucket). So a
burst of a minute's worth of requests in one second gets 429s, while a client that spaces its requests evenly at the
limit gets none (a request may arrive up to `JITTER` seconds early). A request larger than the bucket is let through
when the bucket is full and leaves it in debt, so the next one waits until the debt is refilled.

Every answer of a limited endpoint carries x-ratelimit-{limit,remaining,reset}-{requests,tokens}: `limit` is the
per-minute limit, `remaining` what may be sent right now, `reset` the time until the bucket is full again; a request
is refused exactly when `remaining` is short of it. A refused request gets a 429 with the real error shape,
`retry-after` (whole seconds, at least 1) and `retry-after-ms`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ApiError

JITTER = 0.05


def format_reset(seconds: float) -> str:
    """Durations like the real headers: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{int(rest)}s"


@dataclass
class _Bucket:
    limit: int  # per minute
    capacity: float
    level: float
    stamp: float

    @property
    def rate(self) -> float:
        return self.limit / 60.0

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until a request of `amount` may pass (it needs the bucket full or `amount` in it)."""
        return max(0.0, (min(amount, self.capacity) - self.level) / self.rate)

    def until_full(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)


class RateLimiter:
    """Token buckets per (model, kind); `acquire` takes 1 request and `tokens` tokens or raises a 429 ApiError."""

    def __init__(self, rpm: int | None, tpm: int | None, clock: Callable[[], float] = time.monotonic,
                 burst_seconds: float = 1.0) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.burst_seconds = burst_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def _bucket(self, model: str, kind: str, limit: int, now: float) -> _Bucket:
        bucket = self._buckets.get((model, kind))
        if bucket is None:
            capacity = min(float(limit), max(1.0, limit * self.burst_seconds / 60.0))
            bucket = self._buckets[(model, kind)] = _Bucket(limit, capacity, capacity, now)
        bucket.refill(now)
        return bucket

    def _current(self, model: str) -> dict[str, _Bucket]:
        now = self._clock()
        buckets: dict[str, _Bucket] = {}
        if self.rpm is not None:
            buckets["requests"] = self._bucket(model, "requests", self.rpm, now)
        if self.tpm is not None:
            buckets["tokens"] = self._bucket(model, "tokens", self.tpm, now)
        return buckets

    @staticmethod
    def _headers(buckets: dict[str, _Bucket]) -> dict[str, str]:
        headers: dict[str, str] = {}
        for kind, bucket in buckets.items():
            headers[f"x-ratelimit-limit-{kind}"] = str(bucket.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level + 1e-9)))
            headers[f"x-ratelimit-reset-{kind}"] = format_reset(bucket.until_full())
        return headers

    def reset(self) -> None:
        """Every bucket full again, as at start-up (what requests took from them is given back)."""
        with self._lock:
            self._buckets.clear()

    def peek(self, model: str | None) -> dict[str, str]:
        """The headers for an answer that takes nothing (a 4xx); {} when no limit is set."""
        if not self.enabled:
            return {}
        with self._lock:
            return self._headers(self._current(model if isinstance(model, str) else ""))

    def acquire(self, model: str, tokens: int) -> dict[str, str]:
        """Take the request's share; return the headers to send, or raise ApiError(429) with headers."""
        if not self.enabled:
            return {}
        with self._lock:
            buckets = self._current(model)
            needs = {"requests": 1.0, "tokens": float(tokens)}
            if self.tpm is not None and tokens > self.tpm:
                raise ApiError(
                    429,
                    f"Request too large for {model} on tokens per min (TPM): Limit {self.tpm}, "
                    f"Requested {tokens}. The input or output tokens must be reduced in order to run "
                    "successfully.",
                    type="tokens", code="rate_limit_exceeded",
                    headers={**self._headers(buckets), "retry-after": "60", "retry-after-ms": "60000"},
                )
            for kind, bucket in buckets.items():
                wait = bucket.wait_for(needs[kind])
                if wait > JITTER:
                    used = bucket.limit - max(0, math.floor(bucket.level))
                    unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
                    raise ApiError(
                        429,
                        f"Rate limit reached for {model} on {unit}: Limit {bucket.limit}, Used {used}, "
                        f"Requested {int(needs[kind])}. Please try again in {format_reset(wait)}.",
                        type=kind, code="rate_limit_exceeded",
                        headers={**self._headers(buckets), "retry-after": str(max(1, math.ceil(wait))),
                                 "retry-after-ms": str(max(1, math.ceil(wait * 1000)))},
                    )
            for kind, bucket in buckets.items():
                bucket.level -= needs[kind]
            return self._headers(buckets)
