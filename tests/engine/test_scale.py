"""Scale (issue 19): repeated-key detection without holding every key, and a restart's first push before any new
assembly (bench/scale.py measures both at 10,000,000 requests)."""

from __future__ import annotations

from typing import Any

import pytest

from gbatch_flows.engine import runner as runner_module
from gbatch_flows.engine.context import EngineStop
from gbatch_flows.engine.generate import generate
from gbatch_flows.engine.keyset import HashSet
from gbatch_flows.engine.runner import run_engine

from .conftest import EchoTask, engine_for, make_options


def test_hash_set_finds_every_repeat_and_grows():
    seen = HashSet()
    keys = [f"k{i}" for i in range(200_000)]
    assert not any(seen.add(k) for k in keys)  # (a 64-bit hash match of two of these keys: odds ~1e-9)
    assert len(seen) == 200_000
    assert all(seen.add(k) for k in keys[::997])
    assert len(seen) == 200_000
    assert len(seen._table) <= 200_000 * 3  # at most 3 slots of 8 bytes per key


class Keys(EchoTask):
    def __init__(self, keys: list[str]):
        super().__init__(n=len(keys))
        self.keys = keys

    def generate_requests(self, meta: dict[str, Any]):
        for key in self.keys:
            yield self.chat_request(key, [{"role": "user", "content": f"about {key}"}], meta)


def test_a_repeated_key_stops_generate(tmp_path, emulator):
    with engine_for(Keys(["a", "b", "c", "b"]), make_options(tmp_path), emulator) as engine:
        with pytest.raises(EngineStop, match="'b' twice"):
            generate(engine)


def test_a_hash_match_of_different_keys_is_checked_exactly(tmp_path, emulator, monkeypatch):
    monkeypatch.setattr(HashSet, "_hash", staticmethod(lambda key: 12345))  # every key collides
    with engine_for(Keys(["a", "b", "c"]), make_options(tmp_path / "ok"), emulator) as engine:
        generate(engine)
        assert engine.state.task.generated_requests == 3
    with engine_for(Keys(["a", "b", "a"]), make_options(tmp_path / "repeat"), emulator) as engine:
        with pytest.raises(EngineStop, match="'a' twice"):
            generate(engine)


def test_a_restart_pushes_the_batches_left_assembled_before_assembling_more(tmp_path, emulator, monkeypatch):
    task = EchoTask(n=60)
    options = make_options(tmp_path, max_batch_requests=10, max_session_requests=10, max_unpushed_batches=3)
    with engine_for(task, options, emulator, "first") as engine:
        run_engine(engine)
        left = [b.local_id for b in engine.state.batches_in("assembled")]
        assert left and len(engine.state.batches) > len(left)  # one batch sent, more left assembled
    calls: list[str] = []
    for name in ("assemble", "push"):
        real = getattr(runner_module, name)

        def spy(*args: Any, _real=real, _name=name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(runner_module, name, spy)
    with engine_for(task, options, emulator, "restart") as engine:
        run_engine(engine)
        pushed = [b.local_id for b in engine.state.batches.values() if b.remote_id]
    assert calls[0] == "push", calls
    assert left[0] in pushed, (left, pushed)  # the restart sent the oldest batch left assembled
