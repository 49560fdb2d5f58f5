"""Issue 15: every failure ends in progress or in one clear line (exit code != 0), never a traceback, never a stuck
task, and the stored state stays usable. One test per case of the issue."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from botocore.exceptions import EndpointConnectionError

from gbatch_flows import cli, costs, launch
from gbatch_flows.emulator import EmulatorConfig, FaultConfig, FaultRule, run_emulator
from gbatch_flows.engine import runner
from gbatch_flows.engine.poll import PollReport
from gbatch_flows.engine.state import TaskState
from gbatch_flows.runs import run_plain
from gbatch_flows.store import open_store
from gbatch_flows.store.local import LocalBackend

from .fault_proxy import Fault, fault_proxy
from .harness import DUMMY_KEY, PRICE_FLAGS, TaskDir, assert_complete_output, cli_args
from .tasks import RelTask
from .test_faults import fault_options

ROOT = Path(__file__).resolve().parents[2]
N = 30
PREFECT_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def one_line_error(err: str) -> str:
    """The error output must be one line starting with 'error: ' or '<prog>: error: ' (no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error: " in line]
    assert len(lines) == 1, err
    return lines[0]


def emulator_root(base_url: str) -> str:
    return base_url.removesuffix("/v1")


def output_of(task_dir: str) -> bytes:
    return (Path(task_dir) / RelTask.name / f"{RelTask.name}_output.jsonl").read_bytes()


# ---------------------------------------------------------------- --max_poll_wait_s counts wall-clock time


class _Stub:
    """An engine whose one batch stays pushed: poll() is replaced, only state.batches_in is read."""

    class state:  # noqa: N801 - mimics engine.state
        @staticmethod
        def batches_in(*names: str) -> list[int]:
            return [1] if "pushed" in names else []

    class options:  # noqa: N801
        poll_interval_min_s = 0.05
        poll_interval_max_s = 0.2

    class config:  # noqa: N801 - mimics engine.config (the run configuration)
        class pacing:  # noqa: N801
            poll_interval_min_s = 0.05
            poll_interval_max_s = 0.2

    quota = None  # no shared quota ledger


def test_max_poll_wait_counts_failing_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_failing_poll(engine: Any) -> PollReport:
        time.sleep(0.5)  # a poll whose retrieve fails after client retries
        return PollReport(in_flight=1)

    monkeypatch.setattr(runner, "poll", slow_failing_poll)
    started = time.monotonic()
    result = runner.wait_for_batches(_Stub(), time.sleep, 1.0)  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert elapsed < 2.5, f"--max_poll_wait_s 1 waited {elapsed:.1f}s (only the sleeps were counted)"


# ---------------------------------------------------------------- authentication: stop, mark nothing failed


def test_direct_with_a_wrong_key_stops_and_marks_nothing_failed(tmp_path: Path) -> None:
    with run_emulator(EmulatorConfig(batch_duration=0.05, api_key="sk-right-dummy")) as emu:
        options = fault_options(str(tmp_path / "tasks"), emu.base_url, force_direct=True)
        summary = run_plain(RelTask({"n_requests": N}), options)
        assert summary.status == "error", summary
        assert "refused the API key" in summary.reason and "OPENAI_API_KEY" in summary.reason
        assert summary.counts["failed"] == 0 and summary.counts["retried"] == 0, summary.counts
        assert not list((tmp_path / "tasks" / RelTask.name).glob("failed/*")), "requests were marked failed"
        good = options.model_copy(update={"openai_api_key": type(options.openai_api_key)("sk-right-dummy")})
        again = run_plain(RelTask({"n_requests": N}), good)
    assert again.status == "finished", again
    assert again.counts["failed"] == 0
    assert_complete_output(output_of(options.task_dir), N)


def test_batch_mode_with_a_wrong_key_stops_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with run_emulator(EmulatorConfig(batch_duration=0.05, api_key="sk-right-dummy")) as emu:
        argv = cli_args(str(tmp_path / "tasks"), emu.base_url, N, openai_api_key=DUMMY_KEY)
        code = cli.main(RelTask, argv)
    line = one_line_error(capsys.readouterr().err + capsys.readouterr().out)
    assert code != 0 and "refused the API key" in line, line


# ---------------------------------------------------------------- a server without a Batch API


def test_server_without_batch_api_says_force_direct(tmp_path: Path) -> None:
    with run_emulator(EmulatorConfig(batch_duration=0.05)) as emu, fault_proxy(emulator_root(emu.base_url)) as proxy:
        proxy.add(Fault("upload", "status", 404))
        proxy.add(Fault("create", "status", 404))
        options = fault_options(str(tmp_path / "tasks"), proxy.url + "/v1")
        summary = run_plain(RelTask({"n_requests": N}), options)
    assert summary.status == "error"
    assert "has no Batch API" in summary.reason and "--force_direct" in summary.reason, summary.reason


def test_classification() -> None:
    from gbatch_flows.remote_errors import Kind, classify

    request = httpx.Request("POST", "http://10.0.0.2:8000/v1/batches")

    def status(code: int, path: str = "/v1/batches") -> openai.APIStatusError:
        req = httpx.Request("POST", f"http://10.0.0.2:8000{path}")
        response = httpx.Response(code, request=req, json={"error": {"message": "x"}})
        return openai.APIStatusError("x", response=response, body=None)

    assert classify(openai.APIConnectionError(request=request)) is Kind.TRANSIENT
    assert classify(status(429)) is Kind.TRANSIENT and classify(status(503)) is Kind.TRANSIENT
    assert classify(status(401)) is Kind.AUTH and classify(status(403)) is Kind.AUTH
    assert classify(status(404)) is Kind.NO_ENDPOINT and classify(status(404, "/v1/files")) is Kind.NO_ENDPOINT
    assert classify(status(404, "/v1/batches/batch_1")) is Kind.REQUEST
    assert classify(status(400, "/v1/chat/completions")) is Kind.REQUEST
    assert classify(ValueError("not remote")) is None


# ---------------------------------------------------------------- a download cut off halfway


def test_results_download_cut_off_halfway_is_retried(tmp_path: Path) -> None:
    """The connection drops in the middle of a results file (the status and headers arrived): openai's client does
    not wrap what its HTTP library raises then. The download is retried, nothing is processed twice."""
    with run_emulator(EmulatorConfig(batch_duration=0.05)) as emu, fault_proxy(emulator_root(emu.base_url)) as proxy:
        cut = proxy.add(Fault("download", "cut", times=2))
        task_dir = str(tmp_path / "tasks")
        summary = run_plain(RelTask({"n_requests": N}), fault_options(task_dir, proxy.url + "/v1",
                                                                      max_batch_requests=10))
        batches = emu.stats()["batches_created"]
    assert cut.hits == 2
    assert summary.status == "finished", summary
    folder = TaskDir("local", task_dir)
    assert_complete_output(folder.output(), N)
    assert batches == len(folder.state().batches)  # nothing pushed again


# ---------------------------------------------------------------- a remote that loses batches


def test_lost_batches_are_named_as_lost(tmp_path: Path) -> None:
    """A remote that really loses batches: retrieve answers 404 and the listing no longer shows them."""
    with run_emulator(EmulatorConfig(batch_duration=0.05)) as emu, fault_proxy(emulator_root(emu.base_url)) as proxy:
        proxy.add(Fault("poll", "status", 404))
        proxy.add(Fault("list", "empty"))
        options = fault_options(str(tmp_path / "tasks"), proxy.url + "/v1", max_batch_requests=10)
        summary = run_plain(RelTask({"n_requests": N}), options)
    assert summary.status == "error"
    assert "without results" in summary.reason and "loses batches" in summary.reason, summary.reason
    assert "failed/*.jsonl" not in summary.reason


# ---------------------------------------------------------------- storage outages


class _FlakyBackend(LocalBackend):
    """A local backend that acts as an unreachable S3 endpoint until ``down_until`` (on a fake clock)."""

    def __init__(self, root: Path, clock: list[float], down_until: float):
        super().__init__(root)
        self.clock, self.down_until = clock, down_until

    def list_names(self, folder: str) -> list[str]:
        if self.clock[0] < self.down_until:
            raise EndpointConnectionError(endpoint_url="http://s3.invalid")
        return super().list_names(folder)


def _policy(clock: list[float], bound: float) -> Any:
    from gbatch_flows.remote_errors import OutagePolicy

    def sleep(seconds: float) -> None:
        clock[0] += seconds + 1.0  # each attempt (s3fs's own retries) takes a while too

    return OutagePolicy(max_outage_s=bound, clock=lambda: clock[0], sleep=sleep)


def test_storage_outage_shorter_than_the_bound_is_waited_out(tmp_path: Path) -> None:
    from gbatch_flows.store.retrying import RetryingBackend

    clock = [0.0]
    backend = RetryingBackend(_FlakyBackend(tmp_path, clock, down_until=20.0), _policy(clock, 180.0))
    assert backend.list_names("manifests") == []
    assert clock[0] >= 20.0


def test_storage_outage_longer_than_the_bound_stops_with_one_line(tmp_path: Path) -> None:
    from gbatch_flows.store.retrying import RetryingBackend, StoreUnavailable

    clock = [0.0]
    backend = RetryingBackend(_FlakyBackend(tmp_path, clock, down_until=1e9), _policy(clock, 30.0))
    with pytest.raises(StoreUnavailable, match="--max_outage_s 30"):
        backend.list_names("manifests")


# ---------------------------------------------------------------- bad input: one line, exit 2


@pytest.mark.parametrize("ranges", ["zz-qq", "0x200-0x100"])
def test_task_parameter_failing_validation_is_one_argparse_line(ranges: str, capsys: pytest.CaptureFixture) -> None:
    sys.path.insert(0, str(ROOT))
    from flows.char_codes import CharCodes

    code = cli.main(CharCodes, ["--no_prefect", "--char_ranges", ranges])
    err = capsys.readouterr().err
    assert code == 2
    assert "char_codes: error: " in one_line_error(err) and "bad range" in err


def test_missing_utterances_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sys.path.insert(0, str(ROOT))
    from flows.utterance_emotion import UtteranceEmotionTask

    code = cli.main(UtteranceEmotionTask, ["--no_prefect", "--utterances_file", str(tmp_path / "none.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "--utterances_file" in one_line_error(err)


def _quick_argv(tmp_path: Path, task_dir: str) -> list[str]:
    return cli_args(task_dir, "http://127.0.0.1:9/v1", N, openai_api_key=DUMMY_KEY)


@pytest.mark.parametrize("task_dir,expect", [
    ("s3://", "has no bucket"),
    ("memory://x", "in memory only"),
    ("FILE", "is a file, not a folder"),
])
def test_unusable_task_dir_is_refused(task_dir: str, expect: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    if task_dir == "FILE":
        task_dir = str(tmp_path / "a_file")
        Path(task_dir).write_text("not a folder")
    code = cli.main(RelTask, _quick_argv(tmp_path, task_dir))
    line = one_line_error(capsys.readouterr().err)
    assert code == 2 and expect in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["a_file"]), "something was written"


def test_lease_file_that_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "tasks" / RelTask.name / "lease.json").mkdir(parents=True)
    code = cli.main(RelTask, _quick_argv(tmp_path, str(tmp_path / "tasks")))
    line = one_line_error(capsys.readouterr().err)
    assert code == 2 and "lease.json is a folder" in line, line


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EFBIG])
def test_disk_full_and_file_too_large(err: int, tmp_path: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real = LocalBackend.write_stream
    calls = {"n": 0}

    def failing(self: LocalBackend, path: str, chunks: Any) -> tuple[int, str]:
        calls["n"] += 1
        if calls["n"] > 6 and path != "lease.json":  # (in a new process a lease left behind is taken over)
            raise OSError(err, os.strerror(err), str(self._full(path)))
        return real(self, path, chunks)

    with run_emulator(EmulatorConfig(batch_duration=0.05)) as emu:
        argv = cli_args(str(tmp_path / "tasks"), emu.base_url, N, openai_api_key=DUMMY_KEY, max_batch_requests=10)
        monkeypatch.setattr(LocalBackend, "write_stream", failing)
        code = cli.main(RelTask, argv)
        line = one_line_error(capsys.readouterr().err)
        assert code == 1 and ("no space left" if err == errno.ENOSPC else "larger than this file system") in line
        monkeypatch.setattr(LocalBackend, "write_stream", real)
        open_store(str(tmp_path / "tasks" / RelTask.name)).load()  # the state loads
        assert cli.main(RelTask, argv) == 0
        reference = cli_args(str(tmp_path / "ref"), emu.base_url, N, openai_api_key=DUMMY_KEY, max_batch_requests=10)
        assert cli.main(RelTask, reference) == 0
    assert output_of(str(tmp_path / "tasks")) == output_of(str(tmp_path / "ref"))


def test_ctrl_c_during_imports_is_one_line(tmp_path: Path) -> None:
    """SIGINT while the demo's imports load (an early and a late one): one line, exit 130. The signal is sent once
    ``-X importtime`` shows the import under way (before the script runs, the interpreter itself is not ours)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for module in ("pydantic", "gbatch_flows.task"):
        process = subprocess.Popen([sys.executable, "-X", "importtime", str(ROOT / "flows" / "char_codes.py"),
                                    "--no_prefect", "--task_dir", str(tmp_path / "tasks")], env=env, cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if line.rsplit("|", 1)[-1].strip() == module:
                break
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        err = "".join(seen) + err
        assert process.returncode == 130, (process.returncode, err[-2000:])
        assert "Traceback" not in err and "interrupted" in err, err[-2000:]


def test_prefect_server_not_up_in_time_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import gbatch_flows.flow as flow

    def timed_out(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    monkeypatch.setattr(flow, "run_flow", timed_out)
    monkeypatch.delenv(PREFECT_TIMEOUT_ENV, raising=False)
    argv = [a for a in _quick_argv(tmp_path, str(tmp_path / "tasks")) if a != "--no_prefect"]
    code = cli.main(RelTask, argv)
    line = one_line_error(capsys.readouterr().err)
    assert code == 1 and PREFECT_TIMEOUT_ENV in line and "--no_prefect" in line
    assert os.environ[PREFECT_TIMEOUT_ENV] == "120"


# ---------------------------------------------------------------- prices behind a gateway


def test_only_private_hosts_get_zero_prices() -> None:
    assert launch.is_local_server("http://127.0.0.1:11434/v1") and launch.is_local_server("http://10.1.2.3/v1")
    assert launch.is_local_server("http://ollama:11434/v1")
    for public in ("https://gateway.example.com/v1", "https://my.openai.azure.com/openai"):
        assert not launch.is_local_server(public) and launch.needs_price_flags(public)
    assert not launch.needs_price_flags("https://api.openai.com/v1") and not launch.needs_price_flags(None)
    with pytest.raises(costs.UnknownPriceError, match="--cost_input_direct_mtoken"):
        costs.prices_for("gpt-4o-mini", flags_only=True)
    priced = costs.prices_for("gpt-4o-mini", costs.PriceOverrides(cost_input_direct_mtoken=1.0,
                                                                  cost_output_direct_mtoken=2.0), flags_only=True)
    assert priced.input_direct == 1.0 and priced.output_batch == 1.0


@pytest.mark.parametrize("dryrun", [False, True])
def test_gateway_without_price_flags_is_refused(dryrun: bool, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = cli_args(str(tmp_path / "tasks"), "https://gateway.example.com/v1", N, openai_api_key=DUMMY_KEY,
                    dryrun=dryrun, **dict.fromkeys(PRICE_FLAGS))
    code = cli.main(RelTask, argv)
    line = one_line_error(capsys.readouterr().err)
    assert code == 1 and "--cost_input_direct_mtoken" in line, line


# ---------------------------------------------------------------- task folders that lost files


def test_data_files_without_manifest_are_refused(tmp_path: Path) -> None:
    with run_emulator(EmulatorConfig(batch_duration=0.05)) as emu:
        options = fault_options(str(tmp_path / "tasks"), emu.base_url)
        assert run_plain(RelTask({"n_requests": N}), options).status == "finished"
        folder = tmp_path / "tasks" / RelTask.name
        for manifest in (folder / "manifests").iterdir():
            manifest.unlink()
        before = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
        with pytest.raises(Exception, match="no manifests/.*--wipe_task"):
            run_plain(RelTask({"n_requests": N}), options)
        after = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
        assert before == after
        wiped = options.model_copy(update={"wipe_task": True})
        assert run_plain(RelTask({"n_requests": N}), wiped).status == "finished"


def test_deleted_output_part_is_found_at_start(tmp_path: Path) -> None:
    with run_emulator(EmulatorConfig(batch_duration=0.05)) as emu:
        options = fault_options(str(tmp_path / "tasks"), emu.base_url, max_batch_requests=10,
                                max_session_requests=15)
        assert run_plain(RelTask({"n_requests": N}), options).status == "stopped"
        folder = tmp_path / "tasks" / RelTask.name
        part = sorted((folder / "output" / "parts").iterdir())[0]
        part.unlink()
        generation = open_store(str(folder)).load().generation
        with pytest.raises(Exception, match="output part.*missing.*restore"):
            run_plain(RelTask({"n_requests": N}), options)
        assert open_store(str(folder)).load().generation == generation, "the run went on before noticing"


# ---------------------------------------------------------------- remote leftovers


def _remote_files(base_url: str) -> list[str]:
    client = openai.OpenAI(api_key=DUMMY_KEY, base_url=base_url)
    return [f.filename for f in client.files.list()]


def test_failed_batch_that_stops_the_run_leaves_no_input_file(tmp_path: Path) -> None:
    faults = FaultConfig(script=[FaultRule(op="batches.create", nth=1, fault="batch_failed")])
    with run_emulator(EmulatorConfig(batch_duration=0.05, faults=faults)) as emu:
        options = fault_options(str(tmp_path / "tasks"), emu.base_url, max_batch_requests=N,
                                max_remote_batches=1)
        summary = run_plain(RelTask({"n_requests": N}), options)
        assert summary.status == "error" and "process_failed_batches" in summary.reason
        assert _remote_files(emu.base_url) == []


def test_upload_whose_create_failed_is_removed(tmp_path: Path) -> None:
    with run_emulator(EmulatorConfig(batch_duration=0.05)) as emu, fault_proxy(emulator_root(emu.base_url)) as proxy:
        fault = proxy.add(Fault("create", "status", 400, times=1))
        options = fault_options(str(tmp_path / "tasks"), proxy.url + "/v1", max_batch_requests=N)
        summary = run_plain(RelTask({"n_requests": N}), options)
        assert summary.status == "error" and fault.hits == 1
        assert _remote_files(emu.base_url) == []


def test_upload_of_a_batch_refused_for_token_limit_is_removed(tmp_path: Path) -> None:
    config = EmulatorConfig(batch_duration=2.0, enqueued_token_limit=400)
    with run_emulator(config) as emu:
        options = fault_options(str(tmp_path / "tasks"), emu.base_url, max_batch_requests=10,
                                max_remote_batches=4)
        summary = run_plain(RelTask({"n_requests": N}), options)
        state = TaskState.from_manifest(open_store(str(tmp_path / "tasks" / RelTask.name)).load())
        assert summary.status == "finished", summary
        assert any(b.past_remote_ids for b in state.batches.values()), \
            "no batch was refused: the token limit of the test is too high"
        assert _remote_files(emu.base_url) == []


def test_prefect_run_loggers_print_no_traceback() -> None:
    """Under Prefect, a failed run's exception is logged with its traceback before the CLI prints its line."""
    import io
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    try:
        cli.quiet_prefect_tracebacks()
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("Encountered exception during execution: %r", "boom")
    finally:
        logger.removeHandler(handler)
    assert "Encountered exception" in stream.getvalue() and "Traceback" not in stream.getvalue()


def test_call_remote_rule() -> None:
    """The wrapper stages use: transient errors retried within the bound (fake clock), creations not re-sent, a
    refused key stops at once with its kind."""
    from gbatch_flows.remote_errors import Kind, OutagePolicy, RemoteStop, call_remote

    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    policy = OutagePolicy(max_outage_s=30.0, clock=lambda: clock[0], sleep=sleep)
    request = httpx.Request("GET", "http://10.0.0.2/v1/batches/b1")
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if clock[0] < 10.0:
            raise openai.APIConnectionError(request=request)
        return "ok"

    assert call_remote(flaky, "batches.retrieve", policy) == "ok" and calls["n"] > 2
    with pytest.raises(openai.APIConnectionError):  # a creation: the caller decides
        call_remote(lambda: (_ for _ in ()).throw(openai.APIConnectionError(request=request)), "batches.create",
                    policy, retry=False)
    clock[0] += 31.0
    with pytest.raises(RemoteStop, match="--max_outage_s 30"):
        call_remote(lambda: (_ for _ in ()).throw(openai.APIConnectionError(request=request)), "batches.create",
                    policy, retry=False)
    denied = openai.APIStatusError("denied", response=httpx.Response(401, request=request), body=None)
    with pytest.raises(RemoteStop) as stop:
        call_remote(lambda: (_ for _ in ()).throw(denied), "batches.retrieve", policy)
    assert stop.value.kind is Kind.AUTH and "OPENAI_API_KEY" in str(stop.value)


def test_batch_left_pushing_at_a_server_without_batch_api_goes_direct_with_force_direct(tmp_path: Path) -> None:
    """A run that stopped on a server without a Batch API left its first batch `pushing`; the rerun the message
    asks for (--force_direct) neither crashes on the look-up nor loses the batch: its requests go direct."""
    with run_emulator(EmulatorConfig(batch_api=False)) as emu:
        options = fault_options(str(tmp_path / "tasks"), emu.base_url)
        first = run_plain(RelTask({"n_requests": N}), options)
        assert first.status == "error" and "--force_direct" in first.reason, first.reason
        state = TaskState.from_manifest(open_store(str(tmp_path / "tasks" / "rel")).load())
        left = state.batches_in("pushing")
        assert left, "the stopped run left no batch pushing: nothing was tested"
        again = run_plain(RelTask({"n_requests": N}), options.model_copy(update={"force_direct": True}))
        assert again.status == "finished", again.reason
    state = TaskState.from_manifest(open_store(str(tmp_path / "tasks" / "rel")).load())
    assert not state.batches_in("pushing") and all(b.mode == "direct" for b in state.batches_in("processed"))
    assert state.totals.reserved.cost == pytest.approx(0.0, abs=1e-12)  # the released batch left no reservation
    assert_complete_output(output_of(str(tmp_path / "tasks")), N)
