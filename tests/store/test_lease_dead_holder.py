"""A lease whose holder died on this host is taken over at once; a live holder's is not."""

import signal
import subprocess
import sys
import time

import pytest

from gbatch_flows.store import LeaseHeld, open_store

HOLDER = """
import sys, time
from gbatch_flows.store import open_store
store = open_store(sys.argv[1])
lease = store.acquire_lease(ttl_s=600, renew=False)
print("held", flush=True)
time.sleep(600)
"""


def test_lease_of_a_killed_holder_is_taken_over(tmp_path):
    url = str(tmp_path / "task")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        store = open_store(url)
        with pytest.raises(LeaseHeld, match="being run by"):
            store.acquire_lease(ttl_s=5, renew=False)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        started = time.monotonic()
        lease = store.acquire_lease(ttl_s=5, renew=False)  # the 600 s lease of the dead holder is void
        assert time.monotonic() - started < 5
        lease.release()
    finally:
        proc.kill()
        proc.wait()
