"""Docs are tests: every command of README.md and deployments/README.md runs somewhere in the suite, as written.

`WHERE` says where each documented command runs; `test_every_documented_command_runs_somewhere` fails when the
docs show a command that no test runs (or a test runs one the docs no longer show). The commands run as written with
bash, from a folder laid out like the checkout (`flows/`), with no OpenAI key unless a step needs "a real API",
which the environment then points at an emulator started here (`OPENAI_BASE_URL`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gbatch_flows.testing.docs import documented_commands, normalized, split_commands
from gbatch_flows.testing.ports import free_port, port_is_free

from .conftest import REPO, background, checkout_copy, doc_env, run

README = REPO / "README.md"
DEPLOYMENTS = REPO / "deployments" / "README.md"

CI = ".ci/run (the two Quick start commands, in one fresh venv)"
FAST = "tests/docs/test_readme.py (demo runs marked slow, as they take 10-30 s each)"
PREFECT = "tests/docs/test_readme.py, slow: through a Prefect server"
E2E = "tests/deploy/test_server_e2e.py, slow: a Prefect server, workers, prefect.yaml"

QUICK_START = "python3 -m venv .venv && . .venv/bin/activate && pip install -q -e . && python flows/char_codes.py"
VARIATIONS = [
    "python flows/char_codes.py --dryrun",
    "python flows/char_codes.py --char_ranges 0x3B1-0x3C9 --wipe_task",
    "python flows/utterance_emotion.py --opinions_min 3 --opinions_max 7 --confidence 0.7",
]
EMULATOR = "python -m gbatch_flows.emulator --port 8000"
ON_EMULATOR = [
    "python flows/char_codes.py --client_base_url http://127.0.0.1:8000/v1 --no_prefect",
    "python flows/utterance_emotion.py --client_base_url http://127.0.0.1:8000/v1 --no_prefect",
]
SAFE_STEPS = [
    "python flows/char_codes.py --char_ranges 0x41-0x5A --dryrun",
    "python flows/char_codes.py --char_ranges 0x41-0x5A --emulator always --task_dir emulated",
    "python flows/char_codes.py --char_ranges 0x41-0x5A --max_batch_requests 20 --max_session_cost 0.10",
    "python flows/char_codes.py --char_ranges 0x41-0x5A --max_session_cost 1 --max_task_cost 2",
    "python flows/char_codes.py --char_ranges 0x41-0x5A --wipe_failed",
]
LOCAL_SERVER = "python flows/char_codes.py --client_base_url http://127.0.0.1:11434/v1 --model llama3.1 --force_direct"
LINT = "ruff check gbatch_flows flows tests bench"

WHERE: dict[str, str] = {
    QUICK_START: CI,
    "pip install -q -e '.[dev,fast]' && python -m pytest": CI,
    "python flows/char_codes.py --help": FAST,
    "python flows/char_codes.py --no_prefect": FAST,
    EMULATOR: FAST,
    **dict.fromkeys(ON_EMULATOR, FAST),
    LINT: FAST,
    **dict.fromkeys(VARIATIONS, PREFECT),
    **dict.fromkeys(SAFE_STEPS, PREFECT),
    LOCAL_SERVER: PREFECT,
}


# deployments/README.md: the server end-to-end test reads these from the page and runs each (it checks that too,
# in test_every_command_of_deployments_readme_ran); listed here so the quick tier notices a change.
DEPLOYMENT_COMMANDS = [
    "export PREFECT_SERVER_ANALYTICS_ENABLED=false",
    "prefect server start --host 127.0.0.1 --port 4200",
    "export PREFECT_API_URL=http://127.0.0.1:4200/api",
    "prefect work-pool create local --type process",
    "prefect --no-prompt deploy --all",
    "export GBATCH_REPO=/path/to/gbatch_flows",
    "export OPENAI_API_KEY=sk-...",
    "prefect worker start --pool local",
    "prefect deployment run 'char-codes/char-codes'",
    "prefect deployment run 'char-codes/char-codes' --params '{\"options\": {\"task_dir\": \"tasks/letters\", "
    "\"no_wandb\": true, \"max_session_cost\": 0.5}, \"params\": {\"char_ranges\": \"0x41-0x5A\"}}' --watch "
    "--watch-timeout 3600",
    "prefect flow-run ls --flow-name char-codes --limit 5",
    "prefect artifact ls",
    "prefect artifact inspect char-codes-summary",
    "prefect deployment schedule ls char-codes/char-codes",
    "prefect deployment schedule resume char-codes/char-codes <SCHEDULE_ID>",
    "python -m gbatch_flows.quota set s3://team-bucket/gbatch-quota --model gpt-4o-mini --max_remote_ktokens 2000 "
    "--max_daily_cost 50 --max_monthly_cost 800",
    "python -m gbatch_flows.quota show s3://team-bucket/gbatch-quota",
]


def test_every_documented_command_runs_somewhere() -> None:
    shown = [normalized(c) for c in documented_commands(README)]
    assert sorted(set(shown)) == sorted(WHERE), "README.md's commands and the commands the tests run differ"
    deployments = {normalized(c) for c in documented_commands(DEPLOYMENTS)}
    assert deployments == set(DEPLOYMENT_COMMANDS), "deployments/README.md changed: check " + E2E
    e2e = (REPO / "tests" / "deploy" / "conftest.py").read_text()
    assert "documented_commands(DEPLOYMENTS_README)" in e2e


def test_command_extraction() -> None:
    """Comments go, `\\` and quotes continue a command over lines, a `#` inside quotes stays."""
    script = "a --x 1   # note\n# only a comment\nb 'c # d' \\\n  --e\nf '{\"g\":\n  1}' # h\n"
    assert split_commands(script) == ["a --x 1", "b 'c # d'    --e", "f '{\"g\":\n  1}'"]


def test_ci_runs_the_quick_start_commands() -> None:
    """`.ci/run` reads the two Quick start commands from the README; they are the ones listed here as CI's."""
    listed = subprocess.run([sys.executable, str(REPO / ".ci" / "readme_commands.py")], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert listed == [c for c, where in WHERE.items() if where == CI]
    ci = (REPO / ".ci" / "run").read_text()
    assert "python3 .ci/readme_commands.py" in ci and "PIP_NO_CACHE_DIR=1" in ci
    assert 'eval "${COMMANDS[$i]}"' in ci  # in this shell, so the venv made by the first stays active for the second


def test_ci_script_runs_both_commands_in_one_venv_and_times_pip(tmp_path: Path) -> None:
    """.ci/run itself, on a stand-in README whose two Quick start commands are cheap."""
    (tmp_path / ".ci").mkdir()
    for name in ("run", "readme_commands.py"):
        (tmp_path / ".ci" / name).write_bytes((REPO / ".ci" / name).read_bytes())
    (tmp_path / "README.md").write_text(
        "# x\n\n## Quick start\n\n```bash\npython3 -m venv --without-pip .venv && . .venv/bin/activate && pip --version\n```\n\n"
        "```bash\npip --version && python -c 'import sys; print(\"in\", sys.prefix)'\n```\n\n## Next\n")
    env = {k: v for k, v in doc_env().items() if k != "CI"}  # CI=true would let it delete a leftover .venv
    done = subprocess.run(["bash", ".ci/run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"in {tmp_path / '.venv'}" in done.stdout  # the second command ran in the venv of the first
    assert len(re.findall(r"CI: pip --version took \d+ s \(exit 0\)", done.stdout)) == 2
    assert re.search(r"CI: passed in \d+ s; installing took \d+ s", done.stdout)
    again = subprocess.run(["bash", ".ci/run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                           check=False)
    assert again.returncode == 1 and ".venv exists" in again.stderr  # never a stale venv
    (tmp_path / "README.md").write_text((tmp_path / "README.md").read_text().replace("pip --version &&", "false &&"))
    failed = subprocess.run(["bash", ".ci/run"], cwd=tmp_path, env={**env, "CI": "true"}, capture_output=True,
                            text=True, timeout=300, check=False)
    assert failed.returncode == 1 and "CI: FAILED: false &&" in failed.stderr


def records(folder: Path, task: str) -> list[dict]:
    path = folder / "tasks" / task / f"{task}_output.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def printable_ascii() -> list[int]:
    return list(range(0x21, 0x7F))  # char_codes' default --char_ranges: 94 characters


def test_help(tmp_path: Path) -> None:
    work = checkout_copy(tmp_path / "checkout")
    shown = run("python flows/char_codes.py --help", work, doc_env()).stdout
    assert "--max_session_cost" in shown and "--char_ranges" in shown


@pytest.mark.slow  # a whole demo run
def test_run_without_prefect(tmp_path: Path) -> None:
    work = checkout_copy(tmp_path / "checkout")
    done = run("python flows/char_codes.py --no_prefect", work, doc_env())
    assert "bundled OpenAI emulator" in done.stdout
    assert sorted(r["codepoint"] for r in records(work, "char_codes")) == printable_ascii()


@pytest.mark.slow  # both demos, whole
def test_one_emulator_serves_both_demos_as_documented(tmp_path: Path) -> None:
    if not port_is_free(8000):
        pytest.skip("port 8000 (the README's emulator port) is in use here")
    work = checkout_copy(tmp_path / "checkout")
    with background(EMULATOR, work, doc_env()) as emulator:
        emulator.wait_line("listening on http://127.0.0.1:8000/v1")
        for command in ON_EMULATOR:
            run(command, work, doc_env())
        stats = httpx.get("http://127.0.0.1:8000/_emulator/stats", timeout=10).json()
    assert sorted(r["codepoint"] for r in records(work, "char_codes")) == printable_ascii()
    utterances = [x for x in (REPO / "flows" / "data" / "utterances.jsonl").read_text().splitlines() if x.strip()]
    assert len(records(work, "utterance_emotion")) == len(utterances)
    assert stats["batches_created"] >= 2


def test_lint_command() -> None:
    run(LINT, REPO, doc_env())


# ------------------------------------------------------------------ slow: commands that run a Prefect flow


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory: pytest.TempPathFactory):
    """A Prefect server for this module's runs (a temporary server per run would cost ~20 s each)."""
    from deploy.conftest import Service, wait_http

    base = tmp_path_factory.mktemp("docs-prefect")
    port = free_port()
    env = doc_env(PREFECT_HOME=str(base / "home"), PREFECT_UI_ENABLED="false",
                  PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false")
    server = Service("prefect-server", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                        "--port", str(port)], env, base)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", server)
        yield doc_env(PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_HOME=str(base / "home"))
    finally:
        server.stop()


@pytest.mark.slow
def test_quick_start_demo_and_variations_through_prefect(prefect_env: dict[str, str], tmp_path: Path) -> None:
    work = checkout_copy(tmp_path / "checkout")
    demo = QUICK_START.rsplit(" && ", 1)[1]  # the install part runs in .ci/run
    first = run(demo, work, prefect_env)
    assert "bundled OpenAI emulator" in first.stdout + first.stderr
    output = work / "tasks" / "char_codes" / "char_codes_output.jsonl"
    data = output.read_bytes()
    assert sorted(r["codepoint"] for r in records(work, "char_codes")) == printable_ascii()
    run(demo, work, prefect_env)  # "Run the same command again: nothing changes"
    assert output.read_bytes() == data
    dryrun, greek, emotions = VARIATIONS
    plan = run(dryrun, work, prefect_env)
    assert output.read_bytes() == data, plan.stdout
    run(greek, work, prefect_env)
    assert sorted(r["codepoint"] for r in records(work, "char_codes")) == list(range(0x3B1, 0x3CA))
    run(emotions, work, prefect_env)
    utterances = [x for x in (REPO / "flows" / "data" / "utterances.jsonl").read_text().splitlines() if x.strip()]
    assert len(records(work, "utterance_emotion")) == len(utterances)


@pytest.mark.slow
def test_safe_steps_with_the_api_pointed_at_an_emulator(prefect_env: dict[str, str], tmp_path: Path) -> None:
    """Steps 3-7 talk to "the real API": here OPENAI_BASE_URL points at a standalone emulator, with a dummy key."""
    work = checkout_copy(tmp_path / "checkout")
    with background("python -m gbatch_flows.emulator --port 0 --batch-duration 0.5", work, doc_env()) as emulator:
        url = emulator.wait_line("listening on").split()[-1]
        env = {**prefect_env, "OPENAI_API_KEY": "sk-test-dummy-docs", "OPENAI_BASE_URL": url}
        plan, emulated, sample, rest, wipe_failed = SAFE_STEPS
        run(plan, work, env)
        assert not (work / "tasks" / "char_codes" / "char_codes_output.jsonl").exists()
        # A user's environment has the key but no base URL (which --emulator always refuses), so step 2 runs so.
        run(emulated, work, {k: v for k, v in env.items() if k != "OPENAI_BASE_URL"})
        emulated_output = work / "emulated" / "char_codes" / "char_codes_output.jsonl"
        assert len(emulated_output.read_text().splitlines()) == 26
        stats = httpx.get(url.removesuffix("/v1") + "/_emulator/stats", timeout=10).json()
        assert stats["batches_created"] == 0  # step 2 used an emulator of its own
        run(sample, work, env)
        run(rest, work, env)
        run(wipe_failed, work, env)
        stats = httpx.get(url.removesuffix("/v1") + "/_emulator/stats", timeout=10).json()
    assert sorted(r["codepoint"] for r in records(work, "char_codes")) == list(range(0x41, 0x5B))
    assert stats["batches_created"] >= 2  # at most 20 requests per batch in step 3


@pytest.mark.slow
def test_local_server_command(prefect_env: dict[str, str], tmp_path: Path) -> None:
    """The "Local servers" command against the emulator in its Ollama-like mode on Ollama's port."""
    if not port_is_free(11434):
        pytest.skip("port 11434 (Ollama's) is in use here")
    work = checkout_copy(tmp_path / "checkout")
    command = "python -m gbatch_flows.emulator --port 11434 --no-batch-api"
    with background(command, work, doc_env()) as emulator:
        emulator.wait_line("listening on")
        run(LOCAL_SERVER, work, prefect_env)
        stats = httpx.get("http://127.0.0.1:11434/_emulator/stats", timeout=10).json()
    assert sorted(r["codepoint"] for r in records(work, "char_codes")) == printable_ascii()
    assert stats["batches_created"] == 0 and stats["requests_by_op"].get("chat.completions", 0) >= 94
