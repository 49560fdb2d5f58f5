import asyncio

from gbatch_flows.engine.pacer import Pacer, parse_reset


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_parse_reset_formats():
    assert parse_reset("6m0s") == 360
    assert parse_reset("1.5s") == 1.5
    assert parse_reset("20ms") == 0.02
    assert parse_reset("2") == 2.0
    assert parse_reset("1h2m3s") == 3723
    assert parse_reset("soon") is None and parse_reset(None) is None


def test_interval_is_the_tighter_of_rpm_and_tpm():
    pacer = Pacer(rpm=600, tpm=6000)
    assert pacer.interval(1) == 0.1  # RPM binds: 60/600
    assert pacer.interval(100) == 1.0  # TPM binds: 60*100/6000


def test_slots_are_evenly_spaced_and_back_off_moves_them():
    clock = FakeClock()
    pacer = Pacer(rpm=60, tpm=None, clock=clock)
    slept = []

    async def fake_sleep(seconds):
        slept.append(seconds)

    real_sleep = asyncio.sleep
    asyncio.sleep = fake_sleep
    try:
        async def go():
            for _ in range(3):
                await pacer.acquire(10)
        asyncio.run(go())
        assert slept == [1.0, 2.0]  # sends at t=0, 1, 2
        pacer.back_off(30)
        slept.clear()
        asyncio.run(pacer.acquire(10))
        assert slept == [30.0]
    finally:
        asyncio.sleep = real_sleep


def test_headers_only_tighten_limits():
    pacer = Pacer(rpm=100, tpm=None)
    pacer.update_from_headers({"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "9000"})
    assert pacer.rpm == 100 and pacer.tpm == 9000
    pacer.update_from_headers({"x-ratelimit-limit-requests": "50"})
    assert pacer.rpm == 50
