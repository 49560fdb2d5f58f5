"""The run configuration: the few settings the engine's run loop reads, built once from ``Options``.

``Options`` is the CLI / flow-parameter schema (68 fields, help texts, groups); ``RunConfig`` is what a run is
configured with: frozen, grouped by concern (mode, pacing, limits, retry policy, prices), so a stage's signature
shows what it reads. New and changed code reads ``engine.config``; older stages still read ``engine.options``
(moved over stage by stage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gbatch_flows.options import Options


@dataclass(frozen=True)
class Mode:
    only_process: bool = False
    force_direct: bool = False
    direct_finish_requests: int = 0  # 0 = off
    dryrun: bool = False


@dataclass(frozen=True)
class Pacing:
    direct_rpm: float | None = None
    direct_tpm: float | None = None
    direct_concurrency: int = 16
    poll_interval_min_s: float = 1.0
    poll_interval_max_s: float = 60.0
    max_poll_wait_s: float | None = None


@dataclass(frozen=True)
class Spend:
    requests: float | None = None
    ktokens: float | None = None
    cost: float | None = None


@dataclass(frozen=True)
class Limits:
    batch_requests: int = 50_000
    batch_mb: float = 100.0
    batch_ktokens: float = 20_000.0
    batch_cost: float = 10.0
    unpushed_batches: int = 10
    remote_batches: int = 15
    remote_requests: int = 5_000_000
    remote_mb: float = 10_000.0
    remote_ktokens: float = 50_000.0
    remote_cost: float = 50.0
    session: Spend = Spend()
    task: Spend = Spend()


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    min_pass_ratio: float = 0.8
    max_pass_failures: int = 2
    process_failed_batches: int = 0
    retry_fatal_requests: bool = False


@dataclass(frozen=True)
class PriceOverrides:
    """USD per million tokens; None = the built-in price table."""

    input_direct: float | None = None
    input_cached: float | None = None
    input_batch: float | None = None
    output_direct: float | None = None
    output_batch: float | None = None


@dataclass(frozen=True)
class RunConfig:
    mode: Mode = Mode()
    pacing: Pacing = Pacing()
    limits: Limits = Limits()
    retry: RetryPolicy = RetryPolicy()
    prices: PriceOverrides = PriceOverrides()

    @classmethod
    def from_options(cls, o: Options) -> RunConfig:
        return cls(
            mode=Mode(o.only_process, o.force_direct, o.direct_finish_requests, o.dryrun),
            pacing=Pacing(o.max_direct_rpm, o.max_direct_tpm, o.max_direct_concurrency, o.poll_interval_min_s,
                          o.poll_interval_max_s, o.max_poll_wait_s),
            limits=Limits(o.max_batch_requests, o.max_batch_mb, o.max_batch_ktokens, o.max_batch_cost,
                          o.max_unpushed_batches, o.max_remote_batches, o.max_remote_requests, o.max_remote_mb,
                          o.max_remote_ktokens, o.max_remote_cost,
                          Spend(o.max_session_requests, o.max_session_ktokens, o.max_session_cost),
                          Spend(o.max_task_requests, o.max_task_ktokens, o.max_task_cost)),
            retry=RetryPolicy(o.max_retries, o.min_pass_ratio, o.max_pass_failures, o.process_failed_batches,
                              o.retry_fatal_requests),
            prices=PriceOverrides(o.cost_input_direct_mtoken, o.cost_input_cached_mtoken, o.cost_input_batch_mtoken,
                                  o.cost_output_direct_mtoken, o.cost_output_batch_mtoken),
        )
