"""Subprocess workers for the store tests (run as a script: python workers.py MODE URL OPTIONS_JSON ...)."""

from __future__ import annotations

import json
import random
import sys
import time

from gbatch_flows.store import ConcurrentModification, open_store


def count(url: str, options: dict | None, increments: int) -> None:
    """Increment the "counter" section ``increments`` times, reloading and retrying on lost races."""
    store = open_store(url, options)
    store.load()
    print("ready", flush=True)
    sys.stdin.readline()  # start together with the other workers
    done = 0
    conflicts = 0
    while done < increments:
        base = store.load()
        value = base.get("counter", {"n": 0})["n"]
        try:
            store.commit(base, {"counter": {"n": value + 1}}, "increment")
        except ConcurrentModification:
            conflicts += 1
            continue
        done += 1
    print(json.dumps({"done": done, "conflicts": conflicts}), flush=True)


def crash_loop(url: str, options: dict | None, seed: int) -> None:
    """Write a blob and commit a reference to it, forever (the test kills this process at random moments)."""
    store = open_store(url, options, max_chain=4)
    rng = random.Random(seed)
    while True:
        base = store.load()
        totals = base.get("totals", {"batches": 0, "lines": 0})
        n = totals["batches"]
        lines = [json.dumps({"batch": n, "line": j}).encode() + b"\n" for j in range(rng.randint(1, 400))]
        ref = store.put_blob(
            f"batches/{n:06d}.jsonl", (b"".join(lines[i : i + 50]) for i in range(0, len(lines), 50))
        )
        changes = {
            f"batch/{n:06d}": {"ref": ref, "lines": len(lines)},
            "totals": {"batches": n + 1, "lines": totals["lines"] + len(lines)},
        }
        store.commit(base, changes, f"batch {n}")
        print(f"committed {n + 1}", flush=True)


def hold_lease(url: str, options: dict | None, style: str) -> None:
    """Take the lease and wait; SIGINT must release it (``with`` block, or atexit when not in one)."""
    store = open_store(url, options)
    lease = store.acquire_lease(ttl_s=60)
    print(json.dumps({"owner": lease.owner}), flush=True)
    if style == "with":
        with lease:
            while True:
                time.sleep(0.02)
    else:
        while True:
            time.sleep(0.02)


if __name__ == "__main__":
    mode, url, options_json, arg = sys.argv[1:5]
    opts = json.loads(options_json)
    if mode == "count":
        count(url, opts, int(arg))
    elif mode == "crash":
        crash_loop(url, opts, int(arg))
    elif mode == "lease":
        hold_lease(url, opts, arg)
    else:
        raise SystemExit(f"unknown mode {mode}")
