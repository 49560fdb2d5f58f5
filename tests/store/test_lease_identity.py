"""Lease identity and fencing (issue 14): "same host" means the same kernel boot and PID namespace, never just the
same hostname; a successor knows until when its predecessor may still create something remotely; a run confirms
its lease with enough time left before a remote create."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gbatch_flows.store import LeaseHeld, StoreError, open_store
from gbatch_flows.store import lease as lease_module
from gbatch_flows.store.paths import LEASE_FILE

DEAD_PID = 4_000_000  # above any pid_max: no such process


def _free_pid() -> int:
    pid = DEAD_PID
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def _write_holder(url: str, expires_in: float, **fields: object) -> float:
    now = time.time()
    record = {"owner": "twin:1:abc", "host": os.uname().nodename, "pid": _free_pid(), "acquired_at": now,
              "renewed_at": now, "expires_at": now + expires_in, "expires": "soon", "ttl_s": 60.0, "seq": 3,
              **fields}
    store = open_store(url)
    store.backend.cas_write(LEASE_FILE, json.dumps(record).encode(), None)
    return now + expires_in


def test_a_dead_pid_in_this_boot_and_namespace_is_taken_over_at_once(tmp_path: Path) -> None:
    url = str(tmp_path / "task")
    boot_id, pid_ns = lease_module.host_identity()
    if None in (boot_id, pid_ns):
        pytest.skip("no boot id / PID namespace on this system")
    _write_holder(url, 600, boot_id=boot_id, pid_ns=pid_ns, create_timeout_s=5.0)
    lease = open_store(url).acquire_lease(ttl_s=5, renew=False)
    assert lease.predecessor_window_end == 0.0  # a dead process creates nothing more
    lease.release()


@pytest.mark.parametrize("twin", ["other PID namespace", "other boot", "lease without identity"])
def test_a_twin_elsewhere_is_never_declared_dead(tmp_path: Path, twin: str) -> None:
    """Same hostname and a pid that does not exist here: before issue 14 that was "dead", taken at once."""
    url = str(tmp_path / "task")
    boot_id, pid_ns = lease_module.host_identity()
    fields = {"other PID namespace": {"boot_id": boot_id, "pid_ns": "pid:[1]"},
              "other boot": {"boot_id": "another-boot", "pid_ns": pid_ns},
              "lease without identity": {}}[twin]
    expires = _write_holder(url, 1.0, create_timeout_s=0.5, **fields)
    store = open_store(url)
    with pytest.raises(LeaseHeld, match="being run by twin"):
        store.acquire_lease(ttl_s=5, renew=False)
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    lease = store.acquire_lease(ttl_s=5, renew=False, create_timeout_s=2.0)  # expired: taken over
    assert lease.predecessor_window_end == pytest.approx(expires + 0.5)  # its own create timeout counts
    lease.release()


def test_released_lease_leaves_no_create_window(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "task"))
    store.acquire_lease(ttl_s=5, renew=False, create_timeout_s=3.0).release()
    lease = store.acquire_lease(ttl_s=5, renew=False)
    assert lease.predecessor_window_end == 0.0
    lease.release()


def test_ensure_time_left_renews_and_refuses_a_lost_or_too_short_lease(tmp_path: Path) -> None:
    url = str(tmp_path / "task")
    store = open_store(url)
    lease = store.acquire_lease(ttl_s=2.0, renew=False, create_timeout_s=0.5)
    record = json.loads(store.backend.read_bytes(LEASE_FILE))
    assert record["create_timeout_s"] == 0.5 and record["pid"] == os.getpid()
    assert (record["boot_id"], record["pid_ns"]) == lease_module.host_identity()
    time.sleep(1.2)
    before = lease.expires_at
    assert lease.ensure_time_left(1.5) >= 1.5  # less than 1.5 s was left: renewed
    assert lease.expires_at > before
    with pytest.raises(StoreError, match="shorter create timeout"):
        lease.ensure_time_left(10.0)
    time.sleep(2.1)  # expired; another run takes it over
    other = open_store(url).acquire_lease(ttl_s=5, renew=False, owner="successor")
    with pytest.raises(LeaseHeld, match="successor"):
        lease.ensure_time_left(0.5)
    other.release()


HOLDER = """
import sys, time
from gbatch_flows.store import open_store
lease = open_store(sys.argv[1]).acquire_lease(ttl_s=600, renew=False)
print("held", lease._record.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_a_holder_in_a_real_pid_namespace_keeps_its_lease(tmp_path: Path) -> None:
    url = str(tmp_path / "task")
    cmd = ["unshare", "-p", "-f", "--mount-proc", sys.executable, "-c", HOLDER, url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, start_new_session=True)
    try:
        line = proc.stdout.readline().split()  # type: ignore[union-attr]
        if not line:
            pytest.skip(f"unshare is not allowed here: {proc.stderr.read()[:200]}")  # type: ignore[union-attr]
        assert line[0] == "held" and int(line[1]) < 10  # its pid inside its own namespace
        record = json.loads(open_store(url).backend.read_bytes(LEASE_FILE))
        assert record["pid_ns"] != lease_module.host_identity()[1]
        with pytest.raises(LeaseHeld, match="being run by"):
            open_store(url).acquire_lease(ttl_s=5, renew=False)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
