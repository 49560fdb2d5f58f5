"""Stage caching: a stage called again on the same committed manifest is a Prefect cache hit; correctness never
depends on the cache (results storage wiped, task folder deleted and created again)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from types import ModuleType

import pytest

from gbatch_flows import flow as flow_module
from gbatch_flows.engine.runner import GENERATE
from gbatch_flows.launch import open_engine, prepare
from gbatch_flows.options import Options

from .conftest import (
    DUMMY_KEY,
    PrefectServer,
    emulator_for,
    flow_options,
    local_ids_pushed_twice,
    newest_generation,
    read_jsonl,
    task_runs,
)

RANGE = "0x41-0x5A"


def test_stage_called_again_on_the_same_manifest_is_a_cache_hit(prefect_server: PrefectServer,
                                                                 char_codes: ModuleType, tmp_path: Path) -> None:
    from prefect import flow
    from prefect.utilities.annotations import quote

    task = char_codes.CharCodes({"char_ranges": RANGE})
    options = Options(task_dir=str(tmp_path / "tasks"), no_wandb=True, emulator="never")
    url = str(tmp_path / "tasks" / "char_codes")
    generate_task = flow_module.STAGE_TASKS[GENERATE]

    class Broken:
        """Stages whose engine cannot be used: a stage that really ran on it would fail."""

        engine = None

    with open_engine(task, options, "cache-probe", base_url="http://127.0.0.1:9/v1", api_key=DUMMY_KEY) as engine:
        prepare(engine, task)
        start = engine.refresh()
        stages = flow_module.PrefectStages(engine, options, url)
        key = f"probe:{uuid.uuid4().hex}:{start.generation}:{start.manifest.sha256}"

        @flow(name="cache-probe")
        def probe() -> dict[str, object]:
            first = generate_task(quote(stages), (), key, "generate-requests-1", return_state=True)
            generated = engine.refresh()
            second = generate_task(quote(Broken()), (), key, "generate-requests-2", return_state=True)
            return {"first": first, "second": second, "generated": generated}

        out = probe()
        assert out["first"].name == "Completed"
        assert out["generated"].generation > start.generation and out["generated"].queued_requests() == 26
        assert out["second"].name == "Cached"
        assert out["second"].result() == out["first"].result() == 26
        assert engine.refresh().generation == out["generated"].generation

        # The cache lives in the result storage only; with it wiped the stage runs again, still correctly.
        shutil.rmtree(prefect_server.results_dir, ignore_errors=True)

        @flow(name="cache-probe-wiped")
        def probe_wiped() -> object:
            return generate_task(quote(stages), (), key, "generate-requests-3", return_state=True)

        third = probe_wiped()
        assert third.name == "Completed"
        assert engine.refresh().queued_requests() == 26  # generating again added nothing


@pytest.mark.timeout(180)
def test_runs_are_correct_with_cache_hits_wiped_results_and_a_recreated_task(
        prefect_server: PrefectServer, char_codes: ModuleType, tmp_path: Path) -> None:
    folder = tmp_path / "tasks" / "char_codes"
    output = folder / "char_codes_output.jsonl"

    def run(session: str) -> tuple[str, list[str]]:
        state = char_codes.char_codes_flow(options=options, params={"char_ranges": RANGE}, session_id=session,
                                           return_state=True)
        assert state.is_completed(), state.message
        return state.result()["status"], [t.state.name for t in task_runs(state.state_details.flow_run_id)]

    with emulator_for(char_codes.CharCodes) as emu:
        options = flow_options(tmp_path, emu, max_batch_requests=13)
        status, _ = run("s")
        assert status == "finished"
        generation, data, created = newest_generation(folder), output.read_bytes(), emu.stats()["batches_created"]

        # The same session again (what `prefect flow-run retry` does): nothing is left to do, so only
        # generate-requests runs (a no-op here; stages with nothing to do are not called) and nothing changes.
        status, states = run("s")
        assert status == "finished" and states == ["Completed"]
        assert (newest_generation(folder), output.read_bytes()) == (generation, data)
        # Once more: generate-requests is called on that very manifest again, a cache hit.
        status, states = run("s")
        assert status == "finished" and states == ["Cached"]
        assert (newest_generation(folder), output.read_bytes()) == (generation, data)

        # Without Prefect's result storage: no cache hit, same outcome.
        shutil.rmtree(prefect_server.results_dir, ignore_errors=True)
        status, states = run("s")
        assert status == "finished" and "Cached" not in states
        assert (newest_generation(folder), output.read_bytes()) == (generation, data)
        assert emu.stats()["batches_created"] == created

        # The task folder deleted by hand: its generation numbers start again, but the old task's cached stage
        # results must not be reused (they were, and the flow looped on them forever).
        shutil.rmtree(folder)
        status, states = run("s")
        assert status == "finished" and "Cached" not in states
        assert sorted(r["codepoint"] for r in read_jsonl(output)) == list(range(0x41, 0x5B))
        stats = emu.stats()
        assert stats["batches_created"] == 2 * created
        assert local_ids_pushed_twice(stats) == {str(i): 2 for i in range(1, created + 1)}  # once per task copy
