"""An emulator responder for the char_codes demo that answers only while the gate file exists.

Used by the end-to-end deployment test (``--responder '*=gated_responder:answer'`` with this folder on
PYTHONPATH and ``GBATCH_TEST_GATE=<file>``): removing the file keeps every batch in flight, so the test can kill
a worker mid-run without guessing how long a run takes; creating it lets the batches complete.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

GATE_ENV = "GBATCH_TEST_GATE"
GATE_TIMEOUT_S = 120.0
_DEMO = Path(__file__).resolve().parents[2] / "flows" / "char_codes.py"


def _demo_answer() -> Any:
    spec = importlib.util.spec_from_file_location("gbatch_demo_char_codes_responder", _DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the demo models' annotations through sys.modules
    spec.loader.exec_module(module)
    return module.emulator_answer


_answer = _demo_answer()


def answer(body: dict[str, Any], ctx: Any) -> str:
    gate = os.environ.get(GATE_ENV)
    if gate:
        deadline = time.monotonic() + GATE_TIMEOUT_S
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise RuntimeError(f"test gate {gate} never opened")
            time.sleep(0.02)
    return _answer(body, ctx)
