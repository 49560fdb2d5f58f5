"""Monitoring sinks: logging lines, fan-out, wandb login detection, and one real offline wandb run."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gbatch_flows import monitor as m
from gbatch_flows.options import Options

DUMMY_KEY = "sk-test-dummy-monitor-8d1f5a7e"
DUMMY_S3_SECRET = "s3-dummy-secret-4b2c9e"


def test_metric_names_are_distinct_and_namespaced() -> None:
    assert len(set(m.SCALAR_METRICS)) == len(m.SCALAR_METRICS)
    assert all("/" in name for name in m.KNOWN_METRICS)
    assert m.batch_state_metric("completed") in m.KNOWN_METRICS


def test_batch_state_metrics_fill_known_states_with_zero() -> None:
    data = m.batch_state_metrics({"completed": 3, "weird_state": 1})
    assert data["batches/completed"] == 3 and data["batches/weird_state"] == 1
    assert data["batches/failed"] == 0
    assert set(data) == {m.batch_state_metric(s) for s in m.BATCH_STATES} | {"batches/weird_state"}


def test_logging_monitor_one_compact_line_per_call(caplog: pytest.LogCaptureFixture) -> None:
    mon = m.LoggingMonitor(logging.getLogger("test.monitor"))
    with caplog.at_level(logging.INFO, logger="test.monitor"):
        mon.start({"task": "char_codes", "api_key": DUMMY_KEY})
        mon.log({m.REQUESTS_DONE: 10, m.COST_SESSION: 0.123456789}, step=4)
        mon.log_batch_states({"completed": 2, "in_progress": 0, "failed": 1})
        mon.finish()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and all("\n" not in line for line in lines)
    assert "task=char_codes" in lines[0] and DUMMY_KEY not in lines[0]
    assert "step=4" in lines[1] and "requests/done=10" in lines[1] and "cost/session=0.123457" in lines[1]
    assert "completed=2" in lines[2] and "failed=1" in lines[2] and "in_progress" not in lines[2]


@dataclass
class _Recorder:
    calls: list[tuple[str, Any]] = field(default_factory=list)
    fail: bool = False

    def _call(self, name: str, arg: Any = None) -> None:
        self.calls.append((name, arg))
        if self.fail:
            raise RuntimeError("sink down")

    def start(self, run_info: Any) -> None:
        self._call("start", run_info)

    def log(self, metrics: Any, step: int | None = None) -> None:
        self._call("log", (dict(metrics), step))

    def log_batch_states(self, counts: Any, step: int | None = None) -> None:
        self._call("log_batch_states", dict(counts))

    def finish(self) -> None:
        self._call("finish")


def test_multi_monitor_fans_out_and_survives_a_failing_sink() -> None:
    broken, good = _Recorder(fail=True), _Recorder()
    mon = m.MultiMonitor([broken, good])
    assert isinstance(mon, m.Monitor) and isinstance(good, m.Monitor)
    mon.start({"task": "t"})
    mon.log({m.REQUESTS_DONE: 1}, step=2)
    mon.log_batch_states({"completed": 1})
    mon.finish()
    expected = [("start", {"task": "t"}), ("log", ({m.REQUESTS_DONE: 1}, 2)),
                ("log_batch_states", {"completed": 1}), ("finish", None)]
    assert good.calls == expected and broken.calls == expected


def test_make_monitor_respects_no_wandb() -> None:
    assert isinstance(m.make_monitor(Options(no_wandb=True)), m.LoggingMonitor)
    both = m.make_monitor(Options(), env={})
    assert isinstance(both, m.MultiMonitor)
    assert [type(x) for x in both.monitors] == [m.LoggingMonitor, m.WandbMonitor]


def test_wandb_login_detection(tmp_path: Path) -> None:
    empty = tmp_path / "empty_netrc"
    empty.write_text("")
    assert not m.wandb_logged_in({"NETRC": str(empty)})
    assert m.wandb_logged_in({"NETRC": str(empty), "WANDB_API_KEY": "dummy"})
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password dummy-wandb-key\n")
    netrc_file.chmod(0o600)
    assert m.wandb_logged_in({"NETRC": str(netrc_file)})
    assert not m.wandb_logged_in({"NETRC": str(netrc_file), "WANDB_BASE_URL": "https://wandb.example.org"})
    assert not m.wandb_logged_in({"NETRC": str(tmp_path / "missing")})
    assert m.wandb_logged_in({"HOME": str(tmp_path)}) is False  # no ~/.netrc there


def test_wandb_mode_choice(tmp_path: Path) -> None:
    empty = tmp_path / "empty_netrc"
    empty.write_text("")
    assert m.WandbMonitor(Options(), env={"NETRC": str(empty)})._mode() == "offline"
    assert m.WandbMonitor(Options(), env={"NETRC": str(empty), "WANDB_MODE": "disabled"})._mode() is None
    assert m.WandbMonitor(Options(), env={"WANDB_API_KEY": "x"})._mode() is None


def test_secret_on_command_line_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    opts = Options(openai_api_key=DUMMY_KEY, storage_options={"client_kwargs": {"aws_secret_access_key": "SEK1"},
                                                              "endpoint_url": "http://127.0.0.1:9"})
    mon = m.WandbMonitor(opts, env={})
    endpoint_only = json.dumps({"endpoint_url": "http://127.0.0.1:9"})
    monkeypatch.setattr(sys, "argv", ["prog", "--task_dir", "x", "--storage_options", endpoint_only])
    assert not mon._secret_on_command_line()
    monkeypatch.setattr(sys, "argv", ["prog", f"--openai_api_key={DUMMY_KEY}"])
    assert mon._secret_on_command_line()
    monkeypatch.setattr(sys, "argv", ["prog", '{"client_kwargs": {"aws_secret_access_key": "SEK1"}}'])
    assert mon._secret_on_command_line()


# ---------------------------------------------------------------- one real offline wandb run (slow start)

@dataclass
class OfflineRun:
    wandb_dir: Path
    sync_dir: Path
    messages: list[str]


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="session")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineRun]:
    """Start, log to and finish one WandbMonitor run with no credentials (so: offline), in a tmp WANDB_DIR."""
    root = tmp_path_factory.mktemp("wandb")
    (root / "empty_netrc").write_text("")
    options = Options(openai_api_key=DUMMY_KEY, storage_options={"secret": DUMMY_S3_SECRET},
                      wandb_name="offline-test")
    handler = _ListHandler()
    logger = logging.getLogger("test.wandb_monitor")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT",
                    "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DISABLED"):
            mp.delenv(var, raising=False)
        mp.setenv("WANDB_DIR", str(root))
        mp.setenv("NETRC", str(root / "empty_netrc"))
        mp.setenv("WANDB_SILENT", "true")
        # As if the user had typed the key on the command line (wandb records sys.argv in its metadata).
        mp.setattr(sys, "argv", [sys.argv[0], "--openai_api_key", DUMMY_KEY, "--storage_options",
                                 json.dumps({"secret": DUMMY_S3_SECRET})])
        mon = m.WandbMonitor(options, logger=logger)
        mon.start({"task": "char_codes", "task_dir": "/tmp/x"})
        assert mon.run is not None, handler.messages
        mon.log({m.REQUESTS_TOTAL: 100, m.REQUESTS_DONE: 40, m.COST_SESSION: 0.25, m.API_HTTP_429: 2}, step=1)
        mon.log_batch_states({"completed": 3, "in_progress": 1}, step=2)
        mon.finish()
        import wandb

        wandb.teardown()
    logger.removeHandler(handler)
    assert mon.sync_dir is not None, handler.messages
    yield OfflineRun(root, Path(mon.sync_dir), handler.messages)


def test_offline_run_folder_holds_the_logged_keys(offline_run: OfflineRun) -> None:
    runs = list((offline_run.wandb_dir / "wandb").glob("offline-run-*"))
    assert runs == [offline_run.sync_dir]
    data = b"".join(p.read_bytes() for p in offline_run.sync_dir.glob("run-*.wandb"))
    for key in (m.REQUESTS_TOTAL, m.REQUESTS_DONE, m.COST_SESSION, m.API_HTTP_429, "batches/completed",
                "batches/in_progress", "batches/failed"):
        assert key.encode() in data, key
    for config_key in (b"max_batch_requests", b"wandb_project", b"char_codes"):
        assert config_key in data


def test_offline_run_says_once_how_to_sync(offline_run: OfflineRun) -> None:
    hints = [msg for msg in offline_run.messages if "wandb sync" in msg]
    assert len(hints) == 1
    assert f"wandb sync {offline_run.sync_dir}" in hints[0]


def test_no_secret_in_any_wandb_file(offline_run: OfflineRun) -> None:
    files = [p for p in offline_run.wandb_dir.rglob("*") if p.is_file()]
    assert len(files) >= 3
    for path in files:
        data = path.read_bytes()
        assert DUMMY_KEY.encode() not in data, path
        assert DUMMY_S3_SECRET.encode() not in data, path
