"""The Prefect layer: one flow per task, one Prefect task per stage, logs, artifacts and named final states.

The run itself is ``runs.run_task`` (the skeleton the plain run uses too) over the stage table of
``engine/runner.py``; this module only plugs in ``PrefectStages`` (each stage call runs as that stage's Prefect
task: cache, retries, run name, tags) and ``FlowReporter`` (artifacts), and turns the outcome into a state.

Correctness never depends on Prefect: a cached stage is skipped only when the committed manifest it would start
from is the one it already ran on (and only stages that were no-ops there can be cached, see ``Stage.cached``);
a retried run skips finished work because the manifest says it is finished.

Secrets never become flow parameters (they are stored on the Prefect server): the API key comes from the
environment of the process that runs the flow, or — for ``run_flow``, the CLI's way in — in memory through a
context variable, never through ``os.environ``; storage credentials likewise.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler
from prefect.states import Completed, Failed
from prefect.utilities.annotations import quote
from pydantic import BaseModel, ConfigDict, create_model, model_validator

from gbatch_flows import reporting
from gbatch_flows.costs import UnknownPriceError
from gbatch_flows.engine.context import Engine, EngineStop
from gbatch_flows.engine.runner import STAGES, WAIT, RunSummary, Stage, Stages
from gbatch_flows.launch import SetupError, api_endpoint, open_engine, task_url
from gbatch_flows.options import Options, redact_mapping, secret_fields
from gbatch_flows.runs import Reporter, run_task
from gbatch_flows.store import LeaseHeld, StoreError
from gbatch_flows.task import Task
from gbatch_flows.tokens import EstimateError

log = logging.getLogger("gbatch_flows.flow")

#: Errors whose message says it all: the flow run fails with that one line, no traceback.
USER_ERRORS = (EngineStop, SetupError, StoreError, UnknownPriceError, EstimateError, ValueError)

# Secrets handed over by ``run_flow`` to the flow it runs in this thread: {"api_key": ..., "storage_options": ...}.
_LOCAL_SECRETS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("gbatch_local_secrets",
                                                                                         default=None)


# --------------------------------------------------------------------------------------------- typed parameters


def _reject_secrets(data: Any) -> Any:
    if isinstance(data, dict) and data.get("openai_api_key"):
        raise ValueError(
            "options.openai_api_key must not be a flow parameter: parameters are stored on the Prefect server. "
            "Set OPENAI_API_KEY in the environment of the process (or worker) that runs the flow instead")
    return data


class _FlowOptionsBase(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True,
                              json_schema_extra={"description": "Run options, same names as the CLI flags "
                                                 "(`--help`); each property's `cli_group` is its group."})

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        return _reject_secrets(data)


#: The ``options`` flow parameter: every field of ``Options`` but the secret ones, with its type, default,
#: description and group (``cli_group``); unknown names are refused (``additionalProperties: false``), also by
#: the server at submission when the deployment enforces its parameter schema. The cross-field checks run in
#: the flow (``Options``), after the deployment's values are merged in.
FlowOptions: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "FlowOptions", __base__=_FlowOptionsBase,
    **{name: (field.annotation, field) for name, field in Options.model_fields.items()
       if name not in secret_fields(Options)},
)


def _deployment_options(deployment_id: Any = None) -> dict[str, Any]:
    """The ``options`` stored on the deployment of this run (or ``deployment_id``); empty outside a deployment run.
    Read from the deployment itself: ``prefect.runtime.deployment.parameters`` are the run's parameters."""
    if deployment_id is None:
        ctx = FlowRunContext.get()
        deployment_id = getattr(getattr(ctx, "flow_run", None), "deployment_id", None)
    if deployment_id is None:
        return {}
    from prefect import get_client

    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment(deployment_id)
    except Exception as exc:  # noqa: BLE001 - without them the run would silently use other values
        raise ValueError(f"cannot read the options of deployment {deployment_id} to merge this run's options "
                         f"into them: {exc}") from None
    return dict((deployment.parameters or {}).get("options") or {})


def _flow_options(options: BaseModel | dict[str, Any] | None, deployment_id: Any = None) -> Options:
    """The run's options: the deployment's ``options``, then the fields this run set (a partial override keeps
    the deployment's other values; Prefect itself replaces top-level parameters whole), then the secrets
    ``run_flow`` handed over in memory."""
    if isinstance(options, BaseModel):
        given = options.model_dump(mode="json", exclude_unset=True)
    else:
        given = dict(_reject_secrets(options or {}))
    data = {**_deployment_options(deployment_id), **given}
    local = _LOCAL_SECRETS.get()
    if local is not None and local.get("storage_options") is not None:
        data["storage_options"] = local["storage_options"]
    opts = Options.model_validate(data)
    if _has_redacted(opts.storage_options):
        raise ValueError(
            "options.storage_options holds redacted ('***') credentials. Do not put credentials in flow "
            "parameters: give them to the worker's environment (for S3 the standard AWS chain: "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE, AWS_ENDPOINT_URL_S3 for another endpoint)")
    return opts


_REDACTED_VALUE = redact_mapping({"key": ""})["key"]


def _has_redacted(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_redacted(v) for v in value.values())
    return bool(value == _REDACTED_VALUE)


# --------------------------------------------------------------------------------------------- stages as tasks


def _stage_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """The key ``PrefectStages.call`` computed: (stage, task folder, exact committed manifest, session, options,
    arguments). Equal keys mean the stage would start from the very same state."""
    return parameters["cache_key"]


def _retry_unless_stop(task_obj: Any, task_run: Any, state: Any) -> bool:
    """Stage retries are for transient trouble; a rule that stops the run (EngineStop) is final."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - unknown: let the retry policy decide
        return True
    return not isinstance(exc, (EngineStop, LeaseHeld, KeyboardInterrupt))


def _prefect_task(stage: Stage) -> Any:
    """The Prefect task of one stage: a thin wrapper that runs ``stage`` on the run's ``Stages``."""

    def run_stage(stages: Stages, args: tuple[Any, ...], cache_key: str, label: str) -> Any:
        stages.engine.refresh()
        try:
            return stage.run(stages, *args)
        except EngineStop as stop:  # a rule stop: the task fails with its one line, no traceback, no retry
            return Failed(message=str(stop), data=stop)

    retries: dict[str, Any] = ({"retries": 3, "retry_delay_seconds": [5, 30, 60]} if stage is WAIT else
                               {"retries": 2, "retry_delay_seconds": [2, 10]})
    cache: dict[str, Any] = ({"cache_key_fn": _stage_cache_key, "persist_result": True} if stage.cached else
                             {"cache_policy": NO_CACHE})
    # No tags: a task run with tags makes Prefect look up tag concurrency limits before it starts, an API round
    # trip whenever its 5 s memo of "no limit" has expired, which stalled stages 2-7 s here (tests/reliability/
    # README.md, "one quota"); a stage is found by its task name (= stage name) in the UI instead.
    return task(run_stage, name=stage.name, task_run_name="{label}", retry_condition_fn=_retry_unless_stop,
                **retries, **cache)


#: One Prefect task per stage of the table.
STAGE_TASKS: dict[Stage, Any] = {stage: _prefect_task(stage) for stage in STAGES}


def _options_hash(options: Options) -> str:
    return hashlib.sha256(json.dumps(options.public_dict(), sort_keys=True).encode()).hexdigest()[:16]


class PrefectStages(Stages):
    """The run's stages, each call run as its stage's Prefect task (same pacer and stats across loops); with
    ``--shared_direct_limit``, direct requests also take from Prefect rate limits (``prefect_rate.py``)."""

    def __init__(self, engine: Engine, options: Options, url: str):
        super().__init__(engine)
        self.url = url
        self.opts_hash = _options_hash(options)
        self.calls: dict[Stage, int] = {}
        if options.shared_direct_limit:
            from gbatch_flows import prefect_rate

            engine.shared_rate = prefect_rate.PrefectRateLimits(options.shared_direct_limit, options.max_direct_rpm,
                                                                options.max_direct_tpm)
            if not prefect_rate.server_present():
                log.warning("--shared_direct_limit without a Prefect server (PREFECT_API_URL is not set): this run's "
                            "temporary server holds the shared limits, so only runs in this process share them")

    def call(self, stage: Stage, *args: Any) -> Any:
        state = self.engine.refresh()
        n = self.calls[stage] = self.calls.get(stage, 0) + 1
        what = stage.label(state)
        label = f"{stage.name}-{n}" + (f" ({what})" if what else "")
        cache_key = ""
        if stage.cached:
            cache_key = (f"gbatch:{stage.name}:{self.url}:{state.generation}:{state.manifest.sha256}:"
                         f"{self.engine.session_id}:{self.opts_hash}:{json.dumps(args)}")
        result = STAGE_TASKS[stage](quote(self), args, cache_key, label, return_state=True)
        value = result.result()  # a failed stage raises its exception here (EngineStop for a rule stop)
        if isinstance(value, BaseException):  # a rule stop cached at this very manifest: it stops again
            raise value
        return value


# --------------------------------------------------------------------------------------------- logs, artifacts


class _RunLogHandler(APILogHandler):
    """Sends the engine's log records (logger ``gbatch_flows``) to the current flow or task run's logs; records
    from threads outside any run (the bundled emulator, ...) are left out."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            get_run_context()
        except MissingContextError:
            return
        super().emit(record)


@contextlib.contextmanager
def engine_logs_to_run(level: int) -> Iterator[None]:
    """While the flow runs: the ``gbatch_flows`` loggers at ``level``, their records in the run's logs."""
    logger = logging.getLogger("gbatch_flows")
    handler = _RunLogHandler(level=level)
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


class FlowReporter(Reporter):
    """Artifacts of one flow run (keys: lowercase letters, digits, dashes): progress while it runs; batch table,
    summary and (on object storage) a link to the output at the end, whatever the outcome."""

    PROGRESS_EVERY_S = 2.0

    def __init__(self, task_name: str):
        self.task_name = task_name
        self.key = task_name.lower().replace("_", "-")
        self.progress_id: Any = None
        self.throttle = reporting.Throttle(self.PROGRESS_EVERY_S)

    def start(self, engine: Engine) -> None:
        self.progress_id = create_progress_artifact(0.0, key=f"{self.key}-progress",
                                                    description=f"{self.task_name}: requests done / generated")

    def progress(self, engine: Engine, figures: dict[str, Any], force: bool = False) -> None:
        if self.progress_id is not None and (force or self.throttle.ready()):
            # _sync: commits also happen inside the direct stage's event loop, where the call would otherwise
            # return an un-awaited coroutine
            update_progress_artifact(self.progress_id, 100.0 * figures["requests/progress"],  # type: ignore[call-arg]
                                     _sync=True)

    def finish(self, engine: Engine, summary: RunSummary | None, output: tuple[str, int] | None,
               error: BaseException | None) -> None:
        state = engine.refresh()
        self.progress(engine, reporting.metrics(state, engine.session_id), force=True)
        rows = reporting.batch_rows(state)
        if rows:
            create_table_artifact(rows, key=f"{self.key}-batches",
                                  description="batches: state, remote id, times (UTC), requests, tokens, cost")
        outcome = (f"{summary.status}: {summary.reason}" if summary is not None else
                   f"failed: {_one_line(error)}")
        lines = [f"## {self.task_name}: {outcome}", "", f"- {reporting.summary_line(state, engine.session_id)}",
                 f"- task folder: `{engine.store.url}`"]
        if output is not None:
            lines.append(f"- output: `{output[0]}` ({output[1]} records)")
            if _is_remote(output[0]):
                create_link_artifact(output[0], link_text=f"{self.task_name} output ({output[1]} records)",
                                     key=f"{self.key}-output", description="the task's output file")
        create_markdown_artifact("\n".join(lines) + "\n", key=f"{self.key}-summary", description="run summary")


def _one_line(error: BaseException | None) -> str:
    text = str(error) if error is not None else "unknown error"
    return text.splitlines()[0] if text else type(error).__name__


# --------------------------------------------------------------------------------------------- states


def final_state(summary: RunSummary, session: str) -> Any:
    """A named state per outcome; the data is the summary (a dict)."""
    data = dict(summary.__dict__)
    if summary.status == "finished":
        return Completed(name="Finished", message=summary.reason, data=data)
    if summary.status == "waiting":
        return Completed(name="Waiting", message=summary.reason, data=data)
    if summary.status == "error":
        return Failed(message=summary.reason, data=EngineStop(summary.reason))
    if "reached" in summary.reason:
        message = (f"{summary.reason}. A retry of this run keeps its session ({session}) and so its spent "
                   "budget: start a new run (a new session) or raise the session limit to continue")
        return Completed(name="BudgetReached", message=message, data={**data, "reason": message})
    return Completed(name="Stopped", message=summary.reason, data=data)


def _session_id(explicit: str | None) -> str:
    """One session per flow run, shared by its retries (so session limits hold across retries)."""
    if explicit:
        return explicit
    ctx = FlowRunContext.get()
    if ctx and ctx.flow_run:
        return _session_of_run(ctx.flow_run.id)
    return uuid.uuid4().hex[:12]


def _session_of_run(flow_run_id: Any) -> str:
    """The default session id of a flow run: its id's first 12 hex digits (kept by `prefect flow-run retry`)."""
    return str(flow_run_id).replace("-", "")[:12]


def run_task_flow(task_obj: Task, options: Options, session_id: str | None = None) -> Any:
    """The body of a task's flow: the shared run skeleton with Prefect stages and reporter; returns a state."""
    logger = get_run_logger()
    session = _session_id(session_id)
    local = _LOCAL_SECRETS.get() or {}
    reporter = FlowReporter(task_obj.name)
    url = task_url(options, task_obj)
    with engine_logs_to_run(options.logging_level()):
        try:
            summary = run_task(task_obj, options, session, reporter=reporter, api_key=local.get("api_key"),
                               stages=lambda engine: PrefectStages(engine, options, url))
        except LeaseHeld as exc:
            logger.warning("skipped: another run holds this task: %s", exc)
            message = f"another run holds this task ({exc}); this run did nothing"
            return Completed(name="Skipped", message=message, data={"status": "skipped", "reason": message})
        except Exception as exc:  # noqa: BLE001 - one line in the state; the traceback only at DEBUG
            message = _one_line(exc) if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {_one_line(exc)}"
            log.debug("the run failed", exc_info=True)
            if reporter.progress_id is None:  # failed before the run started: the summary says why
                create_markdown_artifact(f"## {task_obj.name}: failed\n\n{message}\n",
                                         key=f"{reporter.key}-summary", description="run summary")
            return Failed(message=message, data=exc)
    logger.info("%s: %s", summary.status, summary.reason)
    return final_state(summary, session)


# --------------------------------------------------------------------------------------------- cancellation


def cancel_remote_batches(task_cls: type[Task], parameters: dict[str, Any], deployment_id: Any = None) -> int:
    """Cancel the task's remote batches and commit it (each becomes ``cancelling``; the next run processes what
    they finished). Runs where the cancelled run ran: the worker (its environment holds the key) or this
    process. Returns how many batches were cancelled."""
    from gbatch_flows.engine.operations import cancel_remote

    local = _LOCAL_SECRETS.get() or {}
    options = _flow_options(parameters.get("options"), deployment_id)
    task_obj = task_cls(parameters.get("params"))
    with api_endpoint(options, task_obj, local.get("api_key")) as (base_url, key, is_local):
        with open_engine(task_obj, options, parameters.get("session_id") or "cancel", base_url=base_url,
                         api_key=key, local_server=is_local) as engine:
            return len(cancel_remote(engine))


def _on_cancellation(task_cls: type[Task]):
    def cancel_hook(flow: Any, flow_run: Any, state: Any) -> None:  # Prefect may pass these by name
        from prefect.logging.loggers import flow_run_logger

        hook_log = flow_run_logger(flow_run, flow)  # into the cancelled run's logs (and the worker's output)
        if not (flow_run.parameters or {}).get("cancel_remote_on_cancel"):
            hook_log.info("run cancelled: its remote batches keep running; the next run of this task adopts them")
            return
        try:
            n = cancel_remote_batches(task_cls, flow_run.parameters, flow_run.deployment_id)
            hook_log.info("run cancelled: %d remote batch(es) cancelled (committed to the task's manifest)", n)
        except Exception as exc:  # noqa: BLE001 - a hook reports, it cannot fail the cancellation
            hook_log.error("run cancelled, but its remote batches could not be cancelled: %s", _one_line(exc))

    return cancel_hook


# --------------------------------------------------------------------------------------------- the flow


def _flow_run_name(task_name: str):
    """Run names say task and session: ``char_codes-<session>`` (the session is the flow run id's prefix when the
    ``session_id`` parameter is not set, as in deployment runs; see ``_session_id``)."""

    def name() -> str:
        from prefect.runtime import flow_run

        session = (flow_run.parameters or {}).get("session_id") or _session_of_run(flow_run.id)
        return f"{task_name}-{session}"

    return name


def make_flow(task_cls: type[Task]):
    """A Prefect flow for ``task_cls`` with typed parameters (deployable from prefect.yaml)."""
    params_type: Any = task_cls.Params if task_cls.Params is not None else dict[str, Any]

    def task_flow(options: Any = None, params: Any = None, session_id: str | None = None, cancel_remote_on_cancel: bool = False) -> Any:
        try:
            opts = _flow_options(options)
        except ValueError as exc:
            return Failed(message=_one_line(exc), data=exc)
        return run_task_flow(task_cls(params), opts, session_id)

    task_flow.__annotations__ = {"options": FlowOptions | None, "params": params_type | None,
                                 "session_id": str | None, "cancel_remote_on_cancel": bool, "return": Any}
    task_flow.__doc__ = f"""Run the {task_cls.name} task through the Batch API / direct API.

    Args:
        options: Run options (same names as the CLI flags). A run that gives some of them keeps the
            deployment's other values. No secrets: the API key and storage credentials come from the
            environment of the worker.
        params: The task's own parameters.
        session_id: The session (budget scope); unset = the flow run id's first 12 hex digits, kept by retries.
        cancel_remote_on_cancel: When the run is cancelled, also cancel the task's remote batches (default: they
            keep running and the next run adopts and processes them).
    """
    return flow(task_flow, name=task_cls.name.replace("_", "-"), flow_run_name=_flow_run_name(task_cls.name),
                validate_parameters=True, log_prints=True, on_cancellation=[_on_cancellation(task_cls)])


def flow_parameters(options: Options, params: dict[str, Any] | None) -> dict[str, Any]:
    """Flow parameters: options without secrets (the key travels in memory or the environment), task params."""
    return {"options": options.public_dict(), "params": params or {}}


def run_flow(task_obj: Task, options: Options, session_id: str | None = None) -> RunSummary:
    """Run ``task_obj`` through its Prefect flow in this process (ephemeral Prefect when no server is set).

    The API key and the real storage options reach the flow in memory (a context variable), never through the
    parameters or the environment. A run refused by the lease raises EngineStop with its message; a failed run
    raises the flow's exception.
    """
    params = task_obj.params.model_dump(mode="json", exclude_unset=True) if task_obj.params is not None else {}
    parameters = flow_parameters(options, params)
    secrets: dict[str, Any] = {"api_key": options.api_key()}
    if parameters["options"]["storage_options"] != options.storage_options:
        secrets["storage_options"] = options.storage_options
    token = _LOCAL_SECRETS.set(secrets)
    try:
        state = make_flow(type(task_obj))(**parameters, session_id=session_id or uuid.uuid4().hex[:12],
                                          return_state=True)
    finally:
        _LOCAL_SECRETS.reset(token)
    result = state.result()  # raises the flow's exception when it failed
    if isinstance(result, dict) and result.get("status") == "skipped":
        raise EngineStop(result["reason"])
    if isinstance(result, dict):
        return RunSummary(**result)
    if isinstance(result, RunSummary):
        return result
    return RunSummary("stopped", str(getattr(result, "message", result)))
