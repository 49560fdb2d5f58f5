"""The demos as users run them: on /v1/responses with the bundled emulator, and against Azure OpenAI (the
emulator's Azure mode: /openai/... paths, api-version, api-key header), in batch and direct mode, through the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.engine.state import TaskState
from gbatch_flows.store import open_store

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from flows import char_codes  # noqa: E402
from flows.char_codes import CharCodes  # noqa: E402
from gbatch_flows.cli import main  # noqa: E402


def _output(task_dir: Path) -> list[dict]:
    return [orjson.loads(line) for line in (task_dir / "char_codes" / "char_codes_output.jsonl").read_bytes().splitlines()]


def _state(task_dir: Path) -> TaskState:
    return TaskState.from_manifest(open_store(str(task_dir / "char_codes")).load())


@pytest.mark.parametrize("mode", ["batch", "direct"])
def test_char_codes_on_responses_with_the_bundled_emulator(tmp_path: Path, monkeypatch, mode: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    argv = ["--no_prefect", "--no_wandb", "--chat_endpoint", "/v1/responses", "--char_ranges", "0x41-0x46",
            "--task_dir", str(tmp_path)] + (["--force_direct"] if mode == "direct" else [])
    assert main(CharCodes, argv) == 0, capsys.readouterr().err
    assert [r["character"] for r in _output(tmp_path)] == list("ABCDEF")
    state = _state(tmp_path)
    assert state.require_task().meta["chat_endpoint"] == "/v1/responses"
    batches = state.batches_in("processed")
    assert batches and all(b.usage.prompt_tokens > 0 and b.usage.completion_tokens > 0 and b.cost > 0
                           for b in batches)


@pytest.mark.parametrize("mode", ["batch", "direct"])
def test_char_codes_on_azure(tmp_path: Path, monkeypatch, mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "dummy-azure-key")
    config = EmulatorConfig(azure=True, azure_deployments=["gpt-4o-mini"], api_key="dummy-azure-key",
                            batch_duration=0.3, responders={"*": char_codes.emulator_answer})
    with run_emulator(config) as emu:
        argv = ["--no_prefect", "--no_wandb", "--azure_endpoint", emu.url, "--azure_api_version",
                "2025-03-01-preview", "--char_ranges", "0x41-0x44", "--task_dir", str(tmp_path)]
        argv += ["--force_direct"] if mode == "direct" else []
        assert main(CharCodes, argv) == 0, capsys.readouterr().err
        ops = emu.stats()["requests_by_op"]
    assert [r["character"] for r in _output(tmp_path)] == list("ABCD")
    if mode == "batch":
        assert ops.get("batches.create") == 1 and ops.get("files.create") == 1, ops
    else:
        assert not ops.get("batches.create") and ops.get("chat.completions") == 4, ops
    assert all(b.cost > 0 for b in _state(tmp_path).batches_in("processed"))
