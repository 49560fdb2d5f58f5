"""Fixtures for the emulator tests: an in-process emulator, an official openai client, JSONL helpers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from gbatch_flows.emulator import EmulatorConfig, RunningEmulator, run_emulator

DUMMY_KEY = "sk-test-dummy"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def make_client(emu: RunningEmulator, api_key: str = DUMMY_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=emu.base_url, api_key=api_key, max_retries=0, timeout=30)


@pytest.fixture
def emu() -> Iterator[RunningEmulator]:
    """An emulator whose batches finish at the next retrieve."""
    with run_emulator(EmulatorConfig(batch_duration=0)) as running:
        yield running


@pytest.fixture
def client(emu: RunningEmulator) -> Iterator[openai.OpenAI]:
    with make_client(emu) as c:
        yield c


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., tuple[RunningEmulator, openai.OpenAI]]]:
    """Start emulators with given config fields; all are stopped after the test."""
    stack: list[Any] = []

    def start(**fields: Any) -> tuple[RunningEmulator, openai.OpenAI]:
        manager = run_emulator(EmulatorConfig(**fields))
        running = manager.__enter__()
        client = make_client(running)
        stack.append((manager, client))
        return running, client

    yield start
    for manager, client in reversed(stack):
        client.close()
        manager.__exit__(None, None, None)


def chat_line(custom_id: str, content: str = "hello", model: str = "gpt-4o-mini", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": model, "messages": [{"role": "user", "content": content}], **body}}


def jsonl(items: list[Any]) -> bytes:
    return "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in items).encode()


def chat_requests(count: int, prefix: str = "r", **body: Any) -> list[dict[str, Any]]:
    return [chat_line(f"{prefix}{i}", f"question {i}", **body) for i in range(count)]


def upload(client: openai.OpenAI, items: list[Any] | bytes, name: str = "input.jsonl", purpose: str = "batch") -> Any:
    data = items if isinstance(items, bytes) else jsonl(items)
    return client.files.create(file=(name, data), purpose=purpose)


def start_batch(client: openai.OpenAI, items: list[Any] | bytes, endpoint: str = CHAT,
                metadata: dict[str, str] | None = None) -> Any:
    file = upload(client, items)
    return client.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h",
                                 metadata=metadata)


def wait_for(client: openai.OpenAI, batch_id: str, done: Callable[[Any], bool] = lambda b: b.status in TERMINAL,
             deadline: float = 30.0) -> Any:
    """Poll the batch until `done(batch)`; fail the test after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        if time.monotonic() > end:
            pytest.fail(f"batch {batch_id} still {batch.status} ({batch.request_counts}) after {deadline}s")
        time.sleep(0.02)


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line.strip()]
