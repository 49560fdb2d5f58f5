"""RPM/TPM limits per model on the direct endpoints: token buckets that refill over a minute.

Every answer carries x-ratelimit-{limit,remaining,reset}-{requests,tokens}; a refused request gets a 429 with the
real error shape and `retry-after` (seconds).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ApiError


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
    capacity: float
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.capacity / 60.0)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available."""
        return max(0.0, (amount - self.level) * 60.0 / self.capacity)

    def until_full(self) -> float:
        return (self.capacity - self.level) * 60.0 / self.capacity


class RateLimiter:
    """Token buckets per (model, kind); `acquire` takes 1 request and `tokens` tokens or raises a 429 ApiError."""

    def __init__(self, rpm: int | None, tpm: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def _bucket(self, model: str, kind: str, capacity: int, now: float) -> _Bucket:
        bucket = self._buckets.get((model, kind))
        if bucket is None:
            bucket = self._buckets[(model, kind)] = _Bucket(capacity, float(capacity), now)
        bucket.refill(now)
        return bucket

    def _headers(self, buckets: dict[str, tuple[int, _Bucket]]) -> dict[str, str]:
        headers: dict[str, str] = {}
        for kind, (limit, bucket) in buckets.items():
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
            headers[f"x-ratelimit-reset-{kind}"] = format_reset(bucket.until_full())
        return headers

    def acquire(self, model: str, tokens: int) -> dict[str, str]:
        """Take the request's share; return the headers to send, or raise ApiError(429) with headers."""
        if not self.enabled:
            return {}
        with self._lock:
            now = self._clock()
            buckets: dict[str, tuple[int, _Bucket]] = {}
            if self.rpm is not None:
                buckets["requests"] = (self.rpm, self._bucket(model, "requests", self.rpm, now))
            if self.tpm is not None:
                buckets["tokens"] = (self.tpm, self._bucket(model, "tokens", self.tpm, now))
            needs = {"requests": 1.0, "tokens": float(tokens)}
            if self.tpm is not None and tokens > self.tpm:
                raise ApiError(
                    429,
                    f"Request too large for {model} on tokens per min (TPM): Limit {self.tpm}, "
                    f"Requested {tokens}. The input or output tokens must be reduced in order to run "
                    "successfully.",
                    type="tokens", code="rate_limit_exceeded",
                    headers={**self._headers(buckets), "retry-after": "60"},
                )
            for kind, (limit, bucket) in buckets.items():
                wait = bucket.wait_for(needs[kind])
                if wait > 0:
                    used = limit - math.floor(bucket.level)
                    unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
                    raise ApiError(
                        429,
                        f"Rate limit reached for {model} on {unit}: Limit {limit}, Used {used}, "
                        f"Requested {int(needs[kind])}. Please try again in {format_reset(wait)}.",
                        type=kind, code="rate_limit_exceeded",
                        headers={**self._headers(buckets), "retry-after": str(max(1, math.ceil(wait)))},
                    )
            for kind, (_, bucket) in buckets.items():
                bucket.level -= needs[kind]
            return self._headers(buckets)
