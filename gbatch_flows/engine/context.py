"""Everything a stage needs: the store, the options, the task callbacks, the API clients and the current state."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from gbatch_flows import api, costs
from gbatch_flows.engine.config import RunConfig
from gbatch_flows.engine.fencing import Fence, Timing
from gbatch_flows.engine.protocol import TaskProtocol
from gbatch_flows.engine.state import Changes, TaskState
from gbatch_flows.store import Lease, Store

if TYPE_CHECKING:
    import openai

    from gbatch_flows.engine.shared_rate import SharedRate
    from gbatch_flows.options import Options
    from gbatch_flows.quota import QuotaLedger

log = logging.getLogger("gbatch_flows.engine")


class EngineStop(RuntimeError):
    """The run must stop for a reason the user should read (limits, too many failing batches, ...)."""


@dataclass
class Engine:
    store: Store
    options: Options
    task: TaskProtocol
    session_id: str
    client_factory: Callable[[], openai.OpenAI]
    async_client_factory: Callable[[], openai.AsyncOpenAI]
    local_server: bool = False
    lease: Lease | None = None
    quota: QuotaLedger | None = None  # the shared quota ledger (--quota_dir), if any
    shared_rate: SharedRate | None = None  # a direct RPM/TPM shared with other runs (the flow's, see shared_rate.py)
    flags_only_prices: bool = False  # a public non-OpenAI server: no price table is known, prices come from flags
    outage: Any = None  # remote_errors.OutagePolicy of the run (None: the default policy)
    on_commit: list[Callable[[TaskState], None]] = field(default_factory=list)
    timing: Timing = field(default_factory=Timing.from_env)
    budget_refusal: str | None = None  # the limit that last refused the next request (e.g. "max_task_cost")
    _state: TaskState | None = None
    _prices: dict[tuple[str, str], Any] = field(default_factory=dict)

    @property
    def state(self) -> TaskState:
        if self._state is None:
            self._state = TaskState.from_manifest(self.store.load())
        return self._state

    def refresh(self) -> TaskState:
        self._state = TaskState.from_manifest(self.store.load())
        return self._state

    def commit(self, changes: Changes, message: str) -> TaskState:
        """Commit a change set on top of the state the stage read; a lost race raises ConcurrentModification."""
        if self.lease is not None:
            self.lease.check()
        manifest = self.store.commit(self.state.manifest, changes.values, message=message)
        self._state = TaskState.from_manifest(manifest)
        log.debug("commit %d: %s", manifest.generation, message)
        for hook in self.on_commit:
            hook(self._state)
        return self._state

    @cached_property
    def config(self) -> RunConfig:
        """The run configuration built once from the options (see ``engine/config.py``)."""
        return RunConfig.from_options(self.options)

    @cached_property
    def client(self) -> openai.OpenAI:
        return self.client_factory()

    @cached_property
    def create_client(self) -> openai.OpenAI:
        """The client for calls that create something remotely: never re-sends, times out at the create timeout."""
        return api.no_retry(self.client, self.timing.create_timeout_s)

    @cached_property
    def fence(self) -> Fence:
        """The lease fence around remote creates, and the creates whose outcome is unknown (see fencing.py)."""
        return Fence(self.lease, self.timing)

    def async_client(self) -> openai.AsyncOpenAI:
        return self.async_client_factory()

    @property
    def meta(self) -> dict[str, Any]:
        return self.state.require_task().meta

    @property
    def azure(self) -> bool:
        """Talking to Azure OpenAI: batch files and batch creation use its endpoint paths (``/chat/completions``)."""
        return bool(getattr(self.options, "azure_endpoint", None))

    def prices(self, model: str, endpoint: str | None = None) -> costs.Prices:
        """Prices of ``model``; zero for a free endpoint (moderations) when ``endpoint`` is given."""
        if endpoint is not None:
            return costs.ZERO_PRICES if costs.is_free(endpoint) else self.prices(model)
        if self.azure and getattr(self.options, "azure_price_model", None):
            model = self.options.azure_price_model  # a deployment priced as the OpenAI model it serves
        key = (model, "local" if self.local_server else "flags" if self.flags_only_prices else "api")
        if key not in self._prices:
            overrides = costs.PriceOverrides(
                cost_input_direct_mtoken=self.options.cost_input_direct_mtoken,
                cost_input_cached_mtoken=self.options.cost_input_cached_mtoken,
                cost_input_batch_mtoken=self.options.cost_input_batch_mtoken,
                cost_output_direct_mtoken=self.options.cost_output_direct_mtoken,
                cost_output_batch_mtoken=self.options.cost_output_batch_mtoken,
            )
            try:
                self._prices[key] = costs.prices_for(model, overrides, local_server=self.local_server,
                                                     flags_only=self.flags_only_prices)
            except costs.UnknownPriceError as exc:
                if not self.azure:
                    raise
                raise costs.UnknownPriceError(f"{exc}; on Azure, --azure_price_model names the OpenAI model the "
                                              f"deployment {model!r} serves (e.g. gpt-4o-mini)") from None
        return self._prices[key]
