"""Request pacing under RPM and TPM limits (from options, tightened by the server's ``x-ratelimit-*`` headers)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")


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


class Pacer:
    """Spaces requests evenly so that neither requests/min nor tokens/min exceed their limit (no bursts).

    Each request takes the next free slot of two virtual clocks (one per limit); a 429 pushes both clocks to
    the server's ``retry-after``. Evenly spaced sends keep a sliding-window or token-bucket server limiter happy
    while using nearly all of the allowance.
    """

    def __init__(self, rpm: float | None, tpm: float | None, clock=time.monotonic):
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._next = clock()
        self.waited_s = 0.0

    def update_from_headers(self, headers: Mapping[str, str]) -> None:
        """Adopt the server's limits when they are tighter than ours."""
        for name, attr in (("x-ratelimit-limit-requests", "rpm"), ("x-ratelimit-limit-tokens", "tpm")):
            raw = headers.get(name)
            if not raw:
                continue
            try:
                limit = float(raw)
            except ValueError:
                continue
            current = getattr(self, attr)
            if limit > 0 and (current is None or limit < current):
                setattr(self, attr, limit)

    def interval(self, tokens: int) -> float:
        gaps = [0.0]
        if self.rpm:
            gaps.append(60.0 / self.rpm)
        if self.tpm:
            gaps.append(60.0 * tokens / self.tpm)
        return max(gaps)

    async def acquire(self, tokens: int) -> None:
        now = self._clock()  # no await between reading and moving the clock: safe without a lock
        slot = max(self._next, now)
        self._next = slot + self.interval(tokens)
        delay = slot - now
        if delay > 0:
            self.waited_s += delay
            await asyncio.sleep(delay)

    def back_off(self, seconds: float) -> None:
        """After a 429: nothing is sent before ``seconds`` from now."""
        self._next = max(self._next, self._clock() + seconds)
