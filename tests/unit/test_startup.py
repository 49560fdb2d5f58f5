"""Start-up of a run: what the restart path imports, the garbage collector paused during the imports, and a CLI
run as a script (which goes through every import deferred to first use)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

from gbatch_flows.startup import imports_loaded

ROOT = Path(__file__).resolve().parents[2]

#: Loaded only by what needs them (generating, --config, direct calls, Prefect, W&B, the bundled emulator): a
#: restart that pushes what an earlier run generated loads none of them before its first push.
NOT_ON_THE_RESTART_PATH = ("httpx", "yaml", "tiktoken", "PIL", "prefect", "wandb", "fastapi", "uvicorn",
                           "gbatch_flows.tokens", "gbatch_flows.emulator", "gbatch_flows.flow")


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_the_restart_path_does_not_import_what_it_does_not_use() -> None:
    code = ("import sys\n"
            "import flows.char_codes, gbatch_flows.cli, gbatch_flows.runs, gbatch_flows.launch\n"
            "import gbatch_flows.engine.runner, gbatch_flows.engine.push\n"
            f"print([m for m in {NOT_ON_THE_RESTART_PATH!r} if m in sys.modules])\n")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_imports_loaded_resumes_a_paused_collector_only() -> None:
    frozen = gc.get_freeze_count()
    imports_loaded()  # the collector runs: nothing to do
    assert gc.isenabled() and gc.get_freeze_count() == frozen
    gc.disable()
    try:
        imports_loaded()
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.enable()
        gc.unfreeze()


def test_cli_run_as_a_script_with_a_config_file(tmp_path: Path) -> None:
    """``python flows/char_codes.py`` end to end (bundled emulator): generate (the token estimator, loaded on
    first use), --config (yaml, loaded on first use), push, poll, process, output; the collector resumed."""
    config = tmp_path / "config.yaml"
    config.write_text("max_session_requests: 100\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "flows" / "char_codes.py"), "--task_dir", str(tmp_path / "tasks"),
         "--no_prefect", "--char_ranges", "0x41-0x43", "--config", str(config), "--log_level", "WARNING"],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "char_codes: finished" in result.stdout
    lines = (tmp_path / "tasks" / "char_codes" / "char_codes_output.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
