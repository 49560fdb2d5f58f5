import asyncio
import random

import pytest

from gbatch_flows.engine.pacer import Pacer, parse_reset


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_saturated(pacer: Pacer, clock: FakeClock, costs: list[float], stalls: dict[int, float] | None = None,
                  ) -> list[float]:
    """A sender that always has work: it asks for the next slot as soon as it has sent (after an optional stall
    before request i) and sends at the slot; returns the send times."""
    stalls = stalls or {}
    sent = []
    for i, cost in enumerate(costs):
        clock.now += stalls.get(i, 0.0)
        slot = pacer.reserve(cost)
        assert slot >= clock.now
        clock.now = slot
        sent.append(slot)
    return sent


def max_in_window(times: list[float], costs: list[float], window: float) -> float:
    """The largest sum of costs sent within any half-open window [s, s + window)."""
    best, lo, total = 0.0, 0, 0.0
    for hi, t in enumerate(times):
        total += costs[hi]
        while times[lo] <= t - window:
            total -= costs[lo]
            lo += 1
        best = max(best, total)
    return best


def server_bucket_refusals(times: list[float], costs: list[float], per_minute: float, capacity: float) -> int:
    """How many sends a server token bucket (``capacity``, refilled at ``per_minute``) would refuse."""
    level, stamp, refused = capacity, times[0], 0
    for t, cost in zip(times, costs):
        level = min(capacity, level + (t - stamp) * per_minute / 60)
        stamp = t
        if cost > level + 1e-6:
            refused += 1
        else:
            level -= cost
    return refused


def test_parse_reset_formats():
    assert parse_reset("6m0s") == 360
    assert parse_reset("1.5s") == 1.5
    assert parse_reset("20ms") == 0.02
    assert parse_reset("2") == 2.0
    assert parse_reset("1h2m3s") == 3723
    assert parse_reset("soon") is None and parse_reset(None) is None


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("burst", [0.5, 1.0, 3.0])
def test_never_more_than_a_server_bucket_of_the_burst_accepts(seed, burst):
    """Random stalls and mixed request sizes: in any interval of T seconds at most limit * (T + burst) / 60, i.e. a
    server token bucket holding ``burst`` seconds of allowance refuses nothing, and a minute holds at most the
    limit plus ``burst`` seconds' worth."""
    rng = random.Random(seed)
    rpm, tpm = 6000, 600_000
    clock = FakeClock()
    pacer = Pacer(rpm, tpm, clock=clock, burst_s=burst)
    n = 4000
    tokens = [rng.choice([50, 100, 150, 400, 2000]) for _ in range(n)]
    stalls = {rng.randrange(n): rng.uniform(0.05, 4.0) for _ in range(40)}
    times = run_saturated(pacer, clock, tokens, stalls)
    ones = [1.0] * n
    assert server_bucket_refusals(times, ones, rpm, rpm * burst / 60) == 0
    assert server_bucket_refusals(times, tokens, tpm, tpm * burst / 60 + 2000) == 0  # + one request's tokens
    for window in (0.1, 1.0, 5.0, 60.0):
        assert max_in_window(times, ones, window) <= rpm * (window + burst) / 60 + 1 + 1e-6
        assert max_in_window(times, tokens, window) <= tpm * (window + burst) / 60 + 2000 + 1e-6


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("window", [1.0, 3.0])
def test_strict_window_never_more_than_the_limit_in_any_window(seed, window):
    rng = random.Random(seed)
    rpm, tpm = 6000, 600_000
    clock = FakeClock()
    pacer = Pacer(rpm, tpm, clock=clock, window_s=window)
    n = 4000
    tokens = [rng.choice([50, 100, 150, 400, 2000]) for _ in range(n)]
    stalls = {rng.randrange(n): rng.uniform(0.05, 4.0) for _ in range(40)}
    times = run_saturated(pacer, clock, tokens, stalls)
    assert max_in_window(times, [1.0] * n, window) <= rpm * window / 60 + 1e-6
    assert max_in_window(times, tokens, window) <= tpm * window / 60 + 1e-6


def test_saturated_sender_is_evenly_spaced_at_the_limit():
    clock = FakeClock()
    pacer = Pacer(rpm=600, tpm=None, clock=clock, burst_s=1.0)
    times = run_saturated(pacer, clock, [1.0] * 200)
    assert times[:10] == [0.0] * 10 and times[10] > 0  # a fresh bucket: one second's worth at once
    gaps = [b - a for a, b in zip(times[10:], times[11:])]
    assert all(abs(g - 0.1) < 1e-6 for g in gaps)  # then one every 0.1 s


def test_after_a_stall_it_catches_up_at_most_the_burst_then_paces():
    clock = FakeClock()
    pacer = Pacer(rpm=600, tpm=None, clock=clock, burst_s=1.0)
    run_saturated(pacer, clock, [1.0] * 100)  # steady state
    clock.now += 5.0  # a 5 s stall (a slow commit, CPU contention)
    after = run_saturated(pacer, clock, [1.0] * 40)
    start = after[0]
    assert sum(1 for t in after if t == start) == 10  # one second's worth at once, not the 50 lost to the stall
    assert sum(1 for t in after if t < start + 2.0) == 10 + 19  # then 10 per second, one every 0.1 s
    gaps = [b - a for a, b in zip(after[10:], after[11:])]
    assert all(abs(g - 0.1) < 1e-6 for g in gaps)


def test_stalls_within_the_burst_are_made_up():
    """Ten 0.8 s stalls in a minute at 3,000 RPM: the bucket (1 s of credit) makes each one up, where even spacing
    would lose 8 s (0.88 of the limit)."""
    rpm, n = 3000, 3000
    stalls = dict.fromkeys(range(100, n, 300), 0.8)
    clock = FakeClock()
    times = run_saturated(Pacer(rpm, None, clock=clock, burst_s=1.0), clock, [1.0] * n, stalls)
    ideal = n / (rpm / 60) - 1.0  # 60 s at the limit, less the first second's worth sent at once
    assert times[-1] <= ideal + 0.05
    strict = FakeClock()
    strict_times = run_saturated(Pacer(rpm, None, clock=strict, window_s=1.0), strict, [1.0] * n, stalls)
    assert strict_times[-1] >= ideal + 7.5  # a strict 1 s window cannot make any of it up


def test_a_request_above_the_window_allowance_goes_alone():
    clock = FakeClock()
    pacer = Pacer(rpm=None, tpm=6000, clock=clock, window_s=1.0)  # 100 tokens per 1 s window
    times = run_saturated(pacer, clock, [500, 500, 50])
    assert times[0] == 0.0 and times[1] >= 1.0 and times[2] >= times[1] + 1.0


def test_remaining_headers_seed_the_window():
    clock = FakeClock()
    pacer = Pacer(rpm=600, tpm=None, clock=clock, burst_s=1.0)
    assert pacer.reserve(1) == 0.0  # the probe
    pacer.observe({"x-ratelimit-remaining-requests": "3", "x-ratelimit-limit-requests": "600"})
    times = [pacer.reserve(1) for _ in range(6)]
    assert times[:3] == [0.0] * 3  # only what the server says is left
    assert times[3] == pytest.approx(0.1) and times[4] == pytest.approx(0.2)  # then paced


def test_headers_only_tighten_limits_and_teach_unknown_ones():
    pacer = Pacer(rpm=100, tpm=None)
    pacer.observe({"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "9000"})
    assert pacer.rpm == 100 and pacer.tpm == 9000
    pacer.observe({"x-ratelimit-limit-requests": "50"})
    assert pacer.rpm == 50


def test_back_off_holds_every_send_then_resumes_without_a_burst():
    clock = FakeClock()
    pacer = Pacer(rpm=600, tpm=None, clock=clock, burst_s=1.0)
    pacer.back_off(30)
    times = [pacer.reserve(1) for _ in range(5)]
    assert times[0] >= 30.0
    assert all(b - a == pytest.approx(0.1) for a, b in zip(times, times[1:]))  # evenly spaced, no burst


def test_only_the_probe_goes_before_the_first_answer():
    pacer = Pacer(rpm=None, tpm=None)
    order = []

    async def call(name):
        await pacer.acquire(10)
        order.append(name)

    async def go():
        first = asyncio.create_task(call("probe"))
        others = [asyncio.create_task(call(f"r{i}")) for i in range(3)]
        await asyncio.sleep(0.05)
        assert order == ["probe"]  # the others wait for the probe's headers
        pacer.observe({"x-ratelimit-limit-requests": "60000", "x-ratelimit-remaining-requests": "59999"})
        await asyncio.gather(first, *others)

    asyncio.run(go())
    assert order[0] == "probe" and len(order) == 4
    assert pacer.rpm == 60000  # learnt from the probe's answer


def test_no_limits_means_no_waiting():
    pacer = Pacer(rpm=None, tpm=None)
    pacer.observe(None)

    async def go():
        for _ in range(100):
            await pacer.acquire(10)

    asyncio.run(go())
    assert pacer.waited_s == 0.0


def test_known_limits_go_evenly_spaced_before_the_first_answer():
    clock = FakeClock()

    async def fake_sleep(seconds):
        clock.now += seconds

    pacer = Pacer(rpm=600, tpm=None, clock=clock, burst_s=1.0, sleep=fake_sleep)
    slept = []

    async def go():
        for _ in range(3):
            await pacer.acquire(10)
            slept.append(pacer.waited_s)

    asyncio.run(go())
    assert slept == pytest.approx([0.1, 0.2, 0.3])  # no burst, no waiting behind a probe


@pytest.mark.parametrize("stall_s", [0.3, 1.0, 3.0])
def test_requests_woken_late_by_a_stall_do_not_go_out_on_top_of_its_credit(stall_s):
    """Eight workers each hold a reserved slot; the process stalls (no timer fires) and then every overdue slot
    wakes at once. What really goes out stays within the bucket (rate x (T + burst)) on actual send times, so a
    server bucket holding one second of allowance refuses nothing; without the send-time check the overdue requests
    went out on top of the credit the stall built up."""
    clock = FakeClock()
    per_minute, burst = 600.0, 0.5
    timers: list[tuple[float, int, asyncio.Future]] = []  # a fake timer queue: (wake time, order, future)

    async def fake_sleep(seconds):
        future = asyncio.get_running_loop().create_future()
        timers.append((clock.now + seconds, next(order), future))
        await future

    order = iter(range(10**9))
    pacer = Pacer(rpm=per_minute, tpm=None, clock=clock, burst_s=burst, sleep=fake_sleep)
    pacer.observe({"x-ratelimit-remaining-requests": "10"})
    sent: list[float] = []

    async def worker(n):
        for _ in range(n):
            await pacer.acquire(1)
            sent.append(clock.now)

    async def go():
        tasks = [asyncio.create_task(worker(25)) for _ in range(8)]
        stalled = False
        while not all(t.done() for t in tasks):
            await asyncio.sleep(0)  # the workers reserve and start waiting on their timers
            if not timers:
                continue
            timers.sort(key=lambda x: (x[0], x[1]))
            wake, _, future = timers.pop(0)
            if not stalled and len(sent) >= 40:  # the process stops running for stall_s
                stalled, wake = True, wake + stall_s
                timers[:] = [(max(w, wake), o, f) for w, o, f in timers]
            clock.now = max(clock.now, wake)
            future.set_result(None)

    asyncio.run(go())
    assert len(sent) == 200
    costs = [1.0] * len(sent)
    assert max_in_window(sent, costs, 0.5) <= per_minute / 60 * (0.5 + burst) + 1
    assert server_bucket_refusals(sent, costs, per_minute, capacity=per_minute / 60 * 1.0) == 0
    assert sent[-1] - sent[0] <= 200 / (per_minute / 60) + stall_s + 1  # and it keeps the pace after the stall
