"""``--shared_direct_limit`` on a real Prefect server: two runs of the demo in direct mode at once, each in its own
process (as two workers would run them), against one emulator that enforces an RPM limit, share one Prefect rate
limit: no 429, most of the limit used while both send, a few Prefect API calls for many requests. Also: the limits
as the flow created them, and the options that cannot work refused."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gbatch_flows import prefect_rate
from gbatch_flows.emulator import EmulatorConfig, run_emulator
from gbatch_flows.options import Options

from .conftest import REPO, PrefectServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RPM = 2400  # 40 requests per second for the two runs together; each run alone may send that much
TPM = 2_000_000  # does not bind (about 250 tokens per request): there to be taken from Prefect too
RANGES = {"1": "0x1000-0x109F", "2": "0x2000-0x209F"}  # 160 and 128 requests (U+1xxx and U+2xxx)
CALLS_LINE = re.compile(r"shared direct limit '[^']+': (\d+) requests took (\d+) Prefect API calls \((\d+) refused")


class Arrivals:
    """The demo's responder, noting when each request was answered and for which run (its code point's range).

    The processes start seconds apart on a loaded machine, and the test is about the time both send: the first run's
    first requests wait unanswered until the other run sends too; then the emulator's RPM bucket starts again full
    (what those first requests took from it is given back), so both start from the same point, as two runs that
    start at once would. Requests answered at that moment are not timed (``held``)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.limiter: Any = None  # the emulator's, once it runs
        self.times: dict[str, list[float]] = {}
        self.held = 0
        self.lock, self.both = threading.Lock(), threading.Event()

    def __call__(self, body: dict[str, Any], ctx: Any) -> Any:
        match = re.search(r"U\+([12])[0-9A-F]{3}", json.dumps(body.get("messages")))
        run = match.group(1) if match else "?"
        held = False
        with self.lock:
            self.times.setdefault(run, [])
            if not self.both.is_set() and len(self.times) >= 2:
                self.limiter.reset()  # full again
                self.both.set()
            held = not self.both.is_set()
        if held:
            self.both.wait(timeout=120)
        with self.lock:
            if held:
                self.held += 1
            else:
                self.times[run].append(time.monotonic())
        return self.answer(body, ctx)


def test_two_direct_runs_in_two_processes_share_one_prefect_rate_limit(
        prefect_server: PrefectServer, char_codes: ModuleType, tmp_path: Path) -> None:
    scope = f"test-{uuid.uuid4().hex[:8]}"
    ((model, answer),) = char_codes.CharCodes().emulator_responders().items()
    arrivals = Arrivals(answer)
    started = time.monotonic()
    with run_emulator(EmulatorConfig(rpm=RPM, batch_duration=0.05, responders={model: arrivals})) as emu:
        arrivals.limiter = emu.emulator.limiter
        procs = [subprocess.Popen(
            [sys.executable, str(REPO / "flows" / "char_codes.py"), "--task_dir", str(tmp_path / name),
             "--client_base_url", emu.base_url, "--no_wandb", "--char_ranges", ranges, "--force_direct",
             "--max_direct_rpm", str(RPM), "--max_direct_tpm", str(TPM), "--shared_direct_limit", scope,
             "--max_session_cost", "none"],
            env=prefect_server.subprocess_env(), cwd=tmp_path, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT) for name, ranges in RANGES.items()]
        outputs = [proc.communicate(timeout=240)[0] for proc in procs]
        stats = emu.stats()
    elapsed = time.monotonic() - started

    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0 and "char_codes: finished" in out, out[-3000:]
    arrived = arrivals.times
    assert set(arrived) == set(RANGES) and sum(map(len, arrived.values())) + arrivals.held == 160 + 128
    # While both sent, together they used most of the shared limit (and no more: a 429 would have shown it).
    lo, hi = max(min(arrived[r]) for r in RANGES), min(max(arrived[r]) for r in RANGES)
    both = sum(lo <= t <= hi for r in RANGES for t in arrived[r])
    share = both / ((hi - lo) * RPM / 60) if hi > lo else 0.0
    # Chunks: a few Prefect API calls (refused ones and the set-up included) for many requests.
    figures = [tuple(map(int, m.groups())) for out in outputs for m in CALLS_LINE.finditer(out)]
    requests, calls, refused = (sum(f[i] for f in figures) for i in range(3))
    spans = [(round(min(arrived[r]) - started, 1), round(max(arrived[r]) - started, 1)) for r in RANGES]
    print(f"\nshared direct limit: {requests} requests, sent at {spans} s (run took {elapsed:.1f}s); both sending "
          f"for {hi - lo:.1f}s at {share:.0%} of {RPM} RPM; {calls} Prefect API calls ({calls / max(1, requests):.2f} "
          f"per request, {refused} refused); 429s: {stats['responses_429']}; {arrivals.held} held at the start")
    assert stats["responses_429"] == 0 and stats["rate_limited"] == 0, stats
    assert hi - lo >= 2.0, "the two runs hardly overlapped"
    assert 0.6 <= share <= 1.15, share
    assert requests == 288, outputs
    assert calls <= 0.5 * requests, figures

    # The limits as the flow created them: requests in thousandths, decay = per minute / 60 (less the headroom),
    # capacity 0.5 s of that.
    from prefect import get_client

    with get_client(sync_client=True) as client:
        rpm_limit = client.read_global_concurrency_limit_by_name(f"gbatch-direct-rpm-{scope}-gpt-4o-mini")
        tpm_limit = client.read_global_concurrency_limit_by_name(f"gbatch-direct-tpm-{scope}-gpt-4o-mini")
    rpm_decay, tpm_decay = RPM / 60 * 1000 * prefect_rate.HEADROOM, TPM / 60 * prefect_rate.HEADROOM
    assert rpm_limit.slot_decay_per_second == pytest.approx(rpm_decay) and rpm_limit.limit == math.ceil(rpm_decay / 2)
    assert tpm_limit.slot_decay_per_second == pytest.approx(tpm_decay) and tpm_limit.limit == math.ceil(tpm_decay / 2)


def test_options_that_cannot_share_are_refused() -> None:
    with pytest.raises(ValueError, match="without --max_direct_rpm or --max_direct_tpm"):
        Options(shared_direct_limit="team")
    with pytest.raises(ValueError, match="shared_direct_limit"):
        Options(shared_direct_limit="a/b", max_direct_rpm=60)
    assert Options(shared_direct_limit="team-1.x", max_direct_tpm=1000).shared_direct_limit == "team-1.x"
