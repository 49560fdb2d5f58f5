"""Clients this project did not write, driving the emulator: the official `openai` package at the lowest and the
highest version the project supports (pyproject: openai>=1.60,<4), raw HTTP on every route, and (optional) a
third-party batch client.

The installed `openai` runs in the fast tier. The `slow` tier installs openai==1.60.0 and the newest openai<4 into
throwaway folders (`pip install --target`, kept under the system temp folder between runs) and skips, saying why,
when the package index cannot be reached. Every client runs `compat_client.py` in a subprocess, so the version under
test is the only `openai` it can import.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gbatch_flows.emulator import EmulatorConfig, RunningEmulator, run_emulator

SCRIPT = Path(__file__).with_name("compat_client.py")
INSTALL_ROOT = Path(tempfile.gettempdir()) / "gbatch-compat-clients"
OFFLINE_HINTS = ("NewConnectionError", "Network is unreachable", "Temporary failure in name resolution",
                 "No matching distribution found", "Could not find a version", "ConnectTimeout", "ProxyError",
                 "Max retries exceeded")
KEY = {"Authorization": "Bearer sk-test-dummy"}
REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")


@pytest.fixture
def compat_emu() -> Iterator[RunningEmulator]:
    """batch_duration 0 (a retrieve waits for the batch) and Azure paths on."""
    with run_emulator(EmulatorConfig(batch_duration=0, azure=True)) as emu:
        yield emu


def run_client(emu: RunningEmulator, site: Path | None = None) -> dict[str, Any]:
    """Run compat_client.py against `emu` with `site` (a --target folder) first on the path; its first
    models.retrieve gets a scripted 429 (for the error checks)."""
    emu.set_faults(script=[{"op": "models.retrieve", "nth": 1, "fault": "http_429"}])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site)] if site is not None else [])
    env.pop("OPENAI_BASE_URL", None)
    env.pop("OPENAI_API_KEY", None)
    done = subprocess.run([sys.executable, str(SCRIPT), emu.base_url, emu.url], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"the client failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_session(seen: dict[str, Any]) -> None:
    direct = seen["direct"]
    assert 1 <= direct["chat_json"]["n"] <= 9 and direct["chat_usage"]
    assert 1 <= direct["responses_json"]["n"] <= 9 and direct["responses_usage"] == [True, True]
    assert direct["embedding_sizes"] == [4, 4] and direct["completion_text"]
    assert direct["moderation_flags"] == [False, True] and direct["models"]
    batches = seen["batches"]
    for url in ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions", "/v1/moderations"):
        assert batches[url] == {"filename": "upload", "status": "completed", "completed": 3, "statuses": [200],
                                "output_expiry": 3600, "input_expiry": 30 * 86400}, (url, batches[url])
    assert batches["listed"] == 5
    assert seen["errors"] == {"not_found": [404, True], "bad_request": [400, True], "rate_limited": [429, True],
                              "after_429": "gpt-4o-mini"}
    assert seen["azure"] == {"model": "dep-1", "batch": ["completed", 1]}


def test_installed_official_client(compat_emu: RunningEmulator) -> None:
    seen = run_client(compat_emu)
    assert seen["version"] == openai.VERSION
    check_session(seen)


def _install(requirement: str) -> Path:
    """A folder with `requirement` (and its dependencies) installed by pip --target; skips when pip cannot reach
    the package index."""
    site = INSTALL_ROOT / hashlib.sha1(requirement.encode()).hexdigest()[:12]
    if (site / ".complete").exists():
        return site
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--upgrade", "--target", str(site), requirement],
                          capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        if any(hint in output for hint in OFFLINE_HINTS):
            pytest.skip(f"cannot install {requirement!r} (package index not reachable?): {output.strip()[-300:]}")
        pytest.fail(f"pip install --target failed for {requirement!r}:\n{output[-3000:]}")
    (site / ".complete").write_text(requirement)
    return site


@pytest.mark.slow
@pytest.mark.parametrize("requirement", ["openai==1.60.0", "openai>=1.60,<4"], ids=["lowest", "highest"])
def test_official_client_versions(compat_emu: RunningEmulator, requirement: str) -> None:
    site = _install(requirement)
    seen = run_client(compat_emu, site)
    if requirement == "openai==1.60.0":
        assert seen["version"] == "1.60.0"
    else:
        assert seen["version"].split(".")[0] in {"1", "2", "3"}
    check_session(seen)


# --- raw HTTP ------------------------------------------------------------------------------------------------------

def _lines(url: str, body: dict[str, Any], count: int = 2) -> bytes:
    items = [{"custom_id": f"h{i}", "method": "POST", "url": url, "body": body} for i in range(count)]
    return "".join(json.dumps(item) + "\n" for item in items).encode()


MODEL_CALLS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"model": "gpt-4o-mini", "input": [{"role": "user", "content": "hi"}]},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
    "/v1/completions": {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"},
    "/v1/moderations": {"input": "hi"},
}
OBJECTS = {"/v1/chat/completions": "chat.completion", "/v1/responses": "response", "/v1/embeddings": "list",
           "/v1/completions": "text_completion", "/v1/moderations": None}


def test_raw_http_on_every_route(compat_emu: RunningEmulator) -> None:
    base = compat_emu.url
    with httpx.Client(base_url=base, headers=KEY, timeout=60) as http:
        replies: list[httpx.Response] = []

        def call(method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
            reply = http.request(method, path, **kwargs)
            replies.append(reply)
            assert reply.status_code == status, (method, path, reply.text)
            return reply.json() if reply.headers.get("content-type", "").startswith("application/json") else reply

        for path, body in MODEL_CALLS.items():
            answer = call("POST", path, json=body)
            assert answer.get("object") == OBJECTS[path] if OBJECTS[path] else "results" in answer
        assert call("GET", "/v1/models")["data"] and call("GET", "/v1/models/gpt-4o-mini")["id"] == "gpt-4o-mini"

        batch_ids = []
        for path, body in MODEL_CALLS.items():
            file = call("POST", "/v1/files", data={"purpose": "batch"}, files={"file": _lines(path, body)})
            assert file["filename"] == "upload" and file["expires_at"] == file["created_at"] + 30 * 86400
            assert call("GET", f"/v1/files/{file['id']}")["id"] == file["id"]
            assert call("GET", f"/v1/files/{file['id']}/content").content == _lines(path, body)
            batch = call("POST", "/v1/batches", json={"input_file_id": file["id"], "endpoint": path,
                                                      "completion_window": "24h"})
            batch = call("GET", f"/v1/batches/{batch['id']}")
            assert (batch["status"], batch["request_counts"]["completed"]) == ("completed", 2), batch
            lines = call("GET", f"/v1/files/{batch['output_file_id']}/content").text.splitlines()
            assert [json.loads(x)["response"]["status_code"] for x in lines] == [200, 200]
            batch_ids.append(batch["id"])
        assert [b["id"] for b in call("GET", "/v1/batches", params={"limit": 10})["data"]] == batch_ids[::-1]
        assert len(call("GET", "/v1/files", params={"purpose": "batch"})["data"]) == 5
        cancel = call("POST", f"/v1/batches/{batch_ids[0]}/cancel", status=409)
        assert cancel["error"]["code"] == "batch_not_cancellable"
        assert call("DELETE", f"/v1/files/{file['id']}")["deleted"] is True
        call("GET", f"/v1/files/{file['id']}", status=404)
        call("POST", "/v1/responses", status=400, json={"model": "gpt-4o-mini"})
        call("GET", "/v1/nowhere", status=404)
    for reply in replies:
        assert REQUEST_ID.match(reply.headers.get("x-request-id", "")), (reply.request.url, reply.headers)
        if reply.status_code >= 400:
            error = reply.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}


# --- a third-party batch client (optional) -------------------------------------------------------------------------

def _curator_site() -> Path | None:
    """Where Curator is: importable here (None), or a `pip install --target` folder named by
    $GBATCH_COMPAT_CURATOR_SITE; skips the test when neither."""
    folder = os.environ.get("GBATCH_COMPAT_CURATOR_SITE")
    if folder and (Path(folder) / "bespokelabs" / "curator").is_dir():
        return Path(folder)
    if importlib.util.find_spec("bespokelabs") is not None and importlib.util.find_spec("bespokelabs.curator"):
        return None
    pytest.skip("bespokelabs-curator is not installed (optional third-party batch client): pip install "
                "bespokelabs-curator, or set GBATCH_COMPAT_CURATOR_SITE to a `pip install --target` folder with it")


def _run_curator(mode: str, emu: RunningEmulator, cache: Path, prompts: list[str]) -> dict[str, Any]:
    site = _curator_site()
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    done = subprocess.run([sys.executable, str(SCRIPT.with_name("curator_client.py")), mode, emu.base_url,
                           str(cache), *prompts], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_third_party_batch_client_curator(tmp_path: Path) -> None:
    prompts = ["alpha", "beta", "gamma"]
    with run_emulator(EmulatorConfig(batch_duration=0.5)) as emu:
        seen = _run_curator("batch", emu, tmp_path, prompts)
        stats = emu.stats()
    assert [r.split(".")[0] for r in seen["responses"]] == [f"Emulated reply to: {p}" for p in prompts]
    assert stats["files_created"] == 1 and stats["batches_created"] == 1  # raw bytes named "upload", one batch
    assert stats["responses_by_status"].keys() == {"200"}


@pytest.mark.slow
def test_third_party_client_curator_online_reads_limits_from_a_400(tmp_path: Path) -> None:
    prompts = [f"prompt {i}" for i in range(30)]
    with run_emulator(EmulatorConfig(rpm=300, tpm=200_000)) as emu:
        seen = _run_curator("online", emu, tmp_path, prompts)
        stats = emu.stats()
    assert seen["limits"] == [300, 200_000]  # read from the headers of the 400 answer to its probe
    assert sorted(r.split(".")[0] for r in seen["responses"]) == sorted(f"Emulated reply to: {p}" for p in prompts)
    assert stats["responses_by_status"]["400"] == 1 and stats["responses_by_status"]["200"] == 30
    assert stats["responses_429"] == stats["rate_limited"]  # any burst beyond the short window was refused
