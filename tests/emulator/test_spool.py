"""Without state_dir the emulator keeps records in memory but streams file bytes to a private spool folder."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from gbatch_flows.emulator.state import Store


def test_file_bytes_go_to_the_spool_folder_and_leave_with_the_store():
    store = Store()
    data = b'{"a": 1}\n' * 1000
    record = store.create_file(io.BytesIO(data), "x.jsonl", "batch", limit=1 << 20)
    path = store.file_path(record.id)
    assert path.parent.parent == store.data_dir and path.read_bytes() == data
    assert store.file_bytes(record.id) == data and b"".join(store.iter_lines(record.id)) == data
    assert not hasattr(store, "_data")  # nothing kept in memory
    assert store.delete_file(record.id) and not path.exists()
    store.close()
    assert not store.data_dir.exists()


def test_the_spool_of_a_killed_emulator_is_swept_by_the_next_store():
    code = ("import time; from gbatch_flows.emulator.state import Store; store = Store(); "
            "print(store.data_dir, flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    spool = Path(child.stdout.readline().strip())
    child.kill()  # no exit handler runs
    child.wait()
    assert spool.exists()
    store = Store()
    try:
        assert not spool.exists() and store.data_dir.exists()
    finally:
        store.close()
