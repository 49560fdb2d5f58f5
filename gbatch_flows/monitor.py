"""Monitoring sink: metrics to the log and to Weights & Biases.

The metric names below are the contract between the engine (which logs them), this module and
:mod:`gbatch_flows.wandb_view` (which charts them). ``wandb`` is imported only inside
:meth:`WandbMonitor.start`: importing it costs seconds of CPU.
"""

from __future__ import annotations

import logging
import netrc
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlparse

from gbatch_flows.options import redact_mapping

if TYPE_CHECKING:
    from gbatch_flows.options import Options

# ---------------------------------------------------------------- metric names (used by wandb_view too)

REQUESTS_TOTAL = "requests/total"  #: requests generated for the task
REQUESTS_DONE = "requests/done"  #: requests with a final (processed) result
REQUESTS_FAILED = "requests/failed"  #: requests that failed for good
REQUESTS_PROGRESS = "requests/progress"  #: done / total, from 0 to 1
TOKENS_INPUT = "tokens/input"  #: input (prompt) tokens used so far in the task
TOKENS_CACHED_INPUT = "tokens/cached_input"  #: of which cached
TOKENS_OUTPUT = "tokens/output"  #: output (completion) tokens used so far in the task
COST_SESSION = "cost/session"  #: USD spent in this session
COST_TASK = "cost/task"  #: USD spent over the whole task
COST_RESERVED = "cost/reserved"  #: USD reserved by batches in flight (worst case)
API_HTTP_429 = "api/http_429"  #: rate-limit (HTTP 429) responses seen so far
API_RETRIES = "api/retries"  #: API calls retried so far
DIRECT_REQUESTS = "direct/requests"  #: requests sent through the direct API so far

BATCH_STATE_PREFIX = "batches/"
#: Batch states charted by the W&B view; :meth:`Monitor.log_batch_states` accepts others too.
BATCH_STATES = ("unpushed", "pushing", "validating", "in_progress", "finalizing", "completed", "processed",
                "failed", "expired", "cancelled")

SCALAR_METRICS = (REQUESTS_TOTAL, REQUESTS_DONE, REQUESTS_FAILED, REQUESTS_PROGRESS, TOKENS_INPUT,
                  TOKENS_CACHED_INPUT, TOKENS_OUTPUT, COST_SESSION, COST_TASK, COST_RESERVED, API_HTTP_429,
                  API_RETRIES, DIRECT_REQUESTS)


def batch_state_metric(state: str) -> str:
    """Metric name for the number of batches in ``state``."""
    return f"{BATCH_STATE_PREFIX}{state}"


#: Every metric name this module defines.
KNOWN_METRICS = frozenset(SCALAR_METRICS) | {batch_state_metric(state) for state in BATCH_STATES}

_log = logging.getLogger(__name__)

#: Flags whose value is (or may hold) a secret: wandb must not record a command line that has one.
SECRET_FLAGS = frozenset({"--openai_api_key"})


@runtime_checkable
class Monitor(Protocol):
    """Where a run reports its progress."""

    def start(self, run_info: Mapping[str, Any]) -> None: ...

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None: ...

    def log_batch_states(self, counts: Mapping[str, int], step: int | None = None) -> None: ...

    def finish(self) -> None: ...


def batch_state_metrics(counts: Mapping[str, int]) -> dict[str, int]:
    """``{"batches/<state>": n}`` for every known state (0 when absent) and every state given."""
    data = {batch_state_metric(state): 0 for state in BATCH_STATES}
    data.update({batch_state_metric(state): int(count) for state, count in counts.items()})
    return data


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class LoggingMonitor:
    """Python logging sink: one compact line per call."""

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = logger or _log
        self.level = level

    def start(self, run_info: Mapping[str, Any]) -> None:
        info = redact_mapping(run_info)
        self.logger.log(self.level, "run start: %s", " ".join(f"{k}={_fmt(v)}" for k, v in info.items()))

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        prefix = f"step={step} " if step is not None else ""
        self.logger.log(self.level, "metrics: %s%s", prefix,
                        " ".join(f"{k}={_fmt(v)}" for k, v in sorted(metrics.items())))

    def log_batch_states(self, counts: Mapping[str, int], step: int | None = None) -> None:
        shown = {state: n for state, n in counts.items() if n} or {"none": 0}
        prefix = f"step={step} " if step is not None else ""
        self.logger.log(self.level, "batches: %s%s", prefix, " ".join(f"{k}={v}" for k, v in shown.items()))

    def finish(self) -> None:
        self.logger.log(self.level, "run finished")


def wandb_logged_in(env: Mapping[str, str] | None = None) -> bool:
    """Whether wandb has credentials: WANDB_API_KEY, or a netrc entry for the W&B host."""
    env = os.environ if env is None else env
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = Path(env["NETRC"]) if env.get("NETRC") else Path(env.get("HOME") or Path.home()) / ".netrc"
    try:
        return netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _secret_values(options: Options) -> list[str]:
    """The API key and the storage_options values that public_dict() redacts."""
    found = [options.api_key() or ""]

    def walk(raw: Any, redacted: Any) -> None:
        if isinstance(raw, Mapping):
            for key, value in raw.items():
                walk(value, redacted[key] if isinstance(redacted, Mapping) else redacted)
        elif redacted != raw:
            found.append(str(raw))

    walk(options.storage_options, redact_mapping(options.storage_options))
    return [secret for secret in found if len(secret) >= 4]


class WandbMonitor:
    """Weights & Biases sink. Offline (with a one-line `wandb sync` hint) when not logged in."""

    def __init__(self, options: Options, env: Mapping[str, str] | None = None,
                 logger: logging.Logger | None = None) -> None:
        self.options = options
        self.env = os.environ if env is None else env
        self.logger = logger or _log
        self.run: Any = None
        self.sync_dir: str | None = None

    def _mode(self) -> str | None:
        """None lets wandb decide (WANDB_MODE if set, else online); 'offline' when there are no credentials."""
        if self.env.get("WANDB_MODE"):
            return None
        return None if wandb_logged_in(self.env) else "offline"

    def _secret_on_command_line(self) -> bool:
        """Whether the API key (from the options or the environment the run uses) or a storage credential was typed
        on the command line, or a secret-carrying flag appears there at all."""
        secrets = [*_secret_values(self.options), *(v for v in (self.env.get("OPENAI_API_KEY"),) if v)]
        if any(arg.split("=", 1)[0] in SECRET_FLAGS for arg in sys.argv):
            return True
        return any(secret in arg for secret in secrets for arg in sys.argv)

    def start(self, run_info: Mapping[str, Any]) -> None:
        import wandb  # lazy: slow import

        opts = self.options
        config = opts.public_dict()
        config["run_info"] = redact_mapping(run_info)
        # wandb records sys.argv in its metadata: skip the metadata if the key was given on the command line.
        settings = wandb.Settings(silent=True, x_disable_meta=self._secret_on_command_line())
        try:
            self.run = wandb.init(project=opts.wandb_project, entity=opts.wandb_entity, name=opts.wandb_name,
                                  id=opts.wandb_run_id, resume="allow" if opts.wandb_run_id else None,
                                  mode=self._mode(), config=config, settings=settings)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - monitoring must never stop an (expensive) job
            self.logger.warning("wandb disabled, could not start a run: %s", exc)
            self.run = None
            return
        if getattr(self.run, "offline", False):
            self.sync_dir = str(self.run.sync_dir)
            self.logger.info("wandb is offline (not logged in or WANDB_MODE=offline): run saved in %s; "
                             "upload it with `wandb sync %s`", self.sync_dir, self.sync_dir)

    def _send(self, data: Mapping[str, Any], step: int | None) -> None:
        if self.run is None:
            return
        try:
            self.run.log(dict(data), step=step)
        except Exception as exc:  # noqa: BLE001 - a lost metric is not worth a failed job
            self.logger.warning("wandb log failed: %s", exc)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self._send(metrics, step)

    def log_batch_states(self, counts: Mapping[str, int], step: int | None = None) -> None:
        self._send(batch_state_metrics(counts), step)

    def finish(self) -> None:
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as exc:  # noqa: BLE001 - same
            self.logger.warning("wandb finish failed: %s", exc)
        self.run = None


class MultiMonitor:
    """Fans every call out to several monitors; a failing one does not stop the others."""

    def __init__(self, monitors: Iterable[Monitor]) -> None:
        self.monitors = list(monitors)

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for monitor in self.monitors:
            try:
                getattr(monitor, method)(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - one broken sink must not silence the others
                _log.warning("monitor %s.%s failed: %s", type(monitor).__name__, method, exc)

    def start(self, run_info: Mapping[str, Any]) -> None:
        self._each("start", run_info)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self._each("log", metrics, step=step)

    def log_batch_states(self, counts: Mapping[str, int], step: int | None = None) -> None:
        self._each("log_batch_states", counts, step=step)

    def finish(self) -> None:
        self._each("finish")


def make_monitor(options: Options, env: Mapping[str, str] | None = None,
                 logger: logging.Logger | None = None) -> Monitor:
    """Logging always; W&B too unless ``options.no_wandb``."""
    logging_monitor = LoggingMonitor(logger)
    if options.no_wandb:
        return logging_monitor
    return MultiMonitor([logging_monitor, WandbMonitor(options, env=env, logger=logger)])
