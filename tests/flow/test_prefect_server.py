"""The Prefect layer on a real local Prefect server (the session's test server): engine lines in the run's logs,
the deployment's typed parameter schema enforced at submission, a partial override keeping the deployment's
values, each named final state, artifacts of a failed run, both cancellation choices, and one direct pacer
across loops in the plain run and in the flow."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.emulator.config import FaultConfig, FaultRates
from gbatch_flows.engine import direct, runner
from gbatch_flows.options import Options, secret_fields
from gbatch_flows.runs import run_plain
from gbatch_flows.store import open_store

from .conftest import PrefectServer, artifacts, emulator_for, flow_options, flow_run, read_jsonl, task_runs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RANGE = "0x41-0x5A"  # 26 requests


def run_logs(flow_run_id: Any, expect: str = "", timeout: float = 15.0) -> list[Any]:
    """The run's logs on the server (flow and task runs), waiting until ``expect`` shows (they are sent in
    batches by a background thread)."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        if not expect or any(expect in log.message for log in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.3)


def worker_lines(path: Path) -> str:
    """The worker's log lines about hooks, cancellation and errors (for failure messages)."""
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if any(w in line.lower() for w in ("hook", "cancel", "error")))[-4000:]


def rows_of(artifact: Any) -> list[dict[str, Any]]:
    return artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)


def test_engine_lines_in_the_run_logs_at_its_log_level(prefect_server: PrefectServer, char_codes: ModuleType,
                                                      tmp_path: Path) -> None:
    flow = char_codes.char_codes_flow
    gate = threading.Event()
    with emulator_for(char_codes.CharCodes, gate=gate) as emu:
        waits: list[str] = []

        class OpenAfterTwoWaits(logging.Handler):  # both batches stay in flight for two poll cycles
            def emit(self, record: logging.LogRecord) -> None:
                if record.getMessage().startswith("waiting:"):
                    waits.append(record.getMessage())
                    if len(waits) >= 2:
                        gate.set()

        watcher = OpenAfterTwoWaits()
        logging.getLogger("gbatch_flows.engine.runner").addHandler(watcher)
        try:
            state = flow(options=flow_options(tmp_path, emu, max_batch_requests=13),
                         params={"char_ranges": RANGE}, session_id="logs-info", return_state=True)
        finally:
            logging.getLogger("gbatch_flows.engine.runner").removeHandler(watcher)
        assert state.is_completed() and state.name == "Finished", state
        run_id = state.state_details.flow_run_id
        logs = run_logs(run_id, expect="processed batch 2")
        messages = [log.message for log in logs]
        for wanted in ("generated 26 requests", "pushed batch 1 as batch_", "pushed batch 2 as batch_",
                       "processed batch 1: ok 13", "processed batch 2: ok 13", "waiting: 2 batch(es) in flight",
                       "; next poll in "):
            assert any(wanted in m for m in messages), (wanted, messages)
        # Stage lines are in their task run's logs; a wait line per poll cycle, not per commit.
        pushed = next(log for log in logs if "pushed batch 1" in log.message)
        push_run = next(r for r in task_runs(run_id) if r.id == pushed.task_run_id)
        assert push_run.name.startswith("push-batches-1")
        # no tags: a tagged task run waits for Prefect's tag concurrency check before it starts
        assert push_run.tags == [], push_run.tags
        assert not any(m.startswith("commit ") for m in messages)  # DEBUG lines stay out at INFO
        waits = [m for m in messages if m.startswith("waiting:")]
        assert 1 <= len(waits) <= 40

        # At WARNING the same run sends none of them.
        quiet = flow(options=flow_options(tmp_path, emu, max_batch_requests=13, log_level="WARNING",
                                          task_dir=str(tmp_path / "quiet")),
                     params={"char_ranges": RANGE}, session_id="logs-warning", return_state=True)
        assert quiet.name == "Finished"
        quiet_messages = [log.message for log in run_logs(quiet.state_details.flow_run_id)]
        assert not any("pushed batch" in m or "waiting:" in m for m in quiet_messages), quiet_messages


def test_deployment_schema_is_typed_refuses_a_misspelled_option_and_merges_a_partial_override(
        prefect_server: PrefectServer, char_codes: ModuleType, tmp_path: Path) -> None:
    from prefect import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.flow_engine import run_flow as run_flow_run
    from prefect.utilities.callables import parameter_schema

    flow = char_codes.char_codes_flow
    schema = parameter_schema(flow).model_dump_for_openapi()  # what `prefect deploy` computes and stores
    options_schema = schema["definitions"]["FlowOptions"]
    assert options_schema["additionalProperties"] is False
    props = options_schema["properties"]
    assert "openai_api_key" not in props and "azure_api_key" not in props  # no secret in the form
    assert set(props) == set(Options.model_fields) - set(secret_fields(Options))
    assert props["max_session_cost"]["default"] == 10.0 and props["max_session_cost"]["cli_group"]
    assert "USD" in props["max_session_cost"]["description"]
    assert {"type": "integer", "minimum": 1, "maximum": 50000}.items() <= props["max_batch_requests"].items()
    assert props["emulator"]["enum"] == ["auto", "always", "never"]
    assert schema["definitions"]["CharCodesParams"]["properties"]["char_ranges"]["description"]
    assert schema["properties"]["cancel_remote_on_cancel"]["default"] is False

    with emulator_for(char_codes.CharCodes) as emu:
        deployed = flow_options(tmp_path, emu, max_batch_requests=13)
        with get_client(sync_client=True) as client:
            flow_id = client.create_flow_from_name(flow.name)
            deployment_id = client.create_deployment(
                flow_id=flow_id, name=f"schema-{uuid.uuid4().hex[:6]}", parameter_openapi_schema=schema,
                enforce_parameter_schema=True, parameters={"options": deployed, "params": {"char_ranges": RANGE}})
            with pytest.raises(PrefectHTTPStatusError) as refused:
                client.create_flow_run_from_deployment(deployment_id,
                                                       parameters={"options": {"max_sesion_cost": 1}})
            assert refused.value.response.status_code == 409
            assert "max_sesion_cost" in refused.value.response.text
            with pytest.raises(PrefectHTTPStatusError):
                client.create_flow_run_from_deployment(deployment_id,
                                                       parameters={"options": {"max_batch_requests": "many"}})
            # A partial override: the server replaces the whole `options`; the flow merges the deployment's back.
            run = client.create_flow_run_from_deployment(deployment_id,
                                                         parameters={"options": {"max_batch_requests": 9}})
        assert run.parameters["options"] == {"max_batch_requests": 9}
        state = run_flow_run(flow, flow_run=run, parameters=run.parameters, return_type="state")
        assert state.name == "Finished", state
        assert emu.stats()["batches_created"] == 3  # ceil(26 / 9): the override applied ...
        output = Path(deployed["task_dir"]) / "char_codes" / "char_codes_output.jsonl"
        assert len(read_jsonl(output)) == 26  # ... and the deployment's task_dir, endpoint... kept
        # A deployment run's logs hold the engine's lines too (the flow attaches the handler itself).
        messages = [log.message for log in run_logs(run.id, expect="processed batch 3")]
        assert any("pushed batch 1 as batch_" in m for m in messages), messages
        assert any("processed batch 3: ok" in m for m in messages), messages


def test_named_final_states(prefect_server: PrefectServer, char_codes: ModuleType, tmp_path: Path) -> None:
    flow = char_codes.char_codes_flow
    params = {"char_ranges": RANGE}
    gate = threading.Event()
    with emulator_for(char_codes.CharCodes, gate=gate) as emu:
        # Waiting: the batches do not finish within max_poll_wait_s.
        waiting = flow(options=flow_options(tmp_path, emu, max_batch_requests=13, max_poll_wait_s=0.3),
                       params=params, session_id="waiting", return_state=True)
        assert (waiting.type.value, waiting.name) == ("COMPLETED", "Waiting"), waiting
        assert "still running" in waiting.message
        gate.set()
        # Finished: the next run processes them.
        finished = flow(options=flow_options(tmp_path, emu, max_batch_requests=13), params=params,
                        session_id="finished", return_state=True)
        assert (finished.type.value, finished.name) == ("COMPLETED", "Finished"), finished
        assert finished.result()["status"] == "finished"

        # BudgetReached: the session may send 13 requests of 26; a retry of the run explains instead of a no-op.
        budget = flow_options(tmp_path, emu, max_batch_requests=13, max_session_requests=13,
                              task_dir=str(tmp_path / "budget"))
        first = flow(options=budget, params=params, session_id="budget", return_state=True)
        assert (first.type.value, first.name) == ("COMPLETED", "BudgetReached"), first
        again = flow(options=budget, params=params, session_id="budget", return_state=True)  # as a retry does
        assert again.name == "BudgetReached"
        assert "max_session_requests reached" in again.message and "start a new run" in again.message
        stored = flow_run(again.state_details.flow_run_id).state
        assert (stored.type.value, stored.name) == ("COMPLETED", "BudgetReached")

        # Stopped: maintenance only.
        stopped = flow(options=flow_options(tmp_path, emu, no_run=True), params=params, return_state=True)
        assert (stopped.type.value, stopped.name) == ("COMPLETED", "Stopped")

        # Skipped: another run holds the task's lease (tests/flow/test_flow_recovery.py races two real runs).
        task = char_codes.CharCodes(params)
        from gbatch_flows.launch import open_task_store

        store = open_task_store(Options(**flow_options(tmp_path, emu)), task)
        lease = store.acquire_lease(ttl_s=60.0)  # held by a live process (this one): no takeover
        try:
            skipped = flow(options=flow_options(tmp_path, emu), params=params, return_state=True)
        finally:
            lease.release()
        assert (skipped.type.value, skipped.name) == ("COMPLETED", "Skipped"), skipped
        assert "another run holds this task" in skipped.message


def test_rule_stop_fails_with_one_line_and_leaves_artifacts(prefect_server: PrefectServer,
                                                            char_codes: ModuleType, tmp_path: Path) -> None:
    """Every batch fails remotely: the process stage's rule stops the run. Failed, its one-line reason, no
    traceback in the logs, and the artifacts (progress, batch table with remote ids and times, summary)."""
    responders = char_codes.CharCodes().emulator_responders()
    config = EmulatorConfig(batch_duration=0.05, responders=responders,
                            faults=FaultConfig(rates=FaultRates(batch_failed=1.0)))
    with run_emulator(config) as emu:
        state = char_codes.char_codes_flow(options=flow_options(tmp_path, emu, max_batch_requests=13),
                                           params={"char_ranges": RANGE}, session_id="rule-stop",
                                           return_state=True)
    assert state.is_failed(), state
    assert "failed" in state.message and "--process_failed_batches" in state.message
    assert "\n" not in state.message
    run_id = state.state_details.flow_run_id
    logs = run_logs(run_id, expect="Finished in state Failed")
    assert not any("Traceback" in log.message for log in logs), [log.message for log in logs]
    assert any(r.state.type.value == "FAILED" and r.state.message == state.message for r in task_runs(run_id))

    found = artifacts(run_id)
    assert {"char-codes-progress", "char-codes-batches", "char-codes-summary"} <= set(found)
    rows = rows_of(found["char-codes-batches"])
    assert rows and all(row["remote_id"].startswith("batch_") for row in rows)
    assert all(row["created"] and row["pushed"] for row in rows)
    assert any(row["remote"] == "failed" and row["finished"] for row in rows)
    summary = found["char-codes-summary"].data
    assert "char_codes: error:" in summary and "--process_failed_batches" in summary


def test_cancellation_keeps_or_cancels_the_remote_batches(prefect_server: PrefectServer, char_codes: ModuleType,
                                                          tmp_path: Path) -> None:
    """The flow's on_cancellation hook, given the parameters the server stored for a run left with batches in
    flight: by default it leaves them running (the next run adopts them); with cancel_remote_on_cancel it cancels
    them remotely and commits that to the manifest."""
    from gbatch_flows import flow as flow_module

    flow = char_codes.char_codes_flow
    hook = flow.on_cancellation_hooks[0]
    gate = threading.Event()
    with emulator_for(char_codes.CharCodes, gate=gate) as emu:
        for choice, task_dir in ((False, "keep"), (True, "cancel")):
            options = flow_options(tmp_path, emu, max_batch_requests=13, max_poll_wait_s=0.2,
                                   task_dir=str(tmp_path / task_dir))
            state = flow(options=options, params={"char_ranges": RANGE}, cancel_remote_on_cancel=choice,
                         return_state=True)
            assert state.name == "Waiting", state
            run = flow_run(state.state_details.flow_run_id)
            folder = tmp_path / task_dir / "char_codes"
            before = open_store(str(folder)).load()
            hook(flow, run, state)
            after = open_store(str(folder)).load()
            remote = {b["remote_id"]: b for k, b in after.sections.items() if k.startswith("batch/")}
            if not choice:
                assert after.generation == before.generation
                assert all(b["remote_status"] != "cancelling" for b in remote.values())
            else:
                assert after.generation == before.generation + 1
                assert [b["remote_status"] for b in remote.values()] == ["cancelling", "cancelling"]
        by_status = emu.stats()["batches_by_status"]
        assert sum(n for s, n in by_status.items() if s in ("cancelling", "cancelled")) == 2, by_status
        assert sum(n for s, n in by_status.items() if s in ("validating", "in_progress")) == 2, by_status
        gate.set()
    assert flow_module.cancel_remote_batches  # the same function a worker runs when it cancels a run


@pytest.mark.parametrize("path", ["plain", "flow"])
def test_direct_stage_keeps_one_pacer_across_loops(prefect_server: PrefectServer, char_codes: ModuleType,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   path: str) -> None:
    """One direct batch per loop (max_unpushed_batches=1): every direct stage of the run gets the same pacer, so
    the RPM/TPM window (and limits learned from headers) carries over from loop to loop."""
    seen: list[Any] = []
    real = runner.run_direct

    def spy(engine: Any, pacer: Any = None, stats: Any = None) -> list[int]:
        seen.append(pacer)
        return real(engine, pacer, stats)

    monkeypatch.setattr(runner, "run_direct", spy)
    # the direct stage assembles more batches itself while it sends (up to MAX_REFILLS rounds); without that each
    # loop of the run sends one batch, which is what this test needs to see the pacer carried across loops
    monkeypatch.setattr(direct, "MAX_REFILLS", 0)
    with emulator_for(char_codes.CharCodes) as emu:
        raw = flow_options(tmp_path, emu, force_direct=True, max_batch_requests=5, max_unpushed_batches=1,
                           max_direct_rpm=6000)
        if path == "plain":
            summary = run_plain(char_codes.CharCodes({"char_ranges": RANGE}), Options(**raw))
            assert summary.status == "finished"
        else:
            state = char_codes.char_codes_flow(options=raw, params={"char_ranges": RANGE}, return_state=True)
            assert state.name == "Finished", state
            names = [r.name for r in task_runs(state.state_details.flow_run_id)]
            assert sum(n.startswith("direct-requests-") for n in names) >= 6, names
    ran = [p for p in seen if p is not None]
    assert len(ran) >= 6  # ceil(26 / 5) direct batches, one per loop
    assert all(p is ran[0] for p in ran)
    assert ran[0].rpm == 6000


def test_cancelling_a_deployment_run_on_a_worker(prefect_server: PrefectServer, char_codes: ModuleType,
                                                 tmp_path: Path) -> None:
    """Prefect's own cancellation of a deployment run on a `process` worker, both choices: by default the remote
    batches keep running (the next run adopts them); with cancel_remote_on_cancel the worker's hook cancels them
    and commits it."""
    import signal
    import subprocess
    import sys

    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Cancelling
    from prefect.utilities.callables import parameter_schema

    from .conftest import REPO

    flow = char_codes.char_codes_flow
    pool = f"cancel-{uuid.uuid4().hex[:6]}"
    gate = threading.Event()
    with emulator_for(char_codes.CharCodes, gate=gate) as emu:
        base = flow_options(tmp_path, emu, max_batch_requests=13, max_poll_wait_s=120)
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            deployment_id = client.create_deployment(
                flow_id=client.create_flow_from_name(flow.name), name=pool, work_pool_name=pool,
                entrypoint="flows/char_codes.py:char_codes_flow",
                pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}],
                parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
                parameters={"options": base, "params": {"char_ranges": RANGE}})
        log_path = tmp_path / "worker.log"
        with open(log_path, "wb") as log_file:
            worker = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--name", pool],
                env=prefect_server.subprocess_env(PYTHONPATH=str(REPO), PREFECT_WORKER_QUERY_SECONDS="1"),
                cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            said = {}
            for choice in (False, True):
                task_dir = tmp_path / ("cancel" if choice else "keep")
                created = emu.stats()["batches_created"]
                with get_client(sync_client=True) as client:
                    run = client.create_flow_run_from_deployment(
                        deployment_id, parameters={"options": {"task_dir": str(task_dir)},
                                                   "cancel_remote_on_cancel": choice})
                deadline = time.monotonic() + 120
                while emu.stats()["batches_created"] < created + 2:
                    assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                    time.sleep(0.2)
                with get_client(sync_client=True) as client:
                    client.set_flow_run_state(run.id, Cancelling(message="test"), force=True)
                    while (state := client.read_flow_run(run.id).state).type.value != "CANCELLED":
                        assert time.monotonic() < deadline, (state, log_path.read_text()[-3000:])
                        time.sleep(0.3)
                folder = task_dir / "char_codes"
                while True:  # the hook runs after the state is set
                    batches = [b for k, b in open_store(str(folder)).load().sections.items()
                               if k.startswith("batch/")]
                    statuses = [b.get("remote_status") for b in batches]
                    if (choice and statuses == ["cancelling", "cancelling"]) or not choice:
                        break
                    assert time.monotonic() < deadline, (statuses, worker_lines(log_path))
                    time.sleep(0.3)
                assert len(batches) == 2 and all(b["state"] == "pushed" for b in batches)
                assert ("cancelling" in statuses) == choice, statuses
                said[choice] = [log.message for log in run_logs(run.id, expect="run cancelled")]
            by_status = emu.stats()["batches_by_status"]
            assert sum(n for s, n in by_status.items() if s in ("cancelling", "cancelled")) == 2, by_status
            assert sum(n for s, n in by_status.items() if s in ("validating", "in_progress")) == 2, by_status
            # The hook says what it did in the cancelled run's logs.
            assert any("its remote batches keep running; the next run of this task adopts them" in m
                       for m in said[False]), said[False]
            assert any("2 remote batch(es) cancelled" in m for m in said[True]), said[True]
        finally:
            gate.set()
            worker.send_signal(signal.SIGINT)
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=10)
