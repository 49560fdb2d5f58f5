"""Bad input: a corrupt manifest, a truncated blob, a newer schema version, contradicting options, a task folder
without permission, an unknown model, a missing key... Each run ends with exit code != 0 and one clear line that
names the problem and what to change (no traceback), and leaves the task folder byte-for-byte as it was (lease.json
aside: taking and releasing the lease is how a run starts and ends)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gbatch_flows.emulator import EmulatorConfig, run_emulator

from .harness import PRICE_FLAGS, Forkserver, cli_args, snapshot_tree
from .tasks import RelTask

NOBODY = 65534
LEASE_FILES = ("lease.json", ".lease.json.lock")
KNOWN_BUGS: dict[str, str] = {}


@dataclass
class Case:
    name: str
    expect: tuple[str, ...]  # substrings of the error output: the problem and the fix
    argv: dict[str, Any] = field(default_factory=dict)  # flag overrides (None drops the flag)
    extra: tuple[str, ...] = ()
    env: dict[str, str | None] = field(default_factory=dict)
    damage: Callable[[Path], None] | None = None  # applied to the task folder before the run
    fresh: bool = False  # a new task folder instead of a copy of the half-done task
    read_only: bool = False
    codes: tuple[int, ...] = (1, 2)


def _newest_manifest(folder: Path) -> Path:
    return max((folder / "manifests").glob("*.json"))


def flip_a_byte(folder: Path) -> None:
    path = _newest_manifest(folder)
    data = bytearray(path.read_bytes())
    at = data.index(b'"message"')
    data[at + 1] = ord("M")
    path.write_bytes(bytes(data))


def newer_schema(folder: Path) -> None:
    """What a newer gbatch_flows would write: schema_version 99 with a valid checksum."""
    path = _newest_manifest(folder)
    data = path.read_bytes()
    body = data[: data.rindex(b',"sha256":"')].replace(b'"schema_version":1,', b'"schema_version":99,', 1)
    assert b'"schema_version":99' in body
    path.write_bytes(body + b',"sha256":"' + hashlib.sha256(body).hexdigest().encode() + b'"}\n')


def truncate_queue(folder: Path) -> None:
    path = folder / "requests" / "000000.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])


def bad_yaml(folder: Path) -> None:
    (folder.parent.parent / "bad.yaml").write_text("max_batch_requests: [1,\n")


CASES = [
    Case("corrupt manifest", ("manifest", "unusable", "checksum", "roll back"), damage=flip_a_byte),
    Case("wrong schema version", ("schema_version 99", "Upgrade gbatch_flows"), damage=newer_schema),
    Case("truncated blob", ("requests/000000.jsonl", "truncated", "restore it"), damage=truncate_queue),
    Case("contradicting limits", ("max_batch_requests (500) > max_remote_requests (100)",
                                  "lower --max_batch_requests or raise --max_remote_requests"),
         argv={"max_batch_requests": 500, "max_remote_requests": 100}, codes=(2,)),
    Case("contradicting actions", ("--wipe_task with --only_process", "drop one of the two"),
         extra=("--only_process", "--wipe_task"), codes=(2,)),
    Case("changed task meta", ("task metadata differs", "--reinit_meta"), argv={"temperature": 0.5}),
    Case("bad storage options", ("--storage_options", "JSON"), extra=("--storage_options", "{not json"), codes=(2,)),
    Case("unsupported task_dir scheme", ("unsupported store URL scheme", "s3://"), argv={"task_dir": "ftp://x/y"},
         fresh=True),
    Case("bad config file", ("invalid YAML", "line"), extra=("--config", "{bad_yaml}"), damage=bad_yaml,
         codes=(2,)),
    Case("missing key", ("no OpenAI API key", "OPENAI_API_KEY", "--client_base_url"),
         argv={"client_base_url": None, "emulator": "never"}, env={"OPENAI_API_KEY": None}, fresh=True),
    Case("task folder without permission", ("cannot use the task folder", "--task_dir you can write to"),
         fresh=True, read_only=True),
    Case("task folder read-only", ("task folder", "--task_dir"), read_only=True),
    Case("unknown model", ("gpt-unknown-9", "--cost_input_direct_mtoken"),
         argv={"model": "gpt-unknown-9", "client_base_url": None, "emulator": "always",
               **dict.fromkeys(PRICE_FLAGS)}, fresh=True),  # no --cost_* flags: nothing prices the model
]


@pytest.fixture(scope="module")
def half_done(forkserver: Forkserver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A task stopped by its session limit: processed batches, output parts and a queue still to send."""
    root = Path(tempfile.mkdtemp(prefix="gbatch-bad-input-"))
    root.chmod(0o755)  # reachable by the unprivileged user of the permission cases
    with run_emulator(EmulatorConfig(batch_duration=0.05)) as emu:
        argv = cli_args(str(root / "base"), emu.base_url, 400, max_session_requests=200)
        run = forkserver.start(argv, root / "base.log")
        assert run.finish() == 0, run.log_tail()
        yield root, emu.base_url
    shutil.rmtree(root, ignore_errors=True)


def _argv(case: Case, task_dir: Path, base_url: str, root: Path) -> list[str]:
    flags: dict[str, Any] = {"task_dir": str(task_dir), "client_base_url": base_url, "n_requests": 400,
                             "max_session_requests": 200}
    flags.update(case.argv)
    argv = cli_args(flags.pop("task_dir"), flags.pop("client_base_url"), flags.pop("n_requests"), **flags)
    return argv + [part.replace("{bad_yaml}", str(root / case.name / "bad.yaml")) for part in case.extra]


def _state_files(snapshot: dict[str, bytes]) -> dict[str, bytes]:
    return {path: data for path, data in snapshot.items() if Path(path).name not in LEASE_FILES}


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[c.name])]
                 if c.name in KNOWN_BUGS else []) for c in CASES])
def test_bad_input_is_refused_clearly_and_changes_nothing(case: Case, half_done: tuple[Path, str],
                                                          forkserver: Forkserver, figures: dict) -> None:
    root, base_url = half_done
    case_dir = root / case.name
    task_dir = case_dir / "tasks"
    case_dir.mkdir()
    if not case.fresh:
        shutil.copytree(root / "base", task_dir)
    if case.damage is not None:
        case.damage(task_dir / RelTask.name)
    uid = None
    if case.read_only:
        os.makedirs(task_dir, exist_ok=True)
        if os.geteuid() == 0:
            uid = NOBODY  # root ignores permissions: run as nobody on the root-owned (0755) folders
            for folder in (case_dir, *[p for p in task_dir.rglob("*") if p.is_dir()], task_dir):
                folder.chmod(0o755)
        else:
            for folder in [task_dir, *[p for p in task_dir.rglob("*") if p.is_dir()]]:
                folder.chmod(0o555)
    folder = task_dir / RelTask.name
    before = snapshot_tree(folder)
    log = case_dir / "run.log"
    log.touch()
    log.chmod(0o666)
    run = forkserver.start(_argv(case, task_dir, base_url, root), log, env=case.env, uid=uid)
    code = run.finish(timeout=120)
    output = log.read_text()
    figures.setdefault("bad_input", {"inputs_tried": 0, "cases": []})
    figures["bad_input"]["inputs_tried"] += 1
    figures["bad_input"]["cases"].append(case.name)
    assert code in case.codes, f"exit code {code}, expected one of {case.codes}:\n{output[-2000:]}"
    assert "Traceback" not in output, output[-3000:]
    missing = [text for text in case.expect if text not in output]
    assert not missing, f"the error does not say {missing}:\n{output[-2000:]}"
    assert re.search(r"^(error: |\S+: error: )", output, re.M), output[-2000:]
    assert _state_files(snapshot_tree(folder)) == _state_files(before), "the task folder changed"
