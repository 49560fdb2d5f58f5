"""The standalone emulator's default responder (the demos' answers), answering only while the gate file exists.

Used by the end-to-end deployment test (``--responder '*=gated_responder:answer'`` with this folder on
PYTHONPATH and ``GBATCH_TEST_GATE=<file>``): removing the file keeps every batch in flight, so the test can kill
a worker mid-run without guessing how long a run takes; creating it lets the batches complete.
"""

from __future__ import annotations

import os
import time
from typing import Any

from gbatch_flows.emulator.__main__ import demo_responder

GATE_ENV = "GBATCH_TEST_GATE"
GATE_TIMEOUT_S = 120.0


def answer(body: dict[str, Any], ctx: Any) -> str:
    gate = os.environ.get(GATE_ENV)
    if gate:
        deadline = time.monotonic() + GATE_TIMEOUT_S
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise RuntimeError(f"test gate {gate} never opened")
            time.sleep(0.02)
    return demo_responder(body, ctx)
