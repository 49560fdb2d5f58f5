"""The CLI: `--help`, and a server started as `python -m gbatch_flows.emulator` driven by the official client."""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from .conftest import DUMMY_KEY, chat_requests, read_lines, start_batch, wait_for

COMMAND = [sys.executable, "-m", "gbatch_flows.emulator"]


def test_help_lists_the_knobs() -> None:
    result = subprocess.run([*COMMAND, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for flag in ("--port", "--batch-duration", "--no-batch-api", "--api-key", "--rpm", "--tpm", "--state-dir",
                 "--enqueued-token-limit", "--fault-rate", "--fault-script", "--max-file-bytes", "--responder",
                 "--rate-limit-burst-seconds", "--azure", "--azure-deployments"):
        assert flag in result.stdout


def test_bad_options_exit_with_a_message() -> None:
    result = subprocess.run([*COMMAND, "--fault-rate", "http_500=2"], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode != 0 and "http_500" in result.stderr


@pytest.fixture
def server_url(tmp_path) -> Iterator[str]:
    script = json.dumps([{"op": "chat.completions", "nth": 1, "fault": "http_500"}])
    process = subprocess.Popen(
        [*COMMAND, "--port", "0", "--batch-duration", "0.3", "--api-key", DUMMY_KEY, "--state-dir", str(tmp_path),
         "--fault-script", script, "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        deadline = time.monotonic() + 60
        line = ""
        while not line and time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=1):
                line = process.stdout.readline()  # type: ignore[union-attr]
        assert "listening on" in line, f"no start line; stderr: {process.stderr.read() if process.poll() is not None else ''}"
        yield line.split()[-1]
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_server_process_runs_a_whole_batch_life_cycle(server_url: str) -> None:
    root = server_url.removesuffix("/v1")
    with openai.OpenAI(base_url=server_url, api_key=DUMMY_KEY, max_retries=0) as client:
        with pytest.raises(openai.InternalServerError):  # the scripted fault
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert client.chat.completions.create(model="gpt-4o-mini",
                                              messages=[{"role": "user", "content": "hi"}]).choices
        requests = chat_requests(5)
        batch = start_batch(client, requests, metadata={"gbatch_local_id": "L1"})
        done = wait_for(client, batch.id)
        assert done.status == "completed" and done.request_counts.completed == 5
        assert [line["custom_id"] for line in read_lines(client, done.output_file_id)] == \
            [r["custom_id"] for r in requests]
        stats = httpx.get(f"{root}/_emulator/stats").json()
        assert stats["batches_by_local_id"] == {"L1": 1}
        assert stats["faults_injected"] == {"http_500": 1}
        assert httpx.post(f"{root}/_emulator/faults",
                          json={"script": [{"op": "batches.list", "nth": 1, "fault": "http_503"}]}).status_code == 200
        with pytest.raises(openai.InternalServerError):
            client.batches.list()
    with (openai.OpenAI(base_url=server_url, api_key="sk-wrong", max_retries=0) as wrong,
          pytest.raises(openai.AuthenticationError)):
        wrong.models.list()


def test_demo_responder_is_the_default_and_can_be_replaced() -> None:
    """Both demos against one standalone emulator: tests/docs/test_readme.py (the README's commands)."""
    from gbatch_flows.emulator.__main__ import DEMO_RESPONDER, build_parser, config_from_args

    assert config_from_args(build_parser().parse_args([])).responders == {"*": DEMO_RESPONDER}
    given = config_from_args(build_parser().parse_args(["--responder", "*=pkg.mod:fn", "--responder", "m=a.b:c"]))
    assert given.responders == {"*": "pkg.mod:fn", "m": "a.b:c"}
