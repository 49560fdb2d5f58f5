"""The original gpt_batch_api's "safe steps" (its README, "Running a Custom Task"), typed as its users type them, through
the char_codes command line (``main()``), on the bundled emulator (no API key in the environment)."""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from pathlib import Path

import pytest

from gbatch_flows.cli import main
from gbatch_flows.engine.state import TaskState
from gbatch_flows.status import request_counts
from gbatch_flows.store import BlobRef, open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "flows"))
from char_codes import CharCodes, parse_ranges  # noqa: E402

RANGES = "0x21-0x7E,0xA1-0x24F"
WIDER = "0x21-0x7E,0xA1-0x24F,0x391-0x3A9"
MODELARGS = ["--model", "gpt-4o-mini"]
STATUS = re.compile(r"requests: (\d+) = (\d+) done \+ (\d+) failed \+ (\d+) queued \+ (\d+) in batches")


def samples(ranges: str) -> int:
    """How many requests the task yields for ``ranges`` (code points that are not control/unassigned)."""
    return sum(1 for lo, hi in parse_ranges(ranges) for cp in range(lo, hi + 1)
               if not unicodedata.category(chr(cp)).startswith("C"))


class Cli:
    """``python flows/char_codes.py ARGS ...`` in this process; returns (exit code, everything printed)."""

    def __init__(self, task_dir: Path, capsys: pytest.CaptureFixture[str]):
        self.args = ["--task_dir", str(task_dir), "--no_prefect"]
        self.url = str(task_dir / CharCodes.name)
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str]:
        self.capsys.readouterr()
        try:
            code = main(CharCodes, [*self.args, *argv])
        except SystemExit as exc:  # --help and usage errors, as argparse does
            code = int(exc.code or 0)
        captured = self.capsys.readouterr()
        return code, captured.out + captured.err

    def state(self) -> TaskState:
        return TaskState.from_manifest(open_store(self.url).load())

    def check_counts(self, total: int) -> None:
        """done + failed + queued + in batches == the task's number of requests, in the state and the status view."""
        counts = request_counts(self.state())
        assert counts.done + counts.failed + counts.queued + counts.in_batches == total, counts
        code, out = self("--no_wandb", "--no_run")
        assert code == 0, out
        shown = [int(n) for n in STATUS.search(out).groups()]
        assert shown == [total, counts.done, counts.failed, counts.queued, counts.in_batches], out


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    return Cli(tmp_path / "tasks", capsys)


def test_the_original_safe_steps_1_to_8(cli: Cli) -> None:
    total = samples(RANGES)
    assert total > 500
    task = ["--char_ranges", RANGES]

    # 1) list the arguments
    code, out = cli("--help")
    assert code == 0
    for flag in ("--max_session_requests", "--reinit_meta", "--wipe_requests", "--force_direct", "--char_ranges"):
        assert flag in out

    # 2) initialise the task without running it: its metadata is fixed from here on
    code, out = cli(*task, *MODELARGS, "--no_wandb", "--no_run", "--max_completion_tokens", "300",
                    "--completion_ratio", "0.5", "--temperature", "0.3")
    assert code == 0, out
    meta = cli.state().require_task().meta
    assert (meta["max_completion_tokens"], meta["completion_ratio"], meta["temperature"]) == (300, 0.5, 0.3)

    # 3) a batch of 100 requests, assembled but not sent; the metadata flags of step 2 are not repeated
    code, out = cli(*task, *MODELARGS, "--no_wandb", "--max_session_requests", "0", "--max_batch_requests", "100",
                    "--max_unpushed_batches", "1")
    assert code == 0, out
    state = cli.state()
    [batch] = state.batches.values()
    assert (batch.state, batch.mode, batch.requests) == ("assembled", "batch", 100)
    path = BlobRef.model_validate(batch.input_ref).path
    assert f"{cli.url}/{path}" in out  # the run says where the batch file is
    lines = [json.loads(line) for line in (Path(cli.url) / path).read_text().splitlines()]
    assert len(lines) == 100 and all(line["body"]["max_completion_tokens"] == 300 for line in lines)
    assert state.totals.committed.requests == 0
    cli.check_counts(total)

    # 4) show 10 requests verbosely without sending them
    before = cli.state().generation
    code, out = cli(*task, *MODELARGS, "--no_wandb", "--max_session_requests", "10", "--max_batch_requests", "100",
                    "--max_unpushed_batches", "1", "--force_direct", "--direct_verbose", "always", "--dryrun")
    assert code == 0, out
    shown = [json.loads(line.split(": ", 1)[1]) for line in out.splitlines() if line.strip().startswith("would send")]
    assert len(shown) == 10 and all(body["model"] == "gpt-4o-mini" and body["messages"] for body in shown)
    assert cli.state().generation == before

    # 5) 10 requests and responses through the direct API, verbosely; the unpushed batch goes direct too
    code, out = cli(*task, *MODELARGS, "--no_wandb", "--max_session_requests", "10", "--max_batch_requests", "100",
                    "--max_unpushed_batches", "1", "--force_direct", "--direct_verbose", "always")
    assert code == 0, out
    assert out.count("direct always") == 10 and out.count("response:") == 10
    state = cli.state()
    assert not [b for b in state.batches.values() if b.mode == "batch"]  # no batch went to the Batch API
    assert request_counts(state).done == 10
    cli.check_counts(total)

    # 6) 100 requests through the direct API, verbose only on warnings
    code, out = cli(*task, *MODELARGS, "--no_wandb", "--max_session_requests", "100", "--max_batch_requests", "100",
                    "--max_unpushed_batches", "1", "--force_direct", "--direct_verbose", "warn")
    assert code == 0, out
    assert "direct always" not in out
    assert request_counts(cli.state()).done == 110

    # 7) 400 requests through the Batch API (batches of at most 250), then tune the metadata from its figures
    code, out = cli(*task, *MODELARGS, "--no_wandb", "--max_session_requests", "400", "--max_batch_requests", "250",
                    "--max_unpushed_batches", "1")
    assert code == 0, out
    state = cli.state()
    remote = [b for b in state.batches.values() if b.mode == "batch"]
    assert sorted(b.requests for b in remote) == [150, 250] and request_counts(state).done == 510
    observed = completion_tokens(cli)
    tuning = re.search(r"completion tokens over (\d+) answered requests: max (\d+), p95 (\d+)", out)
    assert tuning, out
    assert int(tuning[1]) == len(observed) == 510 and int(tuning[2]) == max(observed)
    exact_p95 = sorted(observed)[-(len(observed) // 20) - 1]
    assert exact_p95 <= int(tuning[3]) <= max(observed)
    assert "(max_completion_tokens 300)" in out and "(completion_ratio 0.5)" in out
    new_max = 2 * max(observed)
    code, out = cli(*task, *MODELARGS, "--no_wandb", "--no_run", "--reinit_meta", "--max_completion_tokens",
                    str(new_max), "--completion_ratio", "0.25", "--temperature", "0.3")
    assert code == 0, out
    assert cli.state().require_task().meta["max_completion_tokens"] == new_max
    cli.check_counts(total)

    # 8) let remote batches finish, then 1 USD of fresh requests (ongoing ones wiped) through the Batch API
    code, out = cli(*task, *MODELARGS, "--no_wandb", "--only_process")
    assert code == 0, out
    code, out = cli(*task, *MODELARGS, "--no_wandb", "--wipe_requests", "--max_session_cost", "1.00",
                    "--max_batch_cost", "1.00", "--max_unpushed_batches", "1")
    assert code == 0, out
    state = cli.state()
    assert request_counts(state).done == total
    refreshed = [b for b in state.batches.values() if b.local_id > max(r.local_id for r in remote)]
    assert refreshed and all(b.model == "gpt-4o-mini" for b in refreshed)
    body = json.loads((Path(cli.url) / BlobRef.model_validate(refreshed[0].input_ref).path).read_text().splitlines()[0])
    assert body["body"]["max_completion_tokens"] == new_max  # regenerated with the re-initialised metadata
    cli.check_counts(total)
    output = [json.loads(line) for line in (Path(cli.url) / "char_codes_output.jsonl").read_text().splitlines()]
    assert len(output) == total and len({r["codepoint"] for r in output}) == total

    # the task folder's status at any time; then a wider range through --reinit_meta generates the new samples
    code, out = cli(*task, *MODELARGS, "--no_wandb", "--max_remote_ktokens", "60000", "--no_run")
    assert code == 0 and f"requests: {total} = {total} done" in out
    code, out = cli("--char_ranges", WIDER, "--no_wandb", "--no_run", "--reinit_meta", "--max_completion_tokens",
                    str(new_max), "--completion_ratio", "0.25", "--temperature", "0.3")
    assert code == 0, out
    code, out = cli("--no_wandb")
    assert code == 0, out
    wider = samples(WIDER)
    assert wider > total and request_counts(cli.state()).done == wider
    cli.check_counts(wider)

    # 9) back to scratch
    code, out = cli("--no_wandb", "--wipe_task", "--no_run")
    assert code == 0, out
    assert cli.state().task is None


def completion_tokens(cli: Cli) -> list[int]:
    """Completion tokens of every answered request, read from the stored results of the processed batches."""
    store = open_store(cli.url)
    out = []
    for batch in cli.state().batches_in("processed"):
        for raw in store.iter_lines(BlobRef.model_validate(batch.results_ref)):
            if raw.strip():
                response = json.loads(raw).get("response") or {}
                out.append(((response.get("body") or {}).get("usage") or {}).get("completion_tokens", 0))
    return out
