"""The emulator's parts wired together (one `Emulator` per app)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .batches import BatchService
from .config import EmulatorConfig, FaultConfig
from .executor import RequestExecutor
from .faults import FaultInjector
from .files import FileService
from .ratelimit import RateLimiter
from .state import Store
from .stats import Stats


class Emulator:
    """Config, state and services; `start()` resumes unfinished batches, `shutdown()` stops the runners."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.stats = Stats()
        self.store = Store(self.config.state_dir)
        self.faults = FaultInjector(self.config.faults)
        self.limiter = RateLimiter(self.config.rpm, self.config.tpm,
                                   burst_seconds=self.config.rate_limit_burst_seconds)
        self.executor = RequestExecutor(self.config, self.stats)
        self.files = FileService(self.config, self.store, self.stats)
        self.batches = BatchService(self.config, self.store, self.executor, self.faults, self.stats)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.batches.start()

    def shutdown(self) -> None:
        self.batches.shutdown()

    def set_faults(self, faults: FaultConfig | Mapping[str, Any] | None = None, **fields: Any) -> FaultConfig:
        """Replace the fault config (a FaultConfig, a dict, or keyword fields); restarts the call counters."""
        if faults is None:
            config = FaultConfig.model_validate(fields)
        elif isinstance(faults, FaultConfig):
            config = FaultConfig.model_validate({**faults.model_dump(), **fields}) if fields else faults
        else:
            config = FaultConfig.model_validate({**faults, **fields})
        self.faults.set(config)
        return config

    def stats_snapshot(self) -> dict[str, Any]:
        with self.store.lock:
            by_status: dict[str, int] = {}
            for batch in self.store.batches.values():
                by_status[batch.status] = by_status.get(batch.status, 0) + 1
        return self.stats.snapshot({"batches_by_status": by_status,
                                    "enqueued_tokens": self.batches.enqueued_tokens()})
