"""Both demos through their Prefect flows (issue "Step 5"): output, idempotent resume, wipe, artifacts, run names."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from gbatch_flows import cli
from gbatch_flows.store import open_store

from .conftest import (
    PrefectServer,
    artifacts,
    emulator_for,
    flow_options,
    flow_run,
    local_ids_pushed_twice,
    newest_generation,
    read_jsonl,
)

RANGE = "0x41-0x5A"  # A..Z: 26 requests
CODEPOINTS = list(range(0x41, 0x5B))


def check_char_records(module: ModuleType, path: Path) -> list[int]:
    """Every line a valid CharCode, one per requested code point, none twice; returns the code points."""
    records = [module.CharCode.model_validate(r) for r in read_jsonl(path)]
    for record in records:
        assert record.character == chr(record.codepoint)
        assert record.sample_sentence.count(record.character) >= 2
    points = [r.codepoint for r in records]
    assert sorted(points) == CODEPOINTS
    return points


def test_char_codes_flow_runs_resumes_idempotently_and_reports(prefect_server: PrefectServer,
                                                               char_codes: ModuleType, tmp_path: Path) -> None:
    flow = char_codes.char_codes_flow
    folder = tmp_path / "tasks" / "char_codes"
    output = folder / "char_codes_output.jsonl"
    with emulator_for(char_codes.CharCodes) as emu:
        options = flow_options(tmp_path, emu, max_batch_requests=8)
        state = flow(options=options, params={"char_ranges": RANGE}, session_id="first", return_state=True)
        assert state.is_completed(), state.message
        summary = state.result()
        assert summary["status"] == "finished", summary
        check_char_records(char_codes, output)
        stats = emu.stats()
        assert stats["batches_created"] == 4  # ceil(26 / 8)
        assert not local_ids_pushed_twice(stats)

        # The run is named after task and session, and its artifacts are on the server.
        run = flow_run(state.state_details.flow_run_id)
        assert run.name == "char_codes-first"
        assert run.parameters["params"] == {"char_ranges": RANGE}
        found = artifacts(run.id)
        assert {"char-codes-progress", "char-codes-batches", "char-codes-summary"} <= set(found)
        assert found["char-codes-progress"].type == "progress"
        assert float(found["char-codes-progress"].data) == pytest.approx(100.0)
        rows = found["char-codes-batches"].data
        rows = rows if isinstance(rows, list) else json.loads(rows)
        assert len(rows) == 4 and sum(row["requests"] for row in rows) == 26
        assert all(row["state"] == "processed" for row in rows)
        summary_md = found["char-codes-summary"].data
        assert "finished" in summary_md and "(26 records)" in summary_md

        # Running again changes nothing: same manifest generation, same output bytes, no new remote batch.
        generation, data = newest_generation(folder), output.read_bytes()
        again = flow(options=options, params={"char_ranges": RANGE}, session_id="second", return_state=True)
        assert again.is_completed(), again.message
        assert again.result()["status"] == "finished"
        assert newest_generation(folder) == generation
        assert output.read_bytes() == data
        assert emu.stats()["batches_created"] == stats["batches_created"]


def test_wipe_task_no_run_then_run_rebuilds(prefect_server: PrefectServer, char_codes: ModuleType, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The CLI flags as a user types them: run, ``--wipe_task --no_run`` (state and output gone), run again."""
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)  # keep pytest's log capture in place
    folder = tmp_path / "tasks" / "char_codes"
    output = folder / "char_codes_output.jsonl"
    with emulator_for(char_codes.CharCodes) as emu:
        base = ["--task_dir", str(tmp_path / "tasks"), "--client_base_url", emu.base_url, "--no_wandb",
                "--char_ranges", RANGE, "--max_batch_requests", "13", "--poll_interval_min_s", "0.05",
                "--poll_interval_max_s", "0.2"]
        assert cli.main(char_codes.CharCodes, base) == 0
        first = read_jsonl(output)
        check_char_records(char_codes, output)
        created = emu.stats()["batches_created"]
        assert created == 2

        assert cli.main(char_codes.CharCodes, [*base, "--wipe_task", "--no_run"]) == 0
        assert not output.exists()
        wiped = open_store(str(folder)).load()
        assert not dict(wiped.sections)  # nothing left of the task
        assert emu.stats()["batches_created"] == created  # nothing was run

        assert cli.main(char_codes.CharCodes, base) == 0
        assert sorted(read_jsonl(output), key=lambda r: r["codepoint"]) == sorted(first, key=lambda r: r["codepoint"])
        stats = emu.stats()
        assert stats["batches_created"] == 2 * created  # rebuilt from scratch: its batches were sent again
    printed = capsys.readouterr().out
    assert printed.count("char_codes: finished: all requests processed") == 2
    assert "char_codes: stopped: no_run" in printed


def test_utterance_emotion_flow(prefect_server: PrefectServer, utterance_emotion: ModuleType,
                                tmp_path: Path) -> None:
    module = utterance_emotion
    items = read_jsonl(module.UTTERANCES_FILE)
    folder = tmp_path / "tasks" / "utterance_emotion"
    with emulator_for(module.UtteranceEmotionTask) as emu:
        options = flow_options(tmp_path, emu, opinions_min=3, opinions_max=7, confidence=0.7)
        state = module.utterance_emotion_flow(options=options, params={}, return_state=True)  # as a deployment does
        assert state.is_completed(), state.message
        assert state.result()["status"] == "finished"
        records = [module.UtteranceEmotion.model_validate(r)
                   for r in read_jsonl(folder / "utterance_emotion_output.jsonl")]
        assert sorted(r.id for r in records) == sorted(item["id"] for item in items)
        by_id = {item["id"]: item["utterance"] for item in items}
        for record in records:
            votes = sum(record.votes.values())
            assert 3 <= votes <= 7
            assert record.utterance == by_id[record.id]
            assert record.confidence == pytest.approx(max(record.votes.values()) / votes, abs=1e-4)
            assert record.confident == (record.confidence >= 0.7)
            if record.confident:
                assert record.votes[record.emotion.value] == max(record.votes.values())
        assert any(sum(r.votes.values()) > 3 for r in records), "no utterance needed follow-up opinions"
        assert not local_ids_pushed_twice(emu.stats())
        run = flow_run(state.state_details.flow_run_id)
        assert run.name == f"utterance_emotion-{run.id.hex[:12]}"  # no session_id: the run id names the session
        assert "utterance-emotion-summary" in artifacts(run.id)
