"""End to end through a real Prefect server (issue "Step 6"): prefect.yaml deployed to a `process` pool, a worker
runs the char_codes demo on S3 (moto) against the emulator; a worker killed mid-run; `prefect flow-run retry`.
Every command of deployments/README.md runs here as written (the server, pool, deploy, worker, triggered runs,
watching), and each deployment runs with the parameters prefect.yaml ships.

Runs in the default ``python -m pytest``, not in ``-m "not slow"``.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
import s3fs

from gbatch_flows.quota import ModelLimits, QuotaLedger
from gbatch_flows.store import open_store
from gbatch_flows.testing.docs import normalized
from gbatch_flows.testing.moto import MotoS3

from .conftest import (
    DUMMY_KEY,
    REPO,
    RUN_TIMEOUT_S,
    EmulatorProcess,
    PrefectApi,
    Workers,
    bash,
    clean_env,
    dumps,
    is_running,
    run_parameters,
    trigger,
    wait_state,
)

pytestmark = [pytest.mark.slow, pytest.mark.s3]

CODEPOINTS = list(range(0x41, 0x5B))


def artifacts(api: PrefectApi, run_id: str) -> dict[str, dict[str, Any]]:
    found = api.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    return {a["key"]: a for a in found}


def codepoints(fs: s3fs.S3FileSystem, path: str) -> list[int]:
    return sorted(json.loads(line)["codepoint"] for line in fs.cat(path).decode().splitlines() if line.strip())


def test_prefect_yaml_deploys_both_demos(prefect_api: PrefectApi, deployments: dict[str, dict[str, Any]]) -> None:
    assert set(deployments) == {"char-codes", "utterance-emotion"}
    assert prefect_api.get("/work_pools/local")["type"] == "process"
    pull = [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $GBATCH_REPO }}"}}]
    for name, entrypoint in (("char-codes", "flows/char_codes.py:char_codes_flow"),
                             ("utterance-emotion", "flows/utterance_emotion.py:utterance_emotion_flow")):
        deployment = deployments[name]
        assert deployment["entrypoint"] == entrypoint
        assert deployment["work_pool_name"] == "local"
        assert deployment["pull_steps"] == pull  # resolved on the worker, from its environment
        assert deployment["parameters"]["options"]["task_dir"]
        # shipped inactive (a real key would spend at every tick until the user turns them on), cron-anchored
        assert deployment["schedules"] and not any(s["active"] for s in deployment["schedules"])
        assert all(s["schedule"].get("cron") for s in deployment["schedules"])
        assert deployment["concurrency_limit"] == 1 or (deployment.get("global_concurrency_limit") or {}).get("limit") == 1
        assert prefect_api.get(f"/flows/{deployment['flow_id']}")["name"] == name
    assert deployments["char-codes"]["parameters"]["params"]["char_ranges"]


def test_worker_runs_char_codes_on_s3(prefect_api: PrefectApi, deployments: dict[str, dict[str, Any]],
                                      workers: Workers, emulator: EmulatorProcess, s3: Any) -> None:
    moto, bucket = s3
    workers.start()
    parameters = run_parameters(emulator, f"s3://{bucket}/first", max_batch_requests=9)
    # Triggered as the README does it; the CLI prints the new run's id.
    out = prefect_api.cli("deployment", "run", "char-codes/char-codes", "--params", json.dumps(parameters)).stdout
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
    run = wait_state(prefect_api, run_id, "COMPLETED", workers)

    fs = s3fs.S3FileSystem(**moto.storage_options)
    assert codepoints(fs, f"{bucket}/first/char_codes/char_codes_output.jsonl") == CODEPOINTS
    assert run["name"] == f"char_codes-{run_id.replace('-', '')[:12]}"
    found = artifacts(prefect_api, run_id)
    assert float(found["char-codes-progress"]["data"]) == pytest.approx(100.0)
    assert len(found["char-codes-batches"]["data"] if isinstance(found["char-codes-batches"]["data"], list)
               else json.loads(found["char-codes-batches"]["data"])) == 3
    assert f"s3://{bucket}/first/char_codes" in found["char-codes-summary"]["data"]
    assert "(26 records)" in found["char-codes-summary"]["data"]
    stats = emulator.stats()
    assert stats["batches_created"] == 3 and set(stats["batches_by_local_id"].values()) == {1}


def test_killed_worker_then_retry_finishes_without_duplicates(
        prefect_api: PrefectApi, deployments: dict[str, dict[str, Any]], workers: Workers,
        emulator: EmulatorProcess, s3: Any) -> None:
    moto, bucket = s3
    fs = s3fs.S3FileSystem(**moto.storage_options)
    task_url = f"s3://{bucket}/second/char_codes"
    output = f"{bucket}/second/char_codes/char_codes_output.jsonl"
    deployment = deployments["char-codes"]
    # The run also reserves in a shared quota ledger on S3 (issue 17): the kill must not leak its reservations.
    ledger = QuotaLedger(f"s3://{bucket}/quota-second", storage_options=moto.storage_options)
    ledger.set_limits(ModelLimits(model="gpt-4o-mini", max_remote_ktokens=100))
    parameters = run_parameters(emulator, f"s3://{bucket}/second", max_batch_requests=3, max_remote_batches=3,
                                quota_dir=ledger.url)
    if not workers.started or workers.started[-1].proc.poll() is not None:
        workers.start()
    before = emulator.stats()

    # 1. A run whose batches stay in flight (emulator gate closed) ...
    emulator.close_gate()
    run_b = trigger(prefect_api, deployment, parameters)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while emulator.stats()["batches_created"] - before["batches_created"] < 2:
        assert time.monotonic() < deadline, workers.started[-1].log_tail()
        time.sleep(0.05)

    # 2. ... so a second run of the same deployment is refused before it starts by the deployment's concurrency
    #    limit (prefect.yaml: limit 1, CANCEL_NEW): Cancelled, saying so, no worker slot taken.
    run_c = trigger(prefect_api, deployment, parameters)
    cancelled = wait_state(prefect_api, run_c, "CANCELLED", workers)
    assert "concurrency limit" in cancelled["state"]["message"].lower()

    # 3. The worker and its flow-run process are killed mid-run. The server still thinks run B is running.
    killed = workers.started[-1].kill()
    assert len(killed) >= 2, "the flow-run process was not among the killed processes"
    assert not any(is_running(pid) for pid in killed)
    emulator.open_gate()
    assert prefect_api.get(f"/flow_runs/{run_b}")["state"]["type"] == "RUNNING"
    assert json.loads(fs.cat(f"{bucket}/second/char_codes/lease.json"))["released"] is False
    assert not fs.exists(output)
    held = ledger.report()["models"]["gpt-4o-mini"]
    assert held["tokens_in_flight"] > 0 and len(held["tasks"]) == 1, held  # the dead run's batches, still reserved

    # 4. Run B is marked Crashed (what Prefect's zombie-flow detection does; deployments/README.md), which frees
    #    the deployment's slot; `prefect flow-run retry` of it, on a new worker, takes over the lease of its dead
    #    process (gone from this host, so no need to wait for expiry), resumes the task from its manifest and
    #    finishes it.
    prefect_api.post(f"/flow_runs/{run_b}/set_state", {"state": {"type": "CRASHED", "name": "Crashed",
                                                                  "message": "worker killed"}, "force": True})
    workers.start()
    prefect_api.cli("flow-run", "retry", run_b)
    wait_state(prefect_api, run_b, "COMPLETED", workers)
    assert codepoints(fs, output) == CODEPOINTS  # every record once
    after = emulator.stats()
    pushed = {k: n - before["batches_by_local_id"].get(k, 0) for k, n in after["batches_by_local_id"].items()}
    batches = [k for k in open_store(task_url, storage_options=moto.storage_options).load().sections
               if k.startswith("batch/")]
    assert {k: n for k, n in pushed.items() if n} == {str(i): 1 for i in range(1, 10)}  # no batch pushed twice
    assert after["batches_created"] - before["batches_created"] == len(batches) == 9
    # Its reservations came back: nothing held in the ledger, nobody waiting.
    held = ledger.report()["models"]["gpt-4o-mini"]
    assert held["tokens_in_flight"] == 0 and held["tasks"] == {} and held["waiting"] == [], held

    # 5. One more triggered run finds the task finished: nothing sent, output unchanged.
    data = fs.cat(output)
    run_d = trigger(prefect_api, deployment, parameters)
    wait_state(prefect_api, run_d, "COMPLETED", workers)
    assert fs.cat(output) == data
    assert emulator.stats()["batches_created"] == after["batches_created"]


def records(path: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_id_of(output: str) -> str:
    return re.search(r"UUID:\s*([0-9a-f-]{36})", output).group(1)


def test_documented_runs_with_the_shipped_parameters(
        prefect_api: PrefectApi, deployments: dict[str, dict[str, Any]], workers: Workers,
        emulator: EmulatorProcess, checkout: Any) -> None:
    """Each deployment runs with prefect.yaml's own parameters (the worker's OPENAI_BASE_URL points them at the
    emulator; tasks/ is the worker checkout's), then deployments/README.md's triggered and watching commands."""
    emulator.open_gate()
    if not workers.started or workers.started[-1].proc.poll() is not None:
        workers.start()
    shipped = {name: d["parameters"] for name, d in deployments.items()}
    assert shipped["char-codes"]["options"]["max_session_cost"] == 1.0  # as in prefect.yaml, no override
    assert "client_base_url" not in shipped["char-codes"]["options"]

    # `prefect deployment run 'char-codes/char-codes'`: the deployment's parameters, as shipped.
    run_id = run_id_of(prefect_api.doc("prefect deployment run 'char-codes/char-codes'").stdout)
    run = wait_state(prefect_api, run_id, "COMPLETED", workers)
    assert run["parameters"] == shipped["char-codes"]
    ranges = [(0x41, 0x5A), (0x3B1, 0x3C9)]
    assert shipped["char-codes"]["params"]["char_ranges"] == ",".join(f"0x{a:X}-0x{b:X}" for a, b in ranges)
    expected = sorted(c for a, b in ranges for c in range(a, b + 1))
    assert sorted(r["codepoint"] for r in records(checkout / "tasks" / "char_codes" / "char_codes_output.jsonl")) \
        == expected

    # The other deployment, triggered the same way with its parameters as shipped.
    run_id = run_id_of(prefect_api.cli("deployment", "run", "utterance-emotion/utterance-emotion").stdout)
    run = wait_state(prefect_api, run_id, "COMPLETED", workers)
    assert run["parameters"] == shipped["utterance-emotion"]
    utterances = [u for u in (REPO / "flows" / "data" / "utterances.jsonl").read_text().splitlines() if u.strip()]
    emotions = records(checkout / "tasks" / "utterance_emotion" / "utterance_emotion_output.jsonl")
    assert len(emotions) == len(utterances)
    assert all(sum(r["votes"].values()) >= 3 for r in emotions)  # opinions_min 3, as shipped

    # The run with parameters of its own, watched to its end (`--watch` exits 1 unless it completes).
    prefect_api.doc("prefect deployment run 'char-codes/char-codes' --params", timeout=RUN_TIMEOUT_S * 2)
    letters = records(checkout / "tasks" / "letters" / "char_codes" / "char_codes_output.jsonl")
    assert sorted(r["codepoint"] for r in letters) == CODEPOINTS

    # Watching, as documented.
    assert "char_codes-" in prefect_api.doc("prefect flow-run ls --flow-name char-codes --limit 5").stdout
    assert "char-codes-summary" in prefect_api.doc("prefect artifact ls").stdout
    assert "records" in prefect_api.doc("prefect artifact inspect char-codes-summary").stdout


def test_documented_schedule_commands(prefect_api: PrefectApi, deployments: dict[str, dict[str, Any]]) -> None:
    """Turning a shipped (inactive) schedule on, as deployments/README.md shows (the test server's scheduler is off,
    so no run is created)."""
    listed = prefect_api.doc("prefect deployment schedule ls char-codes/char-codes").stdout
    (schedule,) = deployments["char-codes"]["schedules"]
    assert schedule["id"] in listed
    command = prefect_api.docs.one("prefect deployment schedule resume char-codes/char-codes")
    bash(command.replace("<SCHEDULE_ID>", schedule["id"]), {**prefect_api.env(), **{
        k: v for k, v in prefect_api.docs.exports().items() if k.startswith("PREFECT_")}})
    (after,) = prefect_api.get(f"/deployments/{deployments['char-codes']['id']}")["schedules"]
    assert after["active"] is True
    prefect_api.cli("deployment", "schedule", "pause", "char-codes/char-codes", schedule["id"])


def test_documented_quota_commands(prefect_api: PrefectApi, s3: tuple[MotoS3, str]) -> None:
    """The shared-quota commands, as written, against S3 (moto) with credentials from the AWS environment."""
    moto, _ = s3
    moto.create_bucket("team-bucket")
    env = clean_env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                    AWS_ENDPOINT_URL_S3=moto.endpoint_url)
    set_out = bash(prefect_api.docs.one("python -m gbatch_flows.quota set"), env).stdout
    shown = bash(prefect_api.docs.one("python -m gbatch_flows.quota show"), env).stdout
    for out in (set_out, shown):
        assert "gpt-4o-mini: 0 tokens in flight of 2000000" in out and "of $50" in out and "of $800" in out, out
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": moto.endpoint_url})
    assert fs.ls("team-bucket/gbatch-quota/manifests")  # committed like a task manifest


def test_every_command_of_deployments_readme_ran(prefect_api: PrefectApi) -> None:
    """The tests above ran each command deployments/README.md shows (the prefect_api fixture records them)."""
    shown = {normalized(c) for c in prefect_api.docs.commands}
    assert shown - prefect_api.docs.used == set()


def test_no_secret_reaches_the_server(prefect_api: PrefectApi, deployments: dict[str, dict[str, Any]],
                                      workers: Workers) -> None:
    """The workers' environment held the (dummy) OpenAI key; no parameter or job variable stored has it."""
    assert DUMMY_KEY in workers.env.values()
    runs = prefect_api.post("/flow_runs/filter", {})
    assert len(runs) >= 4
    for run in runs:
        assert DUMMY_KEY not in dumps(run["parameters"]) and DUMMY_KEY not in dumps(run.get("job_variables"))
    for deployment in prefect_api.post("/deployments/filter", {}):
        assert DUMMY_KEY not in dumps(deployment["parameters"])
        assert DUMMY_KEY not in dumps(deployment.get("job_variables"))
