"""A direct-request rate shared with other runs, as a hook: the core only calls it, the flow layer plugs one in.

``Engine.shared_rate`` (None by default: nothing is shared) is asked before every direct attempt, after the run's own
pacer: ``await take(model, 1, tokens)`` returns once that attempt may go out under the limit every run that shares it
draws from. The Prefect flow plugs in Prefect global concurrency limits used as rate limits
(``gbatch_flows/prefect_rate.py``, ``--shared_direct_limit``); the ledger's even split of a direct limit
(``--quota_dir``, ``quota_gate.DirectShare``) works through the pacer instead and needs no hook.
"""

from __future__ import annotations

from typing import Protocol


class SharedRateError(RuntimeError):
    """The shared limit cannot be taken (its server does not answer, refuses, ...): the run stops with this line."""


class SharedRate(Protocol):
    async def take(self, model: str, requests: int, tokens: int) -> None:
        """Wait until ``requests`` requests and ``tokens`` tokens of ``model`` may be sent now; raises
        SharedRateError when the shared limit cannot be reached."""

    async def aclose(self) -> None:
        """The direct stage's event loop ends: close what is bound to it (a later stage opens it again)."""
