"""Multi-opinion voting: ask between ``opinions_min`` and ``opinions_max`` answers until the leading answer reaches
the ``confidence`` share of the votes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    answer: Hashable | None  # the leading answer (None when there are no votes yet)
    share: float  # its share of the votes
    votes: int
    more: int  # how many more opinions to ask for (0 = decided)
    confident: bool


@dataclass(frozen=True)
class OpinionAdviser:
    opinions_min: int = 1
    opinions_max: int = 1
    confidence: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.opinions_min <= self.opinions_max:
            raise ValueError(
                f"opinions_min ({self.opinions_min}) must be >= 1 and <= opinions_max ({self.opinions_max})"
            )
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence ({self.confidence}) must be between 0 and 1")

    def advise(self, votes: Sequence[Hashable]) -> Verdict:
        """Decide on the votes so far; ties are broken by the answer seen first."""
        n = len(votes)
        if n == 0:
            return Verdict(None, 0.0, 0, self.opinions_min, False)
        counts = Counter(votes)
        best = max(counts.values())
        answer = next(v for v in votes if counts[v] == best)
        share = best / n
        confident = share >= self.confidence
        if n < self.opinions_min:
            more = self.opinions_min - n
        elif confident or n >= self.opinions_max:
            more = 0
        else:
            # the fewest extra votes that could lift the leader to the confidence share, within opinions_max
            need = 1
            while need < self.opinions_max - n and (best + need) / (n + need) < self.confidence:
                need += 1
            more = min(need, self.opinions_max - n)
        return Verdict(answer, share, n, more, confident)
