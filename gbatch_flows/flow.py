"""The Prefect layer: one flow per task, one Prefect task per stage, artifacts for progress and cost.

The stages are the engine's plain functions; this module adds Prefect's caching, retries, run names and
artifacts. The manifest decides correctness: a stage's cache key is (task folder, manifest generation it starts
from, stage options), so a retried flow run skips a stage only when the state it would start from is unchanged,
and everything still resumes correctly with Prefect's result storage wiped.

Secrets never become flow parameters: the API key comes from the environment of the process that runs the flow
(``OPENAI_API_KEY``), storage credentials from the environment too (for S3 the standard AWS chain), never from the
parameters stored on the Prefect server. A CLI run in this process hands credential-like ``storage_options`` to its
flow through memory (``_LOCAL_SECRETS``), not through the parameters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.states import Cancelled

from gbatch_flows import reporting
from gbatch_flows.engine.assemble import assemble
from gbatch_flows.engine.context import Engine, EngineStop
from gbatch_flows.engine.direct import run_direct
from gbatch_flows.engine.generate import generate
from gbatch_flows.engine.process import process
from gbatch_flows.engine.push import adopt_pushing, push
from gbatch_flows.engine.runner import Runner, RunSummary, Stages, WaitResult, choose_mode, counts, wait_for_batches
from gbatch_flows.launch import api_endpoint, open_engine, prepare, task_url
from gbatch_flows.monitor import make_monitor
from gbatch_flows.options import Options, redact_mapping
from gbatch_flows.runs import finish_output
from gbatch_flows.store import LeaseHeld
from gbatch_flows.task import Task

log = logging.getLogger("gbatch_flows.flow")

# Engines opened by flow runs in this process, by run token (stages receive the token, never the engine).
_ENGINES: dict[str, Engine] = {}
# storage_options with credentials for flows started by run_flow in this process, by session id (never persisted).
_LOCAL_SECRETS: dict[str, dict[str, Any]] = {}


def _options_hash(options: Options) -> str:
    return hashlib.sha256(json.dumps(options.public_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _stage_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """(stage, task folder, exact committed manifest, session, options): equal keys mean equal inputs.

    The manifest's sha256 (not only its generation number) identifies the state: a task folder deleted and
    created again restarts at low generation numbers, which must not hit the old task's cached results. The
    session is part of the key because assembly reads the session's budget.
    """
    return "gbatch:{stage}:{url}:{generation}:{revision}:{session}:{options_hash}".format(**parameters)


def _retry_unless_stop(task_obj: Any, task_run: Any, state: Any) -> bool:
    """Stage retries are for transient trouble; a rule that stops the run (EngineStop) is final."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - unknown: let the retry policy decide
        return True
    return not isinstance(exc, (EngineStop, LeaseHeld, KeyboardInterrupt))


def _run_stage(token: str, stage: str) -> dict[str, Any]:
    engine = _ENGINES[token]
    engine.refresh()
    if stage == "generate":
        generate(engine)
        out: Any = engine.state.require_task().generated_requests
    elif stage == "assemble":
        out = assemble(engine, choose_mode(engine))
    elif stage == "process":
        out = process(engine)
    elif stage == "push":
        out = push(engine)
    elif stage == "direct":
        out = run_direct(engine)
    elif stage == "adopt":
        out = adopt_pushing(engine)
    else:
        raise ValueError(stage)
    return {"stage": stage, "result": out, "generation": engine.state.generation}


_STAGE_OPTS: dict[str, Any] = {"retries": 2, "retry_delay_seconds": [2, 10],
                               "retry_condition_fn": _retry_unless_stop}


@task(name="generate-requests", cache_key_fn=_stage_cache_key, persist_result=True, **_STAGE_OPTS)
def generate_stage(token: str, stage: str, url: str, generation: int, revision: str, session: str,
                   options_hash: str) -> dict[str, Any]:
    return _run_stage(token, stage)


@task(name="assemble-batches", cache_key_fn=_stage_cache_key, persist_result=True, **_STAGE_OPTS)
def assemble_stage(token: str, stage: str, url: str, generation: int, revision: str, session: str,
                   options_hash: str) -> dict[str, Any]:
    return _run_stage(token, stage)


@task(name="process-results", cache_key_fn=_stage_cache_key, persist_result=True, **_STAGE_OPTS)
def process_stage(token: str, stage: str, url: str, generation: int, revision: str, session: str,
                  options_hash: str) -> dict[str, Any]:
    return _run_stage(token, stage)


@task(name="push-batches", cache_policy=NO_CACHE, **_STAGE_OPTS)
def push_stage(token: str, stage: str, url: str, generation: int, revision: str, session: str,
               options_hash: str) -> dict[str, Any]:
    return _run_stage(token, stage)


@task(name="direct-requests", cache_policy=NO_CACHE, **_STAGE_OPTS)
def direct_stage(token: str, stage: str, url: str, generation: int, revision: str, session: str,
                 options_hash: str) -> dict[str, Any]:
    return _run_stage(token, stage)


@task(name="wait-for-batches", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[5, 30, 60])
def wait_stage(token: str, url: str, max_wait_s: float | None) -> dict[str, Any]:
    """Poll with back-off until a remote batch finishes (or the wait budget is used); sleeps, never spins."""
    engine = _ENGINES[token]
    engine.refresh()
    return asdict(wait_for_batches(engine, time.sleep, max_wait_s))


class _Artifacts:
    """Progress and batch-table artifacts of one flow run (keys: lowercase letters, digits, dashes)."""

    def __init__(self, task_name: str):
        self.key = task_name.lower().replace("_", "-")
        self.progress_id: Any = create_progress_artifact(0.0, key=f"{self.key}-progress",
                                                         description=f"{task_name}: requests done / generated")

    def update(self, engine: Engine) -> None:
        figures = reporting.metrics(engine.state, engine.session_id)
        update_progress_artifact(self.progress_id, 100.0 * figures["requests/progress"])

    def final(self, engine: Engine, summary: RunSummary, output_url: str, records: int) -> None:
        state = engine.state
        rows = reporting.batch_rows(state)
        if rows:
            create_table_artifact(rows, key=f"{self.key}-batches",
                                  description="batches: status, requests, tokens, cost")
        create_markdown_artifact(
            f"## {state.require_task().name}: {summary.status}\n\n{summary.reason}\n\n"
            f"- {reporting.summary_line(state, engine.session_id)}\n- output: `{output_url}` ({records} records)\n",
            key=f"{self.key}-summary", description="session summary",
        )


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
    """The body of a task's flow: set-up, maintenance, the stage loop, output and artifacts."""
    logger = get_run_logger()
    session = _session_id(session_id)
    url = task_url(options, task_obj)
    with api_endpoint(options, task_obj) as (base_url, key, local):
        try:
            opened = open_engine(task_obj, options, session, base_url=base_url, api_key=key, local_server=local)
            engine = opened.__enter__()
        except LeaseHeld as exc:
            logger.error("%s", exc)
            return Cancelled(message=f"another run holds this task: {exc}")
        token = uuid.uuid4().hex
        _ENGINES[token] = engine
        monitor = make_monitor(options)
        try:
            prepare(engine, task_obj)
            if options.no_run:
                return RunSummary("stopped", "no_run: maintenance done", engine.state.generation, counts(engine.state))
            monitor.start({"task": task_obj.name, "session": session, "task_dir": url})
            artifacts = _Artifacts(task_obj.name)
            summary = Runner(engine, stages=PrefectStages(engine, token, url, options, artifacts, monitor)).run()
            out_url, n = finish_output(engine, task_obj)
            artifacts.final(engine, summary, out_url, n)
            logger.info("%s: %s (%s); output %s (%d records)", summary.status, summary.reason,
                        reporting.summary_line(engine.state, session), out_url, n)
            if summary.status == "error":
                raise EngineStop(summary.reason)
            return summary
        finally:
            _ENGINES.pop(token, None)
            monitor.finish()
            opened.__exit__(None, None, None)


class PrefectStages(Stages):
    """The engine's run loop (``Runner``) with each stage run as a Prefect task, then artifacts and metrics."""

    def __init__(self, engine: Engine, token: str, url: str, options: Options, artifacts: _Artifacts, monitor: Any):
        super().__init__(engine)
        self.token, self.url, self.artifacts, self.monitor = token, url, artifacts, monitor
        self.opts_hash = _options_hash(options)

    def _call(self, fn: Any, name: str) -> Any:
        state = self.engine.refresh()
        result = fn(self.token, name, self.url, state.generation, state.manifest.sha256, self.engine.session_id,
                    self.opts_hash)
        self._report()
        return result["result"]

    def _report(self) -> None:
        engine = self.engine
        engine.refresh()
        self.artifacts.update(engine)
        self.monitor.log(reporting.metrics(engine.state, engine.session_id))
        self.monitor.log_batch_states(reporting.batch_states(engine.state))

    def generate(self) -> None:
        self._call(generate_stage, "generate")

    def process(self) -> list[int]:
        return self._call(process_stage, "process")

    def assemble(self, mode: str) -> list[int]:
        return self._call(assemble_stage, "assemble")

    def direct(self) -> list[int]:
        return self._call(direct_stage, "direct")

    def push(self) -> None:
        self._call(push_stage, "push")

    def adopt(self) -> None:
        self._call(push_stage, "adopt")

    def wait(self, max_wait_s: float | None) -> WaitResult:
        result = WaitResult(**wait_stage(self.token, self.url, max_wait_s))
        self._report()
        return result


def _flow_run_name(task_name: str):
    """Run names say task and session: ``char_codes-<session>`` (the session is the flow run id's prefix when the
    ``session_id`` parameter is not set, as in deployment runs; see ``_session_id``)."""

    def name() -> str:
        from prefect.runtime import flow_run

        session = (flow_run.parameters or {}).get("session_id") or _session_of_run(flow_run.id)
        return f"{task_name}-{session}"

    return name


def _flow_options(options: dict[str, Any] | None, session_id: str | None) -> Options:
    """Validate the ``options`` parameter; secrets have no place in it (it is stored on the Prefect server)."""
    data = dict(options or {})
    if data.get("openai_api_key"):
        raise ValueError(
            "options.openai_api_key must not be a flow parameter: parameters are stored on the Prefect server. "
            "Set OPENAI_API_KEY in the environment of the process (or worker) that runs the flow instead")
    local = _LOCAL_SECRETS.get(session_id or "")
    if local is not None:  # a CLI run in this process: the real storage_options, kept out of the parameters
        data["storage_options"] = local
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


def make_flow(task_cls: type[Task]):
    """A Prefect flow for ``task_cls`` taking JSON-friendly parameters (deployable from prefect.yaml)."""

    @flow(name=task_cls.name.replace("_", "-"), flow_run_name=_flow_run_name(task_cls.name),
          validate_parameters=True, log_prints=True)
    def task_flow(options: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                  session_id: str | None = None) -> Any:
        opts = _flow_options(options, session_id)
        summary = run_task_flow(task_cls(params), opts, session_id)
        return summary if not isinstance(summary, RunSummary) else summary.__dict__

    task_flow.__doc__ = f"Run the {task_cls.name} task through the Batch API / direct API."
    return task_flow


def flow_parameters(options: Options, params: dict[str, Any] | None) -> dict[str, Any]:
    """Flow parameters: options without secrets (the key travels in the environment), task params."""
    return {"options": options.public_dict(), "params": params or {}}


def run_flow(task_obj: Task, options: Options, session_id: str | None = None) -> RunSummary:
    """Run ``task_obj`` through its Prefect flow in this process (ephemeral Prefect when no server is set).

    A run that ends Cancelled (e.g. refused because another run holds the task's lease) raises EngineStop with
    the state's message; a failed run raises the flow's exception.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    key = options.api_key()
    if key:
        os.environ["OPENAI_API_KEY"] = key  # the flow reads it from the environment, never from parameters
    params = task_obj.params.model_dump(mode="json", exclude_unset=True) if task_obj.params is not None else {}
    session = session_id or uuid.uuid4().hex[:12]
    parameters = flow_parameters(options, params)
    if parameters["options"]["storage_options"] != options.storage_options:
        _LOCAL_SECRETS[session] = options.storage_options
    try:
        state = make_flow(type(task_obj))(**parameters, session_id=session, return_state=True)
    finally:
        _LOCAL_SECRETS.pop(session, None)
    if state.is_cancelled():
        raise EngineStop(state.message or "the flow run was cancelled")
    result = state.result()  # raises the flow's exception when it failed
    if isinstance(result, dict):
        return RunSummary(**result)
    if isinstance(result, RunSummary):
        return result
    return RunSummary("stopped", str(getattr(result, "message", result)))
