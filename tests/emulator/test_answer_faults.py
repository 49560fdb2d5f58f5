"""Faults after the operation (issue 14): `answer_lost` and `slow_answer` let the call take effect, then the client
never hears (or hears too late) that it did."""

from __future__ import annotations

import time

import openai
import pytest

from .conftest import chat_requests, upload

USER = [{"role": "user", "content": "hi"}]


def _script(op: str, fault: str, **extra: object) -> dict:
    return {"script": [{"op": op, "nth": 1, "fault": fault, **extra}]}


def test_lost_answer_to_an_upload_leaves_the_file(emulator_factory) -> None:
    emu, client = emulator_factory(faults=_script("files.create", "answer_lost"))
    with pytest.raises(openai.APIConnectionError):
        upload(client, chat_requests(2), name="gbatch_t_000001_1.jsonl")
    names = [f.filename for f in client.files.list(purpose="batch")]
    assert names == ["gbatch_t_000001_1.jsonl"]
    assert emu.stats()["faults_injected"] == {"answer_lost": 1}


def test_lost_answer_to_a_batch_create_leaves_the_batch(emulator_factory) -> None:
    emu, client = emulator_factory(batch_duration=0, faults=_script("batches.create", "answer_lost"))
    file = upload(client, chat_requests(2))
    with pytest.raises(openai.APIConnectionError):
        client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"gbatch_local_id": "7"})
    listed = list(client.batches.list())
    assert [b.metadata for b in listed] == [{"gbatch_local_id": "7"}]
    assert emu.stats()["batches_by_local_id"] == {"7": 1}


def test_lost_answer_to_a_chat_completion_is_billed(emulator_factory) -> None:
    emu, client = emulator_factory(faults=_script("chat.completions", "answer_lost"))
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    stats = emu.stats()
    assert stats["prompt_tokens"] > 0 and stats["completion_tokens"] > 0


def test_slow_answer_times_the_client_out_after_the_operation(emulator_factory) -> None:
    emu, client = emulator_factory(faults={"script": [
        {"op": "batches.retrieve", "nth": 1, "fault": "slow_answer", "delay_s": 1.0},
        {"op": "files.create", "nth": 1, "fault": "slow_answer", "delay_s": 1.0},
    ]})
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).files.create(file=("late.jsonl", b'{"a": 1}\n'), purpose="batch")
    assert [f.filename for f in client.files.list()] == ["late.jsonl"]
    file = upload(client, chat_requests(1))
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    started = time.monotonic()
    assert client.batches.retrieve(batch.id).id == batch.id  # a patient client gets the answer, late
    assert time.monotonic() - started >= 1.0
    assert emu.stats()["faults_injected"] == {"slow_answer": 2}


def test_rates_draw_answer_lost_per_op(emulator_factory) -> None:
    _, client = emulator_factory(faults={"seed": 3, "rates": {"answer_lost": 0.5, "ops": ["chat.completions"]}})
    outcomes = []
    for _ in range(40):
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=USER)
            outcomes.append("ok")
        except openai.APIConnectionError:
            outcomes.append("lost")
    assert 8 <= outcomes.count("lost") <= 32
    assert list(client.files.list()) == []  # other ops are not affected
