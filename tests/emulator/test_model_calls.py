"""The model endpoints' own ASGI handler (model_calls.py): the same answers and errors as the other routes, user
responders off the event loop, and the server on uvicorn's httptools protocol with connection tracking."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from gbatch_flows.emulator import EmulatorConfig, FaultConfig, run_emulator
from gbatch_flows.emulator.config import FaultRates
from gbatch_flows.emulator.transport import TrackingH11Protocol, tracking_protocol

from .conftest import CHAT, DUMMY_KEY

AUTH = {"Authorization": f"Bearer {DUMMY_KEY}"}
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5}


def test_a_body_that_is_not_json_is_the_real_400_with_the_rate_limit_headers():
    with run_emulator(EmulatorConfig(rpm=100, api_key=DUMMY_KEY)) as emu:
        answer = httpx.post(emu.url + CHAT, content=b"{not json", headers=AUTH, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_json"
    assert answer.headers["x-ratelimit-limit-requests"] == "100" and answer.headers["x-request-id"].startswith("req_")


def test_answers_are_compact_json_with_length_and_request_id():
    with run_emulator(EmulatorConfig()) as emu:
        answer = httpx.post(emu.url + CHAT, json=BODY, headers=AUTH, timeout=10)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert int(answer.headers["content-length"]) == len(answer.content) and b'": ' not in answer.content
    assert answer.json()["object"] == "chat.completion" and answer.headers["x-request-id"].startswith("req_")


def test_a_wrong_method_on_a_model_path_is_invalid_url():
    with run_emulator(EmulatorConfig()) as emu:
        answer = httpx.get(emu.url + CHAT, headers=AUTH, timeout=10)
    assert answer.status_code in (404, 405)
    assert answer.json()["error"]["message"] == "Invalid URL (GET /v1/chat/completions)"


def test_an_unexpected_error_is_a_500_in_the_real_shape(monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    with run_emulator(EmulatorConfig()) as emu:
        monkeypatch.setattr(emu.emulator.executor, "respond", broken)
        answer = httpx.post(emu.url + CHAT, json=BODY, headers=AUTH, timeout=10)
        after = httpx.get(emu.url + "/v1/models", headers=AUTH, timeout=10)  # the server lives on
    assert answer.status_code == 500
    assert answer.json()["error"] == {"message": "The emulator failed: RuntimeError: a bug", "type": "server_error",
                                      "param": None, "code": None}
    assert after.status_code == 200


def test_a_slow_user_responder_does_not_hold_up_other_requests():
    release = threading.Event()

    def slow(body: dict[str, Any]) -> str:
        release.wait(10)
        return "late"

    with run_emulator(EmulatorConfig(responders={"slow-model": slow})) as emu:
        finished: list[str] = []

        def slow_call() -> None:
            answer = httpx.post(emu.url + CHAT, json={**BODY, "model": "slow-model"}, headers=AUTH, timeout=20)
            finished.append(answer.json()["choices"][0]["message"]["content"])

        thread = threading.Thread(target=slow_call)
        thread.start()
        time.sleep(0.2)  # the slow call is in its responder now (or about to be)
        quick = httpx.post(emu.url + CHAT, json=BODY, headers=AUTH, timeout=10)
        assert quick.status_code == 200 and finished == []  # answered while the slow one still waits
        release.set()
        thread.join(20)
    assert finished == ["late"]


def test_the_server_runs_httptools_and_still_drops_connections_on_a_fault():
    pytest.importorskip("httptools")
    assert tracking_protocol() is not TrackingH11Protocol
    faults = FaultConfig(rates=FaultRates(drop_connection=1.0, ops=["chat.completions"]))
    with run_emulator(EmulatorConfig(faults=faults)) as emu:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(emu.url + CHAT, json=BODY, headers=AUTH, timeout=10)
        assert emu.stats()["faults_injected"] == {"drop_connection": 1}



def test_more_blocked_user_responders_than_cores_do_not_starve_each_other():
    """Twelve calls whose responder waits until all twelve are in it: each needs its own thread (asyncio's default
    pool has only cores + 4, and held them all here before the calls went to anyio's pool of 40)."""
    calls = 12
    arrived = threading.Barrier(calls, timeout=20)

    def gather(body: dict[str, Any]) -> str:
        arrived.wait()
        return "together"

    with run_emulator(EmulatorConfig(responders={"gather-model": gather})) as emu:
        results: list[str] = []

        def one() -> None:
            answer = httpx.post(emu.url + CHAT, json={**BODY, "model": "gather-model"}, headers=AUTH, timeout=30)
            results.append(answer.json()["choices"][0]["message"]["content"])

        threads = [threading.Thread(target=one) for _ in range(calls)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert results == ["together"] * calls
